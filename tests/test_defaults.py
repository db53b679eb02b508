"""Every default lives in one place: a head built by any path has the same effective settings.

The paths are ``make_head`` with the feature count, ``make_head`` without it, the registered class
itself, and the command line (``train-incremental --head NAME``); each head learns the same rows and
its ``settings()`` are compared (issue 18: the logreg learning rate used to be 1/D, 0.001 or 0.01).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_blobs_store
from pipeline.cli import main
from pipeline.heads import heads, make_head
from pipeline.heads.defaults import DEFAULT_MEMORY, DEFAULT_POOL_SIZE, REPLAY_OPTIONS
from pipeline.models import load_model
from pipeline.store import FeatureStore
from pipeline.train import TrainOptions

DIM = 6
CASES = [(name, engine) for name, cls in heads().items() for engine in cls.capabilities.engines]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_blobs_store(tmp_path_factory.mktemp("defaults") / "s.h5", 120, DIM, ["a", "b", "c"])


def _rows(store):
    with FeatureStore(store) as s:
        return s.read(0, s.n_rows)


@pytest.mark.parametrize("name,engine", CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_every_path_builds_the_same_head(store, tmp_path, name, engine):
    rows = _rows(store)
    X, y = rows.X, np.array(["abc"[k] for k in rows.y], dtype=object)
    cls = heads()[name]
    options = {"engine": engine} if len(cls.capabilities.engines) > 1 else {}
    built = {"make_head(n_features)": make_head(name, n_features=DIM, **options),
             "make_head()": make_head(name, **options)}
    if engine == cls.capabilities.engines[0]:
        built["class()"] = cls()
    settings = {how: head.partial_fit(X, y).settings() for how, head in built.items()}
    model = tmp_path / "m.model"
    args = ["train-incremental", str(store), "--head", name, "--model-out", str(model), "-q"]
    if options:
        args += ["--engine", engine]
    r = CliRunner().invoke(main, args + (["--trust-pickle"] if engine == "river" else []))
    assert r.exit_code == 0, r.output
    settings["cli"] = load_model(model, trust_pickle=True).head.settings()
    first = next(iter(settings.values()))
    assert all(s == first for s in settings.values()), settings


def test_the_logreg_learning_rate_default_is_one_over_the_dimension_and_said_in_help(store):
    for head in (make_head("logreg", n_features=DIM), make_head("logreg"), heads()["logreg"]()):
        assert head.partial_fit(np.eye(DIM, dtype=np.float32)[:2], ["a", "b"]).settings()["lr"] == 1 / DIM
    assert make_head("logreg", optimizer="adam").settings()["lr"] == 3e-4
    r = CliRunner().invoke(main, ["train-incremental", "--help"])
    assert "1/feature_dim for sgd" in " ".join(r.output.split()), r.output


def test_the_exemplar_budget_is_declared_once():
    assert [o.default for o in REPLAY_OPTIONS] == [DEFAULT_MEMORY, DEFAULT_POOL_SIZE]
    assert (TrainOptions().replay_memory, TrainOptions().pool_size) == (DEFAULT_MEMORY, DEFAULT_POOL_SIZE)
    for name, cls in heads().items():
        for option in cls.options:
            if option.name in ("memory", "pool_size"):
                assert option in REPLAY_OPTIONS, (name, option)
                assert make_head(name).settings()[option.name] == option.default
