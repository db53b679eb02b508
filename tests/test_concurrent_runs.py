"""Two real runs of one writing command on one output: exactly one wins, the other is refused in one line.

The first run is held at the moment it has taken its output lock (``PIPELINE_TEST_PAUSE=locked``, see
:func:`pipeline.fsutil.pause_point`) while the second, a plain second process, starts; then it goes on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DVC, WEIGHTS_025, kaggle_names, link_subset, requires_shared, writer_inputs

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_TEST_")}
ENV.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
SMALL = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "96", "--weights", str(WEIGHTS_025)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return writer_inputs(tmp_path_factory.mktemp("inputs"), 200, 200, 16)


def commands(i: Path, out: Path) -> dict[str, tuple[Path, list[object]]]:
    a, models = i / "a.h5", [i / "a.model", i / "b.model"]
    train = ["train-incremental", a, "--head", "slda", "--holdout", "0.3", "-q"]
    return {
        "extract": (out / "s.h5", ["extract-features", i / "src", "-o", out / "s.h5", *SMALL, "-q"]),
        "import": (out / "i.h5", ["import", i / "emb", "-o", out / "i.h5", "-q"]),
        "export": (out / "e", ["export", a, "-o", out / "e", "-q"]),
        "merge": (out / "m.model", ["merge", *models, "-o", out / "m.model"]),
        "model-out": (out / "t.model", [*train, "--model-out", out / "t.model"]),
        "metrics-out": (out / "t.json", [*train, "--metrics-out", out / "t.json"]),
        "log-dir": (out / "logs", [*train, "--log-dir", out / "logs"]),
    }


def cli(args: list[object], **env: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *map(str, args)]


@pytest.mark.parametrize("name", ["extract", "import", "export", "merge", "model-out", "metrics-out", "log-dir"])
def test_two_real_runs_on_one_output_one_wins_the_other_is_refused_naming_the_first(tmp_path, inputs, name):
    if name == "extract":
        if not (WEIGHTS_025.is_file() and DVC.is_dir()):
            pytest.skip("needs the shared photos and weights")
        if not (inputs / "src").exists():
            link_subset(DVC, inputs / "src", kaggle_names(2))
    out, args = commands(inputs, tmp_path)[name]
    go = tmp_path / "go"
    first = subprocess.Popen(cli(args), stderr=subprocess.PIPE, text=True,
                             env={**ENV, "PIPELINE_TEST_PAUSE": "locked:300", "PIPELINE_TEST_RESUME": str(go)})
    try:
        seen = []
        for line in first.stderr:
            seen.append(line)
            if line.startswith("paused at locked"):
                break
        assert seen and seen[-1].startswith("paused at locked"), "".join(seen)
        second = subprocess.run(cli(args), capture_output=True, text=True, env=ENV, timeout=300)
        assert second.returncode == 1, (second.returncode, second.stdout, second.stderr)
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert "Traceback" not in second.stderr and len(lines) == 1, second.stderr
        assert f"another run is writing {out}" in lines[0] and f"process {first.pid} holds" in lines[0], lines[0]
        go.touch()
        _, rest = first.communicate(timeout=300)
        assert first.returncode == 0, rest
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert out.exists() and not out.with_name(out.name + ".lock").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") or "tmp-export" in p.name]
