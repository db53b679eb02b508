from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import SourceError
from pipeline.images import decode_image, kaggle_label, list_images


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def test_folder_layout_labels(tmp_path):
    for cls in ("b_dog", "a_cat"):
        for i in range(2):
            _save(tmp_path / cls / f"{i}.png", Image.new("RGB", (10, 10)))
    (tmp_path / "empty_class").mkdir()
    with pytest.warns(UserWarning, match="empty_class"):
        src = list_images(tmp_path)
    assert src.layout == "folder"
    assert src.classes == ["a_cat", "b_dog"]
    assert src.paths == ["a_cat/0.png", "a_cat/1.png", "b_dog/0.png", "b_dog/1.png"]
    assert src.label_indices().tolist() == [0, 0, 1, 1]


def test_kaggle_layout_labels_and_unlabelled(tmp_path):
    for name in ("dog.2.jpg", "cat.10.jpg", "17.jpg"):
        _save(tmp_path / name, Image.new("RGB", (10, 10)))
    src = list_images(tmp_path)
    assert src.layout == "kaggle"
    assert src.classes == ["cat", "dog"]
    assert dict(zip(src.paths, src.label_indices().tolist())) == {"17.jpg": -1, "cat.10.jpg": 0, "dog.2.jpg": 1}
    assert kaggle_label("cat.1.jpg") == "cat" and kaggle_label("1.jpg") is None


def test_csv_manifest_with_and_without_labels(tmp_path):
    _save(tmp_path / "imgs" / "a.png", Image.new("RGB", (10, 10)))
    _save(tmp_path / "imgs" / "b.png", Image.new("RGB", (10, 10)))
    (tmp_path / "list.csv").write_text("path,label\nimgs/b.png,zebra\nimgs/a.png,ant\n")
    src = list_images(tmp_path / "list.csv")
    assert src.layout == "csv" and src.classes == ["ant", "zebra"]
    assert src.paths == ["imgs/a.png", "imgs/b.png"] and src.label_indices().tolist() == [0, 1]
    (tmp_path / "list.csv").write_text("path\nimgs/b.png\nimgs/a.png\n")
    src = list_images(tmp_path / "list.csv", layout="csv")
    assert src.classes == [] and src.label_indices().tolist() == [-1, -1]


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list_images(tmp_path / "nope")
    with pytest.raises(SourceError, match="cannot tell the layout"):
        list_images(tmp_path)
    with pytest.raises(SourceError, match="unknown layout"):
        list_images(tmp_path, layout="zip")
    (tmp_path / "m.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(SourceError, match="'path' column"):
        list_images(tmp_path / "m.csv")


@pytest.mark.parametrize("mode,fmt,ext", [
    ("L", "PNG", "png"), ("P", "GIF", "gif"), ("CMYK", "JPEG", "jpg"), ("RGBA", "PNG", "png"),
    ("RGB", "BMP", "bmp"), ("RGB", "WEBP", "webp"), ("LA", "PNG", "png"),
])
def test_decode_any_mode_to_rgb(tmp_path, mode, fmt, ext):
    img = Image.new(mode, (40, 20))
    path = _save(tmp_path / f"x.{ext}", img, format=fmt)
    arr = decode_image(path, (16, 24))
    assert arr.shape == (16, 24, 3) and arr.dtype == np.uint8


def test_decode_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = _save(tmp_path / "r.jpg", img, exif=exif.tobytes(), quality=95)
    arr = decode_image(path, (40, 20))  # displayed image is 20 wide, 40 tall
    top, bottom = arr[:10].mean(axis=(0, 1)), arr[-10:].mean(axis=(0, 1))
    assert top[2] > 200 and bottom[0] > 200  # blue moved to the top


def test_decode_first_gif_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 255, 0))]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert decode_image(path, (8, 8))[..., 0].mean() > 200


def test_decode_rejects_broken_files(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    good = _save(tmp_path / "good.jpg", Image.new("RGB", (64, 64), (10, 200, 30)))
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    for name in ("zero.jpg", "text.jpg", "trunc.jpg"):
        with pytest.raises(Exception):
            decode_image(tmp_path / name, (32, 32))
