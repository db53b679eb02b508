"""One run per output: an OS file lock next to it, released when the process dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from pathlib import Path
from typing import Iterator

from pipeline.errors import StoreError
from pipeline.fsutil import pause_point


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
            holder = _holder(fd)
            os.close(fd)
            raise StoreError(f"another run is writing {out} ({holder}holds {path}); wait for it to finish, "
                             "or write elsewhere") from None
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
        remove_stale_temporaries(out)
        pause_point("locked", out)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _holder(fd: int) -> str:
    """``process N `` from the lock file (the holder writes its pid just after locking), else ``it ``."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"process {text} " if text.isdigit() else "it "


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove ``OUT.<pid>.<hex>.tmp`` / ``OUT.<pid>.tmp`` files that earlier, killed runs left.

    Called with the lock held: no other run of ``out`` is alive, so every such
    file belongs to a dead writer (this process's own, if any, are kept).
    """
    pattern = re.compile(re.escape(out.name) + r"\.(\d+)(?:\.[0-9a-f]+)?\.tmp")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(out.parent if str(out.parent) else "."):
            match = pattern.fullmatch(entry.name)
            if match and int(match.group(1)) != os.getpid() and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


_held: dict[Path, int] = {}
_held_guard = threading.Lock()


def _covered(path: Path) -> bool:
    return any(path == held or held in path.parents for held in _held)


@contextlib.contextmanager
def output_locks(*outs: Path | None) -> Iterator[None]:
    """Hold :func:`output_lock` of every output given (``None`` skipped, each path once) for a command.

    Outputs that this process already holds through ``output_locks`` (or that lie
    inside a folder it holds, such as ``--log-dir DIR/order-2``) are not locked
    again: a command that calls another one keeps its locks.
    """
    paths: list[Path] = []
    for out in outs:
        if out is None:
            continue
        path = Path(os.path.abspath(out))
        with _held_guard:
            if _covered(path) or path in paths:
                continue
        paths.append(path)
    with contextlib.ExitStack() as stack:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(output_lock(path))
            with _held_guard:
                _held[path] = _held.get(path, 0) + 1
            stack.callback(_release, path)
        yield


def _release(path: Path) -> None:
    with _held_guard:
        _held[path] -= 1
        if not _held[path]:
            del _held[path]
