"""Hostile but realistic image files through listing and decoding: exact pixels or an exact reason,
never a hang, never a traceback."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.images import (DEFAULT_MAX_PIXELS, ImageSource, clean_text, decode_image, list_images, listing_digest,
                             path_from_record, record_path, to_rgb, try_decode)
from pipeline.images.decode import _PixelBudget
from pipeline.store import FeatureStore, StoreWriter

GREY16 = np.array([[0, 255, 256, 1000], [32767, 32768, 65280, 65535]], np.uint16)


def _grey(values) -> np.ndarray:
    v = np.asarray(values, np.uint8)
    return np.repeat(v[..., None], 3, axis=2)


def _write(path: Path, img: Image.Image, **kw) -> Path:
    img.save(path, **kw)
    return path


def _png_bomb(path: Path, width: int, height: int) -> Path:
    """A tiny 1-bit greyscale PNG that claims ``width`` x ``height`` pixels of zeros."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" * (1 + (width + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = zlib.compressobj(9)
    idat = b"".join(data.compress(row) for _ in range(height)) + data.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _decode_same_size(path: Path) -> np.ndarray | str:
    with Image.open(path) as img:
        w, h = img.size
    return try_decode(path, (h, w))


# --- odd modes and bit depths: the exact 8-bit rendering --------------------------------------------------------

def _case_grey16_png(d: Path):
    return _write(d / "g16.png", Image.fromarray(GREY16)), _grey(GREY16 >> 8)


def _case_grey16_big_endian_tiff(d: Path):
    return _write(d / "g16b.tif", Image.fromarray(GREY16.astype(">u2"))), _grey(GREY16 >> 8)


def _case_int32_in_16_bit_range(d: Path):
    return _write(d / "i32.tif", Image.fromarray(GREY16.astype(np.int32))), _grey(GREY16 >> 8)


def _case_float_unit_range(d: Path):
    f = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    return _write(d / "f01.tif", Image.fromarray(f)), _grey([[0, 64, 128, 255]])


def _case_float_byte_range(d: Path):
    f = np.array([[0.0, 10.4, 127.6, 255.0]], np.float32)
    return _write(d / "f255.tif", Image.fromarray(f)), _grey([[0, 10, 128, 255]])


def _case_palette_with_trns(d: Path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0, 1])
    return _write(d / "ptrns.png", img, transparency=0), np.array([[[255, 255, 255], [0, 0, 255]]], np.uint8)


def _case_grey_colour_key(d: Path):
    img = Image.fromarray(np.array([[7, 100]], np.uint8))
    return _write(d / "lkey.png", img, transparency=7), _grey([[255, 100]])


def _case_la(d: Path):
    la = np.array([[[100, 0], [100, 255], [100, 128]]], np.uint8)
    return _write(d / "la.png", Image.fromarray(la, "LA")), _grey([[255, 100, 177]])


def _case_rgba(d: Path):
    px = np.array([[[255, 0, 0, 0], [0, 0, 255, 255]]], np.uint8)
    return _write(d / "rgba.png", Image.fromarray(px, "RGBA")), np.array([[[255, 255, 255], [0, 0, 255]]], np.uint8)


def _case_one_bit(d: Path):
    return _write(d / "bw.png", Image.fromarray(np.array([[True, False]]))), _grey([[255, 0]])


def _case_cmyk_tiff(d: Path):
    img = Image.new("CMYK", (2, 1))
    img.putdata([(0, 255, 255, 0), (0, 0, 0, 128)])
    return _write(d / "cmyk.tif", img), np.array([[[255, 0, 0], [127, 127, 127]]], np.uint8)


def _case_ycbcr_tiff(d: Path):
    img = Image.new("RGB", (2, 1))
    img.putdata([(200, 30, 30), (10, 240, 10)])
    ycc = img.convert("YCbCr")
    return _write(d / "ycc.tif", ycc), np.asarray(ycc.convert("RGB"))


MODE_CASES = {
    "16-bit grey PNG (I;16)": _case_grey16_png,
    "16-bit big-endian grey TIFF (I;16B)": _case_grey16_big_endian_tiff,
    "32-bit int within 16 bits (I)": _case_int32_in_16_bit_range,
    "float in [0, 1] (F)": _case_float_unit_range,
    "float in [0, 255] (F)": _case_float_byte_range,
    "palette with tRNS (P)": _case_palette_with_trns,
    "grey with a colour key (L tRNS)": _case_grey_colour_key,
    "grey with alpha (LA)": _case_la,
    "RGBA": _case_rgba,
    "1-bit": _case_one_bit,
    "CMYK TIFF": _case_cmyk_tiff,
    "YCbCr TIFF": _case_ycbcr_tiff,
}


@pytest.mark.parametrize("case", MODE_CASES)
def test_mode_decodes_to_the_8_bit_rgb_a_viewer_shows(tmp_path, case):
    path, expected = MODE_CASES[case](tmp_path)
    got = _decode_same_size(path)
    assert not isinstance(got, str), got
    np.testing.assert_array_equal(got, expected)


def test_cmyk_jpeg_renders_like_its_colours(tmp_path):
    path = _write(tmp_path / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=100)
    got = try_decode(path, (16, 16))
    assert np.abs(got.astype(int) - [255, 0, 0]).max() <= 3


@pytest.mark.parametrize("mode,value,expected", [
    ("La", (100, 128), (227, 227, 227)),   # premultiplied: 100 is already weighted by alpha; + white * 127/255
    ("PA", None, (255, 255, 255)),          # fully transparent palette pixel
    ("HSV", (0, 255, 255), (255, 0, 0)),
    ("LAB", (255, 128, 128), (254, 255, 254)),
    ("RGBa", (0, 0, 128, 128), (127, 127, 255)),
])
def test_in_memory_modes(mode, value, expected):
    img = Image.new(mode, (1, 1), value) if value is not None else Image.new(mode, (1, 1))
    assert to_rgb(img).getpixel((0, 0)) == pytest.approx(expected, abs=1)


@pytest.mark.parametrize("array,reason", [
    (np.array([[0, 70000]], np.int32), "32-bit integer image with values in [0, 70000]"),
    (np.array([[-1, 5]], np.int32), "32-bit integer image with values in [-1, 5]"),
    (np.array([[0.0, np.nan]], np.float32), "float image with NaN or infinite values"),
    (np.array([[-5.0, 300.0]], np.float32), "float image with values in [-5, 300]"),
])
def test_modes_without_a_display_range_are_skipped(tmp_path, array, reason):
    path = _write(tmp_path / "x.tif", Image.fromarray(array))
    assert _decode_same_size(path).startswith(reason)


# --- broken and dangerous files ------------------------------------------------------------------------------

def test_broken_files_give_reasons(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "x.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    good = _write(tmp_path / "good.png", Image.fromarray(noise))
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:2000])
    unsupported = "not an image in a supported format"
    assert try_decode(tmp_path / "zero.png", (8, 8)).startswith(unsupported)
    assert try_decode(tmp_path / "text.jpg", (8, 8)).startswith(unsupported)
    assert try_decode(tmp_path / "x.eps", (8, 8)).startswith(unsupported)  # never handed to Ghostscript
    assert "truncated" in try_decode(tmp_path / "trunc.png", (8, 8)).lower()


def test_png_bomb_is_skipped_without_decoding_or_warning(tmp_path):
    path = _png_bomb(tmp_path / "bomb.png", 12_000, 12_000)
    with warnings.catch_warnings(record=True) as caught:
        reason = try_decode(path, (224, 224))
    assert not caught, [(w.category, str(w.message), w.filename) for w in caught]
    assert reason == f"12000 x 12000 = 144,000,000 pixels exceeds the decode limit of {DEFAULT_MAX_PIXELS:,}"
    beyond_pillow = _png_bomb(tmp_path / "huge.png", 20_000, 20_000)  # Pillow itself refuses it: same outcome
    assert try_decode(beyond_pillow, (224, 224)).startswith("too many pixels (Pillow's decompression-bomb limit)")


def test_pixel_limit_counts_jpeg_after_dct_scaling(tmp_path):
    big = Image.new("RGB", (2000, 1000), (0, 128, 0))
    jpg, png = _write(tmp_path / "big.jpg", big, quality=90), _write(tmp_path / "big.png", big)
    arr = try_decode(jpg, (200, 200), max_pixels=1_000_000)  # decoded at 1/8 scale: 250 x 125
    assert not isinstance(arr, str) and abs(int(arr[..., 1].mean()) - 128) <= 2
    assert try_decode(png, (200, 200), max_pixels=1_000_000) == \
        "2000 x 1000 = 2,000,000 pixels exceeds the decode limit of 1,000,000"


def test_pixel_budget_holds_back_a_second_large_decode():
    budget, order = _PixelBudget(), []
    with budget.hold(80, 100):
        t = threading.Thread(target=lambda: budget.hold(80, 100).__enter__() or order.append("second"))
        t.start()
        t.join(0.2)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]


# --- special files: never opened, never a hang ---------------------------------------------------------------

def _decode_with_timeout(source: ImageSource, i: int) -> np.ndarray | str:
    out: list[np.ndarray | str] = []
    t = threading.Thread(target=lambda: out.append(source.decode(i, (8, 8))), daemon=True)
    t.start()
    t.join(10)
    assert out, f"decoding {source.paths[i]} hung"
    return out[0]


@pytest.fixture
def hostile_folder():
    # short path: unix socket names are limited to ~100 bytes
    with tempfile.TemporaryDirectory(prefix="hx") as tmp:
        root = Path(tmp)
        cls = root / "cls"
        cls.mkdir()
        _write(cls / "good.png", Image.new("RGB", (8, 8), (10, 20, 30)))
        os.mkfifo(cls / "fifo.jpg")
        os.symlink("missing.jpg", cls / "dangling.jpg")
        os.symlink("loop.jpg", cls / "loop.jpg")
        os.symlink("/dev/null", cls / "device.jpg")
        os.symlink(str(root), cls / "up")
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(cls / "sock.jpg"))
        raw_name = os.fsencode(cls) + b"/bad\xff name\n\\.png"
        with open(raw_name, "wb") as fh:
            fh.write((cls / "good.png").read_bytes())
        yield root
        sock.close()


HOSTILE_OUTCOMES = {
    "cls/bad\\xff name\\x0a\\\\.png": None,  # decoded
    "cls/dangling.jpg": "dangling symbolic link (its target does not exist)",
    "cls/device.jpg": "not a regular file: a character device",
    "cls/fifo.jpg": "not a regular file: a named pipe (FIFO)",
    "cls/good.png": None,
    "cls/loop.jpg": "symbolic link loop",
    "cls/sock.jpg": "not a regular file: a socket",
    "cls/up": "symbolic link to a folder (not followed)",
}


def test_folder_of_hostile_files_lists_and_decodes_each_with_its_outcome(hostile_folder):
    src = list_images(hostile_folder)
    assert src.paths == sorted(HOSTILE_OUTCOMES)
    for i, path in enumerate(src.paths):
        got = _decode_with_timeout(src, i)
        expected = HOSTILE_OUTCOMES[path]
        if expected is None:
            assert not isinstance(got, str), got
            assert got[0, 0].tolist() == [10, 20, 30]
        else:
            assert got == expected and src.problems[i] == expected
        path.encode("utf-8")  # what the HDF5 store needs
    assert len(listing_digest(src)) == 64


def test_a_fifo_swapped_in_after_listing_is_not_opened(tmp_path):
    _write(tmp_path / "a.png", Image.new("RGB", (4, 4)))
    src = list_images(tmp_path)
    (tmp_path / "a.png").unlink()
    os.mkfifo(tmp_path / "a.png")
    assert _decode_with_timeout(src, 0) == "not a regular file: a named pipe (FIFO)"


def test_decode_image_raises_only_typed_skips_for_special_files(tmp_path):
    os.mkfifo(tmp_path / "p.png")
    with pytest.raises(Exception, match="named pipe"):
        decode_image(tmp_path / "p.png", (8, 8))


# --- names of any bytes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"plain.jpg", b"caf\xc3\xa9.jpg", b"caf\xe9.jpg", b"a\\b.jpg", b"tab\there.jpg",
                                 b"nl\nx.jpg", b"\xff\xfe\x80", b"\\x41.jpg", b"esc\x1b[31m.jpg"])
def test_record_form_round_trips_to_the_bytes_on_disk(raw):
    record = record_path(os.fsdecode(raw))
    record.encode("utf-8")
    assert record.isprintable()
    assert os.fsencode(path_from_record(record)) == raw


def test_clean_text_makes_reasons_storable():
    assert clean_text("bad " + os.fsdecode(b"\xff")).encode("utf-8") == b"bad \\udcff"


def test_bad_names_reach_the_store_losslessly(tmp_path):
    (tmp_path / "cls").mkdir()
    name = os.fsencode(tmp_path / "cls") + b"/\xe9t\xe9.png"
    _write(Path(os.fsdecode(name)), Image.new("RGB", (4, 4), (1, 2, 3)))
    src = list_images(tmp_path)
    assert src.decode(0, (4, 4))[0, 0].tolist() == [1, 2, 3]
    writer = StoreWriter(tmp_path / "s.h5", {"classes": src.classes, "backbone": "test", "weights": "none", "input_size": 4,
                                                "preprocessing": "none", "pooling": "avg"}, feature_dim=2)
    writer.append(np.zeros((1, 2), np.float32), src.label_indices(), src.paths)
    writer.add_skipped([src.paths[0]], ["example"])
    writer.close(complete=True)
    with FeatureStore(tmp_path / "s.h5") as store:
        stored = store.paths()[0]
    assert os.fsencode(tmp_path / path_from_record(stored)) == name
