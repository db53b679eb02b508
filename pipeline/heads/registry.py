"""The head registry: each head class declares, once, its name, options and capabilities.

A head module decorates its class with :func:`register`::

    @register
    class SLDAHead(StatisticsHead):
        name = "slda"
        summary = "streaming LDA: class means + shared covariance; no forgetting"
        options = (Option("shrinkage", float, "auto", "covariance shrinkage, or auto (OAS)",
                          low=0.0, high=1.0, auto=True),)
        capabilities = Capabilities(order_free=True, mergeable=True)

:func:`make_head` validates options against the declaration (an unknown or
misplaced option is a :class:`HeadError` that names it), the CLI builds
``--head`` and the head options from it, and the check suite
(:mod:`pipeline.heads.checks`) picks checks by capability, and model files may
hold every registered class (:func:`pipeline.state_codec.allowed_class`). Adding
a head means writing its module and adding it to :data:`HEAD_MODULES`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import HeadError

if TYPE_CHECKING:
    from pipeline.heads.base import Head

# Modules whose import registers heads. Keep them cheap to import: heavy libraries
# (River, Keras) are imported inside the methods that need them.
HEAD_MODULES = ("pipeline.heads.online_linear", "pipeline.heads.nme", "pipeline.heads.slda",
                "pipeline.heads.ridge", "pipeline.heads.mlp", "pipeline.heads.fecam", "pipeline.heads.klda")

_HEADS: dict[str, type["Head"]] = {}
_loaded = False


@dataclass(frozen=True)
class Option:
    """One option of a head: its name (a keyword argument), type, default, help and valid values.

    ``default=None`` means "off" or "computed by the head" (say which in ``help``).
    ``auto=True`` also accepts the string ``"auto"``; ``words`` lists other accepted strings. ``from_run=True`` is filled
    from the training run's option of the same name (``--seed``), so it is no
    separate command-line flag.
    """

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    auto: bool = False
    words: tuple[str, ...] = ()
    flag: str | None = None
    from_run: bool = False

    @property
    def keywords(self) -> tuple[str, ...]:
        """The strings accepted besides values of the option's type."""
        return (("auto",) if self.auto else ()) + self.words

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        kind = "an integer" if self.type is int else "a finite number"
        def num(v: float) -> str:
            return f"{int(v):,}" if self.type is int else f"{v:g}"

        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {num(self.low)}"
        # a bound that only guards against overflow (2**31 - 1 and above) is not worth saying
        hi = ("" if self.high is None or self.high >= 2**31 - 1
              else f"{'<' if self.high_open else '<='} {num(self.high)}")
        bounds = " and ".join(b for b in (lo, hi) if b)
        return (kind + (f" {bounds}" if bounds else "")) + "".join(f", or {w}" for w in self.keywords)

    def check(self, value: Any, head: str) -> Any:
        """``value`` converted to the option's type; a HeadError naming the option if it does not fit."""
        if value is None and self.default is None:
            return None
        if isinstance(value, str) and value in self.keywords:
            return value
        where = f"{head}: {self.cli_flag}"
        if self.type is bool:
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise HeadError(f"{where} must be true or false, got {value!r}")
        if self.choices:
            if value not in self.choices:
                raise HeadError(f"{where} must be {self.range_text()}, got {value!r}")
            return value
        try:
            if isinstance(value, bool) or isinstance(value, str) and self.type is int:
                raise TypeError
            number = self.type(value)
            if self.type is int and number != value:
                raise TypeError
        except (TypeError, ValueError, OverflowError):
            raise HeadError(f"{where} must be {self.range_text()}, got {value!r}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise HeadError(f"{where} must be {self.range_text()}, got {value!r}")
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)) \
                or self.high is not None and (number > self.high or (self.high_open and number == self.high)):
            raise HeadError(f"{where} must be {self.range_text()}, got {value!r}")
        return number


@dataclass(frozen=True)
class Capabilities:
    """What a head can do; the training loop, the CLI and the check suite read these.

    - ``order_free``: the result depends only on the rows, not their order,
      chunking or task split (sums), so it cannot forget and replay is useless.
    - ``mergeable``: ``head.merge(other)`` equals training on both models' rows.
    - ``mergeable_when``: options under which it is (``(("class_means", "exact"),)``) when not always.
    - ``sequential``: why the head cannot be split across workers (help text for errors), when it cannot.
    - ``keeps_exemplars``: the head keeps its own exemplar memory (``--replay`` would add nothing).
    - ``keeps_exemplars_when``: option values with which it does (``(("method", ("er", "icarl")),)``).
    - ``row_by_row``: progressive validation predicts every row before learning it.
    - ``mini_batches``: the head trains by gradient steps on mini-batches of its
      ``batch_size`` option, over ``default_epochs`` passes of each task unless
      ``--epochs`` says otherwise; the loop feeds it chunks and calls its hooks.
    - ``engines``: implementations selectable with ``engine=``.
    - ``class_incremental``: what a new class does to the state (help text).
    """

    order_free: bool = False
    mergeable: bool = False
    mergeable_when: tuple[tuple[str, Any], ...] = ()
    sequential: str = ""
    keeps_exemplars: bool = False
    keeps_exemplars_when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    row_by_row: bool = False
    mini_batches: bool = False
    default_epochs: int = 1
    engines: tuple[str, ...] = ("numpy",)
    class_incremental: str = ""


def register(cls: type["Head"]) -> type["Head"]:
    """Class decorator: add a head class to the registry under ``cls.name``."""
    for attr in ("name", "summary", "options", "capabilities"):
        if attr not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare {attr!r} to be registered")
    names = [o.name for o in cls.options]
    if len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__} declares an option twice: {names}")
    if cls.name in _HEADS and _HEADS[cls.name] is not cls:
        raise TypeError(f"two heads are called {cls.name!r}: {_HEADS[cls.name].__name__} and {cls.__name__}")
    _HEADS[cls.name] = cls
    return cls


def mergeable_text() -> str:
    """The heads that merge exactly, spelled for an error message: ``slda, ridge, nme --class-means exact``."""
    always = [name for name, cls in heads().items() if cls.capabilities.mergeable]
    sometimes = []
    for name, cls in heads().items():
        if not cls.capabilities.mergeable and cls.capabilities.mergeable_when:
            flags = {o.name: o.cli_flag for o in cls.options}
            sometimes.append(" ".join([name, *(f"{flags.get(k, k)} {v}" for k, v in cls.capabilities.mergeable_when)]))
    return ", ".join(always + sometimes)


def registered_classes() -> dict[str, type]:
    """Class path -> class: every registered head and the classes its state holds (its ``state_classes``).

    The model-file codec allows these (:func:`pipeline.state_codec.allowed_class`), so registering a head
    is all it takes for its model files to save and load.
    """
    out: dict[str, type] = {}
    for cls in heads().values():
        for member in (cls, *getattr(cls, "state_classes", ())):
            out[f"{member.__module__}.{member.__qualname__}"] = member
    return out


def heads() -> dict[str, type["Head"]]:
    """Every registered head class by name, in :data:`HEAD_MODULES` order."""
    global _loaded
    if not _loaded:
        for module in HEAD_MODULES:
            importlib.import_module(module)
        _loaded = True
    order = {m: i for i, m in enumerate(HEAD_MODULES)}
    return dict(sorted(_HEADS.items(), key=lambda item: order.get(item[1].__module__, len(order))))


def head_class(name: str) -> type["Head"]:
    table = heads()
    if name not in table:
        raise HeadError(f"unknown head {name!r}; expected one of {', '.join(table)}")
    return table[name]


def readers(option: str) -> list[str]:
    """The heads that take an option."""
    return [n for n, cls in heads().items() if any(o.name == option for o in cls.options)]


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of head ``name``, the given ones validated, the others at their defaults."""
    cls = head_class(name)
    declared = {o.name: o for o in cls.options}
    unknown = [k for k in options if k not in declared]
    if unknown:
        raise HeadError(_misplaced(name, unknown, declared))
    return {k: o.check(options[k], name) if k in options else o.default for k, o in declared.items()}


def _misplaced(name: str, unknown: list[str], declared: dict[str, Option]) -> str:
    parts = []
    for key in unknown:
        others = readers(key)
        flag = next((o.cli_flag for cls in heads().values() for o in cls.options if o.name == key), None)
        parts.append(f"{flag} (only {', '.join(others)} read{'s' if len(others) == 1 else ''} it)" if others
                     else f"an option called {key!r}")
    takes = ", ".join(o.cli_flag for o in declared.values()) or "no options"
    return f"--head {name} does not take {'; '.join(parts)}; it takes {takes}"


def make_head(name: str, *, n_features: int | None = None, **options: Any) -> "Head":
    """Build a registered head, e.g. ``make_head("softmax", lr=0.005)``.

    ``n_features`` (optional) lets a head compute defaults that depend on the
    feature dimension (the SGD learning rate). Options are checked against the
    head's declaration; ``make_head(name, **head.settings())`` rebuilds an
    equal, unfitted head.

    >>> make_head("slda", shrinkage=0.1).settings()
    {'shrinkage': 0.1}
    >>> make_head("slda", lr=0.1)
    Traceback (most recent call last):
    ...
    pipeline.errors.HeadError: --head slda does not take --lr (only logreg, softmax, mlp read it); it takes --shrinkage
    """
    values = check_options(name, options)
    return head_class(name).build(n_features=n_features, **values)
