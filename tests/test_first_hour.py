"""What a new user meets in the first hour: one clear line for each mistake, never a traceback."""

from __future__ import annotations

import urllib.error

import pytest
from click.testing import CliRunner

from conftest import DVC, kaggle_names, link_subset, requires_shared
from pipeline.cli import main


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *patterns: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for pattern in patterns:
        assert pattern in errors[0], result.output


@requires_shared
def test_offline_imagenet_download_is_one_line_naming_weights_and_cache(tmp_path, monkeypatch):
    """No network: Keras' fetch fails as it does offline (URLError from urlretrieve), in an empty cache."""
    import keras.src.backend.config as keras_config
    import keras.src.utils.file_utils as file_utils

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras-home"))
    src = link_subset(DVC, tmp_path / "src", kaggle_names(2))
    r = invoke("extract-features", src, "-o", tmp_path / "o.h5", "--backbone", "mobilenet", "--alpha", "0.25",
               "--image-size", "128", "-q")
    assert_one_line_error(r, "could not be downloaded", "--weights FILE", ".keras/models/mobilenet_2_5_128")
    assert not (tmp_path / "o.h5").exists()
