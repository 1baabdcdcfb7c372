"""speed_choice.py: `model.conv_weight_grad=auto` times both forms once per machine and shape,
keeps the faster, and reads the verdict back from its cache afterwards."""
import json

import jax
import pytest

from asyncjax import sharding, speed_choice


def test_auto_is_timed_once_per_shape_then_read_from_the_cache(tmp_path, monkeypatch):
    mesh = sharding.make_mesh(1, jax.devices()[:1])
    cache = str(tmp_path / "xla")
    said = []
    shape = dict(backbone="resnet8", batch_size=2, image_size=8, dtype="float32", mesh=mesh, compilation_cache_dir=cache)
    first = speed_choice.resolve_conv_weight_grad("auto", **shape, log=said.append)
    verdicts = json.loads((tmp_path / speed_choice.CACHE_NAME).read_text())
    verdict, = verdicts.values()
    assert set(verdict["img_s"]) == set(speed_choice.FORMS) and all(v > 0 for v in verdict["img_s"].values())
    assert first == verdict["choice"] == max(verdict["img_s"], key=verdict["img_s"].get)
    assert "measured now" in said[0]

    def no_trial(*args, **kwargs):
        raise AssertionError("timed again")
    monkeypatch.setattr(speed_choice, "time_forms", no_trial)
    assert speed_choice.resolve_conv_weight_grad("auto", **shape, log=said.append) == first
    assert "cached in" in said[1]
    assert speed_choice.resolve_conv_weight_grad("taps", **shape, log=said.append) == "taps"  # Chosen: no trial.
    with pytest.raises(ValueError, match="conv_weight_grad"):
        speed_choice.resolve_conv_weight_grad("fast", **shape)
