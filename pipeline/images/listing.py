"""Listing an image source: class folders or Kaggle's flat layout.

Listing never opens a file: it only ``stat``\\ s them. Entries that cannot be
decoded by rule (FIFOs, devices, sockets, dangling or looping symbolic
links, unreadable folders) stay in the listing with the reason in
``ImageSource.problems``, so extraction records them among the skipped
files like any broken image. Paths and labels are in the lossless record
form of :mod:`pipeline.images.paths`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import SourceError
from pipeline.images.decode import DECODE_VERSION, DEFAULT_MAX_PIXELS, try_decode
from pipeline.images.paths import file_problem, path_from_record, record_path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass
class ImageSource:
    """The images of a source, in sorted order, with their labels.

    ``paths`` are POSIX paths relative to ``root`` in record form (valid
    UTF-8; :meth:`file` gives the file on disk); ``labels`` hold class names,
    or ``None`` for unlabelled images. ``classes`` is sorted. ``problems``
    maps a position to the reason it is skipped without being opened.
    """

    root: Path
    layout: str
    paths: list[str]
    labels: list[str | None]
    classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: dict[int, str] = field(default_factory=dict)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def label_indices(self) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index[lab] if lab is not None else -1 for lab in self.labels], np.int32)

    def file(self, i: int) -> Path:
        """The file on disk of entry ``i``."""
        return self.root / path_from_record(self.paths[i])

    def decode(self, i: int, size: tuple[int, int]) -> np.ndarray | str:
        """Entry ``i`` as a ``(height, width, 3)`` uint8 array, or the reason it is skipped."""
        problem = self.problems.get(i)
        return problem if problem is not None else try_decode(self.file(i), size, max_pixels=self.max_pixels)

    def subset(self, keep: Sequence[int]) -> "ImageSource":
        """The entries at positions ``keep`` (in that order), with their problems; classes recomputed."""
        kept = [self.labels[i] for i in keep]
        present = set(kept)
        moved = {new: self.problems[old] for new, old in enumerate(keep) if old in self.problems}
        return replace(self, paths=[self.paths[i] for i in keep], labels=kept, problems=moved,
                       classes=[c for c in self.classes if c in present], warnings=list(self.warnings))

    def digest_lines(self) -> list[str]:
        """Extra lines :func:`listing_digest` covers (a subclass adds what else must not change)."""
        return []


def listing_digest(source: ImageSource) -> str:
    """SHA-256 (hex) of what a resumed extraction must find unchanged.

    Covers the decoding rules (:data:`DECODE_VERSION`, ``max_pixels``) and
    every path with its label, in order. Never raises, whatever the names.
    """
    head = f"decode {DECODE_VERSION} max_pixels {source.max_pixels}\n"
    text = head + "\n".join(f"{record_path(p)}\t{record_path(lab or '')}" for p, lab in zip(source.paths, source.labels))
    extra = source.digest_lines()
    if extra:
        text += "\n" + "\n".join(extra)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _hidden(name: str) -> bool:
    return name.startswith(".")


def scan_folder(folder: Path) -> tuple[list[Path], dict[Path, str]]:
    """Visible entries below ``folder`` that are not folders (sorted), and the reasons of those not decoded.

    Links to folders are not followed (they are reported): no loops.
    """
    found: list[Path] = []
    problems: dict[Path, str] = {}

    def unreadable(exc: OSError) -> None:
        where = Path(exc.filename)
        found.append(where)
        problems[where] = f"cannot read the folder: {exc.strerror or exc}"

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        base = Path(dirpath)
        for name in list(dirnames):
            if _hidden(name) or os.path.islink(base / name):
                dirnames.remove(name)
            if not _hidden(name) and os.path.islink(base / name):
                found.append(base / name)
                problems[base / name] = "symbolic link to a folder (not followed)"
        for name in filenames:
            if _hidden(name):
                continue
            found.append(base / name)
            problem = file_problem(base / name)
            if problem is not None:
                problems[base / name] = problem
    return sorted(found), problems


def _entries(root: Path, files: list[Path], labels: list[str | None], problems: dict[Path, str],
             layout: str, notes: list[str] | None = None) -> ImageSource:
    paths = [record_path(f.relative_to(root).as_posix()) for f in files]
    issues = {i: problems[f] for i, f in enumerate(files) if f in problems}
    classes = sorted({lab for lab in labels if lab is not None})
    return ImageSource(root, layout, paths, labels, classes, notes or [], issues)


SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing", "eval"})


def _holds_images(folder: Path) -> bool:
    try:
        return any(f.suffix.lower() in IMAGE_EXTENSIONS for f in folder.iterdir() if not _hidden(f.name))
    except OSError:
        return False


def _looks_like_a_data_set(folder: Path) -> str | None:
    """How ``folder`` (taken for a class folder) shows it holds classes itself, or None.

    Its sub-folders hold images (``folder/<class>/*.jpg``), or its files are named like Kaggle's
    (``cat.1.jpg``, ``dog.2.jpg``: two labels or more).
    """
    try:
        entries = [e for e in folder.iterdir() if not _hidden(e.name)]
    except OSError:
        return None
    nested = sorted(e.name for e in entries if e.is_dir() and not e.is_symlink() and _holds_images(e))
    if len(nested) >= 2:
        shown = ", ".join(record_path(n) for n in nested[:4]) + (", ..." if len(nested) > 4 else "")
        return f"its images are in folders {shown}"
    kaggle = sorted({lab for e in entries if e.suffix.lower() in IMAGE_EXTENSIONS
                     and (lab := kaggle_label(record_path(e.name))) is not None})
    if len(kaggle) >= 2:
        shown = ", ".join(kaggle[:4]) + (", ..." if len(kaggle) > 4 else "")
        return f"its images are named by class ({shown}: Kaggle's layout)"
    return None


def _check_not_a_parent(root: Path, class_dirs: list[Path]) -> list[str]:
    """Refuse the folder above a data set (one "class" that holds the classes); warn on split folders."""
    if len(class_dirs) == 1 and (why := _looks_like_a_data_set(class_dirs[0])) is not None:
        name = record_path(class_dirs[0].name)
        raise SourceError(f"{root} holds a single folder, {name}/, and {why}: every image would get the one class "
                          f"{name!r}; point at {class_dirs[0]} instead")
    splits = [d for d in class_dirs if d.name.lower() in SPLIT_NAMES and _looks_like_a_data_set(d) is not None]
    if splits:
        names = ", ".join(record_path(d.name) for d in splits)
        return [f"{root}: the class folders {names} look like data-set splits holding their own classes; "
                f"if so, point at one of them (for example {splits[0]})"]
    return []


def list_folder(root: Path) -> ImageSource:
    """``ROOT/<class>/...``: every visible file below a class folder, labelled by the folder.

    The folder above a data set (``ROOT/train/<class>/...`` or ``ROOT/train/cat.1.jpg``, one "class" that
    holds the classes) is refused, naming the folder to point at.
    """
    files: list[Path] = []
    labels: list[str | None] = []
    problems: dict[Path, str] = {}
    class_dirs = sorted(d for d in root.iterdir() if not _hidden(d.name) and d.is_dir())
    if not class_dirs:
        raise SourceError(f"{root} has no class folders (expected ROOT/<class>/<image>)")
    notes = _check_not_a_parent(root, class_dirs)
    for d in class_dirs:
        found, issues = scan_folder(d)
        if not issues and not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in found):
            notes.append(f"class folder {record_path(d.name)!r} holds no images; it is ignored")
            continue
        files += found
        labels += [record_path(d.name)] * len(found)
        problems.update(issues)
    return _entries(root, files, labels, problems, "folder", notes)


def kaggle_label(name: str) -> str | None:
    """``cat.123.jpg`` -> ``cat``; a name with a single dot (``123.jpg``) is unlabelled."""
    parts = name.split(".")
    return parts[0] if len(parts) >= 3 and parts[0] else None


def list_kaggle(root: Path) -> ImageSource:
    """``ROOT/cat.1.jpg``: every visible entry of ROOT except real folders (which are ignored)."""
    files = sorted(f for f in root.iterdir() if not _hidden(f.name) and (f.is_symlink() or not f.is_dir()))
    problems = {f: p for f in files if (p := file_problem(f)) is not None}
    labels = [kaggle_label(record_path(f.name)) for f in files]
    return _entries(root, files, labels, problems, "kaggle")
