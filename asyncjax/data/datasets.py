"""Training, validation and test sets by dataset name, as image tables plus labels.

CIFAR-100-LT is small enough to hold in memory (`InMemoryImages`): images stay
uint8 and are augmented on the device. ImageNet-LT, Places-LT and iNaturalist 2018
stream through grain (`StreamingImages`) from TFDS or from split lists over an
image folder (`--config.data.source=tfds|list`).

Splits: the final figures come from `test`. Monitoring during training uses
`val` where the benchmark has one (ImageNet-LT, Places-LT; CIFAR-100-LT's is drawn from the
training images its long-tailed subset leaves out, `data.val_per_class`), so nothing is looked at
on the test split before the end. iNaturalist 2018 has no third split and reports on its
validation split, as the field does.

Your own data (dataset=custom, asyncjax/data/custom.py) goes through the same two steps as the
benchmarks: `longtail.long_tailed_subset` (CIFAR-100-LT's rule, also any TFDS dataset's) and
`pipeline.streaming_tables` (the 224-px benchmarks' pipeline, also large custom images); a
benchmark is its source spec (BENCHMARKS: classes, TFDS name and splits, split-list names) plus
its config's recipe.
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from asyncjax.data import cifar, cifar_pack, custom, sources
from asyncjax.data.longtail import LongTailData, long_tailed_subset
from asyncjax.data.pipeline import InMemoryImages, streaming_tables


# Per benchmark: classes, TFDS name and split names (None: no TFDS builder exists),
# and the split lists of the literature for source=list.
BENCHMARKS = {
    "imagenet_lt": dict(num_classes=1000, tfds="imagenet_lt",
                        tfds_splits={"train": "train", "val": "validation", "test": "test"},
                        lists={"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt",
                               "test": "ImageNet_LT_test.txt"}),
    "places_lt": dict(num_classes=365, tfds=None, tfds_splits=None,
                      lists={"train": "Places_LT_train.txt", "val": "Places_LT_val.txt",
                             "test": "Places_LT_test.txt"}),
    "inat2018": dict(num_classes=8142, tfds="i_naturalist2018",
                     tfds_splits={"train": "train", "test": "validation"},
                     lists={"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"}),
}
DATASETS = ("cifar100_lt", *BENCHMARKS, "custom")


def load(config: ml_collections.ConfigDict, log=print) -> LongTailData:
    if config.dataset == "cifar100_lt":
        return load_cifar100_lt(config.data)
    if config.dataset in BENCHMARKS:
        return load_streaming(config.dataset, config.data)
    if config.dataset == "custom":
        return custom.load(config.data, log=log)
    raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {DATASETS}")


def _says_resplit(directory) -> bool:
    """Whether the copy's own README names a re-split (../shared's does, and travels with a packed
    copy of it, cifar_pack); an official download has no README."""
    readme = os.path.join(directory, "README.md")
    if not os.path.isfile(readme):
        return False
    with open(readme, errors="replace") as f:
        return "re-split" in f.read()


def load_cifar100_lt(data_config) -> LongTailData:
    """CIFAR-100-LT: the training split subsampled to lt_counts(100, max_count, IF); the
    balanced test split untouched."""
    directory = data_config.cifar100_dir
    train_images, train_labels = cifar.load_cifar100("train", directory, data_config.tfds_data_dir)
    test_images, test_labels = cifar.load_cifar100("test", directory, data_config.tfds_data_dir)
    try:
        keep, val = long_tailed_subset(train_labels, cifar.NUM_CLASSES, data_config, data_config.max_count)
    except ValueError as e:  # Too few images of a class: most often a file cut at a record boundary.
        per_class = np.bincount(train_labels, minlength=cifar.NUM_CLASSES)
        raise ValueError(f"{e} (max_count {data_config.max_count}, imbalance {data_config.imbalance}); the "
                         f"training split holds {len(train_labels)} images, {per_class.min()} to {per_class.max()} "
                         "per class: is train.bin truncated? The official one holds 50,000 (500 per class)") from e
    if directory:  # An unpacked copy (cifar_pack) holds some training rows only: refuse the others.
        cifar_pack.check_rows(directory, keep if val is None else np.concatenate([keep, val]))
    note = ""
    if directory and _says_resplit(directory):
        note = "CIFAR-100 re-split copy from ../shared (seeded re-split of the official images)"
    val_images = val_labels = None
    if val is not None:
        val_images, val_labels = InMemoryImages(train_images[val]), train_labels[val]
    return LongTailData(InMemoryImages(train_images[keep]), train_labels[keep], InMemoryImages(test_images),
                        test_labels, cifar.NUM_CLASSES, note, val_images=val_images, val_labels=val_labels)


def make_source(name: str, split: str, data_config):
    """The random-access source of one split of a 224-px benchmark."""
    spec = BENCHMARKS[name]
    if data_config.source == "tfds":
        if spec["tfds"] is None:
            raise ValueError(f"{name} has no TFDS builder: use --config.data.source=list with "
                             f"--config.data.list_dir and --config.data.root (README, 'Datasets')")
        return sources.TfdsSource(spec["tfds"], spec["tfds_splits"][split], data_config.tfds_data_dir)
    if data_config.source == "list":
        if not data_config.list_dir or not data_config.root:
            raise ValueError(f"data.source=list needs --config.data.list_dir (the folder holding "
                             f"{spec['lists'][split]}) and --config.data.root (the image folder)")
        return sources.ListFolderSource(os.path.join(data_config.list_dir, spec["lists"][split]),
                                        data_config.root, check_files=data_config.check_files,
                                        allow_outside_root=data_config.allow_outside_root)
    raise ValueError(f"unknown data.source {data_config.source!r}; choose 'tfds' or 'list'")


def load_streaming(name: str, data_config) -> LongTailData:
    spec = BENCHMARKS[name]
    splits = spec["tfds_splits"] or spec["lists"]
    split_sources = {split: make_source(name, split, data_config) for split in splits}
    for source in split_sources.values():
        if len(source.labels) and source.labels.max() >= spec["num_classes"]:
            raise ValueError(f"{source}: label {source.labels.max()} is out of range for "
                             f"{spec['num_classes']} classes")
    tables = streaming_tables(split_sources, data_config)
    labels = {split: source.labels for split, source in split_sources.items()}
    return LongTailData(tables["train"], labels["train"], tables["test"], labels["test"], spec["num_classes"],
                        val_images=tables.get("val"), val_labels=labels.get("val"))
