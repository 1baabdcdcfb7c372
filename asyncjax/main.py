"""Command line: python -m asyncjax.main --config=configs/cifar100_lt.py --workdir=DIR

Runs phase I, the memory bank, phase II and the evaluation (or the plain joint
baseline with --config.method=plain), resuming whatever DIR already holds.
Any config value can be overridden: --config.phase1.epochs=5.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from asyncjax import cli, config_utils

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar100_lt.py:imbalance=100.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.json.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with the cluster's "
                  "auto-detected settings (TPU pods, SLURM).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a hand-made cluster.")
flags.DEFINE_integer("num_processes", None, "Processes in a hand-made cluster.")
flags.DEFINE_integer("process_id", None, "This process's index in a hand-made cluster.")
flags.DEFINE_bool("dry_run", False, "Validate everything, print the resolved config, the data, the steps of "
                  "each phase and an estimated time from a few timed steps here; write nothing, exit 0.")
flags.mark_flags_as_required(["workdir"])


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
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as e:  # No cluster environment detected.
            raise ValueError(f"--multihost found no cluster to join ({str(e).splitlines()[0]}); on one machine "
                             "leave it out, or pass --coordinator_address --num_processes --process_id") from e
    from asyncjax import train  # After the flags: importing jax-heavy modules is slow.
    if FLAGS.dry_run:
        train.dry_run(flags.FLAGS.config, flags.FLAGS.workdir)
    else:
        train.run(flags.FLAGS.config, flags.FLAGS.workdir)


def check_overrides(argv) -> None:
    """Rejects a missing --config, unknown --config.* keys, values of the wrong type and bad
    config-file arguments with a one-line message (exit 2), before absl's flag parser turns them
    into a traceback."""
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
        return
    specs = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not specs:
        cli.fail("--config=FILE is required, e.g. --config=configs/cifar100_lt.py:smoke=True (see --help)")
    try:
        config_utils.apply_overrides(config_utils.load_config_file(specs[-1]), [a for a in argv if a.startswith("--config.")])
    except (ValueError, FileNotFoundError, SyntaxError) as e:
        cli.fail(str(e))


HELP = """Config files: configs/cifar100_lt.py (arguments imbalance=50|100|200|1, smoke=True, method=NAME),
configs/imagenet_lt.py, configs/places_lt.py, configs/inat.py (smoke=True). Override any value with
--config.KEY=VALUE, e.g. --config.phase1.epochs=30 --config.method=plain.
Methods (--config.method): async (default), plain, ldam_drw, focal, balanced_softmax, logit_adjustment,
crt, tau_norm, ncm, lws.
Exit status: 0 done, 2 bad input (one line on stderr, nothing written), 3 interrupted after a
checkpoint (run the same command again to resume), 1 an unexpected failure."""


if __name__ == "__main__":
    arguments = cli.join_spaced_flags(sys.argv, ("config", "workdir"))
    check_overrides(arguments[1:])
    cli.run(main, __doc__, arguments, extra_help=HELP)
