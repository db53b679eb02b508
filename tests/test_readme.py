"""The README's quickstart runs as written: its fenced bash commands, on ../shared, in a scratch folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, requires_shared

COMMANDS = ("extract-features", "train-incremental", "pipeline")


def quickstart_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def test_quickstart_has_commands():
    script = "\n".join(quickstart_blocks())
    for command in COMMANDS:
        assert re.search(rf"^{command} ", script, re.M), command
    assert "pip install" not in script  # installing is the set-up's job; the quickstart only runs


@requires_shared
@pytest.mark.slow
def test_quickstart_runs_as_written_offline(tmp_path):
    """Run from a folder that has ../shared next to it, as the project folder does, with the commands of this
    checkout on PATH (shims calling ``python -m pipeline``, whatever the editable install points at)."""
    work = tmp_path / "project"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in COMMANDS:
        sub = "" if command == "pipeline" else command
        shim = bin_dir / command
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pipeline {sub} "$@"\n')
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "KERAS_HOME": str(tmp_path / "no-keras-cache")}
    script = "set -euo pipefail\n" + "\n".join(quickstart_blocks())
    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    for name in ("train.h5", "val.h5", "model.model", "metrics.json", "curve.png", "run.html", "predictions.csv"):
        assert (work / name).stat().st_size > 0, name
    predictions = (work / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 21 and sum(",church," in line for line in predictions) >= 15  # 20 held-out photos
