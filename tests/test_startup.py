"""Start-up: importing the package changes nothing, help is quick, and a wrong path is reported before
TensorFlow is imported (issue 18). Timings are printed (``-s``), never asserted: the machine is shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BAD_PATH = """
import json, sys, time
t0 = time.perf_counter()
import click
from pipeline.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
    error = None
except click.ClickException as exc:
    error = exc.format_message()
print(json.dumps({"error": error, "modules": sorted(m for m in ("tensorflow", "keras", "jax", "torch", "sklearn",
                  "river", "ray") if m in sys.modules), "seconds": time.perf_counter() - t0}))
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env)


def test_importing_the_package_changes_no_environment_variable():
    code = ("import json, os; before = dict(os.environ); import pipeline, pipeline.cli, pipeline.heads; "
            "pipeline.heads.heads(); print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))")
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {}


@pytest.mark.parametrize("args,message", [
    (["extract-features", "/nonexistent/photos", "-o", "/nonexistent/out.h5"], "does not exist"),
    (["train-incremental", "/nonexistent/features.h5"], "does not exist"),
    (["evaluate", "/nonexistent/model.model", "/nonexistent/features.h5"], "does not exist"),
], ids=["extract-features", "train-incremental", "evaluate"])
def test_a_missing_path_is_reported_before_any_framework_is_imported(args, message):
    r = _python(BAD_PATH, *args)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert message in (result["error"] or ""), result
    assert not {"tensorflow", "keras", "jax", "torch", "ray"} & set(result["modules"]), result
    print(f"\n{args[0]} with a missing path: {result['seconds']:.2f} s to the error, imported {result['modules']}")


@pytest.mark.parametrize("command", ["extract-features", "train-incremental"])
def test_help_imports_no_heavy_library(command):
    code = ("import sys, json; from pipeline.cli import main\ntry:\n    main([sys.argv[1], '--help'])\n"
            "except SystemExit:\n    pass\nprint(json.dumps(sorted(m for m in ('tensorflow', 'keras', 'sklearn', "
            "'river', 'scipy.linalg', 'pandas', 'h5py', 'ray') if m in sys.modules)))")
    t0 = time.perf_counter()
    r = _python(code, command)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
    print(f"\n{command} --help: {seconds:.2f} s in a fresh interpreter")
