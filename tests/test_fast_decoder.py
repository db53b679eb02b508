"""--decoder simplejpeg: the same rules as Pillow's decoder, features close to its features, recorded in the store,
kept by a resumed run, used by predict."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import DVC, IMAGENETTE, WEIGHTS_025, kaggle_names, link_subset, requires_shared
from pipeline.errors import SourceError, StoreError
from pipeline.images import DECODERS, decode_image, list_images, try_decode
from pipeline.images import turbo

requires_fastjpeg = pytest.mark.skipif(bool(turbo.missing_packages()),
                                       reason="needs simplejpeg and opencv-python-headless (the fastjpeg extra)")


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like image (smooth gradients and blobs): JPEG keeps it well, so decoders agree on it."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(seed)
    chans = [np.sin(6 * xx * rng.uniform(0.5, 2) + rng.uniform(0, 6)) + np.cos(5 * yy * rng.uniform(0.5, 2))
             for _ in range(3)]
    return ((np.stack(chans, -1) + 2) * 63).clip(0, 255).astype(np.uint8)


def _jpeg(path: Path, pixels: np.ndarray, orientation: int | None = None, mode: str = "RGB") -> Path:
    img = Image.fromarray(pixels).convert(mode)
    exif = img.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


@requires_fastjpeg
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_applies_it(tmp_path, orientation):
    path = _jpeg(tmp_path / "o.jpg", _smooth(60, 90), orientation)
    assert turbo.exif_orientation(path.read_bytes()) == orientation
    size = (90, 60) if orientation >= 5 else (60, 90)  # upright, at its own size: no resize on either side
    pil = decode_image(path, size)
    np.testing.assert_array_equal(decode_image(path, size, decoder="simplejpeg"), pil)


@requires_fastjpeg
def test_what_it_does_not_decode_goes_through_pillow_with_the_same_result(tmp_path):
    pixels = _smooth(40, 50)
    png = tmp_path / "a.png"
    Image.fromarray(pixels).save(png)
    grey = _jpeg(tmp_path / "grey.jpg", pixels, mode="L")
    cmyk = _jpeg(tmp_path / "cmyk.jpg", pixels, mode="CMYK")
    good = _jpeg(tmp_path / "good.jpg", pixels).read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"\xff\xd8 not really a jpeg")
    for path in (png, grey, cmyk, truncated, fake):
        pil, fast = try_decode(path, (40, 50)), try_decode(path, (40, 50), decoder="simplejpeg")
        if isinstance(pil, str):
            assert fast == pil, path.name
        else:
            np.testing.assert_array_equal(fast, pil, err_msg=path.name)
    assert isinstance(try_decode(truncated, (40, 50)), str) and isinstance(try_decode(fake, (40, 50)), str)


@requires_fastjpeg
def test_the_pixel_limit_holds_after_dct_scaling(tmp_path):
    path = _jpeg(tmp_path / "big.jpg", _smooth(400, 600))
    reason = try_decode(path, (32, 32), max_pixels=1000, decoder="simplejpeg")
    assert isinstance(reason, str) and "exceeds the decode limit of 1,000" in reason
    assert try_decode(path, (32, 32), max_pixels=400 * 600, decoder="simplejpeg").shape == (32, 32, 3)


@requires_fastjpeg
@requires_shared
def test_features_and_accuracy_on_real_photos_match_pillows(small_backbone):
    """Pixels differ by about one level in 255 on average (DCT scale and resize filter); on these weights
    that moves features about as much as +-1 level of noise does, and a head fitted on Pillow's features
    classifies the same held-out photos as well from either decoder's."""
    from sklearn.linear_model import LogisticRegression

    names = kaggle_names(200)
    files = [DVC / n for n in names] + sorted(IMAGENETTE.glob("val/*/*"))[:100]
    size = small_backbone.input_size
    pil = small_backbone.embed(np.stack([decode_image(f, size) for f in files]), 64)
    fast = small_backbone.embed(np.stack([decode_image(f, size, decoder="simplejpeg") for f in files]), 64)
    cos = (pil * fast).sum(1) / np.linalg.norm(pil, axis=1) / np.linalg.norm(fast, axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.95, (cos.mean(), cos.min())
    y = np.array([0 if n.startswith("cat") else 1 for n in names])
    train = np.r_[0:140, 200:340]
    test = np.r_[140:200, 340:400]
    head = LogisticRegression(max_iter=2000).fit(pil[train], y[train])
    acc_pil, acc_fast = head.score(pil[test], y[test]), head.score(fast[test], y[test])
    assert acc_pil > 0.6 and abs(acc_fast - acc_pil) <= 0.05, (acc_pil, acc_fast)


@requires_fastjpeg
@requires_shared
def test_the_store_records_the_decoder_and_a_resume_keeps_it(tmp_path, small_backbone):
    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline.extract import extract_features

    src = link_subset(DVC, tmp_path / "src", kaggle_names(3))
    out = tmp_path / "fast.h5"
    args = ["extract-features", str(src), "-o", str(out), "--backbone", "mobilenet", "--alpha", "0.25",
            "--image-size", "128", "--weights", str(WEIGHTS_025), "--decoder", "simplejpeg", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert f.attrs["decoder"] == "simplejpeg"
    # the same photos with Pillow: another run, refused naming the setting
    with pytest.raises(StoreError, match="decoder"):
        extract_features(list_images(src), out, small_backbone, progress=False)
    parts_out = tmp_path / "parts.h5"
    extract_features(list_images(src, decoder="simplejpeg"), parts_out, small_backbone, merge=False,
                     checkpoint_rows=2, progress=False)
    with pytest.raises(StoreError, match="partial extraction .* other settings .*decoder"):
        extract_features(list_images(src), parts_out, small_backbone, merge=False, checkpoint_rows=2,
                         progress=False)
    pil_out = tmp_path / "pil.h5"
    extract_features(list_images(src), pil_out, small_backbone, progress=False)
    with h5py.File(pil_out) as f:
        assert f.attrs["decoder"] == "pil" and "decoder" not in f.attrs["extract_settings"]


def test_an_unknown_or_missing_decoder_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "cat.0.jpg").write_bytes(b"")
    with pytest.raises(SourceError, match="unknown decoder 'turbo'; expected one of pil, simplejpeg"):
        list_images(tmp_path, decoder="turbo")
    monkeypatch.setattr(turbo, "missing_packages", lambda: ["simplejpeg"])
    with pytest.raises(SourceError, match=r"needs simplejpeg, not installed: pip install 'incremental-pipeline\[fastjpeg\]'"):
        list_images(tmp_path, decoder="simplejpeg")


def test_the_commands_offer_every_decoder_and_predict_follows_the_model():
    from pipeline.cli import main
    from pipeline.predict import model_decoder

    for name in ("extract-features", "predict"):
        option = next(p for p in main.commands[name].params if p.name == "decoder")
        assert tuple(option.type.choices) == DECODERS
    assert model_decoder(SimpleNamespace(backbone={})) == "pil"  # models made before the decoder was recorded
    assert model_decoder(SimpleNamespace(backbone={"decoder": "simplejpeg"})) in DECODERS
    assert model_decoder(SimpleNamespace(backbone={"decoder": "simplejpeg"}), "pil") == "pil"
