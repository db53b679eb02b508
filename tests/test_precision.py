"""--precision: the CLI option and its deprecated alias, what stores record, mixing precisions, --workers."""

from __future__ import annotations

import h5py
import pytest
from click.testing import CliRunner

from conftest import DVC, WEIGHTS_025, kaggle_names, link_subset, make_blobs_store, requires_shared
from pipeline.cli import main
from pipeline.precision import cpu_flags, has_bf16, resolve_precision
from pipeline.stream import FeatureStream
from pipeline.workers import auto_decode_workers, resolve_workers

SMALL = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "128", "--weights", str(WEIGHTS_025)]


def test_auto_is_float32_on_this_cpu_unless_it_has_bf16_instructions():
    got = resolve_precision("auto", "resnet50", "CPU")
    assert got == ("bfloat16" if has_bf16(cpu_flags()) else "float32")
    assert resolve_precision("auto", "mobilenetv2", "CPU") == "float32"
    with pytest.raises(Exception, match="expected one of"):
        resolve_precision("half", "resnet50", "CPU")


def test_auto_workers_uses_the_cores():
    assert resolve_workers(3, "CPU", cpus=4) == 3
    assert resolve_workers(3, "CPU", cpus=2) == 2  # capped by the cores (issue 23: --workers 1000 spawned 51 decoders)
    assert 1 <= resolve_workers("auto", "CPU") <= max(2, auto_decode_workers("CPU"))
    assert auto_decode_workers("GPU x1", cpus=1) == 1


@requires_shared
def test_extract_records_precision_and_kernels_and_the_old_flag_still_works(tmp_path):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(3))
    runner = CliRunner()
    r = runner.invoke(main, ["extract-features", str(src), "-o", str(tmp_path / "b.h5"), *SMALL,
                             "--precision", "bfloat16", "--workers", "auto"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "b.h5") as f:
        assert f.attrs["precision"] == "bfloat16" and f["features"].dtype == "float32"
        assert f.attrs["kernels"] in ("onednn", "default", "xla", "torch") and f.attrs["onednn_env"]
    r = runner.invoke(main, ["extract-features", str(src), "-o", str(tmp_path / "h.h5"), *SMALL, "--mixed-precision"])
    assert r.exit_code == 0 and "deprecated" in r.output and "--precision float16" in r.output
    with h5py.File(tmp_path / "h.h5") as f:
        assert f.attrs["precision"] == "float16"
    r = runner.invoke(main, ["extract-features", str(src), "-o", str(tmp_path / "x.h5"), *SMALL,
                             "--mixed-precision", "--precision", "bfloat16"])
    assert r.exit_code != 0 and "conflicts" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["extract-features", str(src), "-o", str(tmp_path / "x.h5"), *SMALL, "--workers", "0"])
    assert r.exit_code != 0 and "at least 1" in r.output


def test_stores_of_different_precisions_stream_together_with_a_warning(tmp_path):
    a = make_blobs_store(tmp_path / "a.h5", 20, 4, ["x", "y"], precision="float32")
    b = make_blobs_store(tmp_path / "b.h5", 20, 4, ["x", "y"], seed=1, precision="bfloat16")
    with pytest.warns(UserWarning, match="computed in bfloat16, the other features in float32"):
        with FeatureStream([a, b]) as stream:
            assert sum(len(batch.y) for batch in stream) == 40
