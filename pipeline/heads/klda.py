"""Kernel LDA (KLDA, Momeni et al., 2024): streaming LDA on random Fourier features, exemplar-free.

Each row is L2-normalised, then mapped to ``M`` random Fourier features
``z(x) = sqrt(2/M) cos(sqrt(2 kernel_gamma) W^T x + b)`` that approximate the RBF
kernel ``exp(-kernel_gamma |x - x'|^2)`` (Rahimi & Recht); the streaming LDA of
:class:`~pipeline.heads.slda.SLDAHead` (class means, one shared covariance,
OAS or fixed shrinkage) runs on ``z``. The projection is generated from the
seed a block of columns at a time (:mod:`pipeline.heads.random_features`) and
is not stored in the model; the features are computed in float64, so
the result does not depend on how rows are chunked. Normalising first makes one
``kernel_gamma`` fit any backbone: squared distances between unit vectors lie in [0, 4].

The statistics are sums, so the result does not depend on row order or task
split and models merge exactly; memory is O(M^2 + C M) whatever the rows.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = np.vstack([rng.normal(0, 1, (50, 3)) + [4, 0, 0], rng.normal(0, 1, (50, 3)) + [0, 4, 0]])
>>> head = KLDAHead(random_features=256).partial_fit(X, ["a"] * 50 + ["b"] * 50)
>>> head.predict(np.array([[4.0, 0, 0], [0, 4.0, 0]])).tolist()
['a', 'b']
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import HeadError
from pipeline.heads import random_features as rf
from pipeline.heads.exemplars import l2_normalise
from pipeline.heads.registry import Capabilities, Option, register
from pipeline.heads.slda import SLDAHead


@register
class KLDAHead(rf.SeededProjection, SLDAHead):
    name = "klda"
    summary = "kernel LDA: streaming LDA on random Fourier features of an RBF kernel; no forgetting"
    options = (
        Option("shrinkage", float, "auto", "covariance shrinkage, or auto (OAS estimate)", low=0.0, high=1.0,
               auto=True),
        rf.features_option(2048, "random Fourier features approximating the RBF kernel"),
        Option("kernel_gamma", float, 1.0, "RBF kernel exp(-kernel_gamma |x - x'|^2) on L2-normalised rows",
               low=0.0, low_open=True),
        rf.SEED_OPTION,
    )
    capabilities = Capabilities(order_free=True, mergeable=True, class_incremental="adds a mean; no forgetting")
    projection_kind = "fourier"

    def __init__(self, shrinkage: float | str = "auto", random_features: int = 2048, kernel_gamma: float = 1.0,
                 seed: int = 0):
        super().__init__(shrinkage)
        if random_features < 1 or not kernel_gamma > 0:
            raise HeadError("random_features and kernel_gamma must be positive, "
                            f"got {random_features} and {kernel_gamma}")
        self.random_features, self.kernel_gamma, self.seed = random_features, kernel_gamma, seed

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "random_features": self.random_features, "kernel_gamma": self.kernel_gamma,
                "seed": self.seed}

    def _features(self, X: np.ndarray) -> np.ndarray:
        return self._project(l2_normalise(X), scale=float(np.sqrt(2 * self.kernel_gamma)), dtype=np.float64)

    def _stats_dim(self) -> int:
        return self.random_features or 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "random_features": self.random_features, "kernel_gamma": self.kernel_gamma}
