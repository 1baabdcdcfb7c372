"""Everything that touches Orbax: one CheckpointManager per training phase.

Each checkpoint holds two items: `state` (the TrainState pytree) and `meta`
(JSON: class ranking, split point, memory bank, config, elapsed wall time).
Orbax writes each step into a temporary directory and renames it when
complete, so a process killed mid-write leaves the previous step intact and
`latest_step` never returns a half-written one.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging


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

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

