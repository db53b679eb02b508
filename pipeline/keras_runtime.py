"""The Keras runtime: the one place that imports Keras (and its backend).

Everything that needs a model (backbones, trainable heads) asks this module
for ``keras``; it silences TensorFlow's start-up notes, and tells the backend
and the device. The rest of the package never imports Keras or TensorFlow.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

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


def allow_memory_growth() -> None:
    """Let TensorFlow take GPU memory as it needs it, not all of it up front.

    Call before any model is built (a Ray actor does so first thing): with one
    GPU per actor, the decode threads and the model share the card with nothing
    else, but a co-located process (another actor, a notebook) still fits.
    """
    if backend() != "tensorflow":
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: keep its setting
            pass
