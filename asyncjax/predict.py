"""Command line: python -m asyncjax.predict --workdir=DIR IMAGE [IMAGE ...] [--top_k=5] [--json]

Prints, for each image, the top-k classes of the final model (or --phase=phase1) with their
softmax probabilities (of the logits with the run's post-hoc offset, where it has one): one line per image, or one JSON object per line with --json. Instead of
a workdir, --model=model.npz reads an archive written by `python -m asyncjax.export`. Class
names come from --class_names (one name per line, by original class id) or, for CIFAR-100, from
fine_label_names.txt beside the run's `data.cifar100_dir`; otherwise classes are printed by id.

Images are read with PIL (any format it reads; grayscale, palette and RGBA become RGB) and
prepared as the run's evaluation images are: CIFAR-100-LT resizes to 32 x 32; the 224-px
benchmarks resize the shorter side to data.resize_size and crop data.image_size at the centre.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags


def define_flags():
    """Defined only when run as a program: importing predict() (tests, notebooks, plot) beside
    another tool's flags never clashes."""
    flags.DEFINE_string("workdir", None, "Workdir of a run of asyncjax.main.")
    flags.DEFINE_string("model", None, "An archive written by asyncjax.export (instead of --workdir).")
    flags.DEFINE_enum("phase", None, ["phase1", "phase2", "joint", "classifier"],
                      "With --workdir: the phase whose model predicts; default: the final one.")
    flags.DEFINE_integer("top_k", 5, "Classes printed per image.")
    flags.DEFINE_bool("json", False, "One JSON object per line: image, and top_k [{class_id, name, probability}].")
    flags.DEFINE_string("class_names", None, "Text file of class names, one per line, by original class id.")


def load(workdir: str | None, model_path: str | None, phase: str | None) -> dict:
    """The flat arrays of a model (as asyncjax.export writes them) from a workdir or an archive."""
    if bool(workdir) == bool(model_path):
        raise ValueError("give exactly one of --workdir and --model")
    if workdir:
        from asyncjax.export import latest_model
        return latest_model(workdir, phase)[1]
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"--model: {model_path} does not exist")
    with np.load(model_path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    if "config" not in arrays:
        raise ValueError(f"--model: {model_path} holds no 'config' (exported before predict existed): "
                         "export the workdir again")
    return arrays


def class_names(config, path: str | None) -> dict[int, str]:
    candidates = [path] if path else []
    if not path and config.dataset == "cifar100_lt" and config.data.get("cifar100_dir"):
        candidates.append(os.path.join(config.data.cifar100_dir, "fine_label_names.txt"))
    for candidate in candidates:
        if os.path.exists(candidate):
            with open(candidate) as f:
                return dict(enumerate(line.strip() for line in f if line.strip()))
        if candidate == path:
            raise FileNotFoundError(f"--class_names: {path} does not exist")
    return {}


def prepare(paths, config, image_shape=None) -> np.ndarray:
    """uint8 [N, H, W, 3]: each image as the run's evaluation images are prepared (custom data
    of small images: resized to the training images' `image_shape`)."""
    from PIL import Image

    from asyncjax.data import image_files, transforms
    image_files.set_pixel_limit(config.data.get("max_image_pixels", 0))
    images = []
    for path in paths:
        try:
            with image_files.open_image(path) as picture:  # A decompression bomb is refused, named.
                picture = transforms.to_rgb(picture)  # EXIF orientation, 16-bit, CMYK: as in training.
                small = image_shape is not None and max(image_shape[:2]) <= config.data.get("small_max_side", 0)
                if config.dataset == "cifar100_lt":
                    images.append(np.asarray(picture.resize((32, 32), Image.BILINEAR), np.uint8))
                elif config.dataset == "custom" and small:
                    size = (int(image_shape[1]), int(image_shape[0]))
                    images.append(np.asarray(picture.resize(size, Image.BILINEAR), np.uint8))
                else:
                    images.append(transforms.eval_transform(picture, config.data.image_size,
                                                            config.data.resize_size))
        except image_files.TooManyPixels:
            raise
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not an image PIL can read ({e})") from e
    return np.stack(images)


def predict(arrays: dict, paths, top_k: int, names: dict[int, str] | None = None) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import ml_collections

    from asyncjax import augment
    from asyncjax.models import make_model

    config = ml_collections.ConfigDict(json.loads(str(arrays["config"])))
    from asyncjax.archive import unflatten
    variables = jax.tree.map(jnp.asarray, unflatten(arrays))
    class_ids = np.asarray(arrays["class_ids"])
    model = make_model(config.model.backbone, config.model.head, len(class_ids),
                       cosine_scale_init=config.model.cosine_scale_init,
                       class_scale="class_scale" in variables["params"]["head"])
    names = names or class_names(config, None)
    if not names and "class_names" in arrays:  # The run's own (custom data), by output row.
        names = {int(c): str(n) for c, n in zip(class_ids, arrays["class_names"])}
    shape = np.asarray(arrays["image_shape"]).tolist() if "image_shape" in arrays else None
    images = prepare(paths, config, shape)
    preprocess = augment.get_preprocess(config.dataset)[1]  # Evaluation: the same for every size.
    logits = jax.jit(lambda v, x: model.apply(v, preprocess(x, None), train=False)["logits"])(variables, images)
    logits = logits[:, :len(class_ids)].astype(jnp.float32)
    if "logit_offset" in arrays:  # The run's post-hoc correction (calibration.py), as its figures had it.
        logits = logits + jnp.asarray(arrays["logit_offset"], jnp.float32)
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    results = []
    for path, p in zip(paths, probabilities):
        order = np.argsort(-p)[:top_k]
        results.append({"image": path, "top_k": [
            {"class_id": int(class_ids[r]), "name": names.get(int(class_ids[r]), f"class {int(class_ids[r])}"),
             "probability": float(p[r])} for r in order]})
    return results


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image paths after the flags")
    FLAGS = flags.FLAGS
    if FLAGS.top_k < 1:
        raise ValueError(f"--top_k must be >= 1, got {FLAGS.top_k}")
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    arrays = load(FLAGS.workdir, FLAGS.model, FLAGS.phase)
    import ml_collections
    config = ml_collections.ConfigDict(json.loads(str(arrays["config"])))
    for result in predict(arrays, paths, FLAGS.top_k, class_names(config, FLAGS.class_names)):
        if FLAGS.json:
            print(json.dumps(result))
        else:
            print(f"{result['image']}: " + ", ".join(f"{c['name']} {c['probability']:.3f}" for c in result["top_k"]))


if __name__ == "__main__":
    from asyncjax import cli
    define_flags()
    cli.run(main, __doc__)
