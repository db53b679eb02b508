"""The package type-checks: ``python -m mypy pipeline`` (settings in setup.cfg) reports nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_errors_in_the_package():
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]' installs it)")
    # mypy's cache (.mypy_cache in the project) makes later runs take seconds; a cold run about 30 s.
    result = subprocess.run([sys.executable, "-m", "mypy", "pipeline"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"mypy found errors:\n{result.stdout}{result.stderr}"
