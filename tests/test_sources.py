"""Split-list and TFDS sources: records, labels, and the errors a user meets first."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from asyncjax.data import sources, transforms
from tests.helpers import write_jpeg_folder


def test_list_source_reads_records(tmp_path):
    path = write_jpeg_folder(tmp_path / "images", tmp_path / "lists", "Places_LT_train.txt")
    source = sources.ListFolderSource(path, str(tmp_path / "images"))
    assert len(source) == 12
    np.testing.assert_array_equal(source.labels, np.arange(12) % 5)
    record = source[7]
    assert isinstance(record["image"], bytes) and record["label"] == 2
    image = np.asarray(transforms.decode(record["image"]))
    assert image.shape == (64, 48, 3) and image.dtype == np.uint8


def _rewrite_line(path, number, text):
    lines = open(path).read().splitlines()
    lines[number - 1] = text
    open(path, "w").write("\n".join(lines) + "\n")


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_jpeg_folder(tmp_path / "images", tmp_path / "lists", "Places_LT_val.txt")
    _rewrite_line(path, 4, "class_3/img_3.jpg three")
    with pytest.raises(ValueError, match=r"Places_LT_val.txt:4: expected 'relative/path.jpg label'"):
        sources.ListFolderSource(path, str(tmp_path / "images"))
    _rewrite_line(path, 4, "class_3/img_3.jpg -3")
    with pytest.raises(ValueError, match=r"Places_LT_val.txt:4: negative label"):
        sources.ListFolderSource(path, str(tmp_path / "images"))


@pytest.mark.parametrize("line,message", [
    ("../../etc/passwd 0", r"Places_LT_val.txt:4: '../../etc/passwd' is outside --config.data.root"),
    ("/etc/passwd 0", r"Places_LT_val.txt:4: '/etc/passwd' is outside --config.data.root"),
    ("class_3/../../x.jpg 0", r"Places_LT_val.txt:4: 'class_3/../../x.jpg' is outside"),
    ("class_3/img_3.jpg 99999999999", r"Places_LT_val.txt:4: label 99999999999 is above 1,000,000"),
])
def test_hostile_list_lines_are_refused_naming_the_line(tmp_path, line, message):
    path = write_jpeg_folder(tmp_path / "images", tmp_path / "lists", "Places_LT_val.txt")
    _rewrite_line(path, 4, line)
    with pytest.raises(ValueError, match=message):
        sources.ListFolderSource(path, str(tmp_path / "images"))


def test_paths_with_spaces_outside_root_on_request_and_non_utf8_lists(tmp_path):
    images = tmp_path / "images"
    path = write_jpeg_folder(images, tmp_path / "lists", "Places_LT_val.txt")
    os.rename(images / "class_3" / "img_3.jpg", images / "class_3" / "img 3 copy.jpg")
    _rewrite_line(path, 4, "class_3/img 3 copy.jpg 3")  # The label is the last field.
    source = sources.ListFolderSource(path, str(images))
    assert source.paths[3].endswith("class_3/img 3 copy.jpg") and source.labels[3] == 3
    outside = tmp_path / "elsewhere.jpg"
    os.rename(images / "class_4" / "img_4.jpg", outside)
    _rewrite_line(path, 5, f"{outside} 4")  # Absolute: accepted only when asked for.
    with pytest.raises(ValueError, match="is outside"):
        sources.ListFolderSource(path, str(images))
    assert sources.ListFolderSource(path, str(images), allow_outside_root=True).paths[4] == str(outside)
    with open(path, "ab") as f:
        f.write(b"class_0/caf\xe9.jpg 0\n")  # Latin-1, not UTF-8.
    with pytest.raises(ValueError, match=r"Places_LT_val.txt: not UTF-8 text \(invalid continuation byte"):
        sources.ListFolderSource(path, str(images), allow_outside_root=True)


def test_missing_image_and_missing_list(tmp_path):
    path = write_jpeg_folder(tmp_path / "images", tmp_path / "lists", "iNaturalist18_train.txt")
    os.remove(tmp_path / "images" / "class_1" / "img_6.jpg")
    with pytest.raises(FileNotFoundError, match=r"iNaturalist18_train.txt:7: image .*img_6.jpg does not exist"):
        sources.ListFolderSource(path, str(tmp_path / "images"))
    with pytest.raises(FileNotFoundError, match=r"ImageNet_LT_test.txt not found.*OpenLongTailRecognition"):
        sources.ListFolderSource(str(tmp_path / "lists" / "ImageNet_LT_test.txt"), str(tmp_path / "images"))


def test_wrong_checksum_is_refused(tmp_path):
    # ImageNet_LT_val.txt has a published SHA-256 (TFDS); a generated list cannot match it.
    path = write_jpeg_folder(tmp_path / "images", tmp_path / "lists", "ImageNet_LT_val.txt")
    with pytest.raises(ValueError, match=r"ImageNet_LT_val.txt: SHA-256 [0-9a-f]{64} differs from the published "
                                         "9af7ba688acf"):
        sources.ListFolderSource(path, str(tmp_path / "images"))
    source = sources.ListFolderSource(path, str(tmp_path / "images"), verify_checksum=False)
    assert len(source) == 12


@pytest.mark.parametrize("name,split,num_classes", [("imagenet_lt", "validation", 1000),
                                                    ("i_naturalist2018", "train", 8142)])
def test_tfds_source_under_mock_data(name, split, num_classes):
    with tfds.testing.mock_data(num_examples=7):
        source = sources.TfdsSource(name, split)
        assert len(source) == 7 and source.labels.shape == (7,)
        assert ((source.labels >= 0) & (source.labels < num_classes)).all()
        record = source[3]
        assert record["label"] == source.labels[3]
        assert record["image"].dtype == np.uint8 and record["image"].ndim == 3
        assert transforms.eval_transform(record["image"]).shape == (224, 224, 3)


def test_tfds_source_not_prepared_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not prepared in .*tfds build"):
        sources.TfdsSource("imagenet_lt", "train", data_dir=str(tmp_path))


def test_real_tfds_builders_load_and_an_unprepared_dataset_is_one_line(tmp_path):
    """Not under mock data: tfds's real builder code runs (it imports importlib_resources, which a
    fresh install lacked), and an unprepared dataset is the project's one-line message."""
    for name in ("imagenet_lt", "i_naturalist2018", "cifar100"):
        builder = tfds.builder(name, data_dir=str(tmp_path / "empty"))
        assert builder.info.features["label"].num_classes in (1000, 8142, 100)
        assert builder.code_path.exists()  # What download_and_prepare reads first; needs importlib_resources.
    with pytest.raises(FileNotFoundError, match="is not prepared in") as caught:
        sources.TfdsSource("imagenet_lt", "train", data_dir=str(tmp_path / "empty"))
    assert not isinstance(caught.value.__cause__, ImportError), caught.value.__cause__


def test_tfds_labels_come_from_real_array_record_files_without_decoding(tmp_path, monkeypatch):
    """A TFDS dataset prepared here in array_record (not mock data): the labels read from the
    serialized records equal the decoded examples', and no image is decoded to get them."""
    import importlib
    import sys
    module = tmp_path / "tiny_lt_for_tests.py"
    module.write_text('''import numpy as np
import tensorflow_datasets as tfds


class TinyLtForTests(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            # A uint8 tensor: encoding an Image feature would need TensorFlow to prepare.
            "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=7)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(40)}

    def _generate_examples(self, n):
        rng = np.random.default_rng(0)
        for i in range(n):
            yield i, {"image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "label": int(rng.integers(7))}
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    builder_module = importlib.import_module("tiny_lt_for_tests")
    data_dir = str(tmp_path / "data")
    builder_module.TinyLtForTests(data_dir=data_dir, file_format="array_record").download_and_prepare()
    decoded = [int(r["label"]) for r in tfds.data_source("tiny_lt_for_tests", split="train", data_dir=data_dir)]
    source = sources.TfdsSource("tiny_lt_for_tests", "train", data_dir=data_dir)
    calls = []
    original = source.source.__class__.__getitem__
    decoding = source.source  # Count reads through the decoding source only (raw ones share its class).
    monkeypatch.setattr(decoding.__class__, "__getitem__",
                        lambda self, i: (calls.append(i) if self is decoding else None) or original(self, i))
    again = source._read_labels(tfds, data_dir)
    assert not calls  # The decoding source was not used to read labels.
    np.testing.assert_array_equal(source.labels, decoded)
    np.testing.assert_array_equal(again, decoded)
    assert len(set(decoded)) > 3 and source[5]["image"].shape == (8, 8, 3)
    sys.modules.pop("tiny_lt_for_tests", None)
