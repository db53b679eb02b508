"""kill -9 of a writing command: no process left behind, no temporary file left after the rerun.

Real SIGKILLs of real subprocesses. The kill point is reached reliably through the
``PIPELINE_TEST_PAUSE`` hook (:func:`pipeline.fsutil.pause_point`): the command prints
``paused at NAME`` on stderr and sleeps there, half way through writing, until it is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DVC, WEIGHTS_025, kaggle_names, link_subset, requires_shared
from pipeline.workers import available_cpus

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
SMALL = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "128", "--weights", str(WEIGHTS_025)]


# --- processes, read from /proc (psutil is not a dependency) --------------------------------------

def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _ppid_and_state(int(entry))
            if info is not None and info[1] != "Z":
                parents[int(entry)] = info[0]
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    info = _ppid_and_state(pid)
    return info is not None and info[1] != "Z"  # a zombie has ended (only its exit status is left)


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


@requires_shared
@needs_proc
def test_decoder_processes_die_within_seconds_of_a_kill_9_of_their_parent(tmp_path):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(60))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "extract-features", str(src), "-o",
                             str(tmp_path / "s.h5"), *SMALL, "--workers", "2", "--decode", "processes",
                             "--batch-size", "4", "-q"], env=ENV)
    try:
        expected = min(2, available_cpus()) + 1  # the decoders (--workers is capped by the cores) and
        deadline, children = time.time() + 120, set()  # multiprocessing's resource tracker
        while time.time() < deadline and proc.poll() is None:
            children = descendants(proc.pid)
            if len(children) >= expected:
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(children) >= expected, f"decoders never started ({children})"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(alive(pid) for pid in children):
            time.sleep(0.05)
        left = [(pid, Path(f"/proc/{pid}/cmdline").read_bytes()[:120]) for pid in children if alive(pid)]
        assert not left, f"still running 5 s after the parent's SIGKILL: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- nothing left behind: killed half way through writing, then a successful rerun -----------------

from conftest import invoke_cli, writer_inputs  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return writer_inputs(tmp_path_factory.mktemp("inputs"), 3000, 300, 32)


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders, old copies and locks: what a killed writer may leave."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name.endswith((".tmp", ".lock", ".old")) or ".tmp-" in p.name or p.name.endswith(".parts"))


def kill_at(point: str, args: list[object], written: Path) -> None:
    """Run the command until it pauses at ``point``, check it is half way through writing, SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], stderr=subprocess.PIPE, text=True,
                            env={**ENV, "PIPELINE_TEST_PAUSE": point})
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(f"paused at {point}"):
                break
        assert seen and seen[-1].startswith(f"paused at {point}"), "".join(seen)
        assert leftovers(written), "nothing was being written when the kill came"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


CASES = {
    "import": ("import-write", lambda i, o: ["import", i / "emb", "-o", o / "i.h5", "-q"], "i.h5"),
    "export": ("export-write", lambda i, o: ["export", i / "a.h5", "-o", o / "e", "-q"], "e"),
    "merge": ("model-write", lambda i, o: ["merge", i / "a.model", i / "b.model", "-o", o / "m.model"], "m.model"),
    "export-overwrite": ("export-write",
                         lambda i, o: ["export", i / "b.h5", "-o", o / "e", "--overwrite", "-q"], "e"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_command_killed_half_way_through_writing_leaves_nothing_after_the_rerun(tmp_path, inputs, name):
    point, make, output = CASES[name]
    clean, out = tmp_path / "clean", tmp_path / "out"
    clean.mkdir()
    out.mkdir()
    if name == "export-overwrite":  # an earlier export is being replaced: it must survive the kill whole
        invoke_cli("export", inputs / "a.h5", "-o", out / "e", "-q")
        before = {p.name: p.read_bytes() for p in (out / "e").rglob("*") if p.is_file()}
    args = make(inputs, out)
    kill_at(point, args, out)
    if name == "export-overwrite":
        assert {p.name: p.read_bytes() for p in (out / "e").rglob("*") if p.is_file()} == before
    r = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert leftovers(out) == [], leftovers(out)
    invoke_cli(*make(inputs, clean))
    a, b = clean / output, out / output
    files = sorted(a.rglob("*")) if a.is_dir() else [a]
    for f in files:
        g = b / f.relative_to(a) if a.is_dir() else b
        if f.suffix == ".h5":  # a store records when and from where it was made: compare its rows
            assert store_rows(g) == store_rows(f)
        elif f.is_file() and f.suffix != ".model":  # a model file holds the time it was saved
            assert g.read_bytes() == f.read_bytes(), f


def store_rows(path: Path) -> tuple:
    from pipeline.store import open_store

    with open_store(path) as store:
        chunk = store.read(0, store.n_rows)
        return chunk.X.tobytes(), chunk.y.tolist(), chunk.paths, store.classes


@requires_shared
def test_extraction_killed_while_merging_its_shards_leaves_nothing_after_the_rerun(tmp_path):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(6))
    out = tmp_path / "out"
    out.mkdir()
    args = ["extract-features", src, "-o", out / "s.h5", *SMALL, "--image-size", "96", "--batch-size", "4",
            "--checkpoint-rows", "4", "-q"]
    kill_at("store-merge", args, out)
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # the half-merged store
    r = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert leftovers(out) == [] and (out / "s.h5").is_file(), leftovers(out)
