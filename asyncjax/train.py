"""A training run from top to bottom: set up, the method's runner, results.

    run(config, workdir)
      -> setup.build          checks, data, mesh, the workdir's identity          (setup.py, checks.py)
      -> the method's runner  its phases, each through loop.train_phase           (methods/)
                              async: phase I -> memory bank -> phase II           (methods/dual_phase.py)
                              others: joint phase [-> classifier]                 (methods/joint.py)
      -> results.json         overall / many / medium / few of the final model    (evaluate.py)

    dry_run(config, workdir)  the same checks, the phases' sizes and a time estimate; writes nothing

Workdir layout: config.json, checkpoints/{phase1,phase2,joint,classifier}/ (Orbax, one folder per
phase the method trains), memory_bank.npz (async), metrics.jsonl, log.txt, tensorboard/,
results.json. Re-running the same command resumes whatever the workdir holds.
"""
from __future__ import annotations

import datetime
import json
import os
import time

import jax
import ml_collections
import numpy as np

from asyncjax import evaluate, files, hardware, loop, setup, sharding
from asyncjax.data import longtail
from asyncjax.methods import dual_phase, joint


def runner_of(method: str):
    """The module that runs `method` (methods/__init__.py lists which phases each trains)."""
    return dual_phase if method == "async" else joint


def evaluator_of(ctx) -> evaluate.Evaluator:
    return evaluate.Evaluator(ctx, joint.logit_offset(ctx))


def execute(ctx: setup.Context) -> dict:
    """Runs (or resumes) the method in ctx's workdir and writes results.json; a finished workdir
    is only reported."""
    try:
        return _execute(ctx)
    finally:
        ctx.close()


def _execute(ctx: setup.Context) -> dict:
    results_path = os.path.join(ctx.workdir, "results.json")
    if os.path.exists(results_path):
        results = files.read_json(results_path)
        ctx.reporter.info(f"{ctx.workdir} is complete: {evaluate.summary(results if 'overall' in results else results['val'])}")
        return results
    method = ctx.config.method
    with loop.StopFlag() as stop, jax.set_mesh(ctx.mesh):
        results = runner_of(method).run(ctx, evaluator_of(ctx), stop)
        results["method"] = method
    read_test = ctx.test is not None
    results.update({"config": json.loads(ctx.config_json), "data_note": ctx.data.note,
                    "evaluated_on": "val" if ctx.data.test_images is ctx.data.val_images or not read_test else "test",
                    "test_read": read_test,
                    "class_names": ctx.class_names_by_row(),
                    "num_classes": ctx.split.num_classes, "devices": jax.device_count(),
                    "trained_on_s": trained_on(ctx),
                    "rank_to_class": ctx.split.rank_to_class.tolist()})
    if jax.process_index() == 0:
        files.write_json(results_path, results)
    if read_test:
        ctx.reporter.info(f"final test accuracy: {evaluate.summary(results)}"
                          + (f" [{ctx.data.note}]" if ctx.data.note else ""))
    else:
        ctx.reporter.info(f"final validation accuracy: {evaluate.summary(results['val'])} (read_test=False: "
                          "the test split was not read)")
    return results


def trained_on(ctx) -> dict:
    """{machine: seconds} over the phases this run trained or took from another workdir
    (phase1_from, joint_from): which CPU or card produced the figures."""
    return {name: round(s, 1) for name, s in hardware.total_seconds(ctx.trained_on.values()).items()}


def use_compilation_cache(path: str) -> str | None:
    """Points JAX's persistent compilation cache at `path` (unless the environment already chose
    one, or `path` is ""); returns the directory in use."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    if not path:
        return None
    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    use_compilation_cache(config.compilation_cache_dir)
    return execute(setup.build(config, workdir))


def dry_run(config: ml_collections.ConfigDict, workdir: str, timed_steps: int = 3) -> dict:
    """Validates everything a run would (config, data, workdir identity, init_from, phase1_from),
    prints the resolved configuration, the data, the steps of each phase and an estimate of the
    time from a few timed steps of the first phase on this machine, and writes nothing there."""
    use_compilation_cache(config.compilation_cache_dir)
    ctx = setup.build(config, workdir, dry_run=True)  # Refuses what the run would refuse.
    print(ctx.config)
    split, counts = ctx.split, ctx.counts
    groups = {name: int(mask.sum()) for name, mask in longtail.shot_groups(counts).items()}
    print(f"data: {ctx.config.dataset}, {len(ctx.train_labels)} training images in {split.num_classes} classes "
          f"(largest {counts.max()}, smallest {counts.min()}; many/medium/few classes {groups}); "
          f"{split.num_head} head + {split.num_tail} tail classes; test {len(ctx.data.test_labels)} images"
          + ("" if ctx.test is not None else " (not read: read_test=False)")
          + (f"; validation {len(ctx.val.labels)} images" if ctx.val else ""))
    with jax.set_mesh(ctx.mesh):
        planned = runner_of(ctx.config.method).plan(ctx)
        rate = _images_per_second(ctx, *planned[0], timed_steps)
    plan, total = {}, 0.0
    for spec, built in planned:
        phase = {"images": len(spec.rows), "steps": built.total_steps, "batch": built.recipe.batch_size}
        phase["estimated_s"] = phase["steps"] * phase["batch"] / rate
        total += phase["estimated_s"]
        plan[spec.name] = phase
        print(f"{spec.name}: {phase['images']} images, {phase['steps']} steps of batch {phase['batch']}, "
              f"estimated {datetime.timedelta(seconds=int(phase['estimated_s']))}")
    print(f"estimated total {datetime.timedelta(seconds=int(total))} at {rate:.0f} img/s (the first phase's "
          f"step, timed here on {jax.device_count()} {jax.devices()[0].platform} device(s); evaluation and the "
          f"memory bank not included; phase II's step costs about 1.1-1.2x phase I's); nothing was written "
          f"to {workdir}")
    return {"phases": plan, "images_per_second": rate}


def _images_per_second(ctx, spec, built, timed_steps: int) -> float:
    """A few timed steps of a phase's own train step on one batch (compilation excluded)."""
    batch_size = built.recipe.batch_size
    state = built.init(*spec.init_inputs)
    local_rows = sharding.process_slice(np.arange(batch_size) % len(ctx.train_labels), ctx.mesh)
    local = {"images": next(iter(ctx.data.train_images.batches([local_rows], training=True))),
             "labels": np.minimum(ctx.train_labels[local_rows], built.model.head.num_classes - 1)}
    batch = sharding.global_batch(local, ctx.mesh, batch_size)
    state, metrics = built.train_step(state, batch, ctx.rng)   # Compiles.
    jax.block_until_ready(metrics)
    started = time.perf_counter()
    for _ in range(timed_steps):
        state, metrics = built.train_step(state, batch, ctx.rng)
    jax.block_until_ready(metrics)
    return timed_steps * batch_size / (time.perf_counter() - started)
