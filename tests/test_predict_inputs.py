"""Which files ``pipeline predict`` reads: folders walked like extract-features, named entries as given."""

from __future__ import annotations

import os

import pytest

from pipeline.errors import SourceError
from pipeline.predict import collect_images


def test_folders_skip_hidden_entries_and_non_images(tmp_path):
    (tmp_path / "a" / ".cache").mkdir(parents=True)
    for name in ["a/cat.1.jpg", "a/.hidden.jpg", "a/.cache/dog.2.jpg", "a/notes.txt", "b.png"]:
        (tmp_path / name).write_bytes(b"x")
    assert collect_images([tmp_path / "a", tmp_path / "b.png"]) == [tmp_path / "a" / "cat.1.jpg", tmp_path / "b.png"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_named_fifo_is_kept_for_its_reason_and_a_missing_path_is_an_error(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert collect_images([fifo]) == [fifo]  # predict_images reports "not a regular file" without opening it
    with pytest.raises(SourceError, match="does not exist"):
        collect_images([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images found"):
        collect_images([tmp_path / "empty"])
