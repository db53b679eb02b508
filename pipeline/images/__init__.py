"""Listing an image source and decoding images to RGB arrays.

- :func:`list_images` lists a folder per class, Kaggle's flat layout or a
  CSV manifest as an :class:`ImageSource` (paths in lossless record form,
  files that cannot be decoded by rule kept with their reason);
- :meth:`ImageSource.decode` / :func:`try_decode` give pixels or a reason,
  never raise for a bad file, never block on a special file;
- :func:`listing_digest` identifies a listing for resumed runs;
- :func:`record_path` / :func:`path_from_record` convert between names on
  disk (any bytes) and the UTF-8 text stored.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from pipeline.errors import SourceError
from pipeline.images.decode import (ALPHA_BACKGROUND, DECODE_VERSION, DECODERS, DEFAULT_DECODER, DEFAULT_MAX_PIXELS,
                                    FORMATS, check_decoder, decode_image, to_rgb, try_decode)
from pipeline.images.listing import (IMAGE_EXTENSIONS, ImageSource, kaggle_label, list_folder, list_kaggle,
                                     listing_digest, scan_folder)
from pipeline.images.manifest import list_manifest
from pipeline.images.webdataset import TarSource, is_brace_pattern, list_webdataset, looks_like_webdataset
from pipeline.images.paths import ImageSkipped, clean_text, file_problem, open_regular, path_from_record, record_path

LAYOUTS = ("auto", "folder", "kaggle", "csv", "webdataset")

__all__ = [
    "ALPHA_BACKGROUND", "DECODE_VERSION", "DECODERS", "DEFAULT_DECODER", "DEFAULT_MAX_PIXELS", "check_decoder", "FORMATS", "IMAGE_EXTENSIONS", "LAYOUTS",
    "ImageSkipped", "ImageSource", "TarSource", "clean_text", "decode_image", "detect_layout", "file_problem", "kaggle_label",
    "list_images", "list_webdataset", "listing_digest", "open_regular", "path_from_record", "record_path", "scan_folder", "to_rgb",
    "try_decode",
]


def detect_layout(source: Path) -> str:
    """Guess the layout of ``source``: ``csv``, ``folder``, ``kaggle`` or ``webdataset``."""
    if looks_like_webdataset(source):
        return "webdataset"
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return "csv"
        raise SourceError(f"{source} is a file but not a CSV manifest or a .tar shard (expected a directory, "
                          "a .csv file or WebDataset .tar shards)")
    entries = [e for e in source.iterdir() if not e.name.startswith(".")]
    subdirs = [d for d in entries if d.is_dir()]
    top_images = [f for f in entries if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    csvs = [f for f in entries if f.is_file() and f.suffix.lower() == ".csv"]
    if top_images:
        return "kaggle"
    if subdirs:
        return "folder"
    if len(csvs) == 1:
        return "csv"
    raise SourceError(
        f"cannot tell the layout of {source}: expected class folders (ROOT/<class>/*.jpg), "
        "Kaggle-style files (ROOT/cat.1.jpg), one CSV manifest or .tar shards; pass --layout"
    )


def _list(source: Path, layout: str, root: Path | None, encoding: str | None, label_key: str | None) -> ImageSource:
    if layout == "auto":
        layout = detect_layout(source)
    if label_key is not None and layout != "webdataset":
        raise SourceError(f"a label key is only for WebDataset shards, not the {layout} layout")
    if layout == "webdataset":
        if root is not None:
            raise SourceError("a separate root is only for CSV manifests")
        return list_webdataset(source, label_key)
    if layout == "csv":
        if source.is_dir():
            csvs = sorted(source.glob("*.csv"))
            if len(csvs) != 1:
                raise SourceError(f"{source}: expected exactly one .csv manifest, found {len(csvs)}")
            source = csvs[0]
        return list_manifest(source, root, encoding)
    if root is not None:
        raise SourceError("a separate root is only for CSV manifests")
    if not source.is_dir():
        raise SourceError(f"layout {layout!r} needs a directory, got the file {source}")
    return list_folder(source) if layout == "folder" else list_kaggle(source)


def list_images(source: str | Path, layout: str = "auto", *, root: str | Path | None = None,
                encoding: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                label_key: str | None = None, decoder: str = DEFAULT_DECODER) -> ImageSource:
    """List the images of ``source`` (a directory, a CSV manifest, WebDataset shards) in sorted order.

    ``root``: the folder a manifest's paths are relative to (default: the
    manifest's own). ``encoding``: the manifest's, if detection is not
    enough. ``max_pixels``: images larger than this are skipped.
    ``label_key``: the member extension holding WebDataset labels (default
    ``cls``, else ``txt``). ``decoder``: how the images will be decoded
    (:data:`DECODERS`; checked here, so a missing package is said before any work). A brace pattern (``shards-{000..099}.tar``) is
    WebDataset shards.
    """
    if layout not in LAYOUTS:
        raise SourceError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if max_pixels < 1:
        raise SourceError(f"max_pixels must be at least 1, got {max_pixels}")
    check_decoder(decoder)
    pattern = is_brace_pattern(str(source)) and not Path(source).exists()
    if pattern and layout in ("auto", "webdataset"):
        layout = "webdataset"
    source = Path(source)
    problem = None if pattern and layout == "webdataset" else file_problem(source)
    if problem == "file not found":
        raise SourceError(f"image source {source} does not exist")
    if problem is not None and problem != "not a regular file: a folder":
        raise SourceError(f"image source {source} cannot be used: {problem}")
    try:
        listed = _list(source, layout, None if root is None else Path(root), encoding, label_key)
    except OSError as exc:
        raise SourceError(f"cannot list {source}: {clean_text(str(exc))}") from None
    if not listed.paths:
        raise SourceError(f"no images found in {source} (layout {listed.layout})")
    listed.max_pixels = max_pixels
    listed.decoder = decoder
    for note in listed.warnings:
        warnings.warn(note, stacklevel=2)
    return listed
