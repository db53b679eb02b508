"""Nonsense and contradicting training options: a clean refusal (no traceback) or a valid result,
and an existing model file left byte for byte untouched by a refusal (issue 11)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import make_blobs_store
from pipeline.cli import main
from pipeline.heads import heads
from pipeline.models import load_model
from pipeline.options import RUN_OPTIONS
from pipeline.runs import run_merge, run_training

quiet = {"echo": lambda s: None, "out": lambda s: None, "quiet": True}
BAD_NUMBERS = ["nan", "inf", "-inf", "0", "-1", "-1e300", "1e300", "99999999999999999999999"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opts")
    store = make_blobs_store(tmp / "s.h5", 240, 6, ["a", "b", "c"])
    model = tmp / "m.pkl"
    r = CliRunner().invoke(main, ["train-incremental", str(store), "--model-out", str(model),
                                  "--metrics-out", str(tmp / "m.json"), "-q"])
    assert r.exit_code == 0, r.output
    return tmp, store, model


def numeric_cases():
    """(flag, head) for every numeric option of every head and of the run."""
    cases = [(o.cli_flag, "logreg") for o in RUN_OPTIONS.values() if o.name != "increment"]
    cases.append(("--increment", "nme"))
    for name, cls in heads().items():
        cases += [(o.cli_flag, name) for o in cls.options if o.type in (int, float) and not o.from_run]
    return cases


@pytest.mark.parametrize("flag,head", numeric_cases())
@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_numeric_option_fuzz(setup, flag, head, value):
    tmp, store, model = setup
    before = model.read_bytes(), (tmp / "m.json").read_bytes()
    args = ["train-incremental", str(store), "--head", head, flag, value, "--model-out", str(model),
            "--metrics-out", str(tmp / "m.json"), "-q"]
    if flag in ("--increment",):
        args += ["--holdout", "0.3"]
    r = CliRunner().invoke(main, args)
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code != 0:
        assert flag in r.output or "--holdout" in r.output or "diverged" in r.output, r.output
        assert (model.read_bytes(), (tmp / "m.json").read_bytes()) == before
    else:  # a valid result: a loadable model with finite numbers, then restore for the next case
        assert load_model(model).head.finite_state()
        model.write_bytes(before[0])
        (tmp / "m.json").write_bytes(before[1])


@pytest.mark.parametrize("args,message", [
    (["--head", "nme", "--lr", "0.1"], "--head nme does not take --lr"),
    (["--head", "slda", "--engine", "river"], "--head slda does not take --engine"),
    (["--memory", "10"], "--head logreg without --replay does not use it"),
    (["--holdout", "0.3", "--test", "{store}"], "--holdout and --test"),
    (["--head", "nme", "--increment", "1", "--holdout", "0.3", "--replay"], "nme keeps its own exemplars"),
    (["--head", "ridge", "--increment", "1", "--holdout", "0.3", "--replay"], "does not forget"),
    (["--replay"], "--replay only acts in class-incremental runs"),
    (["--holdout", "0.3", "--increment", "1", "--class-order", "a,b,a,c"], "--class-order lists a more than once"),
    (["--holdout", "0.3", "--tasks", "a;;b"], "task 2 is empty"),
    (["--holdout", "0.3", "--tasks", "a,b;b"], "--tasks lists b more than once"),
    (["--holdout", "0.3", "--tasks", "a", "--increment", "1"], "give one"),
    (["--holdout", "0.999999"], "leaves no labelled row to learn"),
    (["--holdout", "1e-12"], "leaves no row to evaluate"),
])
def test_contradicting_or_useless_options_are_refused(setup, args, message):
    tmp, store, model = setup
    before = model.read_bytes()
    args = [a.replace("{store}", str(store)) for a in args]
    r = CliRunner().invoke(main, ["train-incremental", str(store), *args, "--model-out", str(model), "-q"])
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert message in r.output, r.output
    assert model.read_bytes() == before


def test_resume_with_changed_settings_is_refused_by_name(tmp_path, setup):
    _, store, model = setup
    copy = tmp_path / "m.pkl"
    copy.write_bytes(model.read_bytes())
    r = CliRunner().invoke(main, ["train-incremental", str(store), "--resume", str(copy), "--lr", "0.5", "-q"])
    assert r.exit_code != 0 and "--lr 0.5" in r.output and "--resume keeps" in r.output, r.output
    # an interrupted run continued with another --seed: refused, naming what changed
    m = load_model(copy)
    m.progress = {**(m.progress or {}), "done": False, "key": "other",
                  "key_parts": {**m.progress["key_parts"], "seed": 5}}
    from pipeline.models import save_model

    save_model(m, copy)
    before = copy.read_bytes()
    r = CliRunner().invoke(main, ["train-incremental", str(store), "--resume", str(copy), "-q"])
    assert r.exit_code != 0 and "--seed: 5 -> 0" in r.output, r.output
    assert copy.read_bytes() == before


def test_merge_of_overlapping_models_is_refused(tmp_path):
    a = make_blobs_store(tmp_path / "a.h5", 200, 6, ["x", "y"], seed=1)
    b = make_blobs_store(tmp_path / "b.h5", 200, 6, ["x", "y"], seed=2)
    run_training([a], head="ridge", model_out=tmp_path / "a.pkl", **quiet)
    run_training([a, b], head="ridge", model_out=tmp_path / "ab.pkl", **quiet)
    from pipeline.errors import OptionError

    with pytest.raises(OptionError, match="both learnt from"):
        run_merge([tmp_path / "a.pkl", tmp_path / "ab.pkl"], tmp_path / "o.pkl", out=lambda s: None)
    with pytest.raises(OptionError, match="same model file twice"):
        run_merge([tmp_path / "a.pkl", tmp_path / "a.pkl"], tmp_path / "o.pkl", out=lambda s: None)
    assert not (tmp_path / "o.pkl").exists()


def test_evaluate_refuses_nan_features_like_training(tmp_path, setup):
    import h5py
    import numpy as np

    _, store, model = setup
    bad = make_blobs_store(tmp_path / "bad.h5", 50, 6, ["a", "b"])
    with h5py.File(bad, "a") as f:
        f["features"][3] = np.nan
    r = CliRunner().invoke(main, ["evaluate", str(model), str(bad)])
    assert r.exit_code != 0 and "hold NaN or infinite" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("head", ["slda", "ridge"])
def test_progressive_accuracy_measured_when_the_store_fits_one_chunk(tmp_path, head):
    store = make_blobs_store(tmp_path / "s.h5", 1000, 8, ["a", "b", "c"])
    one = run_training([store], head=head, **quiet)["progressive"]["accuracy"]
    small = run_training([store], head=head, chunk_rows=100, **quiet)["progressive"]["accuracy"]
    assert one > 0.5 and abs(one - small) < 0.05, (one, small)


def test_a_diverged_or_empty_model_is_never_saved(tmp_path):
    import numpy as np

    from pipeline.errors import TrainingError
    from pipeline.heads import make_head
    from pipeline.models import TrainedModel
    from pipeline.train import checked_save

    path = tmp_path / "m.pkl"
    path.write_bytes(b"previous model")
    head = make_head("softmax", n_features=4)
    with pytest.raises(TrainingError, match="learnt no class"):
        checked_save(TrainedModel(head, "softmax", {"feature_dim": 4}), path)
    head.partial_fit(np.eye(4), ["a", "b", "a", "b"])
    head.model_.W[0, 0] = np.nan
    with pytest.raises(TrainingError, match="NaN or infinite"):
        checked_save(TrainedModel(head, "softmax", {"feature_dim": 4}), path)
    assert path.read_bytes() == b"previous model"
