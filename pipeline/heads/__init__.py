"""Heads: incremental classifiers on feature arrays, one small file each.

``make_head(name, **options)`` builds one by name; every head implements
:class:`pipeline.heads.base.Head`.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import HeadError
from pipeline.heads.base import Head

HEAD_NAMES = ("logreg", "softmax", "nme", "slda", "ridge")
ENGINES = ("numpy", "river")


def default_lr(optimizer: str, n_features: int | None) -> float:
    """Learning rate for standardised features, measured on real pooled CNN features.

    With standardised inputs ``|x|^2`` is about the dimension D, so an SGD step
    of ``1/D`` moves the margin by about one unit: on MobileNet features it was
    the best of a grid at both D=256 and D=1280 (README, "Choosing defaults").
    Adam is scale-free per coordinate; 3e-4 was best at both.
    """
    if optimizer == "adam":
        return 3e-4
    return 1.0 / n_features if n_features else 1e-3


LINEAR_OPTIONS = ("optimizer", "lr", "l2", "scale", "batch_size")


def make_head(name: str, engine: str = "numpy", n_features: int | None = None, **options: Any) -> Head:
    """Build a head by name, e.g. ``make_head("softmax", lr=0.005)``."""
    options = {k: v for k, v in options.items() if v is not None}
    engine = options.pop("engine", engine)
    if name in ("logreg", "softmax"):
        if engine not in ENGINES:
            raise HeadError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
        params = {"optimizer": "sgd", "l2": 0.0, **{k: v for k, v in options.items() if k in LINEAR_OPTIONS}}
        params.setdefault("lr", default_lr(params["optimizer"], n_features))
        if engine == "river":
            from pipeline.heads.river_linear import RiverLinearHead

            return RiverLinearHead(name, **params)
        from pipeline.heads.online_linear import FastLinearHead

        return FastLinearHead(name, **params)
    if name == "nme":
        from pipeline.heads.nme import NMEHead

        return NMEHead(**_only(options, ("memory", "class_means", "pool_size", "seed"), name))
    if name == "slda":
        from pipeline.heads.slda import SLDAHead

        return SLDAHead(**_only(options, ("shrinkage",), name))
    if name == "ridge":
        from pipeline.heads.ridge import RidgeHead

        return RidgeHead(**_only(options, ("ridge_lambda", "random_features", "seed"), name))
    raise HeadError(f"unknown head {name!r}; expected one of {', '.join(HEAD_NAMES)}")


def _only(options: dict[str, Any], allowed: tuple[str, ...], head: str) -> dict[str, Any]:
    """Keep the options a head takes; linear-model options given to another head are an error."""
    wrong = sorted(k for k in options if k in LINEAR_OPTIONS and k not in allowed)
    if wrong:
        raise HeadError(f"--head {head} does not take {', '.join('--' + w.replace('_', '-') for w in wrong)}")
    return {k: v for k, v in options.items() if k in allowed}
