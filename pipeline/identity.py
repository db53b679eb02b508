"""What identifies a feature space, and the one check that stores, models and resumes agree on it.

Features are comparable only when they come from the same backbone, weights, input, preprocessing and
pooling: :data:`IDENTITY_KEYS` lists those settings, and every module that compares or records a feature
space reads it from here: the store and its parts (``store.identity``), the extraction plan (what a
partial run must match to be continued), ``info``, model files (the backbone a model needs),
``export``, and training, resume and ``merge`` (:func:`check_identity`).

Adding a setting that changes the features (a preset hash, a pooling variant) is one entry in
:data:`IDENTITY_KEYS`: it is then recorded, shown, compared and required to match everywhere. Settings
that only say how the features were computed (:data:`REBUILD_KEYS`, :data:`PROVENANCE_KEYS`) are recorded
but never block mixing; a different compute precision only warns.

>>> check_identity({"backbone": "mobilenet", "feature_dim": 256}, {"backbone": "mobilenet"}, "b.h5")
>>> check_identity({"backbone": "mobilenet"}, {"backbone": "resnet50"}, "b.h5")
Traceback (most recent call last):
...
pipeline.errors.StoreError: b.h5 was made with backbone='resnet50', but 'mobilenet' was expected: features from different backbones, weights or settings cannot be mixed
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

from pipeline.errors import StoreError

# Settings that must agree for features to be comparable (store attributes, model metadata).
IDENTITY_KEYS: tuple[str, ...] = ("backbone", "weights", "alpha", "input_size", "preprocessing", "pooling",
                                  "feature_dim")
# The identity settings every store has had since format version 1 (newer keys are optional when reading).
REQUIRED_KEYS: tuple[str, ...] = ("backbone", "weights", "input_size", "preprocessing", "pooling", "feature_dim")
# Identity settings known only once the backbone has run (not part of what a resumed extraction compares).
DERIVED_KEYS: tuple[str, ...] = ("feature_dim",)
# What predict needs, on top of the identity, to rebuild the backbone of a model.
REBUILD_KEYS: tuple[str, ...] = (*IDENTITY_KEYS, "layer", "keras_version", "backend", "precision")
# How the features were computed: recorded and shown, never compared.
PROVENANCE_KEYS: tuple[str, ...] = ("layer", "mixed_precision", "precision", "kernels", "onednn_env",
                                    "keras_version", "backend", "device")
# What ``info`` shows as a store's or model's backbone (the dimension is shown on its own line).
SHOWN_KEYS: tuple[str, ...] = (*(k for k in IDENTITY_KEYS if k not in DERIVED_KEYS), "layer")
PRECISION_KEY = "precision"
DEFAULT_PRECISION = "float32"


def identity_of(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The identity settings of a store's attributes (``""`` for one the store lacks)."""
    return {key: meta.get(key, "") for key in IDENTITY_KEYS}


def with_precision(identity: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """``identity`` plus the compute precision recorded in ``meta`` (float32 when none is)."""
    return {**identity, PRECISION_KEY: meta.get(PRECISION_KEY) or DEFAULT_PRECISION}


def extraction_identity(backbone_info: Mapping[str, Any]) -> dict[str, Any]:
    """The identity of an extraction before it runs: every identity key but the derived ones."""
    return {key: backbone_info[key] for key in IDENTITY_KEYS if key not in DERIVED_KEYS and key in backbone_info}


def rebuild_keys_of(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a model records of its store's attributes to rebuild and check its backbone."""
    return {key: meta[key] for key in REBUILD_KEYS if key in meta}


def _same(a: Any, b: Any) -> bool:
    return [str(v) for v in a] == [str(v) for v in b] if isinstance(a, list) or isinstance(b, list) else str(a) == str(b)


def check_identity(expected: Mapping[str, Any], got: Mapping[str, Any], what: str) -> None:
    """Raise when two feature sources were made with different backbones, weights or dims.

    Keys missing on either side are not compared (older files lack newer keys). A different compute
    precision (``float32`` / ``bfloat16`` / ``float16``) only warns: it is the same model up to
    rounding (mean cosine >= 0.995 to float32 on the shared photos, README "Extraction speed"), so
    stores made on a GPU in float16 and on a CPU in float32 may be streamed together.
    """
    for key in IDENTITY_KEYS:
        if key in expected and key in got and not _same(expected[key], got[key]):
            raise StoreError(f"{what} was made with {key}={got[key]!r}, but {expected[key]!r} was expected: "
                             "features from different backbones, weights or settings cannot be mixed")
    want = expected.get(PRECISION_KEY) or DEFAULT_PRECISION
    have = got.get(PRECISION_KEY) or DEFAULT_PRECISION
    if want != have:
        warnings.warn(f"{what} was computed in {have}, the other features in {want}: mixed, since it is the "
                      "same backbone up to rounding; extract all stores at one --precision for bitwise-"
                      "comparable features", stacklevel=3)
