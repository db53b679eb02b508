"""The Keras runtime: the one place that imports Keras (and its backend).

Everything that needs a model (backbones, trainable heads) asks this module
for ``keras``; it silences TensorFlow's start-up notes, and tells the backend
and the device. The rest of the package never imports Keras or TensorFlow.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

from pipeline.errors import BackboneError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def keras() -> Any:
    """Import and return ``keras`` (TensorFlow's C++ notes hidden unless ``PIPELINE_TF_LOGS=1``)."""
    if "keras" not in sys.modules and not os.environ.get("PIPELINE_TF_LOGS"):
        # TensorFlow's C++ start-up notes (oneDNN, CUDA probing) bypass TF_CPP_MIN_LOG_LEVEL;
        # silence the stderr file descriptor while importing.
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            importlib.import_module("keras")
        except ImportError as exc:  # pragma: no cover - install problem
            raise BackboneError(f"Keras is not installed: {exc}") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    return importlib.import_module("keras")


def backend() -> str:
    """The Keras backend in use: ``tensorflow``, ``jax`` or ``torch``."""
    return str(keras().backend.backend())


def device() -> str:
    """Where models run, e.g. ``CPU`` or ``GPU x2``."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"GPU x{len(gpus)}" if gpus else "CPU"
    if name == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return f"GPU x{len(gpus)}" if gpus else "CPU"
    if name == "torch":
        import torch

        return f"GPU x{torch.cuda.device_count()}" if torch.cuda.is_available() else "CPU"
    return name


# -- gradients for trainable heads ---------------------------------------------
# Keras 3 has no backend-neutral autodiff: a loss written with ``keras.ops`` is
# differentiated by the backend's own tool. These shims are the only backend-
# specific code a trainable head needs.

def value_and_grad(fn: Callable[..., Any]) -> Callable[..., tuple[Any, list[Any]]]:
    """``fn(params, *args) -> scalar loss`` to ``(params, *args) -> (loss, grads)``; traceable by :func:`compile_fn`."""
    name = backend()
    if name == "jax":
        import jax

        return jax.value_and_grad(fn)
    if name == "tensorflow":
        import tensorflow as tf

        def tf_value_and_grad(params: list[Any], *args: Any) -> tuple[Any, list[Any]]:
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss = fn(params, *args)
            return loss, tape.gradient(loss, params)

        return tf_value_and_grad
    if name == "torch":
        import torch

        def torch_value_and_grad(params: list[Any], *args: Any) -> tuple[Any, list[Any]]:
            leaves = [p.detach().requires_grad_(True) for p in params]
            loss = fn(leaves, *args)
            return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, leaves)]

        return torch_value_and_grad
    raise BackboneError(f"no gradient support for the Keras backend {name!r}")


def compile_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Compile a function of tensors once per input shape (tf.function, jax.jit; torch runs eagerly)."""
    name = backend()
    if name == "jax":
        import jax

        return jax.jit(fn)
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, autograph=False)
    return fn


def to_tensor(x: Any) -> Any:
    """A numpy array (or nested list/dict of them) as backend tensors."""
    ops = keras().ops
    if isinstance(x, dict):
        return {k: to_tensor(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_tensor(v) for v in x]
    return ops.convert_to_tensor(x)


def to_numpy(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [to_numpy(v) for v in x]
    return keras().ops.convert_to_numpy(x)
