"""Everything that touches Orbax: one CheckpointManager per training phase.

Each checkpoint holds two items: `state` (the TrainState pytree) and `meta`
(JSON: class ranking, split point, memory bank, config, elapsed wall time).
Orbax writes each step into a temporary directory and renames it when
complete, so a process killed mid-write leaves the previous step intact and
`latest_step` never returns a half-written one. A step damaged afterwards (a disk
fault, a file cut short) is set aside by the loop, which resumes from the one before.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class PhaseCheckpoints:
    def __init__(self, directory: str, keep: int = 2, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
        level = logging.get_verbosity()
        if read_only:  # Orbax warns "Given directory is read only" on every read-only open: as asked.
            logging.set_verbosity(logging.ERROR)
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
        finally:
            logging.set_verbosity(level)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def set_aside(self, step: int) -> str:
        """Renames a step that cannot be restored to `<step>.damaged` (kept to look at, no longer a
        step: the previous one becomes the latest, and the step can be written again)."""
        source = os.path.join(self.directory, str(step))
        target = f"{source}.damaged"
        if jax.process_index() == 0:
            suffix = 1
            while os.path.exists(target):  # Damaged twice: keep both.
                target, suffix = f"{source}.damaged{suffix}", suffix + 1
            os.rename(source, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set_aside_{step}")
        self._manager.reload()
        return target

    def save(self, step: int, state, meta: dict) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, abstract_state=None):
        """(state, meta) of `step`. With `abstract_state` (ShapeDtypeStructs with
        shardings: sharding.abstract) arrays are placed as it says; without, every array comes to this
        process's first device, whatever topology wrote the checkpoint (for export)."""
        if abstract_state is None:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            abstract_state = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                          self._manager.item_metadata(step)["state"])
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def read_meta(self, step: int) -> dict:
        """The `meta` item of `step` alone (no arrays are read)."""
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

