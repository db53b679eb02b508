"""Continual-learning methods for the MLP head, one small module each.

``make_method(name, **options)``; each method's options and defaults are its
constructor's keyword arguments.
"""

from __future__ import annotations

import inspect
from typing import Any

from pipeline.errors import HeadError
from pipeline.heads.cl.base import Method
from pipeline.heads.cl.ewc import EWC
from pipeline.heads.cl.icarl import ICaRL
from pipeline.heads.cl.lwf import LwF
from pipeline.heads.cl.replay import AGEM, ER

METHODS: dict[str, type[Method]] = {"finetune": Method, "er": ER, "ewc": EWC, "lwf": LwF, "icarl": ICaRL, "agem": AGEM}


def method_options(name: str) -> dict[str, Any]:
    """The options a method takes and their defaults (``seed`` comes from the head)."""
    sig = inspect.signature(METHODS[name].__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if k not in ("self", "seed") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


# every method option and its default (the same default wherever two methods share one)
ALL_METHOD_OPTIONS: dict[str, Any] = {k: v for name in METHODS for k, v in method_options(name).items()}


def method_settings(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The options ``name`` reads out of ``values``; another method's option away from its default is an error."""
    if name not in METHODS:
        raise HeadError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    reads = method_options(name)
    wrong = sorted(k for k, v in values.items() if k not in reads and v != ALL_METHOD_OPTIONS.get(k, v))
    if wrong:
        users = {k: [m for m in METHODS if k in method_options(m)] for k in wrong}
        raise HeadError("; ".join(f"--{k.replace('_', '-')} is read only by --method {', '.join(users[k])}" for k in wrong)
                        + f", not by --method {name}")
    return {k: v for k, v in values.items() if k in reads}


def make_method(name: str, seed: int = 0, **options: Any) -> Method:
    if name not in METHODS:
        raise HeadError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    allowed = method_options(name)
    wrong = sorted(set(options) - set(allowed))
    if wrong:
        raise HeadError(f"method {name!r} does not take {', '.join(wrong)}; it takes "
                        f"{', '.join(allowed) or 'no options'}")
    if "seed" in inspect.signature(METHODS[name].__init__).parameters:
        options["seed"] = seed
    return METHODS[name](**options)
