"""One exit-code scheme and one-line errors for every command line (main, reproduce, export,
convert, plot, predict):

    0  done (and --help)
    2  bad input or usage: one line on stderr, `error: ...`, nothing written
    3  interrupted (SIGTERM / SIGINT) after a checkpoint: run the same command again to resume
    1  an unexpected failure (a traceback: a bug to report)
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import app, flags

USAGE, INTERRUPTED = 2, 3


class Interrupted(SystemExit):
    """Raised after a checkpoint when SIGTERM/SIGINT arrived; exits with status 3."""

    def __init__(self, message: str):
        super().__init__(INTERRUPTED)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message: str) -> None:
    """A one-line error, exit status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE)


def join_spaced_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """`--config FILE` -> `--config=FILE` (absl's config flags read only the joined form)."""
    out, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg in tuple(f"--{n}" for n in names) and args and not args[0].startswith("-"):
            arg = f"{arg}={args.pop(0)}"
        out.append(arg)
    return out


def run(main: Callable[[list[str]], None], doc: str, argv: Sequence[str] | None = None,
        extra_help: str = "") -> None:
    """Parses absl flags and runs `main(argv)` with the scheme above."""
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
        print(doc.strip() + "\n")
        if extra_help:
            print(extra_help.strip() + "\n")
        print(flags.FLAGS.main_module_help())
        sys.exit(0)
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e} (see --help)")
    guarded(lambda: main(rest))


def guarded(call: Callable[[], None]) -> None:
    """Runs `call()` under the scheme above: an interruption exits 3 with its message, bad input
    and a diverged run exit 2 with one `error:` line (also what the tests' in-process runs use)."""
    try:
        call()
    except Interrupted as e:
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED)
    except app.UsageError as e:
        fail(str(e))
    except (ValueError, FileNotFoundError, FloatingPointError) as e:  # Bad input; a diverged run.
        fail(str(e))
