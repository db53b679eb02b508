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


def test_orders_are_distinct_and_listed(tmp_path):
    """5 classes by 2: seeds 0 and 2 shuffle them into the same tasks; --orders 3 must still run 3 different orders."""
    from pipeline.train import distinct_orders

    five = CLASSES[:5]
    assert make_tasks(five, increment=2, seed=0) == make_tasks(five, increment=2, seed=2)   # the collision
    store = make_blobs_store(tmp_path / "s.h5", 300, 8, five)
    m = run_training([store], head="slda", holdout=0.3, increment=2, orders=3, no_joint=True,
                     metrics_out=tmp_path / "m.json", **quiet)
    splits = [tuple(frozenset(t) for t in tasks) for tasks in m["class_orders"]]
    assert len(set(splits)) == 3 and m["order_seeds"] == [0, 1, 3]
    assert [[len(t) for t in tasks] for tasks in m["class_orders"]] == [[2, 2, 1]] * 3   # the remainder: a smaller last task
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["class_orders"] == m["class_orders"] and saved["order_seeds"] == [0, 1, 3]
    # every order can be rerun alone: a plain run with its --order-seed makes the same tasks
    plain = run_training([store], head="slda", holdout=0.3, increment=2, order_seed=3, no_joint=True, **quiet)
    assert plain["tasks"] == m["class_orders"][2]
    # 5 classes in tasks of 2, 2, 1 have 5! / (2! 2! 1!) = 30 distinct orders: all can be drawn, not one more
    assert len({tuple(map(frozenset, t)) for _, t in distinct_orders(five, 2, 30)}) == 30
    with pytest.raises(OptionError, match="only 30 distinct orders"):
        run_training([store], head="slda", holdout=0.3, increment=2, orders=31, **quiet)


def test_order_seed_moves_the_class_order_and_not_the_head(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 400, 8, CLASSES[:6])
    runs = {(s, o): run_training([store], head="mlp", head_options={"hidden": 0, "chunk_passes": 1}, holdout=0.3,
                                 increment=2, epochs=1, seed=s, order_seed=o, no_joint=True, **quiet)
            for s, o in [(0, 0), (0, 4), (1, 0)]}
    assert runs[(0, 0)]["tasks"] != runs[(0, 4)]["tasks"]       # --order-seed: another class order...
    assert runs[(0, 0)]["settings"]["seed"] == runs[(0, 4)]["settings"]["seed"] == 0   # ...the same head seed
    assert runs[(1, 0)]["tasks"] == runs[(0, 0)]["tasks"]       # --seed with --order-seed fixed: the same order
    assert runs[(1, 0)]["settings"]["seed"] == 1
    default = run_training([store], head="slda", holdout=0.3, increment=2, seed=4, no_joint=True, **quiet)
    assert default["tasks"] == runs[(0, 4)]["tasks"]           # --order-seed defaults to --seed


def test_cli_order_seed_and_help(tmp_path):
    store = make_blobs_store(tmp_path / "s.h5", 300, 8, CLASSES[:5])
    base = ["train-incremental", store, "--holdout", "0.3", "-q", "--head", "slda", "--no-joint"]
    assert_clean_error(invoke(*base, "--order-seed", "3"), "--order-seed seeds the class order of an --increment run")
    assert_clean_error(invoke(*base, "--increment", "2", "--orders", "31"), "only 30 distinct orders")
    result = invoke(*base, "--increment", "2", "--orders", "3", "--order-seed", "0")
    assert result.exit_code == 0, result.output
    assert "3 class orders, all distinct (seeds 0, 1, 3)" in result.output
    text = " ".join(invoke("train-incremental", "--help").output.split())
    assert "--order-seed" in text and "the last task is smaller (5 classes by 2: tasks of 2, 2, 1)" in text
    assert "seeds repeating an earlier order are skipped" in text
