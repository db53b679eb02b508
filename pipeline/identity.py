"""What identifies a feature space, and the one check that stores, models and resumes agree on it.

Features are comparable only when they come from the same backbone, weights, input, preprocessing and
pooling: :data:`IDENTITY_KEYS` lists those settings, and every module that compares or records a feature
space (the store and its parts, the extraction plan and resume, ``info``, model files, ``merge``) reads
it from here. Adding a setting that changes the features (a preset hash, a pooling variant) is one entry
in :data:`IDENTITY_KEYS`.

This module is a leaf: it imports nothing from the package but the errors.
"""

from __future__ import annotations

from typing import Any, Mapping

# Settings that must agree for features to be comparable (stored as store attributes).
IDENTITY_KEYS: tuple[str, ...] = ("backbone", "weights", "alpha", "input_size", "preprocessing", "pooling",
                                  "feature_dim")
