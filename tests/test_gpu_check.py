"""The GPU check's machinery on this machine: wheels into a fresh folder, replicated photos, children with time
limits, the JSON and the table (scripts/gpu_check.py; docs/gpu.md)."""

from __future__ import annotations

import json
import os
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
                "--images", "24", "--precisions", "float32", "--batch-sizes", "8", "--decode-modes", "processes",
                "--hub", "", "--no-gpu-decode")
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
    assert "a.whl: not a wheel's name" in proc.stdout
    (carried / "b.whl").write_bytes(b"x" * (64 * 2**20))
    over = _run("--carry-size", str(carried))
    assert over.returncode == 1 and "DOES NOT FIT" in over.stdout


def _matches_this_python(wheel: Path) -> bool:
    python_tag = wheel.name[:-len(".whl")].split("-")[-3]
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return python_tag == here or python_tag.startswith("py")


WHEELS = sorted((ROOT / ".whl-cpu").glob("*.whl")) if (ROOT / ".whl-cpu").is_dir() else []


@pytest.mark.slow
@requires_shared
@pytest.mark.skipif(not WHEELS or not all(map(_matches_this_python, WHEELS)),
                    reason="no wheels for this Python in .whl-cpu/ (make gpu-wheels GPU_PY=3.11 GPU_WHEELS=.whl-cpu)")
def test_the_dry_run_in_an_environment_shaped_like_the_lent_machine(tmp_path):
    """The documented command, in a venv holding only what the GPU machine has (no TensorFlow, no Keras): the
    carried wheels are installed and imported first, and every variant, a keras-hub ViT included, runs on torch
    without TensorFlow."""
    env_dir = tmp_path / "machine"
    built = subprocess.run([sys.executable, str(ROOT / "scripts" / "machine_env.py"), str(env_dir)],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    photos = tmp_path / "photos"
    _run("--copy-photos", str(DVC), str(photos), "4")
    out = tmp_path / "out"
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    proc = subprocess.run([str(env_dir / "bin" / "python"), str(SCRIPT), "--cpu-smoke", "--wheels",
                           str(ROOT / ".whl-cpu"), "--photos", str(photos), "--out", str(out), "--backends", "torch",
                           "--images", "8", "--image-size", "32", "--precisions", "float32", "--batch-sizes", "4",
                           "--decode-modes", "processes", "--hub", "hub-vit-tiny"],
                          cwd=ROOT, env=clean, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["complete"] and {Path(w).name for w in report["wheels"]["wheels"]} == {w.name for w in WHEELS}
    facts = report["environment"]
    assert facts["keras_from"].startswith(report["wheels"]["site"]) and not facts["tensorflow_importable"]
    assert report["pythonpath"].split(os.pathsep) == [report["wheels"]["site"], str(ROOT)]
    got = {v["name"]: v["result"] for v in report["variants"]}
    assert not [n for n, r in got.items() if "error" in r], got
    assert got["decode"]["pil"]["per_core_processes"] > 0
    cnn = got["backbone mobilenetv2 torch float32 b4"]
    assert cnn["backend"] == "torch" and cnn["batch"]["4"]["finite"] and not cnn["tensorflow_imported"]
    vit = got["backbone hub-vit-tiny torch float32 b4"]
    assert vit["input_size"] == [56, 56] and vit["batch"]["4"]["images_per_s"] > 0 and not vit["tensorflow_imported"]
    e2e = got["e2e hub-vit-tiny torch float32 b4 processes"]
    assert e2e["images"] == 8 and e2e["store_device"] == "CPU" and not e2e["tensorflow_imported"]
    assert "skipped" in got["gpu_decode"] or got["gpu_decode"]["batch"]  # torchvision absent, or measured


def test_a_child_cut_short_still_hands_back_what_it_measured(tmp_path):
    """A measurement past its time limit is killed; the figures it printed before (one JSON line a step)
    come back with the error, and each line was handed on as it came (the check rewrites its JSON then)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchkit import run_child

    child = tmp_path / "child.py"
    child.write_text("import json, time\nprint(json.dumps({'batch': {'64': 1200.0}}), flush=True)\n"
                     "time.sleep(120)\nprint(json.dumps({'batch': {'64': 1200.0, '256': 3000.0}}))\n")
    seen: list[dict] = []
    got = run_child([sys.executable, str(child)], timeout=10, on_json=seen.append)
    assert got["batch"] == {"64": 1200.0} and got["error"] == "timed out after 10 s" and 9 < got["wall_s"] < 60
    assert [s["batch"] for s in seen] == [{"64": 1200.0}]
    failed = run_child([sys.executable, "-c", "raise SystemExit('no GPU here')"], timeout=30)
    assert failed["error"] == "no GPU here"


# extract-features on JAX and torch imports no TensorFlow (the lent GPU machine has none): checked in
# tests/test_kernels.py, in the interpreter that compares those backends' features with TensorFlow's.
