"""Writing files safely: the atomic rename every writer uses, and the errors a failed write raises;
reading JSON metadata from user files within a size bound.

A leaf module (the standard library and pipeline.errors only), so that the store, its parts folder, the model files and the
extraction all share one definition without importing each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.errors import OutputError

WRITE_ERRORS = (OSError, RuntimeError)  # h5py raises RuntimeError (errno 28) for a full disk
# JSON metadata (model.json, parts manifests, a Parquet schema's metadata, preset configs) is kilobytes;
# parsing takes about 50 times the text's size in memory, so larger text is refused before it is parsed.
MAX_JSON_BYTES = 64 << 20


def parse_json(text: str | bytes, what: str, limit: int = MAX_JSON_BYTES) -> Any:
    """``json.loads(text)``, refused with a ValueError naming ``what`` when the text exceeds ``limit`` bytes."""
    if len(text) > limit:
        raise ValueError(f"{what} is {len(text) / 2**20:.0f} MB; JSON metadata is at most {limit >> 20} MB")
    return json.loads(text)


def read_json(path: str | Path, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file, its size checked before it is read (a ValueError when too large or not JSON)."""
    size = os.stat(path).st_size
    if size > limit:
        raise ValueError(f"{path} is {size / 2**20:.0f} MB; JSON metadata is at most {limit >> 20} MB")
    with open(path, "rb") as fh:
        return json.loads(fh.read(limit + 1))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn file.
    The temporary name is unique per writer (``NAME.<pid>.<random>.tmp``): two
    writers of the same file (a retried Ray task beside a worker thought dead)
    never write into one temporary file; stale ones match ``*.tmp``.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` by calling ``write(tmp)`` on a temporary file renamed into place (:func:`atomic_path`).

    A failed write (a full disk) raises :class:`OutputError` naming ``path``, on one line; ``path``
    keeps its old content and no temporary file is left.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            write(tmp)
    except OSError as exc:
        raise OutputError(f"writing {path} failed ({exc.strerror or ' '.join(str(exc).split())}); it is unchanged: "
                          "free disk space and rerun") from None
    return path


PAUSE_ENV = "PIPELINE_TEST_PAUSE"
RESUME_ENV = "PIPELINE_TEST_RESUME"


def pause_point(point: str, path: str | Path = "") -> None:
    """A hook for fault tests: ``PIPELINE_TEST_PAUSE=POINT[:SECONDS]`` makes the process print
    ``paused at POINT (process PID)`` on stderr and wait there (default: an hour, or until the file
    ``PIPELINE_TEST_RESUME`` names exists), so that a test can kill it, or start a second run, at a
    point it reaches for sure. Does nothing otherwise.

    Points: ``locked`` (an output lock was just taken), ``import-write``, ``export-write``,
    ``model-write`` and ``store-merge`` (half way through writing the temporary file or folder).
    """
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    name, _, seconds = spec.partition(":")
    if name != point:
        return
    sys.stderr.write(f"paused at {point} (process {os.getpid()}){f': {path}' if path else ''}\n")
    sys.stderr.flush()
    deadline = time.monotonic() + (float(seconds) if seconds else 3600.0)
    resume = os.environ.get(RESUME_ENV)
    while time.monotonic() < deadline and not (resume and os.path.exists(resume)):
        time.sleep(0.05)
