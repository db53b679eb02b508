"""Protocols as papers report them: --first-increment (B50 Inc10) and --orders K (mean and std over class orders)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_blobs_store
from pipeline.cli import main
from pipeline.errors import OptionError
from pipeline.models import load_model
from pipeline.runs import ORDER_KEYS, run_training
from pipeline.train import make_tasks

quiet = {"echo": lambda s: None, "out": lambda s: None, "quiet": True}
CLASSES = [f"c{i}" for i in range(7)]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, pattern: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a ClickException, not a crash
    assert pattern in result.output, result.output


def test_first_increment_makes_a_larger_first_task():
    tasks = make_tasks([f"k{i:03d}" for i in range(100)], increment=10, first_increment=50)
    assert [len(t) for t in tasks] == [50, 10, 10, 10, 10, 10]
    assert sorted(c for t in tasks for c in t) == [f"k{i:03d}" for i in range(100)]
    # the same seeded order as a plain --increment run, only cut differently
    plain = make_tasks([f"k{i:03d}" for i in range(100)], increment=10)
    assert [c for t in tasks for c in t] == [c for t in plain for c in t]
    assert [len(t) for t in make_tasks(CLASSES, increment=2, first_increment=3)] == [3, 2, 2]
    assert [len(t) for t in make_tasks(CLASSES, increment=4, first_increment=1)] == [1, 4, 2]


@pytest.mark.parametrize("kwargs, message", [
    ({"first_increment": 3}, "give --increment too"),
    ({"first_increment": 7, "increment": 2}, "expected 1 to 6 (the stores hold 7 classes)"),
    ({"first_increment": 2, "spec": "c0;c1"}, "--tasks already spells out every task"),
])
def test_first_increment_errors(kwargs, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_tasks(CLASSES, **kwargs)


def test_first_increment_run_evaluates_each_task(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 500, 8, CLASSES)
    m = run_training([store], head="slda", holdout=0.3, increment=2, first_increment=3, no_joint=True, **quiet)
    assert [len(t) for t in m["tasks"]] == [3, 2, 2]
    assert len(m["accuracy_matrix"]) == 3 and len(m["accuracy_after_each_task"]) == 3


def test_three_orders_give_three_runs_and_their_mean_and_std(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 600, 8, CLASSES[:6])
    out: list[str] = []
    m = run_training([store], head="softmax", holdout=0.3, increment=2, orders=3, seed=5,
                     metrics_out=tmp_path / "m.json", model_out=tmp_path / "model.pkl", plot=tmp_path / "p.png",
                     log_dir=tmp_path / "logs", echo=lambda s: None, out=out.append, quiet=True)
    runs = m["orders"]
    assert [r["order_seed"] for r in runs] == [5, 6, 7]
    assert len({tuple(r["class_order"]) for r in runs}) == 3  # three different class orders
    for key in ORDER_KEYS:
        values = [r[key] for r in runs]
        assert m["orders_summary"][key]["values"] == values
        assert m["orders_summary"][key]["mean"] == pytest.approx(np.mean(values))
        assert m["orders_summary"][key]["std"] == pytest.approx(np.std(values))
    saved = json.loads((tmp_path / "m.json").read_text())
    assert len(saved["orders"]) == 3 and saved["orders_summary"]["final_accuracy"]["mean"] == pytest.approx(
        m["orders_summary"]["final_accuracy"]["mean"])
    text = "\n".join(out)
    assert "3 class orders" in text and "final accuracy:" in text and "+/-" in text
    # order 1 is the run a plain --increment run with the same --seed makes; its model is the one saved
    plain = run_training([store], head="softmax", holdout=0.3, increment=2, seed=5, **quiet)
    assert runs[0]["tasks"] == plain["tasks"] and runs[0]["final_accuracy"] == plain["final_accuracy"]
    # the joint reference ignores the class order: trained once, the plain run's, reported for every order
    assert [r["joint_accuracy"] for r in runs] == [plain["joint_accuracy"]] * 3
    assert runs[2]["joint_minus_final"] == pytest.approx(plain["joint_accuracy"] - runs[2]["final_accuracy"])
    assert load_model(tmp_path / "model.pkl").head.rows_seen_ == runs[0]["rows_seen"]
    for k in (1, 2, 3):
        assert (tmp_path / f"p.order-{k}.png").is_file() and (tmp_path / f"p.order-{k}.confusion.png").is_file()
        assert (tmp_path / "logs" / f"order-{k}" / "points.csv").is_file()


def test_cli_orders_and_first_increment_errors(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 300, 8, CLASSES)
    base = ["train-incremental", store, "--holdout", "0.3", "-q"]
    assert_clean_error(invoke(*base, "--orders", "2"), "--orders repeats a class-incremental run")
    assert_clean_error(invoke(*base, "--orders", "2", "--increment", "2", "--class-order", ",".join(CLASSES)),
                       "--class-order fixes the order")
    assert_clean_error(invoke(*base, "--orders", "2", "--tasks", "c0;c1"), "--tasks fixes the order")
    assert_clean_error(invoke(*base, "--orders", "2", "--increment", "2", "--resume", tmp_path / "x.pkl"),
                       "cannot --resume")
    assert_clean_error(invoke(*base, "--orders", "0", "--increment", "2"), "--orders")
    assert_clean_error(invoke(*base, "--first-increment", "3"), "give --increment too")
    assert_clean_error(invoke(*base, "--first-increment", "9", "--increment", "2"), "expected 1 to 6")
    result = invoke(*base, "--increment", "2", "--orders", "2", "--head", "slda", "--no-joint")
    assert result.exit_code == 0, result.output
    assert "2 class orders" in result.output and "final accuracy:" in result.output
