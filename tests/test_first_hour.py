"""What a new user meets in the first hour: one clear line for each mistake, never a traceback."""

from __future__ import annotations

import json
import urllib.error

import pytest
from click.testing import CliRunner

from conftest import DVC, kaggle_names, link_subset, make_blobs_store, requires_shared
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


def _kaggle_files(folder, names):
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"not decoded: listing only stats files")


def test_parent_of_a_kaggle_folder_is_refused_naming_the_folder(tmp_path):
    _kaggle_files(tmp_path / "dogs-vs-cats" / "train", ["cat.1.jpg", "cat.2.jpg", "dog.1.jpg"])
    r = invoke("extract-features", tmp_path / "dogs-vs-cats", "-o", tmp_path / "o.h5", "-q")
    assert_one_line_error(r, "single folder, train/", f"point at {tmp_path / 'dogs-vs-cats' / 'train'}")
    assert not (tmp_path / "o.h5").exists()


def test_parent_of_class_folders_is_refused_and_split_folders_warned(tmp_path):
    for cls in ("cat", "dog"):
        _kaggle_files(tmp_path / "one" / "train" / cls, ["1.jpg"])
        for split in ("train", "val"):
            _kaggle_files(tmp_path / "two" / split / cls, ["1.jpg"])
    r = invoke("extract-features", tmp_path / "one", "-o", tmp_path / "o.h5", "-q")
    assert_one_line_error(r, "its images are in folders cat, dog", f"point at {tmp_path / 'one' / 'train'}")
    from pipeline.images import list_images

    with pytest.warns(UserWarning, match="train, val look like data-set splits"):
        listed = list_images(tmp_path / "two")
    assert listed.classes == ["train", "val"]  # a warning, not a refusal: nested class folders can be meant


def test_one_real_class_folder_is_still_listed(tmp_path):
    """A month that brings one new class is a real case: one class folder of photos is fine."""
    from pipeline.images import list_images

    _kaggle_files(tmp_path / "new" / "fox", ["a.jpg", "b.jpg"])
    assert list_images(tmp_path / "new").classes == ["fox"]


def test_one_class_store_is_refused_and_nothing_saved(tmp_path):
    store = make_blobs_store(tmp_path / "train.h5", 60, 8, ["train"])
    model = tmp_path / "m.model"
    r = invoke("train-incremental", store, "--holdout", "0.3", "--model-out", model, "-q")
    assert_one_line_error(r, "one class only ('train')", "nothing was trained or saved")
    assert "single label" not in r.output and not model.exists()


def test_one_new_class_with_resume_is_accepted(tmp_path):
    first = make_blobs_store(tmp_path / "a.h5", 80, 8, ["cat", "dog"])
    new = make_blobs_store(tmp_path / "b.h5", 40, 8, ["fox"], seed=1)
    model = tmp_path / "m.model"
    assert invoke("train-incremental", first, "--model-out", model, "-q").exit_code == 0
    r = invoke("train-incremental", new, "--resume", model, "-q")
    assert r.exit_code == 0, r.output


def test_evaluate_on_the_training_store_warns_about_leakage(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 200, 8, ["cat", "dog"])
    other = make_blobs_store(tmp_path / "o.h5", 50, 8, ["cat", "dog"], seed=3)
    model = tmp_path / "m.model"
    assert invoke("train-incremental", store, "--holdout", "0.3", "--model-out", model, "-q").exit_code == 0
    for args, leaks in (([store], True), ([store, "--holdout", "0.5"], True), ([store, "--holdout", "0.3"], False),
                        ([store, "--holdout", "0.2"], False), ([other], False)):
        r = invoke("evaluate", model, *args)
        assert r.exit_code == 0, r.output
        lines = [line for line in r.output.splitlines() if "leakage" in line]
        assert len(lines) == (1 if leaks else 0), (args, r.output)
    r = invoke("evaluate", model, store)
    assert "pass --holdout 0.3" in r.output and str(store) in r.output


def test_plot_or_log_dir_without_eval_every_draws_a_curve_in_doubling_blocks(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 600, 8, ["cat", "dog", "fox"])
    r = invoke("train-incremental", store, "--holdout", "0.3", "--plot", tmp_path / "c.png",
               "--metrics-out", tmp_path / "m.json", "-q")
    assert r.exit_code == 0, r.output
    curve = json.loads((tmp_path / "m.json").read_text())["learning_curve"]
    rows = [p["rows_seen"] for p in curve]
    assert rows[:4] == [32, 64, 128, 256] and rows[-1] == curve[-1]["rows_seen"] > 256
    assert all(p["heldout_accuracy"] is not None for p in curve)
    r = invoke("train-incremental", store, "--holdout", "0.3", "--log-dir", tmp_path / "logs", "-q")
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "logs" / "points.csv").read_text().splitlines()) == 1 + len(curve)
    r = invoke("train-incremental", store, "--holdout", "0.3", "--metrics-out", tmp_path / "plain.json", "-q")
    assert len(json.loads((tmp_path / "plain.json").read_text())["learning_curve"]) == 1  # nothing to draw: one point


def test_output_into_a_closed_pipe_exits_quietly(tmp_path):
    """`pipeline evaluate ... | head -1`: the reader is gone before the output; no 'Error: Broken pipe'."""
    import subprocess
    import sys

    classes = [f"class{i:03d}" for i in range(300)]  # one output line per class
    store = make_blobs_store(tmp_path / "s.h5", 1500, 8, classes)
    model = tmp_path / "m.model"
    assert invoke("train-incremental", store, "--head", "nme", "--model-out", model, "-q").exit_code == 0
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "evaluate", str(model), str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `head -1` does once it has its line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Broken pipe" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def test_standalone_commands_take_dash_h():
    from pipeline.cli import extract_features_cmd, train_incremental_cmd

    for command in (extract_features_cmd, train_incremental_cmd):
        r = CliRunner().invoke(command, ["-h"])
        assert r.exit_code == 0 and "Usage:" in r.output, r.output


def test_numeric_help_says_integer_without_overflow_bounds():
    r = invoke("train-incremental", "--help")
    assert "e+18" not in r.output and "e+09" not in r.output and "4611686018427387904" not in r.output
    assert "an integer >= 0" in r.output
