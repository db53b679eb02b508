"""The GPU check's machinery on this machine: wheels into a fresh folder, replicated photos, children with time
limits, the JSON and the table (scripts/gpu_check.py; docs/gpu.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DVC, ROOT, requires_shared

SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@requires_shared
def test_cpu_smoke_writes_the_json_and_the_table(tmp_path):
    photos = tmp_path / "photos"
    copied = _run("--copy-photos", str(DVC), str(photos), "6")
    assert copied.returncode == 0, copied.stderr
    assert sorted(p.name for p in photos.iterdir()) == ["cat.0.jpg", "cat.1.jpg", "cat.2.jpg",
                                                        "dog.0.jpg", "dog.1.jpg", "dog.2.jpg"]
    out = tmp_path / "out"
    # no wheels folder: the installed environment is used; one backbone, one precision, the decode rates
    proc = _run("--cpu-smoke", "--wheels", str(tmp_path / "no-wheels"), "--photos", str(photos), "--out", str(out),
                "--images", "24", "--precisions", "float32", "--batch-sizes", "8", "--decode-modes", "processes")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["photos"]["images"] == 24 and report["photos"]["distinct_photos"] == 6
    assert report["wheels"]["wheels"] == []
    by_kind = {v["kind"]: v["result"] for v in report["variants"]}
    decode = by_kind["decode"]["pil"]
    assert set(decode) >= {"1_thread", "per_core_processes"} and all(r > 0 for r in decode.values())
    backbone = by_kind["backbone"]
    assert backbone["device"] == "CPU" and backbone["backend"] == "jax"
    assert backbone["batch"]["8"]["images_per_s"] > 0 and backbone["batch"]["8"]["finite"]
    e2e = by_kind["e2e"]
    assert e2e["images"] == 24 and e2e["skipped"] == 0 and e2e["store_device"] == "CPU"
    table = (out / "gpu_check.txt").read_text()
    assert "backbone mobilenetv2 jax float32 b8" in table and "e2e mobilenetv2 jax float32 b8 processes" in table
    assert table.strip().splitlines()[-1] in proc.stdout


@requires_shared
def test_variants_beyond_the_budget_are_listed_as_skipped(tmp_path):
    photos = tmp_path / "photos"
    _run("--copy-photos", str(DVC), str(photos), "4")
    out = tmp_path / "out"
    proc = _run("--cpu-smoke", "--wheels", str(tmp_path / "none"), "--photos", str(photos), "--out", str(out),
                "--images", "8", "--budget-s", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["variants"] == [] and "decode" in report["skipped_out_of_time"]
    assert "skipped (out of time)" in (out / "gpu_check.txt").read_text()


def test_carry_size_counts_the_tree_and_the_carried_folders(tmp_path):
    carried = tmp_path / "wheels"
    carried.mkdir()
    (carried / "a.whl").write_bytes(b"x" * (3 * 2**20))
    proc = _run("--carry-size", str(carried), str(tmp_path / "absent"))
    assert proc.returncode == 0, proc.stderr
    assert "3.0 MiB  carry" in proc.stdout and "(absent)" in proc.stdout and "fits in the 64 MiB" in proc.stdout
    (carried / "b.whl").write_bytes(b"x" * (64 * 2**20))
    over = _run("--carry-size", str(carried))
    assert over.returncode == 1 and "DOES NOT FIT" in over.stdout


WHEELS = sorted((ROOT / ".whl-cpu").glob("*.whl")) if (ROOT / ".whl-cpu").is_dir() else []


@pytest.mark.slow
@requires_shared
@pytest.mark.skipif(not WHEELS, reason="no wheels for this Python in .whl-cpu/ (make gpu-wheels GPU_PY=3.11 "
                    "GPU_WHEELS=.whl-cpu)")
def test_carried_wheels_are_installed_and_imported_first(tmp_path):
    photos = tmp_path / "photos"
    _run("--copy-photos", str(DVC), str(photos), "4")
    out = tmp_path / "out"
    proc = _run("--cpu-smoke", "--wheels", str(ROOT / ".whl-cpu"), "--photos", str(photos), "--out", str(out),
                "--images", "8", "--precisions", "float32", "--batch-sizes", "4", "--decode-modes", "processes")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert {Path(w).name for w in report["wheels"]["wheels"]} == {w.name for w in WHEELS}
    assert report["environment"]["keras_from"].startswith(report["wheels"]["site"])
