"""Files written whole or not at all (results, configs, memory banks, tables, exports), logs
appended line by line, and JSON read back with the file named when it is damaged.

Each write goes to a temporary file beside the target, is flushed to the disk (fsync), and is
then renamed over the target; the folder is synced too, so that the rename itself survives a
power cut. A crash at any moment leaves the previous version (or none), never half a file.
A log (metrics.jsonl, log.txt) killed mid-line keeps its torn line: the next run starts on a
line of its own, and readers skip what does not parse.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np


def _sync_folder(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:  # A folder that cannot be opened for syncing (some network filesystems).
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: str, write: Callable, binary: bool = False) -> None:
    """Calls `write(file)` on a temporary file, then puts it at `path` in one rename."""
    # The process id keeps two writers (two processes of one job) off each other's temporary file.
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):  # A failed write leaves the previous version, and nothing beside it.
            os.remove(tmp)
        raise
    _sync_folder(path)


def write_text(path: str, text: str) -> None:
    write_atomically(path, lambda f: f.write(text))


def write_json(path: str, payload) -> None:
    write_atomically(path, lambda f: json.dump(payload, f, indent=2, sort_keys=True))


def save_npz(path: str, **arrays) -> None:
    """np.savez to `path` (which should end in .npz), atomically."""
    write_atomically(path, lambda f: np.savez(f, **arrays), binary=True)


def read_json(path: str):
    """The JSON in `path`; a damaged file is a ValueError that names it (one line, exit 2)."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): a damaged "
                         "or hand-edited file; restore it or remove it") from None


def append_lines(path: str):
    """`path` opened for appending lines: a last line torn by a killed writer is ended first, so
    that what this run appends never merges with it."""
    handle = open(path, "a+")
    if handle.tell() > 0:
        handle.seek(handle.tell() - 1)
        if handle.read(1) != "\n":
            handle.write("\n")
    return handle
