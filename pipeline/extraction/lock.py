"""One run per output: an OS file lock next to it, released when the process dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from pipeline.errors import StoreError


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[Path]:
    """Hold ``OUT.lock`` (``flock``) for the run; a second run on ``out`` is refused at once.

    The lock file is removed at the end. A run that opened the file just before
    that removal would hold a lock on a deleted file, so after locking we check
    that the path still names the locked file, and retry otherwise.
    """
    path = lock_path(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {path} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"another run is writing {out} (it holds {path}); wait for it to finish") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:  # a full disk: the lock holds without the pid
        pass
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
