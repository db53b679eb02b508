"""Check a rebuilt head's state before it is used: what every head holds, and what each class declares.

A model file holds data only (:mod:`pipeline.state_codec`), but data can still be wrong: a count stored as
text, per-class statistics with one class too few, two classes of one name. :func:`check_head` runs once
when a model file is loaded (:func:`pipeline.models.load_model`) and refuses such a state in one line,
instead of a wrong prediction or a traceback later.

What is checked:

- every head: ``classes_`` a list of distinct labels (text or numbers), ``n_features_in_`` a count >= 1
  once a class is known, ``rows_seen_`` a count, and its settings valid for its options
  (:func:`pipeline.heads.registry.check_options`);
- every object of the state (the head and the objects it holds) against its class's ``state_schema``:
  attribute -> spec, where a spec is

  - ``"count"``: an integer >= 0 (not a bool, not text); ``"count?"``: the same or None;
  - ``"array[C,D]"``: a numeric array of that shape (``"array?[...]"``: or None); a dimension is ``C``
    (the head's classes), ``D`` (its features), an integer attribute of the same object (``dim``), a
    number, ``*`` (any) or a trailing ``...`` (any further dimensions);
  - ``"object"`` / ``"object?"``: an object checked the same way, with the same ``C`` and ``D``;

- and the class's own ``_check_state(dims)`` for relations a spec cannot say (it raises ValueError).
"""

from __future__ import annotations

import numbers
import re
from typing import Any

import numpy as np

from pipeline.heads.registry import check_options, heads

_ARRAY = re.compile(r"array(\??)\[([^\]]*)\]$")
_MISSING = object()


class StateError(ValueError):
    """A head's state that no training could have produced."""


def check_head(head: Any) -> None:
    """Raise :class:`StateError` naming the first attribute that does not fit."""
    classes = head.classes_
    if not isinstance(classes, list):
        raise StateError(f"classes_ is a {type(classes).__name__}; expected a list of class labels")
    for i, label in enumerate(classes):
        if isinstance(label, bool) or not isinstance(label, (str, numbers.Number)):
            raise StateError(f"classes_[{i}] is a {type(label).__name__}; expected a class label (text or a number)")
    if len(set(classes)) != len(classes):
        twice = next(c for i, c in enumerate(classes) if c in classes[:i])
        raise StateError(f"class {twice!r} appears twice in classes_; class labels must be distinct")
    _count(head.rows_seen_, "rows_seen_")
    features = head.n_features_in_
    if features is not None or classes:
        _count(features, "n_features_in_", low=1)
    name = next((n for n, cls in heads().items() if cls is type(head)), None)
    if name is not None:  # registered heads: settings within their declared options
        try:
            check_options(name, head.settings())
        except Exception as exc:  # HeadError for a value out of range; anything else is a malformed setting
            raise StateError(f"its settings do not fit {name}: {exc}") from None
    dims = {"C": len(classes), "D": features if features is not None else -1}
    check_object(head, dims, "head", set())


def check_object(obj: Any, dims: dict[str, int], where: str, seen: set[int]) -> None:
    """Check ``obj`` against its class's ``state_schema`` and ``_check_state``, then the objects it holds."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    schema: dict[str, str] = getattr(type(obj), "state_schema", {})
    own = dict(dims)
    counts = {a: s for a, s in schema.items() if s.startswith("count")}
    for attr, spec in counts.items():
        value = getattr(obj, attr, _MISSING)
        if value is None and spec.endswith("?"):
            continue
        own[attr] = _count(value, f"{where}.{attr}")
    for attr, spec in schema.items():
        if attr in counts:
            continue
        value = getattr(obj, attr, _MISSING)
        match = _ARRAY.match(spec)
        if match:
            if value is None and match.group(1):
                continue
            _array(value, [d.strip() for d in match.group(2).split(",") if d.strip()], own, f"{where}.{attr}")
        elif spec in ("object", "object?"):
            if value is None and spec == "object?":
                continue
            if value is _MISSING or value is None or not hasattr(value, "__dict__"):
                raise StateError(f"{where}.{attr} is {_kind(value)}; expected an object")
            check_object(value, dims, f"{where}.{attr}", seen)
        else:
            raise AssertionError(f"{type(obj).__name__}.state_schema[{attr!r}]: unknown spec {spec!r}")
    hook = getattr(obj, "_check_state", None)
    if hook is not None:
        try:
            hook(own)
        except StateError:
            raise
        except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            raise StateError(f"{where}: {exc}") from None


def _count(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise StateError(f"{what} is {_kind(value)}; expected an integer >= {low}")
    return int(value)


def _array(value: Any, shape: list[str], dims: dict[str, int], what: str) -> None:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise StateError(f"{what} is {_kind(value)}; expected a numeric array")
    rest = bool(shape) and shape[-1] == "..."
    fixed = shape[:-1] if rest else shape
    wanted = "(" + ", ".join(shape) + ("," if len(shape) == 1 else "") + ")"
    if value.ndim < len(fixed) if rest else value.ndim != len(fixed):
        raise StateError(f"{what} has shape {value.shape}; expected {wanted}")
    for k, dim in enumerate(fixed):
        if dim == "*":
            continue
        size = int(dim) if dim.isdigit() else dims.get(dim)
        if size is None:
            raise AssertionError(f"unknown dimension {dim!r} in the schema of {what}")
        if value.shape[k] != size:
            raise StateError(f"{what} has shape {value.shape}; expected {wanted} with {dim} = {size}")


def _kind(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"{value!r}"[:60] + f" ({type(value).__name__})"
