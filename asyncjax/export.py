"""Command line: python -m asyncjax.export --workdir=DIR --output=model.npz

Writes the latest checkpoint's parameters and BatchNorm statistics as a flat
numpy archive: names joined with '/', e.g. `params/backbone/conv1/kernel`,
`batch_stats/backbone/bn1/mean`, plus `class_ids` (output row -> original class
id), `step` and `config` (the run's configuration, JSON text; `asyncjax.predict
--model` reads it), and, where the run knew them, `class_names` (by output row) and
`image_shape` (the training images' H, W, C), and `logit_offset` ([C], by output row) where
the final model's logits are corrected after training (calibration.kind, method=logit_adjustment:
add it to the logits before the softmax or argmax). Read it back with np.load(path, allow_pickle=False). The final phase is
exported (phase II; or cRT's re-trained classifier; or the joint phase of the
other baselines); --phase=phase1 exports the phase-I model.
"""
from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from asyncjax import calibration, files
from asyncjax.archive import flatten
from asyncjax.methods import FINAL_FIRST


def define_flags():
    """Defined only when run as a program: asyncjax.predict imports latest_model from here."""
    flags.DEFINE_string("workdir", None, "Workdir of a run of asyncjax.main.")
    flags.DEFINE_string("output", None, "Path of the .npz archive to write.")
    flags.DEFINE_enum("phase", None, list(reversed(FINAL_FIRST)),
                      "Phase to export; default: the last phase that has a checkpoint.")
    flags.mark_flags_as_required(["workdir", "output"])



def phase_directories(workdir: str) -> dict[str, str]:
    """{phase: its checkpoints' folder} of a workdir: its own, and the joint phase it took from
    another workdir (joint_from) where it trained none."""
    root = os.path.join(workdir, "checkpoints")
    directories = {p: os.path.join(root, p) for p in FINAL_FIRST if os.path.isdir(os.path.join(root, p))}
    config_path = os.path.join(workdir, "config.json")
    source = files.read_json(config_path).get("joint_from") if os.path.exists(config_path) else ""
    if source and "joint" not in directories and os.path.isdir(os.path.join(source, "checkpoints", "joint")):
        directories["joint"] = os.path.join(source, "checkpoints", "joint")
    return directories


def latest_model(workdir: str, phase: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """(phase name, flat arrays) of the latest checkpoint of `phase` (default: the most final
    phase that has one): parameters, BatchNorm statistics, `class_ids`, `step` and `config` (the
    run's configuration as a JSON string)."""
    from asyncjax import checkpointing

    directories = phase_directories(workdir)
    candidates = [phase] if phase else [p for p in FINAL_FIRST if p in directories]
    for name in candidates:
        directory = directories.get(name)
        if directory is None:
            continue
        ckpt = checkpointing.PhaseCheckpoints(directory, read_only=True)
        step = ckpt.latest_step()
        if step is None:
            continue
        state, meta = ckpt.restore(step)
        ckpt.close()
        arrays = flatten({"params": state["params"], "batch_stats": state["batch_stats"]})
        width = next(v.shape[-1] for k, v in arrays.items() if k.startswith("params/head/") and k.endswith("kernel"))
        num_outputs = min(width, meta["num_head"] if name == "phase1" else len(meta["rank_to_class"]))
        if width > num_outputs:  # A head padded for the mesh's model axis: its real columns only.
            arrays.update({k: v[..., :num_outputs] for k, v in arrays.items()
                           if k.startswith("params/head/") and v.ndim and v.shape[-1] == width})
        arrays["class_ids"] = np.asarray(meta["rank_to_class"], np.int64)[:num_outputs]
        arrays["step"] = np.asarray(step, np.int64)
        arrays["config"] = np.asarray(meta["config"])  # A unicode string: no pickle needed to read it.
        if meta.get("class_names"):  # By output row, beside class_ids (custom data).
            arrays["class_names"] = np.asarray([meta["class_names"][c] for c in arrays["class_ids"]])
        if meta.get("image_shape"):
            arrays["image_shape"] = np.asarray(meta["image_shape"], np.int64)
        saved = calibration.load(workdir)
        final = next(p for p in FINAL_FIRST if p in directories)
        if saved and name == final:  # The final model's post-hoc offset (calibration.py), by output row.
            arrays["logit_offset"] = np.asarray(saved["offset"], np.float32)
        return name, arrays
    raise FileNotFoundError(f"no checkpoint to export in {workdir!r}"
                            + (f" for phase {phase}" if phase else "") + " (expected checkpoints/<phase>/<step>)")


def export(workdir: str, output: str, phase: str | None = None) -> dict[str, np.ndarray]:
    name, arrays = latest_model(workdir, phase)
    files.save_npz(output, **arrays)
    print(f"exported {name} step {int(arrays['step'])} ({len(arrays)} arrays, {len(arrays['class_ids'])} classes) "
          f"to {output}")
    return arrays


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    export(flags.FLAGS.workdir, flags.FLAGS.output, flags.FLAGS.phase)  # Errors: cli.run's one line.


if __name__ == "__main__":
    from asyncjax import cli
    define_flags()
    cli.run(main, __doc__)
