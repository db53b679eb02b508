"""The ``simplejpeg`` decoder: libjpeg-turbo with DCT-domain scaling, then OpenCV's area resize.

libjpeg-turbo can decode a JPEG at any of 16 scales n/8 (n = 1..16) in the
DCT domain; simplejpeg picks the smallest that is still at least the target
side, so most of a photo's pixels are never produced (Pillow's ``draft``
only offers 1/1, 1/2, 1/4, 1/8). OpenCV's ``INTER_AREA`` then resizes to the
target (an average over each output pixel's footprint, like Pillow's
antialiased bilinear when shrinking). Measured per core on Dogs vs Cats and
Imagenette photos: about twice Pillow's rate (docs/gpu.md).

:func:`decode_jpeg` returns ``None`` for anything it does not decode itself
(not a JPEG, CMYK/YCCK, beyond Pillow's decompression-bomb limit, broken
data): the caller then decodes with Pillow, so every rule and skip reason of
:mod:`pipeline.images.decode` holds. EXIF orientation is applied as Pillow's
``exif_transpose`` applies it (the first APP1 Exif segment's tag 0x0112).

The packages are an optional extra: ``pip install 'incremental-pipeline[fastjpeg]'``.
"""

from __future__ import annotations

import importlib.util
import struct
from typing import Any, Callable, ContextManager

import numpy as np

_SHOWN = frozenset({"Gray", "YCbCr", "RGB"})  # colour spaces libjpeg-turbo turns into RGB as Pillow does
_cv2: Any = None


def missing_packages() -> list[str]:
    """The pip names of this decoder's packages that are not installed."""
    return [pip for mod, pip in (("simplejpeg", "simplejpeg"), ("cv2", "opencv-python-headless"))
            if importlib.util.find_spec(mod) is None]


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG's first APP1 Exif segment, 1 when absent or unreadable.

    >>> exif_orientation(b"\\xff\\xd8\\xff\\xd9")
    1
    """
    pos, n = 2, len(data)
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more headers
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            return _tiff_orientation(data[pos + 10:pos + 2 + length])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        ifd = struct.unpack(order + "I", tiff[4:8])[0]
        (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
        for k in range(count):
            entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:  # SHORT
                value = struct.unpack(order + "H", entry[8:10])[0]
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error, IndexError):
        pass
    return 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` (H, W, C) turned upright as Pillow's ``exif_transpose`` turns an image of that orientation."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, -1)
    if orientation == 7:
        return pixels[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, 1)
    return pixels


def _resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    global _cv2
    if _cv2 is None:
        import cv2

        cv2.setNumThreads(1)  # one image per call from many decode threads: its own pool only oversubscribes
        _cv2 = cv2
    if pixels.shape[:2] == (height, width):
        return np.ascontiguousarray(pixels)
    if pixels.shape[0] < height or pixels.shape[1] < width:
        # enlarged along a side (a small photo, decoded whole as Pillow decodes it): Pillow's bilinear, the
        # pixels of the pil decoder; OpenCV's area filter enlarges differently enough to move features
        from PIL import Image

        return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize((width, height),
                                                                                Image.Resampling.BILINEAR))
    return _cv2.resize(np.ascontiguousarray(pixels), (width, height), interpolation=_cv2.INTER_AREA)


def decode_jpeg(data: bytes, size: tuple[int, int], max_pixels: int,
                hold: Callable[[int, int], ContextManager[None]]) -> np.ndarray | None:
    """``data`` decoded to ``size`` = (height, width) RGB uint8, or ``None``: let Pillow decode it.

    Raises :class:`~pipeline.images.paths.ImageSkipped` when the decoded
    (DCT-scaled) image has more than ``max_pixels`` pixels. ``hold`` bounds the
    pixels decoded at once (the caller's budget).
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    import simplejpeg
    from PIL import Image

    from pipeline.images.paths import ImageSkipped

    height, width = size
    side = max(height, width)
    try:
        full_h, full_w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        h, w, _, _ = simplejpeg.decode_jpeg_header(data, min_height=side, min_width=side)
    except ValueError:
        return None
    bomb = Image.MAX_IMAGE_PIXELS
    if colorspace not in _SHOWN or h * w == 0 or (bomb and full_h * full_w > 2 * bomb):
        return None
    if h * w > max_pixels:
        raise ImageSkipped(f"{w} x {h} = {w * h:,} pixels exceeds the decode limit of {max_pixels:,}")
    with hold(h * w, max_pixels):
        try:
            pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=side, min_width=side)
        except ValueError:  # broken or unusual data: Pillow decodes it or gives the reason
            return None
        return _resize(orient(pixels, exif_orientation(data)), height, width)
