"""Objects to data and back, for model files that hold only data (no pickle).

:func:`encode` walks a value into JSON-able values plus a table of numpy
arrays; :func:`decode` rebuilds it. Only these are accepted, both ways:

- ``None``, ``bool``, ``int``, ``float`` (NaN and infinities too), ``complex``, ``str``;
- ``list``, ``tuple``, ``dict`` (keys of any accepted type, order kept);
- numpy arrays of numbers, booleans or fixed-width strings (stored as ``.npy``),
  numpy arrays of objects whose items are accepted (stored item by item in JSON),
  numpy scalars, and ``numpy.random.Generator`` (its bit generator's state);
- instances of the registered heads and the classes they declare (``state_classes``), and of the classes
  in :data:`ALLOWED_CLASSES` (state shared by several heads), stored as their state
  (``__getstate__()``, by default their ``__dict__``) and rebuilt with
  ``cls.__new__(cls)`` plus that state (``__setstate__`` when the class has one).
  No constructor runs, and a class name not in the list is refused.

Anything else (a callable, a module, an unknown class, a River estimator) is
refused with :class:`CodecError`, when saving and when loading. Identity is
kept: an array or object reached twice is stored once and comes back shared.

**Contract for heads** (and anything they hold): keep state as attributes
whose values are of the kinds above; a registered head is allowed by being
registered; list any other class of this package that can appear in its state
in the head's ``state_classes`` (or, when several heads share it, in
:data:`ALLOWED_CLASSES`). Keras or other
framework objects must not live in the state: keep weights as numpy arrays
(or lists of them) and rebuild framework objects lazily, dropping them in
``__getstate__``.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable

import numpy as np

from pipeline.heads.registry import registered_classes

# module path -> class names: the classes a model file may name besides the registered heads and their
# state_classes (pipeline.heads.registry.registered_classes): state that several heads share.
ALLOWED_CLASSES: dict[str, tuple[str, ...]] = {
    "pipeline.heads.online_linear": ("FastLinearHead", "OnlineLinearModel"),
    "pipeline.heads.exemplars": ("ClassPools", "_Reservoir", "ExemplarMemory", "ExemplarSet", "ExperienceReplay"),
    "pipeline.heads.class_stats": ("ClassStatistics",),
}
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")
ARRAY_KINDS = "biufcUS"  # bool, int, uint, float, complex, unicode, bytes: never objects or records


class CodecError(ValueError):
    """A value that the data-only format cannot hold, or a stored value it refuses to rebuild."""


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_allowed(cls: type) -> bool:
    return cls.__qualname__ in ALLOWED_CLASSES.get(cls.__module__, ()) or registered_classes().get(class_name(cls)) is cls


def allowed_class(name: str) -> type[object]:
    """The class a stored name refers to, if it is in the allow-list (importing only this package)."""
    module, _, qualname = name.rpartition(".")
    registered = registered_classes().get(name)
    if registered is not None:
        return registered
    if qualname not in ALLOWED_CLASSES.get(module, ()):
        raise CodecError(f"the file names class {name!r}, which a model file may not hold")
    return getattr(importlib.import_module(module), qualname)


class Encoder:
    """Encode one tree; ``arrays`` collects the numeric arrays by name."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self._seen: dict[int, tuple[Any, dict]] = {}  # id -> (the value, kept alive; what stands for it)

    def encode(self, value: Any, path: str) -> Any:
        if isinstance(value, np.generic):
            return self._scalar(value, path)
        if value is None or type(value) in (bool, int, str):
            return value
        if type(value) is float:
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if type(value) is complex:
            return {"__complex__": [self.encode(value.real, path), self.encode(value.imag, path)]}
        if id(value) in self._seen:
            return self._seen[id(value)][1]
        if isinstance(value, np.ndarray) and type(value) is np.ndarray:
            return self._array(value, path)
        if type(value) is list:
            return [self.encode(v, _child(path, i)) for i, v in enumerate(value)]
        if type(value) is tuple:
            return {"__tuple__": [self.encode(v, _child(path, i)) for i, v in enumerate(value)]}
        if type(value) is dict:
            return self._dict(value, path)
        if type(value) is np.random.Generator:
            bits = type(value.bit_generator).__name__
            if bits not in BIT_GENERATORS:
                raise CodecError(f"{path}: random generator {bits} cannot be stored")
            return {"__generator__": bits, "state": self.encode(value.bit_generator.state, path)}
        if is_allowed(type(value)):
            return self._object(value, path)
        raise CodecError(f"{path or 'the model'} holds a {class_name(type(value))}, "
                         "which a data-only model file cannot store")

    def _scalar(self, value: np.generic, path: str) -> Any:
        if value.dtype.kind not in ARRAY_KINDS:
            raise CodecError(f"{path}: numpy scalar of dtype {value.dtype} cannot be stored")
        item = value.item()
        if isinstance(item, bytes):
            item = item.decode("latin-1")
        return {"__scalar__": value.dtype.str, "value": self.encode(item, path)}

    def _reference(self, value: Any, path: str) -> dict:
        ref = {"__ref__": f"{path}#{len(self._seen)}"}
        self._seen[id(value)] = (value, ref)
        return ref

    def _array(self, value: np.ndarray, path: str) -> Any:
        if value.dtype.kind == "O":
            ref = self._reference(value, path)["__ref__"]
            items = [self.encode(v, _child(path, i)) for i, v in enumerate(value.ravel().tolist())]
            return {"__objects__": list(value.shape), "ref": ref, "items": items}
        if value.dtype.kind not in ARRAY_KINDS or value.dtype.fields is not None:
            raise CodecError(f"{path}: array of dtype {value.dtype} cannot be stored")
        name = "".join(c if c.isalnum() or c in "/_.-" else "_" for c in path).strip("/") or "array"
        base, n = name, 1
        while name in self.arrays:
            n += 1
            name = f"{base}~{n}"
        self.arrays[name] = value
        ref = {"__array__": name}
        self._seen[id(value)] = (value, ref)
        return ref

    def _dict(self, value: dict, path: str) -> Any:
        if all(type(k) is str and not k.startswith("__") for k in value):
            return {k: self.encode(v, _child(path, k)) for k, v in value.items()}
        return {"__dict__": [[self.encode(k, path), self.encode(v, _child(path, _key_name(k, i)))]
                             for i, (k, v) in enumerate(value.items())]}

    def _object(self, value: Any, path: str) -> Any:
        ref = self._reference(value, path)["__ref__"]
        state = value.__getstate__()
        if type(state) is not dict or not all(type(k) is str for k in state):
            raise CodecError(f"{path}: the state of {class_name(type(value))} is not a dict of attributes")
        return {"__object__": class_name(type(value)), "ref": ref,
                "state": {k: self.encode(v, _child(path, k)) for k, v in state.items()}}


def _child(path: str, part: Any) -> str:
    return f"{path}/{part}" if path else str(part)


def _key_name(key: Any, index: int) -> str:
    """How a dict key shows in array names: itself when it is a string or an integer."""
    return str(key) if isinstance(key, (str, int, np.integer)) and not isinstance(key, bool) else str(index)


class Decoder:
    """Rebuild a tree; ``array(name)`` fetches a stored array (and validates it)."""

    def __init__(self, array: Callable[[str], np.ndarray]):
        self._fetch = array
        self._arrays: dict[str, np.ndarray] = {}
        self._refs: dict[str, Any] = {}
        self._handlers: dict[str, Callable[[dict], Any]] = {
            "__array__": self._array, "__objects__": self._objects, "__ref__": self._ref,
            "__object__": self._object, "__tuple__": self._tuple, "__dict__": self._dict,
            "__float__": self._float, "__complex__": self._complex, "__scalar__": self._scalar,
            "__generator__": self._generator}

    def decode(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            raise CodecError(f"unexpected JSON value of type {type(value).__name__}")
        tag = next((k for k in value if k in self._handlers), None)
        if tag is None:
            return {k: self.decode(v) for k, v in value.items()}
        return self._handlers[tag](value)

    def _array(self, value: dict) -> np.ndarray:
        name = str(value["__array__"])
        if name not in self._arrays:
            self._arrays[name] = self._fetch(name)
        return self._arrays[name]

    def _ref(self, value: dict) -> Any:
        key = str(value["__ref__"])
        if key not in self._refs:
            raise CodecError(f"reference {key!r} to nothing stored before it")
        return self._refs[key]

    def _objects(self, value: dict) -> np.ndarray:
        shape = tuple(int(n) for n in value["__objects__"])
        if any(n < 0 for n in shape) or math.prod(shape) != len(value["items"]):
            raise CodecError(f"an object array of shape {shape} holds {len(value['items'])} items")
        out = np.empty(shape, dtype=object)
        self._refs[str(value["ref"])] = out
        items = [self.decode(v) for v in value["items"]]
        flat = out.reshape(-1)
        for i, item in enumerate(items):
            flat[i] = item
        return out

    def _object(self, value: dict) -> Any:
        cls = allowed_class(str(value["__object__"]))
        obj = cls.__new__(cls)
        self._refs[str(value["ref"])] = obj
        state = value["state"]
        if not isinstance(state, dict) or any(k.startswith("__") for k in state):
            raise CodecError(f"the state of {value['__object__']} is not a dict of plain attributes")
        state = {str(k): self.decode(v) for k, v in state.items()}
        setstate = getattr(obj, "__setstate__", None)
        if setstate is not None:
            setstate(state)
        else:
            obj.__dict__.update(state)
        return obj

    def _tuple(self, value: dict) -> tuple:
        return tuple(self.decode(v) for v in value["__tuple__"])

    def _dict(self, value: dict) -> dict:
        return {self.decode(k): self.decode(v) for k, v in value["__dict__"]}

    def _float(self, value: dict) -> float:
        text = value["__float__"]
        if text not in ("nan", "inf", "-inf"):
            raise CodecError(f"bad float {text!r}")
        return float(text)

    def _complex(self, value: dict) -> complex:
        re, im = (self.decode(v) for v in value["__complex__"])
        return complex(float(re), float(im))

    def _scalar(self, value: dict) -> np.generic:
        dtype = np.dtype(str(value["__scalar__"]))
        if dtype.kind not in ARRAY_KINDS or dtype.fields is not None:
            raise CodecError(f"numpy scalar of dtype {dtype} is not allowed")
        item = self.decode(value["value"])
        return dtype.type(item.encode("latin-1") if dtype.kind == "S" else item)

    def _generator(self, value: dict) -> np.random.Generator:
        bits = str(value["__generator__"])
        if bits not in BIT_GENERATORS:
            raise CodecError(f"random generator {bits!r} is not allowed")
        gen = np.random.Generator(getattr(np.random, bits)())
        gen.bit_generator.state = self.decode(value["state"])
        return gen


def encode(value: Any, root: str = "") -> tuple[Any, dict[str, np.ndarray]]:
    """``(json_value, arrays)`` for ``value``; raises :class:`CodecError` on anything not allowed.

    >>> doc, arrays = encode({"w": np.zeros(2), "classes": ["cat", "dog"], "pair": (1, 2)})
    >>> doc
    {'w': {'__array__': 'w'}, 'classes': ['cat', 'dog'], 'pair': {'__tuple__': [1, 2]}}
    >>> decode(doc, arrays.__getitem__)
    {'w': array([0., 0.]), 'classes': ['cat', 'dog'], 'pair': (1, 2)}
    >>> encode({"f": print})
    Traceback (most recent call last):
    ...
    pipeline.state_codec.CodecError: f holds a builtins.builtin_function_or_method, which a data-only model file cannot store
    """
    enc = Encoder()
    return enc.encode(value, root), enc.arrays


def decode(value: Any, array: Callable[[str], np.ndarray]) -> Any:
    """Rebuild what :func:`encode` wrote; ``array(name)`` returns a stored array by name."""
    return Decoder(array).decode(value)
