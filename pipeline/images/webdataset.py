"""WebDataset tar shards as an image source, read by position without unpacking.

A WebDataset is one or more plain ``.tar`` files; a *sample* is the members
sharing a key (the member's path up to the first dot of its base name:
``a/001.jpg`` and ``a/001.cls`` are the sample ``a/001``, extensions ``jpg``
and ``cls``). The image is the ``jpg``/``jpeg``/``png``/``webp`` member (or
another supported image extension), the label the text of the ``cls``
member, else of the ``txt`` member, or of the member named by ``label_key``.

Listing reads every shard's headers once with :mod:`tarfile` and keeps, per
sample, where its image bytes lie (offset and size). :meth:`TarSource.decode`
then opens the shard, seeks there and lets Pillow read a bounded window of
the file: any sample can be decoded in any order, by any thread (one file
handle per call), memory bounded by one image, nothing written to disk.
Records are named ``SHARD.tar:KEY`` (shard relative to the source root).
"""

from __future__ import annotations

import io
import itertools
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import SourceError
from pipeline.images.decode import decode_stream, skip_reason
from pipeline.images.listing import ImageSource
from pipeline.images.paths import clean_text, file_problem, open_regular, record_path

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")  # preference order
LABEL_KEYS = ("cls", "txt")
MAX_LABEL_BYTES = 4096
_COMPRESSED = (".gz", ".tgz", ".bz2", ".xz", ".zst", ".lz4")


MAX_SHARDS = 100_000  # a brace pattern naming more is refused before it is expanded


def is_brace_pattern(text: str) -> bool:
    return "{" in text and "}" in text


_RANGE = re.compile(r"\{(-?\d+|[A-Za-z])\.\.(-?\d+|[A-Za-z])(?:\.\.(-?\d+))?\}")


def brace_count_bound(text: str) -> int:
    """An upper bound of the names a brace pattern expands to, computed without expanding it.

    Each ``{a..b[..step]}`` counts its length, each other ``{x,y,...}`` group its commas + 1 (a nested
    group counts again: an overestimate, never an underestimate).
    """
    bound = 1
    for match in _RANGE.finditer(text):
        a, b, step = match.groups()
        lo, hi = (int(a), int(b)) if a.lstrip("-").isdigit() and b.lstrip("-").isdigit() else (ord(a[0]), ord(b[0]))
        bound *= abs(hi - lo) // max(1, abs(int(step or 1))) + 1
    depth, commas = 0, [0]
    for ch in _RANGE.sub("", text):
        if ch == "{":
            depth += 1
            commas.append(0)
        elif ch == "}" and depth:
            depth -= 1
            bound *= commas.pop() + 1
        elif ch == "," and depth:
            commas[-1] += 1
    return bound


def expand_shards(source: str | Path) -> list[Path]:
    """The shard files of ``source``: a brace pattern (expanded in order), a .tar file, or a folder's .tar files."""
    text = os.fspath(source)
    if is_brace_pattern(text):
        from braceexpand import braceexpand

        bound = brace_count_bound(text)
        if bound > MAX_SHARDS:
            raise SourceError(f"{text} names up to {bound:,} shards; at most {MAX_SHARDS:,} can be read in one run "
                              "(split the pattern)")
        shards = [Path(p) for p in itertools.islice(braceexpand(text), MAX_SHARDS + 1)]
        if len(shards) > MAX_SHARDS:
            raise SourceError(f"{text} names more than {MAX_SHARDS:,} shards (split the pattern)")
        missing = [str(p) for p in shards if not p.exists()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise SourceError(f"{len(missing)} of the {len(shards)} shards of {text} do not exist: "
                              f"{', '.join(missing[:3])}{more}")
        return shards
    path = Path(text)
    if path.is_dir():
        shards = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.suffix.lower() == ".tar")
        if not shards:
            raise SourceError(f"{path} holds no .tar shards")
        return shards
    return [path]


def looks_like_webdataset(source: Path) -> bool:
    """A .tar file, or a folder whose visible entries are all .tar files."""
    if source.is_file():
        return source.suffix.lower() == ".tar"
    if not source.is_dir():
        return False
    entries = [e for e in source.iterdir() if not e.name.startswith(".")]
    return bool(entries) and all(e.suffix.lower() == ".tar" and e.is_file() for e in entries)


class _Window(io.RawIOBase):
    """Bytes ``[offset, offset + size)`` of an open file, seekable, read on demand."""

    def __init__(self, fh: io.BufferedReader, offset: int, size: int):
        super().__init__()
        self._fh, self._offset, self._size, self._pos = fh, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._fh.seek(self._offset + self._pos)
        got = self._fh.readinto(memoryview(buffer)[:n]) or 0
        self._pos += got
        return got


@dataclass
class TarSource(ImageSource):
    """An :class:`ImageSource` whose entries are samples in tar shards.

    ``shards`` are the tar files; ``members[i]`` = (shard index, data offset,
    size) of entry ``i``'s image (offset -1 for a sample without one, which
    has its reason in ``problems``).
    """

    shards: list[Path] = field(default_factory=list)
    members: list[tuple[int, int, int]] = field(default_factory=list)

    def file(self, i: int) -> Path:
        """The shard holding entry ``i``."""
        return self.shards[self.members[i][0]]

    def decode(self, i: int, size: tuple[int, int]) -> np.ndarray | str:
        problem = self.problems.get(i)
        if problem is not None:
            return problem
        shard, offset, length = self.members[i]

        def read() -> np.ndarray:
            with open_regular(self.shards[shard]) as fh:
                with io.BufferedReader(_Window(fh, offset, length), 1 << 16) as member:
                    return decode_stream(member, size, max_pixels=self.max_pixels, decoder=self.decoder)

        return skip_reason(read)

    def subset(self, keep: Sequence[int]) -> "TarSource":
        out = super().subset(keep)
        assert isinstance(out, TarSource)
        out.members = [self.members[i] for i in keep]
        return out

    def digest_lines(self) -> list[str]:
        """Each shard's name and size, and where each image lies: a rewritten shard refuses resume."""
        lines = [f"shard {record_path(self._relative(s))} {s.stat().st_size}" for s in self.shards]
        return lines + [f"{k} {o} {n}" for k, o, n in self.members]

    def _relative(self, shard: Path) -> str:
        return shard.resolve().relative_to(self.root.resolve()).as_posix()


def _split(name: str) -> tuple[str, str]:
    """``dir/001.seg.png`` -> (``dir/001``, ``seg.png``); no dot in the base name -> (name, '')."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _label(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str | None:
    if member.size > MAX_LABEL_BYTES:
        raise SourceError(f"label member {member.name} is {member.size} bytes, more than {MAX_LABEL_BYTES}: "
                          "not a class name (pass --label-key for another member)")
    handle = tar.extractfile(member)
    text = handle.read().decode("utf-8", "surrogateescape").strip() if handle is not None else ""
    return record_path(text) if text else None


def _read_shard(tar_path: Path, label_key: str | None) -> tuple[list[tuple[str, int, int, str | None, str | None]], list[str]]:
    """(key, offset, size, label, problem) of each sample of one shard, in tar order; and warnings.

    A member that repeats a sample's extension (``k1.jpg`` twice, ``K4.JPG`` after ``K4.jpg``) or a second
    image of one sample (``k3.png`` beside ``k3.jpg``) is not dropped silently: it becomes a skipped row named
    ``KEY#MEMBER`` with its reason, after the samples of the shard.
    """
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    extra: list[tuple[str, int, int, str | None, str | None]] = []
    notes: list[str] = []
    try:
        with open_regular(tar_path) as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            try:
                for member in tar:
                    if member.isfile():
                        key, ext = _split(member.name)
                        if not ext:
                            continue
                        parts = samples.setdefault(key, {})
                        first = parts.get(ext)
                        image = next((parts[k] for k in IMAGE_KEYS if k in parts), None)
                        if first is not None:
                            extra.append((f"{key}#{member.name}", -1, 0, None,
                                          f"duplicate member {member.name} in sample {key} (its {first.name} is used)"))
                        elif ext in IMAGE_KEYS and image is not None:  # keep the preferred one, skip the other
                            used, dropped = image, member
                            if IMAGE_KEYS.index(ext) < IMAGE_KEYS.index(_split(image.name)[1]):
                                used, dropped = member, image
                                del parts[_split(image.name)[1]]
                                parts[ext] = member
                            extra.append((f"{key}#{dropped.name}", -1, 0, None,
                                          f"second image {dropped.name} in sample {key} (its {used.name} is used)"))
                        else:
                            parts[ext] = member
            except tarfile.TarError as exc:
                notes.append(f"{tar_path}: the tar is damaged after {len(samples)} samples ({exc}); the rest is ignored")
            rows = [_sample(tar, key, parts, label_key) for key, parts in samples.items()]
    except tarfile.ReadError as exc:
        raise SourceError(f"{tar_path} is not an uncompressed tar shard ({exc}); compressed shards cannot be read "
                          "by position: decompress them first") from None
    return rows + extra, notes


def _sample(tar: tarfile.TarFile, key: str, parts: dict[str, tarfile.TarInfo],
            label_key: str | None) -> tuple[str, int, int, str | None, str | None]:
    label_member = parts.get(label_key.lower()) if label_key else next((parts[k] for k in LABEL_KEYS if k in parts), None)
    try:
        label = _label(tar, label_member) if label_member is not None else None
    except (tarfile.TarError, OSError, EOFError) as exc:  # a shard damaged inside the label member
        return key, -1, 0, None, f"label member {label_member.name if label_member else ''} cannot be read ({exc})"
    image = next((parts[k] for k in IMAGE_KEYS if k in parts), None)
    if image is None:
        return key, -1, 0, label, f"sample without an image member (found: {', '.join(sorted(parts))})"
    return key, image.offset_data, image.size, label, None


def _sorted_classes(labels: Sequence[str | None]) -> list[str]:
    names = {lab for lab in labels if lab is not None}
    if names and all(n.isdigit() for n in names):  # cls members hold integers: 2 before 10
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def list_webdataset(source: str | Path, label_key: str | None = None) -> TarSource:
    """List the samples of WebDataset shards: a .tar file, a folder of them, or a brace pattern."""
    text = os.fspath(source)
    if text.lower().endswith(_COMPRESSED):
        raise SourceError(f"{text}: compressed tar shards cannot be read by position; decompress them first")
    shards = expand_shards(text)
    for shard in shards:
        problem = file_problem(shard)
        if problem is not None:
            raise SourceError(f"shard {shard} cannot be read: {problem}")
    resolved = [s.resolve() for s in shards]
    root = Path(os.path.commonpath([s.parent for s in resolved]))
    paths: list[str] = []
    labels: list[str | None] = []
    members: list[tuple[int, int, int]] = []
    notes: list[str] = []
    problems: dict[int, str] = {}
    for k, shard in enumerate(resolved):
        name = record_path(shard.relative_to(root).as_posix())
        rows, shard_notes = _read_shard(shard, label_key)
        notes += [clean_text(note) for note in shard_notes]
        for key, offset, size, label, problem in rows:
            if problem is not None:
                problems[len(paths)] = problem
            paths.append(f"{name}:{record_path(key)}")
            labels.append(label)
            members.append((k, offset, size))
    return TarSource(root, "webdataset", paths, labels, _sorted_classes(labels), notes, problems,
                     shards=resolved, members=members)
