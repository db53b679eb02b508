"""Files written before issue 18's refactor still load and give the same answers.

``tests/data/v7790fdb`` was made by the code at commit 7790fdb (``git worktree add OLD 7790fdb`` and
``PYTHONPATH=OLD python scripts/make_old_files.py tests/data/v7790fdb``): a store
file, a ``--no-merge`` parts folder, and a model of each head (River's engine as a pickle, ``--replay``
and an ``mlp --method icarl`` class-incremental run among them), with what that code predicted.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.info import describe
from pipeline.models import load_model
from pipeline.runs import run_evaluation
from pipeline.store import open_store

OLD = Path(__file__).parent / "data" / "v7790fdb"
EXPECTED = json.loads((OLD / "expected.json").read_text())
MODELS = sorted(k for k in EXPECTED if not k.startswith("_"))


def _rows():
    with open_store(OLD / "store.h5") as store:
        return store.read(0, store.n_rows)


def test_an_old_store_and_parts_folder_read_the_same_rows():
    rows = _rows()
    with open_store(OLD / "parts.h5") as parts:  # OUT.parts found from OUT, as before
        assert parts.n_rows == EXPECTED["_parts_rows"] == len(rows.y)
        both = parts.read(0, parts.n_rows)
        np.testing.assert_array_equal(both.X, rows.X)
        assert both.paths == rows.paths and parts.identity == open_store(OLD / "store.h5").identity
    info = describe(OLD / "store.h5")
    assert info["rows"] == 90 and info["skipped"]["count"] == 1 and info["identity"]["backbone"] == "synthetic"


@pytest.mark.parametrize("name", MODELS)
def test_an_old_model_loads_and_predicts_what_it_did(name):
    model = load_model(OLD / f"{name}.model", trust_pickle=name.endswith("river"))
    want = EXPECTED[name]
    rows = _rows()
    assert [str(c) for c in model.classes] == want["classes"]
    settings, expected = model.head.settings(), dict(want["settings"])
    if settings.get("method") not in (None, "ewc"):
        # ewc_lambda's default changed on purpose (issue 24: Fisher normalised, default 1e5 -> 1); other methods
        # never read it and show the current default.
        expected.pop("ewc_lambda", None), settings.pop("ewc_lambda", None)
    assert settings == expected
    assert [str(p) for p in model.head.predict(rows.X)] == want["predictions"]
    np.testing.assert_allclose(model.head.predict_proba(rows.X), np.array(want["proba"]), atol=2e-6)


def test_an_old_model_evaluates_on_an_old_store(tmp_path):
    with warnings.catch_warnings():  # it learnt from this store (a leakage warning where the paths match)
        warnings.simplefilter("ignore")
        metrics = run_evaluation(OLD / "slda.model", [OLD / "store.h5"], out=lambda s: None)
    assert metrics["heldout"]["rows"] == 90 and metrics["heldout"]["accuracy"] > 0.8


def test_an_old_river_model_still_needs_trust():
    from pipeline.errors import ModelFileError

    with pytest.raises(ModelFileError, match="--trust-pickle"):
        load_model(OLD / "logreg-river.model")
