"""CSV manifests (``path,label``) as spreadsheets save them.

Read: UTF-8 with or without BOM, UTF-16 with BOM, else Windows-1252 (with
a warning); comma, semicolon or tab delimiters (the one the header uses);
CRLF; quoted fields; blank rows and empty trailing columns; header names
in any case with spaces. Paths are relative to the manifest's folder (or
``root``), ``/`` or ``\\`` separated, and must stay inside it. A path
listed twice with one label is kept once (with a warning); with two labels,
or once with and once without, it is an error naming both lines.
"""

from __future__ import annotations

import codecs
import csv
import io
import posixpath
from pathlib import Path, PureWindowsPath

from pipeline.errors import SourceError
from pipeline.images.listing import ImageSource
from pipeline.images.paths import file_problem, record_path

DELIMITERS = (",", ";", "\t")
_MAX_ERRORS_SHOWN = 5
_MAX_REPEATS_SHOWN = 3  # repeated rows named one by one; beyond, one summary line


def _decode(data: bytes, manifest: Path, encoding: str | None, notes: list[str]) -> str:
    if encoding is not None:
        try:
            return data.decode(encoding)
        except (LookupError, UnicodeDecodeError) as exc:
            raise SourceError(f"{manifest} cannot be read as {encoding}: {exc}") from None
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):].decode("utf-8", "strict")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise SourceError(f"{manifest} is neither UTF-8 nor Windows-1252 text; save it as 'CSV UTF-8'") from None
    notes.append(f"{manifest.name} is not UTF-8; it was read as Windows-1252 (save it as 'CSV UTF-8' to be sure)")
    return text


def _delimiter(text: str) -> str:
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _relative(raw: str) -> str | None:
    """The normalised POSIX path of a manifest entry, or ``None`` if it is absolute or leaves the root."""
    path = raw.replace("\\", "/")
    if path.startswith("/") or PureWindowsPath(raw).drive:
        return None
    norm = posixpath.normpath(path)
    return None if norm == ".." or norm.startswith("../") else norm


def _fail(manifest: Path, errors: list[str]) -> None:
    more = len(errors) - _MAX_ERRORS_SHOWN
    shown = "; ".join(errors[:_MAX_ERRORS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
    raise SourceError(f"{manifest}: {shown}")


def read_rows(manifest: Path, encoding: str | None = None) -> tuple[list[tuple[int, str, str | None]], list[str]]:
    """``(line, path, label)`` for each non-blank row, and warnings; :class:`SourceError` for a bad file."""
    problem = file_problem(manifest)
    if problem is not None:
        raise SourceError(f"{manifest} cannot be read as a manifest: {problem}")
    notes: list[str] = []
    try:
        text = _decode(manifest.read_bytes(), manifest, encoding, notes)
    except OSError as exc:
        raise SourceError(f"{manifest} cannot be read: {exc.strerror or exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text), strict=True)
    rows: list[tuple[int, str, str | None]] = []
    columns: dict[str, int] | None = None
    try:
        for cells in reader:
            cells = [c.strip() for c in cells]
            if not any(cells):
                continue
            if columns is None:
                columns = {name.lower(): i for i, name in enumerate(cells) if name}
                if "path" not in columns:
                    raise SourceError(f"{manifest}: expected a header with a 'path' column (and optionally "
                                      f"'label'), got {[c for c in cells if c]}")
                continue
            path = cells[columns["path"]] if columns["path"] < len(cells) else ""
            label_at = columns.get("label")
            label = cells[label_at] if label_at is not None and label_at < len(cells) else ""
            rows.append((reader.line_num, path, label or None))
    except csv.Error as exc:
        raise SourceError(f"{manifest}, line {reader.line_num}: {exc}") from None
    if columns is None:
        raise SourceError(f"{manifest} is empty: expected a header with a 'path' column")
    return rows, notes


def list_manifest(manifest: Path, root: Path | None = None, encoding: str | None = None) -> ImageSource:
    """The images a CSV manifest lists, sorted by path; paths relative to ``root`` (default: its folder)."""
    root = manifest.parent if root is None else root
    rows, notes = read_rows(manifest, encoding)
    errors: list[str] = []
    repeats: list[str] = []
    seen: dict[str, tuple[int, str | None]] = {}
    for line, raw, label in rows:
        path = _relative(raw) if raw else None
        if not raw:
            errors.append(f"line {line} has no path")
        elif "\0" in raw or (label is not None and "\0" in label):
            errors.append(f"line {line}: its {'path' if chr(0) in raw else 'label'} holds a NUL character")
        elif path is None:
            errors.append(f"line {line}: {raw!r} is not inside {root} (paths must be relative to it, without "
                          "leaving it through '..')")
        elif path == ".":
            errors.append(f"line {line}: {raw!r} names the folder itself, not a file")
        elif path in seen:
            first, first_label = seen[path]
            if first_label == label:
                repeats.append(f"{path} is listed on lines {first} and {line}")
            else:
                def say(lab: str | None) -> str:
                    return f"label {lab!r}" if lab is not None else "no label"
                errors.append(f"line {line}: {path} is listed again with {say(label)} (line {first} gave it "
                              f"{say(first_label)})")
        else:
            seen[path] = (line, label)
    if errors:
        _fail(manifest, errors)
    if len(repeats) <= _MAX_REPEATS_SHOWN:
        notes += [f"{manifest.name}: {text}; it is used once" for text in repeats]
    else:
        notes.append(f"{manifest.name}: {len(repeats):,} rows repeat a path listed before with the same label "
                     f"(first: {repeats[0]}); each path is used once")
    ordered = sorted(seen)
    labels = [None if (given := seen[p][1]) is None else record_path(given) for p in ordered]
    problems = {i: r for i, p in enumerate(ordered) if (r := file_problem(root / p)) is not None}
    classes = sorted({lab for lab in labels if lab is not None})
    return ImageSource(root, "csv", [record_path(p) for p in ordered], labels, classes, notes, problems)
