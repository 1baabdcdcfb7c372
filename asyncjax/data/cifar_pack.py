"""CIFAR-100-LT packed small enough to travel to a lent accelerator machine, and unpacked there.

    python -m asyncjax.data.cifar_pack pack --cifar100_dir=../shared/data/cifar-100-binary \
        --output=.cifar_pack --imbalance=100
    python -m asyncjax.data.cifar_pack unpack --pack=.cifar_pack --output=data/cifar-100-binary

The binary layout is 184 MB, over the 64 MiB working tree a device call takes. A run of one
imbalance factor reads only its long-tailed subset and validation split of train.bin (about
12,800 of the 50,000 images at IF 100) and all of test.bin, so `pack` keeps those rows, losslessly
(WebP lossless mosaics of 64 x 64 images; the labels of every row in a small npz), and `unpack`
writes train.bin and test.bin in the official layout again: the kept rows byte for byte (their
SHA-256 is checked against the one `pack` recorded from the originals), the other training rows
with their labels and zero pixels. The unpacked folder's PACKED.json names the rows it holds;
`datasets.load_cifar100_lt` refuses a run that would read any other row (another imbalance
factor, seed or validation size), so zero pixels are never trained on.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

import numpy as np

from asyncjax.data.cifar import RECORD_BYTES as RECORD, read_records

TILES = 64             # A mosaic holds TILES x TILES images (2,048 x 2,048 px).
PACKED = "PACKED.json"


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def rows_used(fine_labels: np.ndarray, imbalances, val_per_class: int, subsample_seed: int = 0,
              max_count: int = 500) -> np.ndarray:
    """The training rows that runs of these imbalance factors read: each factor's long-tailed
    subset and its validation split, by the loader's own rules (data/longtail.py)."""
    from asyncjax.data import longtail
    used = []
    for imbalance in imbalances:
        counts = longtail.lt_counts(100, max_count, imbalance)
        keep = longtail.subsample_long_tail(fine_labels, counts, seed=subsample_seed)
        used += [keep, longtail.validation_split(fine_labels, keep, val_per_class, subsample_seed)]
    return np.unique(np.concatenate(used)).astype(np.int64)


def _to_mosaics(pixels: np.ndarray, directory: str, prefix: str) -> int:
    """Images (N, 3072, CHW planes) as WebP lossless mosaics `prefix_K.webp`; returns how many."""
    from PIL import Image
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    per = TILES * TILES
    count = 0
    for start in range(0, len(images), per):
        chunk = images[start:start + per]
        grid = np.zeros((per, 32, 32, 3), np.uint8)
        grid[:len(chunk)] = chunk
        grid = grid.reshape(TILES, TILES, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(TILES * 32, TILES * 32, 3)
        Image.fromarray(grid).save(os.path.join(directory, f"{prefix}_{count}.webp"), "WEBP", lossless=True,
                                   quality=100, method=4)
        count += 1
    return count


def _from_mosaics(directory: str, prefix: str, count: int, total: int) -> np.ndarray:
    from PIL import Image
    blocks = []
    for k in range(count):
        with Image.open(os.path.join(directory, f"{prefix}_{k}.webp")) as image:
            grid = np.asarray(image.convert("RGB"))
        blocks.append(grid.reshape(TILES, 32, TILES, 32, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 32, 32, 3))
    images = np.concatenate(blocks)[:total] if blocks else np.zeros((0, 32, 32, 3), np.uint8)
    return images.transpose(0, 3, 1, 2).reshape(total, 3072)


def pack(cifar100_dir: str, output: str, imbalances=(100,), val_per_class: int = 20, subsample_seed: int = 0,
         max_count: int = 500) -> dict:
    """Writes the pack for these imbalance factors into `output` (a new folder); returns its manifest."""
    if os.path.exists(output):
        raise ValueError(f"{output} exists: pack into a new folder")
    train, test = read_records(cifar100_dir, "train"), read_records(cifar100_dir, "test")
    used = rows_used(train[:, 1], imbalances, val_per_class, subsample_seed, max_count)
    os.makedirs(output)
    np.savez_compressed(os.path.join(output, "labels.npz"), train=train[:, :2], test=test[:, :2], used=used)
    manifest = {
        "imbalances": [float(i) for i in imbalances], "val_per_class": val_per_class,
        "subsample_seed": subsample_seed, "max_count": max_count,
        "train_rows": int(len(train)), "test_rows": int(len(test)), "used_rows": int(len(used)),
        "train_mosaics": _to_mosaics(train[used, 2:], output, "train"),
        "test_mosaics": _to_mosaics(test[:, 2:], output, "test"),
        # Of the original records, so that an unpacked copy is checked against the source itself.
        "sha256_used_train_records": _sha256(train[used]), "sha256_test_bin": _sha256(test),
        "source_readme": "",
    }
    readme = os.path.join(cifar100_dir, "README.md")
    if os.path.isfile(readme):
        shutil.copy(readme, os.path.join(output, "SOURCE_README.md"))
        manifest["source_readme"] = "SOURCE_README.md"
    with open(os.path.join(output, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def unpack(pack_dir: str, output: str) -> dict:
    """Writes train.bin / test.bin (official layout) and PACKED.json into `output` (a new folder),
    after checking the SHA-256 of the unpacked records against the pack's manifest."""
    if os.path.exists(output):
        raise ValueError(f"{output} exists: unpack into a new folder")
    with open(os.path.join(pack_dir, "manifest.json")) as f:
        manifest = json.load(f)
    labels = os.path.join(pack_dir, "labels.npz")
    with np.load(labels, allow_pickle=False) as saved:
        train_labels, test_labels, used = saved["train"], saved["test"], saved["used"]
    train = np.zeros((manifest["train_rows"], RECORD), np.uint8)
    train[:, :2] = train_labels
    train[used, 2:] = _from_mosaics(pack_dir, "train", manifest["train_mosaics"], len(used))
    test = np.concatenate([test_labels, _from_mosaics(pack_dir, "test", manifest["test_mosaics"],
                                                      manifest["test_rows"])], axis=1)
    for name, array, key in (("training rows", train[used], "sha256_used_train_records"),
                             ("test.bin", test, "sha256_test_bin")):
        if _sha256(array) != manifest[key]:
            raise ValueError(f"the unpacked {name} differ from the originals packed into {pack_dir} (SHA-256)")
    os.makedirs(output)
    train.tofile(os.path.join(output, "train.bin"))
    test.tofile(os.path.join(output, "test.bin"))
    np.save(os.path.join(output, "packed_rows.npy"), used)
    with open(os.path.join(output, PACKED), "w") as f:
        json.dump({k: manifest[k] for k in ("imbalances", "val_per_class", "subsample_seed", "max_count",
                                             "used_rows", "sha256_used_train_records")}, f, indent=1)
    if manifest.get("source_readme"):
        shutil.copy(os.path.join(pack_dir, manifest["source_readme"]), os.path.join(output, "README.md"))
    return manifest


def check_rows(directory: str, rows: np.ndarray) -> None:
    """Refuses rows of train.bin that an unpacked copy does not hold (their pixels are zeros)."""
    path = os.path.join(directory, PACKED)
    if not os.path.isfile(path):
        return
    rows_file = os.path.join(directory, "packed_rows.npy")
    held = np.load(rows_file, allow_pickle=False)
    missing = np.setdiff1d(rows, held)
    if len(missing):
        with open(path) as f:
            packed = json.load(f)
        raise ValueError(
            f"{directory} is a packed copy of CIFAR-100 for imbalance {packed['imbalances']}, val_per_class "
            f"{packed['val_per_class']}, subsample_seed {packed['subsample_seed']}, max_count "
            f"{packed['max_count']}: this run would read {len(missing)} training images it does not hold "
            "(pack again with this run's settings: python -m asyncjax.data.cifar_pack pack ...)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m asyncjax.data.cifar_pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="pack the rows runs of these imbalance factors read")
    packing.add_argument("--cifar100_dir", required=True)
    packing.add_argument("--output", required=True)
    packing.add_argument("--imbalance", default="100", help="comma-separated imbalance factors, e.g. 50,100,200")
    packing.add_argument("--val_per_class", type=int, default=20)
    packing.add_argument("--subsample_seed", type=int, default=0)
    unpacking = commands.add_parser("unpack", help="write train.bin / test.bin again, checked")
    unpacking.add_argument("--pack", required=True)
    unpacking.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            imbalances = [float(i) for i in args.imbalance.split(",")]
            manifest = pack(args.cifar100_dir, args.output, imbalances, args.val_per_class, args.subsample_seed)
            size = sum(os.path.getsize(os.path.join(args.output, n)) for n in os.listdir(args.output))
            print(f"packed {manifest['used_rows']:,} training rows and {manifest['test_rows']:,} test rows "
                  f"into {args.output}: {size / 2**20:.1f} MiB")
        else:
            manifest = unpack(args.pack, args.output)
            print(f"unpacked into {args.output}: {manifest['used_rows']:,} training rows and "
                  f"{manifest['test_rows']:,} test rows, SHA-256 as packed")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
