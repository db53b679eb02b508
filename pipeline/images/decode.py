"""Decoding one image file to the 8-bit RGB array a viewer shows.

Every place in the project that turns a file into pixels calls
:func:`decode_image` (or :func:`try_decode`), so extraction and prediction
see identical inputs. Rules (see docs/extraction.md, "Images"):

- only regular files are opened (never FIFOs, devices, sockets, folders);
- only the formats in :data:`FORMATS` are read (no plug-in that runs an
  external program, such as EPS through Ghostscript);
- 16-bit channels keep their top 8 bits (``v >> 8``, as Pillow does for
  16-bit RGB); 32-bit integer images whose values fit in 16 bits are read
  as 16-bit, float images in [0, 1] are scaled by 255 and those in [0, 255]
  kept; any other range, NaN or infinity is skipped with a reason;
- transparency (alpha channels, palette and colour-key ``tRNS``) is
  composited over :data:`ALPHA_BACKGROUND` (white);
- an image with more than ``max_pixels`` pixels after JPEG DCT scaling is
  skipped, and the pixels being decoded at once in a process are bounded.

Decoders (:data:`DECODERS`, ``extract-features --decoder``): ``pil`` (the
default, Pillow) and ``simplejpeg`` (:mod:`pipeline.images.turbo`:
libjpeg-turbo through simplejpeg at the smallest of its 16 DCT scales that is
still at least ``size``, then OpenCV's area resize). ``simplejpeg`` decodes
baseline and progressive JPEGs itself, about twice as fast per core; every
other file (other formats, CMYK JPEGs, broken ones) goes through Pillow, so
skip reasons are the same. Pixels differ slightly from ``pil`` (a mean of
about 1 level in 255): a store records its decoder and a resumed run keeps it.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.images.paths import ImageSkipped, clean_text, open_regular

FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
DEFAULT_MAX_PIXELS = 50_000_000
ALPHA_BACKGROUND = (255, 255, 255)
DECODE_VERSION = 2  # bump when the pixels produced for some file change
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
DECODERS = ("pil", "simplejpeg")
DEFAULT_DECODER = "pil"



def _quiet_pillow_bomb_warning() -> None:
    """Pillow warns above ``Image.MAX_IMAGE_PIXELS``; ``max_pixels`` is enforced here instead, as a skip
    reason, so the warning is only noise. Checked at each decode: a ``catch_warnings`` block around an
    import would drop a filter added once."""
    if not any(f[0] == "ignore" and f[2] is Image.DecompressionBombWarning for f in warnings.filters):
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module="PIL.Image")


class _PixelBudget:
    """Bounds the pixels decoded at once by all threads of the process.

    An image waits while others are in flight and it would push the total
    past the limit; one image alone always proceeds (it passed the limit).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0

    @contextmanager
    def hold(self, pixels: int, limit: int) -> Iterator[None]:
        with self._cond:
            while self._in_flight and self._in_flight + pixels > limit:
                self._cond.wait()
            self._in_flight += pixels
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= pixels
                self._cond.notify_all()


_BUDGET = _PixelBudget()


def _high_bit_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8-bit ``L`` (see the module rules)."""
    arr = np.asarray(img)
    key = img.info.get("transparency")
    if img.mode == "F":
        if not np.isfinite(arr).all():
            raise ImageSkipped("float image with NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise ImageSkipped(f"float image with values in [{lo:g}, {hi:g}]: no display range (expected [0, 1] or [0, 255])")
        out = np.floor(arr * (255.0 if hi <= 1 else 1.0) + 0.5).astype(np.uint8)
    else:
        wide = arr.astype(np.int64)
        lo, hi = int(wide.min()), int(wide.max())
        if lo < 0 or hi > 0xFFFF:
            raise ImageSkipped(f"32-bit integer image with values in [{lo}, {hi}]: no display range (expected 0..65535)")
        out = (wide >> 8).astype(np.uint8)
    if isinstance(key, (int, float)):  # a colour-key tRNS on 16-bit greyscale
        out = np.where(arr == key, 255, out).astype(np.uint8)
    return Image.fromarray(out)


def _composite(img: Image.Image) -> Image.Image:
    if img.mode == "La":  # Pillow cannot convert premultiplied LA: go through RGBa
        lum, alpha = img.split()
        img = Image.merge("RGBa", (lum, lum, lum, alpha))
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    background.alpha_composite(rgba)
    return background.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` (any mode Pillow opens) as 8-bit RGB; :class:`ImageSkipped` if it cannot be shown."""
    if img.mode.startswith("I") or img.mode == "F":
        return _high_bit_to_l(img).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _composite(img)
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError:
        raise ImageSkipped(f"image mode {img.mode} cannot be shown as RGB") from None


def check_decoder(decoder: str) -> str:
    """``decoder`` if it is known and its packages import; :class:`~pipeline.errors.SourceError` otherwise."""
    from pipeline.errors import SourceError

    if decoder not in DECODERS:
        raise SourceError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
    if decoder == "simplejpeg":
        from pipeline.images.turbo import missing_packages

        missing = missing_packages()
        if missing:
            raise SourceError(f"--decoder simplejpeg needs {' and '.join(missing)}, not installed: "
                              "pip install 'incremental-pipeline[fastjpeg]'")
    return decoder


def decode_image(path: str | Path, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 decoder: str = DEFAULT_DECODER) -> np.ndarray:
    """Decode ``path`` to a ``(height, width, 3)`` uint8 RGB array.

    EXIF orientation is applied, the first frame of animations is used, any
    mode becomes the 8-bit RGB a viewer shows (module rules), and the image
    is resized to ``size`` = (height, width) with bilinear filtering and no
    crop, like Keras' ``image_dataset_from_directory``. JPEGs are decoded at
    the smallest DCT scale that is still at least ``size`` (Pillow's
    ``draft``). Raises :class:`ImageSkipped` (the reason) for files that are
    not decoded by rule, other exceptions for broken files. ``decoder``: see
    the module docstring.
    """
    with open_regular(path) as fh:
        return decode_stream(fh, size, max_pixels=max_pixels, decoder=decoder)


def decode_stream(fh: BinaryIO, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  decoder: str = DEFAULT_DECODER) -> np.ndarray:
    """:func:`decode_image` for an open, seekable binary stream (a tar member, bytes in memory)."""
    if decoder != "pil":
        from pipeline.images import turbo

        start = fh.tell()
        pixels = turbo.decode_jpeg(fh.read(), size, max_pixels, _BUDGET.hold)
        if pixels is not None:
            return pixels
        fh.seek(start)  # not a JPEG simplejpeg decodes: Pillow's path, same rules and reasons
    height, width = size
    _quiet_pillow_bomb_warning()
    try:
        img = Image.open(fh, formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageSkipped(f"too many pixels (Pillow's decompression-bomb limit): {exc}") from None
    except UnidentifiedImageError:
        raise ImageSkipped(f"not an image in a supported format ({', '.join(FORMATS)})") from None
    with img:
        side = max(height, width)
        img.draft("RGB", (side, side))
        w, h = img.size
        if w * h == 0:
            raise ImageSkipped(f"empty image ({w} x {h} pixels)")
        if w * h > max_pixels:
            raise ImageSkipped(f"{w} x {h} = {w * h:,} pixels exceeds the decode limit of {max_pixels:,}")
        with _BUDGET.hold(w * h, max_pixels):
            img.seek(0)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # a copy otherwise: 0.45 ms of a 3.2 ms decode
            shown = to_rgb(img)
            return np.asarray(shown.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def skip_reason(decode: Callable[[], np.ndarray]) -> np.ndarray | str:
    """``decode()``, or the reason (one line, valid UTF-8) it failed; never raises for a bad image."""
    try:
        return decode()
    except ImageSkipped as exc:
        return clean_text(str(exc))
    except MemoryError:
        return "out of memory while decoding"
    except OSError as exc:
        detail = exc.strerror if exc.strerror and exc.filename else str(exc)
        return clean_text(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)
    except Exception as exc:  # any undecodable file is skipped with its reason
        return clean_text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def try_decode(path: str | Path, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS,
               decoder: str = DEFAULT_DECODER) -> np.ndarray | str:
    """:func:`decode_image`, or the reason (one line, valid UTF-8) the file is skipped; never raises for a bad file."""
    return skip_reason(lambda: decode_image(path, size, max_pixels=max_pixels, decoder=decoder))
