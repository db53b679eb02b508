"""File names of any bytes, and which files may be opened at all.

A name on disk may hold bytes that are not UTF-8 (Python keeps them as
lone surrogates, ``surrogateescape``), control characters or backslashes.
Stores, digests and messages need text, so every listed path is kept in a
*record form* that is valid UTF-8, printable and lossless:

- ``\\`` is written ``\\\\``;
- a byte that is not UTF-8 (0x80-0xff) and an ASCII control character
  (0x00-0x1f, 0x7f) are written ``\\xNN`` (two lower-case hex digits);
- a lone surrogate that did not come from a byte is written ``\\uNNNN``.

Every other character is kept. :func:`path_from_record` turns a record back
into the name on disk:

>>> import os
>>> raw = os.fsdecode(b"caf\\xe9 \\\\ tab\\t.jpg")
>>> record_path(raw)
'caf\\\\xe9 \\\\\\\\ tab\\\\x09.jpg'
>>> os.fsencode(path_from_record(record_path(raw)))
b'caf\\xe9 \\\\ tab\\t.jpg'
>>> record_path("chat/ébène.png")
'chat/ébène.png'
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
from pathlib import Path

_NEEDS_ESCAPE = re.compile("[\\\\\x00-\x1f\x7f\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


class ImageSkipped(Exception):
    """A file that is not decoded; ``str(exc)`` is the reason recorded in the store."""


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if ch == "\\":
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape could not decode
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def _unescape(match: re.Match[str]) -> str:
    body = match.group(1)
    if body == "\\":
        return "\\"
    code = int(body[1:], 16)
    return chr(0xDC00 + code) if body[0] == "x" and code >= 0x80 else chr(code)


def record_path(name: str) -> str:
    """The record form of ``name`` (a path or label as ``os`` returns it): valid UTF-8, lossless."""
    return _NEEDS_ESCAPE.sub(_escape, name) if _NEEDS_ESCAPE.search(name) else name


def path_from_record(record: str) -> str:
    """The name on disk (``surrogateescape`` str, ``os.fsencode`` gives its bytes) of a record."""
    return _ESCAPE.sub(_unescape, record) if "\\" in record else record


def clean_text(text: str) -> str:
    """``text`` made safe to store as UTF-8 (undecodable bytes shown as ``\\udcNN``)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_problem(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is not decoded; ``None`` for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "of an unknown kind")
    return f"not a regular file: {kind}"


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` must not be opened, found with ``stat`` alone; ``None`` for a regular file.

    Symbolic links to regular files are followed; dangling links, link loops,
    folders, FIFOs, devices and sockets each get their reason.
    """
    try:
        st = os.stat(path)
    except ValueError:  # "embedded null byte"
        return "the file name holds a NUL character"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return "dangling symbolic link (its target does not exist)"
        if exc.errno == errno.ENOENT:
            return "file not found"
        return f"cannot read the file: {exc.strerror or exc}"
    return kind_problem(st.st_mode)


def open_regular(path: str | Path) -> io.BufferedReader:
    """Open ``path`` for reading only if it is a regular file; never blocks.

    ``stat`` first, so devices are never opened; then ``O_NONBLOCK`` and a
    second check on the open descriptor, in case the file was swapped for a
    FIFO in between. Raises :class:`ImageSkipped` with the reason otherwise.
    """
    problem = file_problem(path)
    if problem is not None:
        raise ImageSkipped(problem)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ImageSkipped(f"cannot open the file: {exc.strerror or exc}") from None
    try:
        problem = kind_problem(os.fstat(fd).st_mode)
        if problem is not None:
            raise ImageSkipped(problem)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
