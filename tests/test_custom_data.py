"""Your own data (configs/custom.py, asyncjax/data/custom.py): class folders, split lists and a TFDS
image dataset end to end under smoke=True on images the tests write, predictions with class names,
and every bad input refused with the file named and nothing written to the workdir."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers

# 8 classes, 60 down to 3 training images: 4 head classes (>= 20 images) and 4 tail, also after
# 2 per class are carved out for validation.
COUNTS = (60, 40, 30, 24, 12, 8, 5, 3)


def _image(label, rng, size, mode):
    from PIL import Image
    base = np.full((size[1], size[0], 3), (37 * label) % 256, np.uint8)
    pixels = np.clip(base.astype(int) + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels)
    return picture.convert("L") if mode == "L" else picture


def write_folder_dataset(root, counts=COUNTS, test_per_class=3, size=(28, 28), mode="L", ext="png", seed=0,
                         splits=("train", "test")):
    """ROOT/<split>/class_<k>/<i>.<ext>: `counts` training images per class (`test_per_class` in the others)."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, count in enumerate(counts):
            folder = os.path.join(root, split, f"class_{label}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count if split == "train" else test_per_class):
                _image(label, rng, size, mode).save(os.path.join(folder, f"{i}.{ext}"))
    return str(root)


def write_lists(root, folder_root):
    """train.txt / test.txt (`relative/path label`) and names.txt over a folder dataset."""
    for split in ("train", "test"):
        lines = []
        for label in range(len(COUNTS)):
            folder = os.path.join(folder_root, split, f"class_{label}")
            lines += [f"{split}/class_{label}/{f} {label}" for f in sorted(os.listdir(folder))]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "names.txt").write_text("\n".join(f"species {k}" for k in range(len(COUNTS))) + "\n")


def _main(workdir, config, *extra, module="asyncjax.main", timeout=600):
    command = [sys.executable, "-m", module, f"--config={config}", f"--workdir={workdir}", *extra]
    return subprocess.run(command, cwd=helpers.REPO, env=helpers.cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def _in_process(workdir, config, *extra):
    """`_main`'s run in this process (helpers.run_in_process): no JAX start-up of its own."""
    return helpers.run_in_process(workdir, None, *extra, config=config)


def _predict(*args):
    return subprocess.run([sys.executable, "-m", "asyncjax.predict", *args], cwd=helpers.REPO,
                          env=helpers.cli_env(), capture_output=True, text=True, timeout=300)


def test_class_folders_of_small_grayscale_images_end_to_end(tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    workdir = tmp_path / "run"
    result = _in_process(workdir, "configs/custom.py:kind=folder,smoke=True", f"--config.data.root={root}",
                         "--config.data.val_per_class=2")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (workdir / "log.txt").read_text()
    # The summary: classes, splits, head/tail, measured imbalance, shot groups, size, each on a line.
    assert "data: custom, 8 classes (class_0, class_1, class_2, ...)" in log
    # Validation: 2 carved from each class that keeps as many (7 classes), 1 from the class of 3.
    assert "data: images per split: train 167, test 24, val 15" in log
    assert "data: 4 head classes (phase I) + 4 tail classes (phase II)" in log
    assert "data: imbalance factor measured 29.0 (largest class 58, smallest 2)" in log
    assert "data: images 28x28x3, held in memory" in log
    results = json.loads((workdir / "results.json").read_text())
    assert results["evaluated_on"] == "test" and results["num_classes"] == 8
    assert results["class_names"] == [f"class_{c}" for c in results["rank_to_class"]]
    assert results["config"]["model"]["backbone"] == "resnet8"  # smoke; auto picks resnet32 for 28 px.
    assert len(results["per_class_accuracy"]) == 8 and results["val"]["classes"] == 8
    image = os.path.join(root, "test", "class_2", "0.png")
    shown = _predict(f"--workdir={workdir}", "--top_k=3", "--json", image)
    assert shown.returncode == 0, shown.stderr[-2000:]
    top = json.loads(shown.stdout.strip())["top_k"]
    assert len(top) == 3 and all(t["name"] == f"class_{t['class_id']}" for t in top)
    assert abs(sum(t["probability"] for t in top) - 1) < 1 and top[0]["probability"] >= top[-1]["probability"]
    arrays = helpers.export(workdir, tmp_path / "model.npz")
    assert [str(n) for n in arrays["class_names"]] == [f"class_{c}" for c in arrays["class_ids"]]
    from_export = _predict(f"--model={tmp_path / 'model.npz'}", "--top_k=3", "--json", image)
    assert from_export.returncode == 0, from_export.stderr[-2000:]
    assert json.loads(from_export.stdout.strip())["top_k"] == top  # The same model, the same answer.


def test_split_lists_of_larger_images_stream_with_names_from_a_file(tmp_path):
    folder = write_folder_dataset(tmp_path / "images", size=(80, 72), mode="RGB", ext="jpg")
    write_lists(tmp_path / "images", folder)  # Relative list names are read under data.root.
    workdir = tmp_path / "run"
    result = _in_process(workdir, "configs/custom.py:kind=lists,smoke=True", f"--config.data.root={folder}",
                         "--config.data.train_list=train.txt", "--config.data.test_list=test.txt",
                         f"--config.data.class_names={tmp_path / 'images' / 'names.txt'}", "--config.data.workers=0")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (workdir / "log.txt").read_text()
    assert "data: images 32x32x3, streamed" in log  # data.image_size of the smoke config.
    assert "monitoring is off" in log
    results = json.loads((workdir / "results.json").read_text())
    assert results["class_names"][0] == "species 0" and results["evaluated_on"] == "test"
    shown = _predict(f"--workdir={workdir}", os.path.join(folder, "test", "class_5", "0.jpg"))
    assert shown.returncode == 0 and "species " in shown.stdout, shown.stderr[-2000:]


def test_any_tfds_image_dataset_made_long_tailed(tmp_path):
    import tensorflow_datasets as tfds

    workdir = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=400):  # What tests.mock_main runs, in this process.
        result = _in_process(workdir, "configs/custom.py:kind=tfds,name=mnist,imbalance=10,smoke=True",
                             "--config.data.val_per_class=3")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    counts = results["train_counts"]  # By rank: lt_counts over 10 classes from the smallest class's size.
    assert len(counts) == 10 and round(counts[0] / counts[-1]) in (9, 10, 11)
    assert results["class_names"] is not None and results["val"]["classes"] >= 1
    assert "made long-tailed" in results["data_note"]


# ---- bad input: the file named, nothing written ----------------------------------------------------
def _config(kind="folder", **data):
    from asyncjax import config_utils
    config = config_utils.load_config_file(str(helpers.REPO / "configs" / "custom.py") + f":kind={kind},smoke=True")
    config.data.update(data)
    return config


def _load(config):
    from asyncjax.data import custom
    return custom.load(config.data, log=lambda line: None)


def test_an_empty_class_folder_is_named(tmp_path):
    root = write_folder_dataset(tmp_path, counts=(5, 4))
    os.makedirs(tmp_path / "train" / "empty_class")
    os.makedirs(tmp_path / "test" / "empty_class")
    with pytest.raises(ValueError, match="class folder .*empty_class holds no images"):
        _load(_config(root=root))


def test_unreadable_and_truncated_images_are_named_with_how_many_more(tmp_path):
    root = write_folder_dataset(tmp_path, counts=(6, 4))
    (tmp_path / "train" / "class_0" / "9.png").write_bytes(b"not an image")
    data = (tmp_path / "train" / "class_1" / "0.png").read_bytes()
    (tmp_path / "train" / "class_1" / "0.png").write_bytes(data[:len(data) // 2])  # Truncated.
    with pytest.raises(ValueError, match=r"class_0/9\.png: .*\(and 1 more: .*class_1/0\.png\)"):
        _load(_config(root=root))


def test_class_folders_that_differ_between_train_and_test(tmp_path):
    root = write_folder_dataset(tmp_path, counts=(5, 4, 3))
    os.rename(tmp_path / "test" / "class_2", tmp_path / "test" / "class_9")
    with pytest.raises(ValueError, match=r"test: its class folders differ from train's: missing \['class_2'\]; "
                                         r"not in train \['class_9'\]"):
        _load(_config(root=root))


def test_a_single_class_is_refused(tmp_path):
    root = write_folder_dataset(tmp_path, counts=(5,))
    with pytest.raises(ValueError, match="a single class"):
        _load(_config(root=root))


def test_the_same_image_in_two_splits_is_refused_unless_allowed(tmp_path):
    root = write_folder_dataset(tmp_path, counts=(5, 4))
    import shutil
    shutil.copy(tmp_path / "train" / "class_1" / "2.png", tmp_path / "test" / "class_1" / "copy.png")
    with pytest.raises(ValueError, match=r"class_1/2\.png \(train\) and .*copy\.png \(test\) are the same image"):
        _load(_config(root=root))
    assert len(_load(_config(root=root, allow_overlap=True)).test_labels) == 7


@pytest.mark.parametrize("line,message", [
    ("train/class_0/0.png", r"train\.txt:2: expected 'relative/path\.jpg label'"),
    ("train/class_0/0.png zero", r"train\.txt:2: expected 'relative/path\.jpg label'"),
    ("train/class_0/0.png -1", r"train\.txt:2: negative label -1"),
    ("train/class_0/nowhere.png 0", r"train\.txt:2: image .*nowhere\.png does not exist"),
])
def test_a_bad_list_line_is_named_with_its_line(tmp_path, line, message):
    root = write_folder_dataset(tmp_path / "images", counts=(3, 3))
    (tmp_path / "train.txt").write_text(f"train/class_0/1.png 0\n{line}\ntrain/class_1/0.png 1\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        _load(_config("lists", root=root, train_list=str(tmp_path / "train.txt")))


def test_a_test_label_that_train_lacks_is_named_with_its_line(tmp_path):
    root = write_folder_dataset(tmp_path / "images", counts=(3, 3))
    (tmp_path / "train.txt").write_text("train/class_0/0.png 0\ntrain/class_1/0.png 1\n")
    (tmp_path / "test.txt").write_text("test/class_0/0.png 0\ntest/class_1/0.png 5\n")
    with pytest.raises(ValueError, match=r"test\.txt:2: label 5 has no training images"):
        _load(_config("lists", root=root, train_list=str(tmp_path / "train.txt"),
                      test_list=str(tmp_path / "test.txt")))


def test_no_tail_classes_fails_in_one_line_and_writes_nothing(tmp_path):
    root = write_folder_dataset(tmp_path / "data", counts=(30, 25, 20))  # Every class has >= 20 images.
    workdir = tmp_path / "run"
    result = _in_process(workdir, "configs/custom.py:kind=folder,smoke=True", f"--config.data.root={root}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and "leaves no tail classes" in result.stderr
    assert not workdir.exists()


def test_the_readmes_example_set_is_long_tailed_in_both_layouts(tmp_path):
    result = subprocess.run([sys.executable, "-m", "asyncjax.example_data", f"--output={tmp_path}", "--max_count=40",
                             "--imbalance=8", "--test_per_class=2"], cwd=helpers.REPO, env=helpers.cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    from asyncjax.data import custom
    paths, labels, names = custom.scan_folder(str(tmp_path / "train"))
    # lt_counts(10, 40, 8) by class; folders sort by name, so compare per name.
    from asyncjax import example_data
    from asyncjax.data import longtail
    expected = dict(zip(example_data.SHAPES, longtail.lt_counts(10, 40, 8)))
    assert {n: int((labels == k).sum()) for k, n in enumerate(names)} == expected
    list_paths, list_labels = custom.read_list(str(tmp_path / "train.txt"), str(tmp_path))
    assert sorted(list_paths) == sorted(paths)
    assert [example_data.SHAPES[label] for label in list_labels] == [p.split(os.sep)[-2] for p in list_paths]


def test_no_head_classes_is_refused(tmp_path):
    from asyncjax.data import longtail
    data = _load(_config(root=write_folder_dataset(tmp_path, counts=(12, 8, 5))))  # All under 20 images.
    with pytest.raises(ValueError, match="leaves no head classes"):
        longtail.make_class_split(data.train_counts, None)


def test_without_a_test_split_the_final_figures_are_on_validation(tmp_path):
    root = write_folder_dataset(tmp_path, counts=(10, 6), splits=("train",))
    with pytest.raises(ValueError, match="no test split and no validation split"):
        _load(_config(root=root))
    data = _load(_config(root=root, val_per_class=2))
    assert data.test_images is data.val_images and len(data.val_labels) == 4
    assert "final figures are on the validation split" in data.note


def test_palette_rgba_and_mixed_sizes_become_one_rgb_size(tmp_path):
    from PIL import Image

    from asyncjax.data import image_files
    paths = []
    for i, (mode, size) in enumerate([("RGBA", (20, 24)), ("P", (20, 24)), ("L", (20, 24)), ("RGB", (30, 30))]):
        image = Image.new("RGB", size, (10 * i, 200, 30)).convert(mode)
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    lines = []
    images, size = image_files.decode_all(paths, None, log=lines.append)
    assert images.shape == (4, 24, 20, 3) and images.dtype == np.uint8 and size == (20, 24)
    assert lines == ["data: 1 of 4 images resized to the most common size 20x24"]
    np.testing.assert_array_equal(images[0, 0, 0], [0, 200, 30])  # RGBA -> RGB keeps the colour.


def test_a_streamed_image_cut_short_after_its_header_is_named_when_decoded(tmp_path):
    """The streaming path reads every header up front; a file truncated after it fails in the
    pipeline, with its path in the error."""
    folder = write_folder_dataset(tmp_path / "images", counts=(3, 3), size=(80, 72), mode="RGB", ext="jpg")
    victim = tmp_path / "images" / "train" / "class_1" / "2.jpg"
    content = victim.read_bytes()
    victim.write_bytes(content[:len(content) * 2 // 3])  # The JPEG header survives, the scan does not.
    data = _load(_config(root=folder, workers=0))  # Headers only: it passes the up-front check.
    assert not data.small
    with pytest.raises(ValueError, match=r"class_1/2\.jpg: unreadable or truncated image"):
        list(data.train_images.batches([np.arange(len(data.train_labels))], training=True, key=(0, 1, 0)))


def test_images_are_decoded_as_meant_to_be_seen(tmp_path):
    """EXIF orientation applied (a phone photo stored sideways), 16-bit scaled not clipped, CMYK
    converted: the same transforms.to_rgb in training, evaluation and predict."""
    from PIL import Image

    from asyncjax.data import image_files, transforms
    wide = Image.new("RGB", (20, 10), (200, 30, 30))
    exif = wide.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display.
    wide.save(tmp_path / "sideways.jpg", exif=exif)
    with Image.open(tmp_path / "sideways.jpg") as opened:
        assert transforms.to_rgb(opened).size == (10, 20)
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520.
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as opened:
        pixels = np.asarray(transforms.to_rgb(opened))
    np.testing.assert_array_equal(pixels[..., 0], ramp >> 8)  # Pillow's own convert clips to 255.
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "print.jpg")
    images, _ = image_files.decode_all([str(tmp_path / "print.jpg")], None)
    assert images.shape == (1, 8, 8, 3) and images[0, 0, 0, 0] > 200 and images[0, 0, 0, 1] < 60  # Red.


def test_a_decompression_bomb_is_refused_naming_the_file_and_the_limit(tmp_path):
    from PIL import Image

    from asyncjax.data import image_files
    Image.new("L", (40, 40)).save(tmp_path / "big.png")
    Image.new("L", (100, 100)).save(tmp_path / "bigger.png")  # Past twice the limit: Pillow's own error.
    try:
        assert image_files.set_pixel_limit(1000) == 1000
        for name, pixels in (("big.png", "40 x 40 = 1,600 pixels"), ("bigger.png", "10000 pixels")):
            with pytest.raises(image_files.TooManyPixels, match=rf"{name}: .*{pixels}.*above data.max_image_pixels = 1,000"):
                image_files.decode_all([str(tmp_path / name)], None)
            with pytest.raises(image_files.TooManyPixels, match=name):
                image_files.check_headers([str(tmp_path / name)])
    finally:
        image_files.set_pixel_limit(0)
    assert image_files.decode_all([str(tmp_path / "bigger.png")], None)[0].shape == (1, 100, 100, 3)


def test_hidden_files_and_other_types_are_skipped_and_counted(tmp_path):
    from PIL import Image

    from asyncjax.data import custom
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / name / "x.png")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / "a" / "._x.png").write_bytes(b"macOS resource fork, not an image")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "b" / "scan.tif").write_bytes(b"II*\0")
    lines = []
    paths, labels, names = custom.scan_folder(str(tmp_path / "train"), log=lines.append)
    assert names == ["a", "b"] and [os.path.basename(p) for p in paths] == ["x.png", "x.png"]
    assert any("2 hidden file(s) or folder(s) skipped (.ipynb_checkpoints, a/._x.png)" in line for line in lines)
    assert any("2 file(s) of other types skipped: 1 .tif, 1 .txt" in line for line in lines), lines
