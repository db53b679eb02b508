"""The MLP head's network as plain functions of a parameter list.

``params = [W1, b1, ..., Wk, bk, W_out, b_out]``: ReLU hidden layers, then a
linear output whose softmax gives the class probabilities. The same
functions run on numpy arrays (prediction, Fisher, herding: no Keras needed)
and on backend tensors inside a compiled train step (``ops = keras.ops``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def forward(params: Sequence[Any], X: Any, relu: Any = None) -> tuple[Any, Any]:
    """``(embedding, logits)``: the last hidden layer's output (the input when there is none) and the logits."""
    relu = relu or (lambda a: np.maximum(a, 0.0))
    h = X
    for i in range(0, len(params) - 2, 2):
        h = relu(h @ params[i] + params[i + 1])
    return h, h @ params[-2] + params[-1]


def output_columns(fan_in: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` new output columns, uniform in +-1/sqrt(fan_in) (PyTorch's ``Linear`` default scale).

    Not zero: zero columns made plain fine-tuning forget every old class
    (final accuracy 20% against 42% with random columns on Imagenette, 5
    tasks of 2 classes; docs/continual-learning.md).
    """
    limit = 1.0 / np.sqrt(max(fan_in, 1))
    return rng.uniform(-limit, limit, (fan_in, n)).astype(np.float32)


def init_params(n_in: int, hidden: Sequence[int], n_out: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Hidden layers as PyTorch's ``Linear`` default (weights and biases uniform in +-1/sqrt(fan_in)), small
    random output layer (:func:`output_columns`) with zero biases.

    Not Keras' Glorot-uniform (about twice as wide at 1280 -> 512): over 10
    class orders of Imagenette-mini, 5 tasks of 2 classes, PyTorch's scale
    gave EWC +5.5 points final accuracy, A-GEM +1.8, LwF +1.4, ER +0.8,
    iCaRL +0.5, finetune -0.7, and the same accuracy when all classes are
    learnt at once (docs/continual-learning.md).
    """
    params: list[np.ndarray] = []
    fan_in = n_in
    for width in hidden:
        limit = 1.0 / np.sqrt(max(fan_in, 1))
        params += [rng.uniform(-limit, limit, (fan_in, width)).astype(np.float32),
                   rng.uniform(-limit, limit, width).astype(np.float32)]
        fan_in = width
    return params + [output_columns(fan_in, n_out, rng), np.zeros(n_out, np.float32)]


def grow_output(params: list[np.ndarray], n_out: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Add output columns up to ``n_out`` (:func:`output_columns`, zero bias): old logits are unchanged."""
    W, b = params[-2], params[-1]
    extra = n_out - W.shape[1]
    if extra <= 0:
        return params
    new = output_columns(W.shape[0], extra, rng).astype(W.dtype)
    return [*params[:-2], np.hstack([W, new]), np.concatenate([b, np.zeros(extra, b.dtype)])]


def pad_like(arrays: list[np.ndarray], params: list[np.ndarray]) -> list[np.ndarray]:
    """Zero-pad per-parameter arrays (Fisher, anchors, Adam moments) to the grown parameter shapes."""
    out = []
    for a, p in zip(arrays, params):
        pad = [(0, t - s) for s, t in zip(a.shape, p.shape)]
        out.append(np.pad(a, pad) if any(hi for _, hi in pad) else a)
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# -- losses on backend tensors (``ops`` = keras.ops) -----------------------------

def cross_entropy(ops: Any, logits: Any, y: Any, w: Any) -> Any:
    """Weighted mean softmax cross-entropy; rows with weight 0 (padding) count for nothing."""
    logp = ops.log_softmax(logits, axis=-1)
    ce = -ops.sum(ops.one_hot(y, logits.shape[-1]) * logp, axis=-1)
    return ops.sum(w * ce) / ops.maximum(ops.sum(w), 1.0)


def weighted_mean(ops: Any, per_row: Any, w: Any) -> Any:
    return ops.sum(w * per_row) / ops.maximum(ops.sum(w), 1.0)
