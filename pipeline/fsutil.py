"""Writing files safely: the atomic rename every writer uses, and the errors a failed write raises.

A leaf module (standard library only), so that the store, its parts folder, the model files and the
extraction all share one definition without importing each other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

WRITE_ERRORS = (OSError, RuntimeError)  # h5py raises RuntimeError (errno 28) for a full disk


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
