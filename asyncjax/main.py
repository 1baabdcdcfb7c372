"""Command line: python -m asyncjax.main --config=configs/cifar100_lt.py --workdir=DIR

Runs phase I, the memory bank, phase II and the evaluation (or the plain joint
baseline with --config.method=plain), resuming whatever DIR already holds.
Any config value can be overridden: --config.phase1.epochs=5.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from asyncjax import config_utils

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar100_lt.py:imbalance=100.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.json.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with the cluster's "
                  "auto-detected settings (TPU pods, SLURM).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a hand-made cluster.")
flags.DEFINE_integer("num_processes", None, "Processes in a hand-made cluster.")
flags.DEFINE_integer("process_id", None, "This process's index in a hand-made cluster.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint file at INFO.
    FLAGS = flags.FLAGS
    if FLAGS.coordinator_address:
        # Processes on CPUs need a collectives backend to sum gradients across processes
        # (this setting only concerns the CPU backend).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.multihost:
        jax.distributed.initialize()
    from asyncjax import train  # After the flags: importing jax-heavy modules is slow.
    try:
        train.run(flags.FLAGS.config, flags.FLAGS.workdir)
    except train.Interrupted as e:
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(3)
    except (ValueError, FileNotFoundError, train.TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def check_overrides(argv) -> None:
    """Rejects unknown --config.* keys, values of the wrong type and bad config-file
    arguments with a one-line message, before absl's flag parser turns them into a traceback."""
    specs = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not specs:
        return
    try:
        config_utils.apply_overrides(config_utils.load_config_file(specs[-1]), [a for a in argv if a.startswith("--config.")])
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    app.run(main)
