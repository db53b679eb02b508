"""Every registered head through the package's check suite (pipeline.heads.checks), plus the registry."""

from __future__ import annotations

import pytest

from pipeline.errors import HeadError
from pipeline.heads import heads, make_head
from pipeline.heads.checks import DIM, yield_checks

CASES = [(name, engine, check) for name, cls in heads().items() for engine in cls.capabilities.engines
         for check in yield_checks(name)]


@pytest.mark.parametrize("name,engine,check", CASES,
                         ids=[f"{n}-{e}-{c.__name__.removeprefix('check_')}" for n, e, c in CASES])
def test_head_passes_check(name, engine, check):
    options = {"engine": engine} if len(heads()[name].capabilities.engines) > 1 else {}
    check(lambda: make_head(name, n_features=DIM, **options))


def test_unknown_head_engine_and_options_are_named():
    with pytest.raises(HeadError, match="unknown head 'svm'"):
        make_head("svm")
    with pytest.raises(HeadError, match="--engine must be one of numpy, river, got 'torch'"):
        make_head("logreg", engine="torch")
    with pytest.raises(HeadError, match="does not take an option called 'lrr'"):
        make_head("logreg", lrr=0.1)
    with pytest.raises(HeadError, match=r"--head nme does not take --lr \(only logreg, softmax, mlp read it\)"):
        make_head("nme", lr=0.1)
    with pytest.raises(HeadError, match="--head slda does not take --engine"):
        make_head("slda", engine="numpy")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0, "x", True])
def test_numeric_options_are_validated_in_the_library(bad):
    with pytest.raises(HeadError, match="--lr must be a finite number > 0"):
        make_head("logreg", lr=bad)


def test_every_head_declares_its_options_once_and_shared_names_agree():
    by_name: dict = {}
    for name, cls in heads().items():
        assert cls.summary and cls.name == name
        for opt in cls.options:
            assert opt.help, (name, opt.name)
            if opt.default is not None and opt.default != "auto":
                assert opt.check(opt.default, name) == opt.default
            seen = by_name.setdefault(opt.name, opt)
            assert (seen.type, seen.choices, seen.flag, seen.low, seen.high) == \
                (opt.type, opt.choices, opt.flag, opt.low, opt.high), opt.name
