"""A real full disk under every writing command: a small tmpfs filled to 0 KB, ~300 KB and ~2 MB free.

Each failing run ends with status 1 and one line naming the path (no crash, no traceback), leaves no
temporary file, and after the space is freed the rerun (``--resume`` where a checkpoint was kept)
gives what a run that never failed gives. Needs ``mount`` (root; CI runs as root): skipped elsewhere.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import DVC, WEIGHTS_025, invoke_cli, kaggle_names, link_subset, make_blobs_store
from pipeline.store import open_store

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_TEST_")}
ENV.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), PYTHONFAULTHANDLER="1")
SMALL = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "96", "--weights", str(WEIGHTS_025)]
LEVELS_KB = [0, 300, 2048]
TIMING = {"saved", "created", "timing", "rows_per_s"}  # what differs between two identical runs


class Disk:
    """A tmpfs of 8 MiB; ``fill(kb)`` leaves that much free, ``free()`` empties it."""

    def __init__(self, path: Path):
        self.path = path

    def fill(self, free_kb: int) -> None:
        st = os.statvfs(self.path)
        with open(self.path / "filler", "wb") as fh:
            fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free_kb * 1024))

    def free(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)

    def clear(self) -> None:
        for entry in self.path.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    mnt = tmp_path_factory.mktemp("tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root")
    try:
        yield Disk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 3 MB store and its export, two mergeable 2 MB models, a few real photos."""
    folder = tmp_path_factory.mktemp("inputs")
    make_blobs_store(folder / "big.h5", 3000, 256, ["a", "b", "c"])
    for name, seed in (("a", 1), ("b", 2)):
        store = make_blobs_store(folder / f"{name}.h5", 300, 512, ["a", "b", "c"], seed=seed)
        invoke_cli("train-incremental", store, "--head", "slda", "--model-out", folder / f"{name}.model", "-q")
    invoke_cli("export", folder / "big.h5", "-o", folder / "emb", "-q")
    if WEIGHTS_025.is_file() and DVC.is_dir():
        link_subset(DVC, folder / "src", kaggle_names(12))
    return folder


def commands(i: Path, out: Path) -> dict[str, tuple[Path, list[object]]]:
    train = ["train-incremental", i / "a.h5", "--head", "slda", "--holdout", "0.3", "--eval-every", "50", "-q"]
    return {
        "extract": (out / "s.h5", ["extract-features", i / "src", "-o", out / "s.h5", *SMALL, "--checkpoint-rows", "8",
                                   "--batch-size", "4", "-q"]),
        "import": (out / "i.h5", ["import", i / "emb", "-o", out / "i.h5", "-q"]),
        "export": (out / "e", ["export", i / "big.h5", "-o", out / "e", "-q"]),
        "merge": (out / "m.model", ["merge", i / "a.model", i / "b.model", "-o", out / "m.model"]),
        "model-out": (out / "t.model", ["train-incremental", i / "a.h5", "--head", "slda", "--model-out",
                                        out / "t.model", "-q"]),
        "metrics-out": (out / "t.json", [*train, "--metrics-out", out / "t.json"]),
        "log-dir": (out / "logs", [*train, "--log-dir", out / "logs"]),
        "plot": (out / "p.png", [*train, "--plot", out / "p.png"]),
        "report": (out / "r.html", [*train, "--report", out / "r.html"]),
        "evaluate": (out / "e.json", ["evaluate", i / "a.model", i / "b.h5", "--metrics-out", out / "e.json"]),
        "migrate": (out / "g.model", ["migrate-model", i / "a.model", "-o", out / "g.model"]),
    }


def run(args: list[object]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600)


def _untimed(value: object) -> object:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def contents(path: Path) -> object:
    """What a written output holds, less what differs between two identical runs (times, speeds)."""
    if path.is_dir():
        if (path / "points.csv").exists():
            with open(path / "points.csv", newline="") as fh:
                return [_untimed(row) for row in csv.DictReader(fh)]
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    if path.suffix == ".h5":
        with open_store(path) as store:
            chunk = store.read(0, store.n_rows)
            return chunk.X.tobytes(), chunk.y.tolist(), chunk.paths, store.skipped(), store.classes
    if path.suffix == ".model":
        with zipfile.ZipFile(path) as zf:
            return {n: _untimed(json.loads(zf.read(n))) if n == "model.json" else zf.read(n) for n in zf.namelist()}
    if path.suffix == ".json":
        return _untimed(json.loads(path.read_text()))
    return path.stat().st_size > 0  # a figure or a report: written whole (its bytes hold the time)


def assert_one_line_failure(r: subprocess.CompletedProcess, disk: Disk, name: str, free_kb: int) -> None:
    where = f"{name} at {free_kb} KB free"
    assert r.returncode == 1, (where, r.returncode, r.stderr[-3000:])  # not 139 (a segfault), not killed
    assert "Traceback" not in r.stderr and "Fatal Python error" not in r.stderr, (where, r.stderr[-3000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, (where, r.stderr)
    assert str(disk.path) in lines[0] and "No space left on device" in lines[0] and "errno" not in lines[0], \
        (where, lines[0])


NAMES = ["extract", "import", "export", "merge", "model-out", "metrics-out", "log-dir", "plot", "report",
         "evaluate", "migrate"]


@pytest.mark.parametrize("name", NAMES)
def test_a_full_disk_is_one_line_and_the_rerun_after_freeing_space_equals_a_run_that_never_failed(
        tmp_path, disk, inputs, name):
    if name == "extract" and not (inputs / "src").exists():
        pytest.skip("needs the shared photos and weights")
    clean_out, clean_args = commands(inputs, tmp_path)[name]
    invoke_cli(*clean_args)  # in this process: no start-up to pay
    expected = contents(clean_out)
    out, args = commands(inputs, disk.path)[name]
    failed = 0
    for free_kb in LEVELS_KB:
        disk.clear()
        disk.fill(free_kb)
        r = run(args)
        if r.returncode:
            failed += 1
            assert_one_line_failure(r, disk, name, free_kb)
            left = sorted(p.name for p in disk.path.rglob("*") if p.name.endswith(".tmp") or "tmp-export" in p.name)
            assert not left, (name, free_kb, left)
            disk.free()
            r = run(args)
            assert r.returncode == 0, (name, free_kb, r.stderr[-3000:])
        assert contents(out) == expected, (name, free_kb)
        assert not out.with_name(out.name + ".lock").exists()
        disk.free()
    assert failed >= 1 + (name in ("import", "export", "merge", "model-out")), "the disk was never full enough"


def test_training_logs_on_a_full_disk_keep_the_model_saved_on_another_disk(tmp_path, disk, inputs):
    args = ["train-incremental", inputs / "big.h5", "--head", "slda", "--holdout", "0.3", "--eval-every", "500",
            "-q", "--model-out"]
    invoke_cli(*args, tmp_path / "clean.model")
    for free_kb in (0, 4):
        disk.clear()
        disk.fill(free_kb)
        model = tmp_path / f"t{free_kb}.model"
        r = run([*args, model, "--log-dir", disk.path / "logs"])
        assert_one_line_failure(r, disk, "log-dir", free_kb)
        assert f"the model was saved to {model}" in r.stderr, r.stderr
        assert contents(model) == contents(tmp_path / "clean.model")
        disk.free()


def test_a_checkpoint_that_no_longer_fits_ends_the_run_and_resume_continues_it(tmp_path, disk, inputs):
    """The first checkpoint fits, a later one does not (the old file stays until the new one is whole)."""
    opts = ["--head", "slda", "--holdout", "0.3", "--eval-every", "500", "--chunk-rows", "250", "--checkpoint-every",
            "500", "-q"]
    clean = tmp_path / "clean.model"
    invoke_cli("train-incremental", inputs / "big.h5", *opts, "--model-out", clean)
    size = clean.stat().st_size
    disk.clear()
    disk.fill(int(1.5 * size / 1024))
    model = disk.path / "t.model"
    r = run(["train-incremental", inputs / "big.h5", *opts, "--model-out", model])
    assert_one_line_failure(r, disk, "checkpoint", int(1.5 * size / 1024))
    assert model.is_file() and not list(disk.path.glob("*.tmp"))  # the last checkpoint that fitted
    disk.free()
    r = run(["train-incremental", inputs / "big.h5", *opts, "--resume", model])
    assert r.returncode == 0, r.stderr
    assert contents(model) == contents(clean)
