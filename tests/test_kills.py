"""kill -9 of a writing command: no process left behind, no temporary file left after the rerun.

Real SIGKILLs of real subprocesses. The kill point is reached reliably through the
``PIPELINE_TEST_PAUSE`` hook (:func:`pipeline.fsutil.test_pause`): the command prints
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
        deadline, children = time.time() + 120, set()
        while time.time() < deadline and proc.poll() is None:
            children = descendants(proc.pid)
            if len(children) >= 3:  # two decoders and multiprocessing's resource tracker
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(children) >= 3, f"decoders never started ({children})"
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
