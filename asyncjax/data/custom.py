"""Your own long-tailed data (configs/custom.py): class folders, split lists, or any TFDS image
classification dataset, at any image size.

- kind=folder: ROOT/train/CLASS_NAME/*.{jpg,jpeg,png,bmp,webp} and, optionally, ROOT/val and
  ROOT/test in the same layout (torchvision's ImageFolder convention); class names are the
  train folders' names, sorted.
- kind=lists: `relative/path label` lines (integer labels from 0) over data.root, as the
  long-tailed literature ships its splits; names from data.class_names (one per line, by label).
- kind=tfds: a TFDS dataset with `image` and `label` features, made long-tailed as CIFAR-100-LT
  is (lt_counts over its classes, n_max = its smallest class unless data.max_count > 0;
  imbalance 1 keeps it whole), with a validation split carved from the training images it leaves out.

Small images (at most data.small_max_side px on the longer side, like CIFAR or 28x28 scans) are
decoded once, held in memory and augmented on the device with the CIFAR recipe at their own size
(mixed sizes are resized to the most common one); larger ones stream through the grain pipeline
at data.image_size. Grayscale, palette and RGBA images become RGB.

Every problem with the input is a ValueError / FileNotFoundError that names the file (and line),
raised before anything is written to the workdir.
"""
from __future__ import annotations

import collections
import hashlib
import os

import numpy as np

from asyncjax.data import sources
from asyncjax.data import image_files
from asyncjax.data.image_files import IMAGE_EXTENSIONS, check_headers, decode_all, probe_sizes, rgb
from asyncjax.data.longtail import LongTailData, carve_validation, long_tailed_subset
from asyncjax.data.pipeline import InMemoryImages, streaming_tables

KINDS = ("folder", "lists", "tfds")


# ---- reading the splits ------------------------------------------------------------------
def scan_folder(split_dir: str, class_names: list[str] | None = None,
                log=print) -> tuple[list[str], np.ndarray, list[str]]:
    """(image paths, labels, class names) of one split in the class-folder layout. With
    `class_names` (train's), the split's class folders must be exactly those. Hidden files and
    folders (.ipynb_checkpoints, macOS's ._x.jpg) are skipped, and files of other types named: both
    counted in the log, never dropped silently."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"{split_dir} does not exist (expected {split_dir}/CLASS_NAME/image.jpg)")
    hidden = [d for d in os.listdir(split_dir) if d.startswith(".")]
    found = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))
                   and not d.startswith("."))
    if not found:
        raise ValueError(f"{split_dir} holds no class folders (expected {split_dir}/CLASS_NAME/image.jpg)")
    if class_names is not None and found != class_names:
        missing, extra = sorted(set(class_names) - set(found)), sorted(set(found) - set(class_names))
        raise ValueError(f"{split_dir}: its class folders differ from train's: "
                         + "; ".join(part for part in (f"missing {missing[:5]}" if missing else "",
                                                       f"not in train {extra[:5]}" if extra else "") if part))
    paths, labels, others = [], [], collections.Counter()
    for label, name in enumerate(found):
        folder = os.path.join(split_dir, name)
        entries = os.listdir(folder)
        hidden += [os.path.join(name, f) for f in entries if f.startswith(".")]
        files = sorted(f for f in entries if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        others.update(os.path.splitext(f)[1].lower() or "(no extension)" for f in entries
                      if not f.startswith(".") and not f.lower().endswith(IMAGE_EXTENSIONS)
                      and os.path.isfile(os.path.join(folder, f)))
        if not files:
            raise ValueError(f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += [os.path.join(folder, f) for f in files]
        labels += [label] * len(files)
    if hidden:
        log(f"data: {split_dir}: {len(hidden)} hidden file(s) or folder(s) skipped ({', '.join(sorted(hidden)[:3])}"
            f"{', ...' if len(hidden) > 3 else ''})")
    if others:
        log(f"data: {split_dir}: {sum(others.values())} file(s) of other types skipped: "
            + ", ".join(f"{n} {ext}" for ext, n in sorted(others.items()))
            + f" (images are {', '.join(IMAGE_EXTENSIONS)})")
    return paths, np.asarray(labels, np.int64), found


def read_list(list_path: str, root: str, allow_outside_root: bool = False) -> tuple[list[str], np.ndarray]:
    """A `relative/path label` list over `root` (sources.read_split_list: names the file and
    line of a malformed line, a non-integer or negative label, or a missing image)."""
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"split list {list_path} does not exist")
    return sources.read_split_list(list_path, root, check_files=True, verify_checksum=False,
                                   allow_outside_root=allow_outside_root)


def _first_line_with(list_path: str, label: int) -> int:
    with open(list_path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            parts = line.rsplit(None, 1)
            if len(parts) == 2 and parts[1] == str(label):
                return number
    return 0


def read_class_names(path: str, num_classes: int) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.class_names: {path} does not exist")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) < num_classes:
        raise ValueError(f"data.class_names: {path} names {len(names)} classes, the labels need {num_classes}")
    return names[:num_classes]


def check_overlap(splits: dict, keys: dict, allow: bool) -> None:
    """Refuses the same image in two splits (`keys`: per split, one key per image: its resolved
    path, or its decoded pixels' digest), naming both files."""
    if allow:
        return
    seen = {}
    for split, split_keys in keys.items():
        for i, key in enumerate(split_keys):
            if key in seen and seen[key][0] != split:
                other, j = seen[key]
                raise ValueError(f"{splits[other][j]} ({other}) and {splits[split][i]} ({split}) are the same image: "
                                 "remove one, or pass --config.data.allow_overlap=True")
            seen.setdefault(key, (split, i))


# ---- the three kinds ---------------------------------------------------------------------
def _splits_from_files(data_config, log=print) -> tuple[dict, dict, list[str], str]:
    """{split: paths}, {split: labels}, class names and where they came from (folder / lists)."""
    kind, root = data_config.kind, data_config.root
    if not root:
        raise ValueError(f"kind={kind} needs --config.data.root (the folder of the images)")
    paths, labels = {}, {}
    if kind == "folder":
        paths["train"], labels["train"], names = scan_folder(os.path.join(root, "train"), log=log)
        for split in ("val", "test"):
            if os.path.isdir(os.path.join(root, split)):
                paths[split], labels[split], _ = scan_folder(os.path.join(root, split), names, log=log)
        return paths, labels, names, root
    lists = {"train": data_config.train_list, "val": data_config.val_list, "test": data_config.test_list}
    if not lists["train"]:
        raise ValueError("kind=lists needs --config.data.train_list (lines 'relative/path label')")
    resolve = lambda p: p if os.path.isabs(p) or os.path.exists(p) else os.path.join(root, p)
    for split, path in lists.items():
        if path:
            paths[split], labels[split] = read_list(resolve(path), root, data_config.allow_outside_root)
    num_classes = int(labels["train"].max()) + 1
    present = np.bincount(labels["train"], minlength=num_classes)
    if (present == 0).any():
        missing = np.flatnonzero(present == 0)
        raise ValueError(f"{resolve(lists['train'])}: labels must be 0..C-1, each with training images; "
                         f"label(s) {missing[:10].tolist()} have none")
    for split in ("val", "test"):
        if split in labels:
            unknown = np.setdiff1d(labels[split], np.arange(num_classes))
            if len(unknown):
                line = _first_line_with(resolve(lists[split]), int(unknown[0]))
                raise ValueError(f"{resolve(lists[split])}:{line}: label {int(unknown[0])} has no training images "
                                 f"(train's labels are 0..{num_classes - 1})")
    names = (read_class_names(data_config.class_names, num_classes) if data_config.class_names
             else [f"class {i}" for i in range(num_classes)])
    return paths, labels, names, resolve(lists["train"])


def load_files(data_config, log=print):
    """LongTailData of kind=folder or kind=lists."""
    paths, labels, names, origin = _splits_from_files(data_config, log)
    note = ""
    if "val" not in paths and data_config.val_per_class > 0:
        keep, val = carve_validation(labels["train"], data_config.val_per_class, data_config.subsample_seed)
        paths["val"] = [paths["train"][i] for i in val]
        labels["val"] = labels["train"][val]
        paths["train"] = [paths["train"][i] for i in keep]
        labels["train"] = labels["train"][keep]
        log(f"data: validation split carved from the training images: {len(val)} images "
            f"(up to {data_config.val_per_class} per class)")
    elif "val" not in paths:
        log("data: no validation split (ROOT/val, data.val_list or data.val_per_class > 0): monitoring is off, "
            "and nothing can be chosen without reading the test split")
    if "test" not in paths:
        if "val" not in paths:
            raise ValueError(f"{origin}: no test split and no validation split to report on: give a test split "
                             "(ROOT/test, --config.data.test_list) or --config.data.val_per_class=N")
        note = "no test split: the final figures are on the validation split"
    sizes = probe_sizes(paths["train"])
    small = max(max(s) for s in sizes) <= data_config.small_max_side
    if small:
        tables, size = {}, None
        digests = {}
        for split in ("train", "val", "test"):
            if split in paths:
                images, size = decode_all(paths[split], size, log)
                tables[split] = InMemoryImages(images)
                digests[split] = [hashlib.sha1(image.tobytes()).hexdigest() for image in images]
        check_overlap(paths, digests, data_config.allow_overlap)
    else:
        if data_config.check_files:
            check_headers([p for split_paths in paths.values() for p in split_paths])
        check_overlap(paths, {s: [os.path.realpath(p) for p in ps] for s, ps in paths.items()},
                      data_config.allow_overlap)
        tables = streaming_tables({split: _PathSource(paths[split], labels[split]) for split in paths}, data_config)
    test = "test" if "test" in tables else "val"
    return LongTailData(tables["train"], labels["train"], tables[test], labels[test], len(names), note,
                        val_images=tables.get("val"), val_labels=labels.get("val"), class_names=names,
                        small=small, split_sizes={s: len(p) for s, p in paths.items()})


class _PathSource:
    """Records of image files (encoded bytes, decoded in the grain workers)."""

    def __init__(self, paths, labels):
        self.paths, self.labels = list(paths), np.asarray(labels, np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        with open(self.paths[index], "rb") as f:
            return {"image": f.read(), "label": int(self.labels[index]), "path": self.paths[index]}


def load_tfds(data_config, log=print):
    """LongTailData of kind=tfds: the dataset's train split made long-tailed as CIFAR-100-LT is."""
    import tensorflow_datasets as tfds

    name = data_config.name
    if not name:
        raise ValueError("kind=tfds needs a dataset name: configs/custom.py:kind=tfds,name=NAME")
    try:
        builder = tfds.builder(name, data_dir=data_config.tfds_data_dir)
    except Exception as e:  # DatasetNotFoundError and friends.
        raise ValueError(f"TFDS has no dataset {name!r} ({str(e).splitlines()[0]})") from e
    features = builder.info.features
    for key in ("image", "label"):
        if key not in features:
            raise ValueError(f"TFDS dataset {name} has no {key!r} feature (it has {sorted(features.keys())}): "
                             "kind=tfds takes image classification datasets")
    names = list(features["label"].names)
    splits = {"train": "train"}
    for split, candidates in (("test", ("test",)), ("val", ("validation", "val"))):
        for candidate in candidates:
            if candidate in builder.info.splits:
                splits[split] = candidate
                break
    source = {split: sources.TfdsSource(name, tfds_split, data_config.tfds_data_dir)
              for split, tfds_split in splits.items()}
    train_labels = source["train"].labels
    per_class = np.bincount(train_labels, minlength=len(names))
    if (per_class == 0).any():
        raise ValueError(f"TFDS {name} train: class(es) {np.flatnonzero(per_class == 0)[:10].tolist()} have no images")
    max_count = data_config.max_count if data_config.max_count > 0 else int(per_class.min())
    keep, val = long_tailed_subset(train_labels, len(names), data_config, max_count)  # As CIFAR-100-LT.
    rows = {"train": keep}
    if "val" not in splits and val is not None:
        rows["val"] = val
    shape = features["image"].shape
    small = shape[0] is not None and shape[1] is not None and max(shape[:2]) <= data_config.small_max_side
    tables, labels = {}, {}
    for split in ("train", "val", "test"):
        src = source["train"] if split in rows else source.get(split)
        if src is None:
            continue
        index = rows.get(split, np.arange(len(src)))
        labels[split] = src.labels[index]
        if small:
            tables[split] = InMemoryImages(np.stack([rgb(src[int(i)]["image"]) for i in index]))
        else:
            tables.update(streaming_tables({split: _Subset(src, index)}, data_config))
    note = f"TFDS {name}, training split made long-tailed (n_max {max_count}, imbalance {data_config.imbalance})"
    if "test" not in tables:
        if "val" not in tables:
            raise ValueError(f"TFDS {name} has no test split: pass --config.data.val_per_class=N to report on "
                             "a validation split carved from the training images")
        note += "; no test split: the final figures are on the validation split"
    test = "test" if "test" in tables else "val"
    return LongTailData(tables["train"], labels["train"], tables[test], labels[test], len(names), note,
                        val_images=tables.get("val"), val_labels=labels.get("val"), class_names=names, small=small,
                        split_sizes={s: len(v) for s, v in labels.items()})


class _Subset:
    """Rows `index` of a source, as a source (labels included)."""

    def __init__(self, source, index):
        self.source, self.index = source, np.asarray(index)
        self.labels = source.labels[self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        return self.source[int(self.index[i])]


def load(data_config, log=print):
    if data_config.kind not in KINDS:
        raise ValueError(f"data.kind must be one of {KINDS}, got {data_config.kind!r}")
    image_files.set_pixel_limit(data_config.get("max_image_pixels", 0))
    data = load_tfds(data_config, log) if data_config.kind == "tfds" else load_files(data_config, log)
    if data.num_classes < 2:
        raise ValueError(f"{data_config.root or data_config.name}: a single class ({data.class_names}); "
                         "long-tailed recognition needs at least two")
    return data
