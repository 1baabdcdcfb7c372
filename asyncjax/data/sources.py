"""Random-access sources of (image, label) records for the 224-px benchmarks.

Each source is a grain `RandomAccessDataSource` (`__len__`, `__getitem__`) whose
records are `{"image": ..., "label": int}`, plus a `labels` array read once up
front (the samplers need every label, not every image). The image is either
encoded bytes (list-over-folder sources) or a decoded uint8 array (TFDS sources
decode inside `__getitem__`); both are decoded in grain's worker processes, never
in the training process, because the pipeline calls `source[i]` there.

Sources:
- `ListFolderSource`: the split lists that the long-tailed literature ships
  (`ImageNet_LT_train.txt`, `Places_LT_val.txt`, `iNaturalist18_train.txt`; lines
  `relative/path.jpg label`) over a folder of images.
- `TfdsSource`: a prepared TFDS dataset (`imagenet_lt`, `i_naturalist2018`) through
  `tfds.data_source`, which reads array_record files without TensorFlow.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

# Where each split list comes from, and its SHA-256 where a maintained project
# publishes one (TFDS's url_checksums for imagenet_lt). Lists without a published
# checksum are only checked for format and for the files they name.
LIST_FILES = {
    "ImageNet_LT_train.txt": "efdbdad4f050237c310b2f354cf95a8b1d7c8d57a63c4ea4bb6bf2bcb012f37f",
    "ImageNet_LT_val.txt": "9af7ba688acf9532ff5845a8fb14a1e97fdc4c51ac48bc72c08ea9c3f7ff142e",
    "ImageNet_LT_test.txt": None,
    "Places_LT_train.txt": None,
    "Places_LT_val.txt": None,
    "Places_LT_test.txt": None,
    "iNaturalist18_train.txt": None,
    "iNaturalist18_val.txt": None,
}
LIST_SOURCE = ("the OLTR release (Liu et al., 2019; github.com/zhmiao/OpenLongTailRecognition-OLTR, "
               "'Data' section), also mirrored by the decoupling code (github.com/facebookresearch/classifier-balancing)")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Labels are class ids from 0: anything this large is a typo or a hostile list, refused before
# an array of that many classes is sized by it (iNaturalist 2021 has 10,000 classes).
MAX_LABEL = 1_000_000


def _inside(root: str, relative: str) -> bool:
    """`relative` names a file under `root` (lexically: no absolute path, no '..' climbing out;
    images symlinked from elsewhere into root stay allowed)."""
    if os.path.isabs(relative):
        return False
    normal = os.path.normpath(relative)
    return normal != ".." and not normal.startswith(".." + os.sep)


def read_split_list(list_path: str, root: str, check_files: bool = True, verify_checksum: bool = True,
                    allow_outside_root: bool = False) -> tuple[list[str], np.ndarray]:
    """Parses a `path label` split list (the label is the last field, so paths may hold spaces);
    returns (absolute image paths, labels).

    Every problem names the file and, where there is one, the line: a missing list (with where to
    get it), a checksum that differs from the published one, text that is not UTF-8, a malformed
    line, a negative label or one above MAX_LABEL, a path outside `root` (absolute, or climbing out
    with '..'; `allow_outside_root` accepts it), or an image the list names that does not exist.
    """
    name = os.path.basename(list_path)
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"split list {list_path} not found: download {name} from {LIST_SOURCE} "
                                f"and pass its folder as --config.data.list_dir")
    expected = LIST_FILES.get(name)
    if verify_checksum and expected is not None:
        actual = sha256_of(list_path)
        if actual != expected:
            raise ValueError(f"{list_path}: SHA-256 {actual} differs from the published {expected} "
                             f"(TFDS url_checksums for {name}); the file is corrupt or another version")
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{list_path}: not UTF-8 text ({e.reason} at byte {e.start}): a split list is "
                         "'relative/path label' lines in UTF-8") from None
    paths, labels = [], []
    for line_number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        parts = text.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{list_path}:{line_number}: expected 'relative/path.jpg label', got {text!r}")
        relative, label = parts[0], int(parts[1])
        if label < 0:
            raise ValueError(f"{list_path}:{line_number}: negative label {label}")
        if label > MAX_LABEL:
            raise ValueError(f"{list_path}:{line_number}: label {label} is above {MAX_LABEL:,} "
                             "(labels are class ids 0..C-1)")
        if not allow_outside_root and not _inside(root, relative):
            raise ValueError(f"{list_path}:{line_number}: {relative!r} is outside --config.data.root ({root}); "
                             "paths are relative to it (--config.data.allow_outside_root=True to accept)")
        path = os.path.join(root, relative)
        if check_files and not os.path.isfile(path):
            raise FileNotFoundError(f"{list_path}:{line_number}: image {path} does not exist "
                                    f"(is --config.data.root the folder the list's paths are relative to?)")
        paths.append(path)
        labels.append(label)
    if not paths:
        raise ValueError(f"{list_path}: the split list is empty")
    return paths, np.asarray(labels, np.int64)


class ListFolderSource:
    """Records of a split list over an image folder; images stay encoded bytes."""

    def __init__(self, list_path: str, root: str, check_files: bool = True, verify_checksum: bool = True,
                 allow_outside_root: bool = False):
        self.list_path = list_path
        self.paths, self.labels = read_split_list(list_path, root, check_files, verify_checksum, allow_outside_root)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        with open(self.paths[index], "rb") as f:
            return {"image": f.read(), "label": int(self.labels[index]), "path": self.paths[index]}

    def __repr__(self):
        return f"ListFolderSource({self.list_path!r}, {len(self)} images)"


class TfdsSource:
    """Records of a prepared TFDS split, read with `tfds.data_source` (array_record, no TensorFlow)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        import tensorflow_datasets as tfds  # Only the 224-px TFDS sources need it at import.
        try:
            self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # TFDS raises several types for "not prepared"; say what to run.
            raise FileNotFoundError(
                f"TFDS dataset {name} (split {split}) is not prepared in {data_dir or '~/tensorflow_datasets'}: "
                f"see the README's 'Datasets' section for the one `tfds build` command") from e
        self.name, self.split = name, split
        self.labels = self._read_labels(tfds, data_dir)

    def _read_labels(self, tfds, data_dir) -> np.ndarray:
        """All labels in one pass over the serialized records, images left undecoded: each record's
        tf.train.Example is parsed with the protobuf class TFDS ships (no TensorFlow needed, and the
        same with TensorFlow installed; TFDS's own DESERIALIZE_NO_DECODE needs TensorFlow)."""
        from tensorflow_datasets.proto import tf_example_pb2
        try:
            raw = tfds.data_source(self.name, split=self.split, data_dir=data_dir, download=False,
                                   deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
            first = raw[0] if len(raw) else b""
        except Exception:  # tfds.testing.mock_data serves decoded examples only: read them.
            return np.asarray([int(self.source[i]["label"]) for i in range(len(self.source))], np.int64)
        if not isinstance(first, (bytes, memoryview)):
            return np.asarray([int(self.source[i]["label"]) for i in range(len(self.source))], np.int64)
        return np.asarray([tf_example_pb2.Example.FromString(raw[i]).features.feature["label"].int64_list.value[0]
                           for i in range(len(raw))], np.int64)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = self.source[index]   # Decodes the image here, i.e. in the grain worker.
        return {"image": np.asarray(record["image"]), "label": int(record["label"])}

    def __repr__(self):
        return f"TfdsSource({self.name!r}, {self.split!r}, {len(self)} images)"
