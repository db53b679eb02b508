"""Decoding in processes gives the store decoding in threads gives; a dead decoder ends the run cleanly."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from conftest import DVC, kaggle_names, link_subset, requires_shared
from pipeline.errors import ExecutorError
from pipeline.extract import extract_features
from pipeline.extraction.decoding import decoded_batches, uses_processes
from pipeline.images import list_images


def test_auto_uses_processes_only_with_many_decoders():
    assert not uses_processes("auto", 2) and uses_processes("auto", 15)
    assert uses_processes("processes", 1) and not uses_processes("threads", 32)
    with pytest.raises(ValueError, match="expected one of auto, threads, processes"):
        uses_processes("fibers", 2)


@requires_shared
def test_process_decoding_writes_the_same_store_as_threads(tmp_path, small_backbone):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(6))
    (src / "cat.999.jpg").write_bytes(b"not a jpeg")
    stores = {}
    for mode in ("threads", "processes"):
        out = tmp_path / f"{mode}.h5"
        extract_features(list_images(src), out, small_backbone, workers=2, decode=mode, checkpoint_rows=5,
                         progress=False)
        with h5py.File(out) as f:
            stores[mode] = {name: f[name][()] for name in ("features", "labels", "paths", "skipped/paths")}
    threads, processes = stores["threads"], stores["processes"]
    assert len(threads["features"]) == 12 and len(threads["skipped/paths"]) == 1
    for name in threads:
        np.testing.assert_array_equal(processes[name], threads[name])


def _die(*_args: object) -> None:
    os._exit(1)


@requires_shared
def test_a_dead_decode_process_is_one_clear_error(tmp_path, monkeypatch):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(2))
    source = list_images(src)
    monkeypatch.setattr("pipeline.extraction.decoding._decode_batch", _die)
    with pytest.raises(ExecutorError, match="a decode process died"):
        with decoded_batches(source, [[0, 1], [2, 3]], (32, 32), workers=1, processes=True) as batches:
            list(batches)
