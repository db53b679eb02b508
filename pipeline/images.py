"""Listing an image source and decoding images to RGB arrays.

Every place in the project that turns a file into pixels calls
:func:`decode_image`, so extraction and prediction see identical inputs.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import SourceError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
LAYOUTS = ("auto", "folder", "kaggle", "csv")


@dataclass
class ImageSource:
    """The images of a source, in sorted order, with their labels.

    ``paths`` are POSIX paths relative to ``root``; ``labels`` hold class
    names, or ``None`` for unlabelled images. ``classes`` is sorted.
    """

    root: Path
    layout: str
    paths: list[str]
    labels: list[str | None]
    classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def label_indices(self) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index[lab] if lab is not None else -1 for lab in self.labels], np.int32)


def _visible_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def detect_layout(source: Path) -> str:
    """Guess the layout of ``source``: ``csv``, ``folder`` or ``kaggle``."""
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return "csv"
        raise SourceError(f"{source} is a file but not a CSV manifest (expected a directory or a .csv file)")
    subdirs = [d for d in source.iterdir() if d.is_dir() and not d.name.startswith(".")]
    top_images = [f for f in source.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    csvs = [f for f in source.iterdir() if f.is_file() and f.suffix.lower() == ".csv"]
    if top_images:
        return "kaggle"
    if subdirs:
        return "folder"
    if len(csvs) == 1:
        return "csv"
    raise SourceError(
        f"cannot tell the layout of {source}: expected class folders (ROOT/<class>/*.jpg), "
        "Kaggle-style files (ROOT/cat.1.jpg) or one CSV manifest; pass --layout"
    )


def _list_folder(root: Path) -> ImageSource:
    paths: list[str] = []
    labels: list[str | None] = []
    notes: list[str] = []
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise SourceError(f"{root} has no class folders (expected ROOT/<class>/<image>)")
    for d in class_dirs:
        files = _visible_files(d)
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in files):
            notes.append(f"class folder {d.name!r} holds no images; it is ignored")
            continue
        for f in files:
            paths.append(f.relative_to(root).as_posix())
            labels.append(d.name)
    classes = sorted({lab for lab in labels if lab is not None})
    return ImageSource(root, "folder", paths, labels, classes, notes)


def kaggle_label(name: str) -> str | None:
    """``cat.123.jpg`` -> ``cat``; a name with a single dot (``123.jpg``) is unlabelled."""
    parts = name.split(".")
    return parts[0] if len(parts) >= 3 and parts[0] else None


def _list_kaggle(root: Path) -> ImageSource:
    files = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    paths = [f.name for f in files]
    labels = [kaggle_label(f.name) for f in files]
    classes = sorted({lab for lab in labels if lab is not None})
    return ImageSource(root, "kaggle", paths, labels, classes)


def _list_csv(manifest: Path) -> ImageSource:
    root = manifest.parent
    try:
        with manifest.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if "path" not in fields:
                raise SourceError(f"{manifest}: expected a header with a 'path' column (and optionally 'label'), got {reader.fieldnames}")
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except UnicodeDecodeError as exc:
        raise SourceError(f"{manifest} is not a UTF-8 CSV file: {exc}") from None
    pairs = sorted((Path(r["path"]).as_posix(), r.get("label") or None) for r in rows if r.get("path"))
    paths = [p for p, _ in pairs]
    labels = [lab for _, lab in pairs]
    classes = sorted({lab for lab in labels if lab is not None})
    return ImageSource(root, "csv", paths, labels, classes)


def list_images(source: str | Path, layout: str = "auto") -> ImageSource:
    """List the images of ``source`` (a directory, or a CSV manifest) in sorted order."""
    source = Path(source)
    if layout not in LAYOUTS:
        raise SourceError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not source.exists():
        raise SourceError(f"image source {source} does not exist")
    if layout == "auto":
        layout = detect_layout(source)
    if layout == "csv":
        if source.is_dir():
            csvs = sorted(source.glob("*.csv"))
            if len(csvs) != 1:
                raise SourceError(f"{source}: expected exactly one .csv manifest, found {len(csvs)}")
            source = csvs[0]
        listed = _list_csv(source)
    elif not source.is_dir():
        raise SourceError(f"layout {layout!r} needs a directory, got the file {source}")
    elif layout == "folder":
        listed = _list_folder(source)
    else:
        listed = _list_kaggle(source)
    if not listed.paths:
        raise SourceError(f"no images found in {source} (layout {layout})")
    for note in listed.warnings:
        warnings.warn(note, stacklevel=2)
    return listed


def decode_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Decode ``path`` to a ``(height, width, 3)`` uint8 RGB array.

    EXIF orientation is applied, the first frame of animations is used, any
    mode (grayscale, palette, CMYK, alpha) becomes RGB, and the image is
    resized to ``size`` = (height, width) with bilinear filtering and no crop,
    like Keras' ``image_dataset_from_directory``. JPEGs are decoded at the
    smallest DCT scale that is still at least ``size`` (Pillow's ``draft``),
    which is several times faster on large photos.
    """
    height, width = size
    with Image.open(path) as img:
        side = max(height, width)
        img.draft("RGB", (side, side))
        img.seek(0)
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA", "La") else img.convert("RGB")
        img = img.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
