"""--exclude: extract only the files that earlier stores do not hold."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import DVC, WEIGHTS_025, kaggle_names, link_subset, requires_shared
from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.exclude import exclude_stored
from pipeline.images import list_images, listing_digest
from pipeline.store import StoreWriter

SMALL = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "128", "--weights", str(WEIGHTS_025)]


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def fake_store(path: Path, root: Path, paths: list[str], skipped: list[str] = (), complete: bool = True) -> Path:
    """A store that records ``paths`` as rows and ``skipped`` as skipped files of ``root``."""
    writer = StoreWriter(path, {"backbone": "synthetic", "weights": "none", "alpha": "", "input_size": [8, 8],
                                "preprocessing": "none", "pooling": "avg", "classes": ["cat", "dog"],
                                "source_root": str(root.resolve())}, 4)
    writer.append(np.zeros((len(paths), 4), np.float32), np.zeros(len(paths), np.int32), paths)
    writer.add_skipped(list(skipped), ["broken"] * len(skipped))
    writer.close(complete=complete)
    return path


def touch_folder(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_bytes(b"x")
    return root


def test_rows_and_skipped_files_of_the_stores_are_left_out(tmp_path):
    root = touch_folder(tmp_path / "photos", [f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(5)])
    (root / "cat.9.jpg").symlink_to(root / "missing.jpg")  # a listed problem keeps its reason after filtering
    listed = list_images(root)
    a = fake_store(tmp_path / "a.h5", root, ["cat.0.jpg", "cat.1.jpg", "elsewhere.jpg"], skipped=["dog.4.jpg"])
    b = fake_store(tmp_path / "b.h5", root, ["cat.1.jpg", "dog.0.jpg"])
    kept = exclude_stored(listed, [a, b])
    assert kept.excluded == 4  # cat.0, cat.1 (in both), dog.0, dog.4 (skipped before)
    assert kept.source.paths == ["cat.2.jpg", "cat.3.jpg", "cat.4.jpg", "cat.9.jpg", "dog.1.jpg", "dog.2.jpg",
                                 "dog.3.jpg"]
    assert kept.source.labels == ["cat"] * 4 + ["dog"] * 3
    assert kept.source.problems == {3: "dangling symbolic link (its target does not exist)"}
    assert listing_digest(kept.source) != listing_digest(listed)  # resume with another --exclude is refused
    assert exclude_stored(listed, []).source is listed


def test_classes_keep_their_order_and_drop_when_empty(tmp_path):
    root = touch_folder(tmp_path / "photos", ["cat.0.jpg", "dog.0.jpg", "dog.1.jpg"])
    store = fake_store(tmp_path / "a.h5", root, ["cat.0.jpg"])
    assert exclude_stored(list_images(root), [store]).source.classes == ["dog"]


def test_stores_from_another_root_or_unfinished_are_refused(tmp_path):
    root = touch_folder(tmp_path / "photos", ["cat.0.jpg", "dog.0.jpg"])
    other = touch_folder(tmp_path / "other", ["cat.0.jpg"])
    foreign = fake_store(tmp_path / "foreign.h5", other, ["cat.0.jpg"])
    with pytest.raises(StoreError) as err:
        exclude_stored(list_images(root), [foreign])
    assert str(other.resolve()) in str(err.value) and str(root.resolve()) in str(err.value)
    partial = fake_store(tmp_path / "partial.h5", root, ["cat.0.jpg"], complete=False)
    with pytest.raises(StoreError, match="incomplete"):
        exclude_stored(list_images(root), [partial])


def test_cli_errors_are_clean(tmp_path):
    root = touch_folder(tmp_path / "photos", ["cat.0.jpg", "dog.0.jpg"])
    other = touch_folder(tmp_path / "other", ["cat.0.jpg"])
    foreign = fake_store(tmp_path / "foreign.h5", other, ["cat.0.jpg"])
    for store, message in ((foreign, "was made from"), (tmp_path / "none.h5", "does not exist")):
        result = invoke("extract-features", root, "-o", tmp_path / "o.h5", "--exclude", store)
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert message in result.output, result.output
    done = fake_store(tmp_path / "done.h5", root, ["cat.0.jpg", "dog.0.jpg"])
    result = invoke("extract-features", root, "-o", tmp_path / "o.h5", "--exclude", done)
    assert result.exit_code == 0 and "nothing to extract: all 2 files" in result.output
    assert not (tmp_path / "o.h5").exists()


def _paths(store: Path) -> list[str]:
    with h5py.File(store) as f:
        return [p.decode() for p in f["paths"][:]]


@requires_shared
def test_a_grown_folder_extracts_only_its_new_photos(tmp_path, small_backbone):
    from pipeline.extract import extract_features
    from pipeline.runs import run_training

    names = kaggle_names(30)  # cat.0..29, dog.0..29
    first = [n for n in names if int(n.split(".")[1]) < 12]
    new = [n for n in names if 12 <= int(n.split(".")[1]) < 20]
    test = [n for n in names if int(n.split(".")[1]) >= 20]
    photos = link_subset(DVC, tmp_path / "photos", first)
    extract_features(list_images(photos), tmp_path / "month1.h5", small_backbone, progress=False)
    link_subset(DVC, photos, new)

    result = invoke("extract-features", photos, "-o", tmp_path / "month2.h5", "--exclude", tmp_path / "month1.h5",
                    *SMALL)
    assert result.exit_code == 0, result.output
    assert f"{len(first)} files already in the excluded stores were left out" in result.output
    assert sorted(_paths(tmp_path / "month2.h5")) == sorted(new)
    assert not set(_paths(tmp_path / "month1.h5")) & set(_paths(tmp_path / "month2.h5"))
    again = invoke("extract-features", photos, "-o", tmp_path / "month3.h5", "--exclude", tmp_path / "month1.h5",
                   "--exclude", tmp_path / "month2.h5", *SMALL)
    assert "nothing to extract" in again.output and not (tmp_path / "month3.h5").exists()

    extract_features(list_images(photos), tmp_path / "whole.h5", small_backbone, progress=False)
    extract_features(list_images(link_subset(DVC, tmp_path / "test", test)), tmp_path / "test.h5", small_backbone,
                     progress=False)
    quiet = dict(head="slda", test_stores=[tmp_path / "test.h5"], quiet=True, echo=lambda s: None,
                 out=lambda s: None)
    parts = run_training([tmp_path / "month1.h5", tmp_path / "month2.h5"], **quiet)
    whole = run_training([tmp_path / "whole.h5"], **quiet)
    assert parts["heldout"]["rows"] == whole["heldout"]["rows"] == len(test)
    assert parts["heldout"]["accuracy"] == whole["heldout"]["accuracy"] > 0.6
    assert parts["rows_seen"] == whole["rows_seen"] == len(first) + len(new)

    with pytest.raises(StoreError, match="other settings"):  # the store remembers what was excluded
        extract_features(list_images(photos), tmp_path / "month2.h5", small_backbone, progress=False)
