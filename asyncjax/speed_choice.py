"""CPU speed choices decided by measurement on the machine that runs, not assumed.

XLA:CPU's fastest form of the convolution weight gradient differs between CPUs: the per-tap
matrix products of models/conv.py were 1.35x faster than XLA's own on an AMD EPYC (Zen 4),
and 1.57x slower on an Intel Xeon (Sapphire Rapids) (benchmarks/README.md). So
`model.conv_weight_grad=auto` times both forms of the model's own forward and backward pass,
at the run's per-device batch on the run's devices, and keeps the faster. The verdict is
cached per CPU model, JAX version, backbone, batch, image size, dtype and device count in a
JSON file beside the compilation cache, so each machine pays the trial (seconds for the
ResNet-8 of smoke runs, about a minute for ResNet-32) once. GPUs and TPUs always take XLA's own
(cuDNN, TPU convolutions): the per-tap form exists for XLA:CPU alone.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from asyncjax import files, hardware, sharding
from asyncjax.models import make_backbone
from asyncjax.models.conv import CONV_WEIGHT_GRADS, conv_for

CACHE_NAME = "asyncjax_speed_choices.json"
FORMS = ("taps", "xla")


def cache_path(compilation_cache_dir: str | None) -> str | None:
    """The verdicts' file: beside the compilation cache (None: the cache is off, so is this file)."""
    if not compilation_cache_dir:
        return None
    directory = os.path.dirname(os.path.abspath(os.path.expanduser(compilation_cache_dir.rstrip("/"))))
    return os.path.join(directory, CACHE_NAME)


def trial_key(backbone: str, batch_size: int, image_size: int, dtype: str, devices: int) -> str:
    return (f"{hardware.cpu_model()} | jax {jax.__version__} | {backbone} | batch {batch_size} | "
            f"{image_size}px | {dtype} | {devices} devices")


def time_forms(backbone: str, batch_size: int, image_size: int, dtype: str, mesh, rounds: int = 3) -> dict:
    """Images/s of the backbone's forward + backward pass (BatchNorm in training mode) for each
    weight-gradient form, on `mesh` with the batch sharded over `data`; the forms alternate
    (A B A B ...) so that a noisy neighbour slows both, and each keeps its fastest round."""
    compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    data = np.random.default_rng(0).normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    # Every process builds the same global batch and keeps its own devices' rows.
    images = jax.make_array_from_callback(data.shape, sharding.batch_sharding(mesh), lambda index: data[index])
    runners: dict[str, Callable[[], None]] = {}
    for form in FORMS:
        model = make_backbone(backbone, compute, conv_for(form))
        variables = jax.jit(lambda x, model=model: model.init(jax.random.key(0), x[:1], train=False),
                            out_shardings=sharding.replicated(mesh))(images)

        def loss(params, batch_stats, x, model=model):
            features, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                      mutable=["batch_stats"])
            return jnp.sum(jnp.square(features.astype(jnp.float32)))

        grad = jax.jit(jax.grad(loss))
        grad(variables["params"], variables["batch_stats"], images)  # Compile (not timed).
        runners[form] = lambda grad=grad, v=variables: jax.block_until_ready(
            grad(v["params"], v["batch_stats"], images))
    best = {form: float("inf") for form in FORMS}
    for _ in range(rounds):
        for form, run in runners.items():
            start = time.perf_counter()
            run()
            best[form] = min(best[form], time.perf_counter() - start)
    return {form: batch_size / seconds for form, seconds in best.items()}


def _agree_across_processes(choice: str) -> str:
    """Every process must compile the same program: process 0's verdict wins."""
    if jax.process_count() == 1:
        return choice
    from jax.experimental import multihost_utils
    index = multihost_utils.broadcast_one_to_all(np.int32(FORMS.index(choice)))
    return FORMS[int(index)]


def resolve_conv_weight_grad(choice: str, *, backbone: str, batch_size: int, image_size: int, dtype: str,
                             mesh, compilation_cache_dir: str | None, log: Callable[[str], None] = print) -> str:
    """`taps` or `xla` for model.conv_weight_grad = `choice` (see the module docstring)."""
    if choice not in CONV_WEIGHT_GRADS:
        raise ValueError(f"model.conv_weight_grad must be one of {CONV_WEIGHT_GRADS}, got {choice!r}")
    if choice != "auto":
        return choice
    if sharding.platform(mesh) != "cpu":  # The mesh's platform, not the host's: compile_check
        return "xla"                      # builds TPU programs on a CPU host.
    devices = sharding.data_size(mesh)
    key = trial_key(backbone, batch_size, image_size, dtype, devices)
    path = cache_path(compilation_cache_dir)
    verdicts = _read(path)
    if key in verdicts:
        verdict = verdicts[key]
        rates = verdict["img_s"]
        source = f"measured {verdict['when']}, cached in {path}"
    else:
        rates = time_forms(backbone, batch_size, image_size, dtype, mesh)
        verdict = {"choice": max(rates, key=rates.get), "img_s": {k: round(v, 1) for k, v in rates.items()},
                   "when": time.strftime("%Y-%m-%d %H:%M")}
        if path and jax.process_index() == 0:
            verdicts[key] = verdict
            _write(path, verdicts)
        source = "measured now" + (f", cached in {path}" if path else "")
    chosen = _agree_across_processes(verdict["choice"])
    other = FORMS[1 - FORMS.index(chosen)]
    log(f"conv weight gradient: {chosen}, {rates[chosen]:.1f} vs {rates[other]:.1f} img/s ({other}) "
        f"forward+backward on {hardware.cpu_model()}, {devices} device(s), batch {batch_size} ({source})")
    return chosen


def _read(path: str | None) -> dict:
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            verdicts = json.load(f)
        return verdicts if isinstance(verdicts, dict) else {}
    except (OSError, ValueError):
        return {}  # A damaged cache costs one trial, never a run.


def _write(path: str, verdicts: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        files.write_json(path, verdicts)  # Atomic: concurrent runs never read half a file.
    except OSError:
        pass  # A read-only home costs a trial per run, nothing else.
