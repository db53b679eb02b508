"""The Keras runtime: the one place that imports Keras (and its backend).

Everything that needs a model (backbones, trainable heads) asks this module
for ``keras``; it picks the fast CPU kernels before TensorFlow is imported,
silences TensorFlow's start-up notes, lets TensorFlow GPUs grow their memory,
and tells the backend, the device and the kernels. The rest of the package
never imports Keras, TensorFlow, JAX or torch.

Importing this module (or :mod:`pipeline`) changes nothing: :func:`prepare_environment` sets the
variables TensorFlow reads when it is imported (``TF_ENABLE_ONEDNN_OPTS``, ``TF_CPP_MIN_LOG_LEVEL``)
just before :func:`keras` imports it, the one place the package imports Keras and its backend.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import platform
import sys
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.errors import BackboneError

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def _choose_onednn() -> str:
    """Who set ``TF_ENABLE_ONEDNN_OPTS``: ``user``, ``pipeline``, or ``tensorflow`` (left to its default).

    TensorFlow turns oneDNN on by default only on some Intel CPUs; on other x86
    CPUs (AMD EPYC, AVX2) it doubles MobileNetV2's speed (56 -> 109 img/s) and
    keeps features within cosine 0.9999, so the pipeline turns it on for x86-64
    unless the user chose, or TensorFlow was already imported (too late to
    change). On ARM TensorFlow's own default stands.
    """
    if ONEDNN_ENV in os.environ:
        return "user"
    if "tensorflow" in sys.modules:
        return "tensorflow"
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ[ONEDNN_ENV] = "1"
        return "pipeline"
    return "tensorflow"


ONEDNN_SET_BY: str | None = None  # who chose the oneDNN setting, once prepare_environment has run


def prepare_environment() -> str:
    """Set what TensorFlow reads at import: oneDNN kernels (see :func:`_choose_onednn`) and quiet C++
    logs (``TF_CPP_MIN_LOG_LEVEL=3`` unless set). Runs once, before Keras is imported; returns who
    chose the oneDNN setting."""
    global ONEDNN_SET_BY
    if ONEDNN_SET_BY is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        ONEDNN_SET_BY = _choose_onednn()
    return ONEDNN_SET_BY


def keras() -> Any:
    """Import and return ``keras`` (TensorFlow's C++ notes hidden unless ``PIPELINE_TF_LOGS=1``)."""
    prepare_environment()
    if "keras" not in sys.modules:
        if not os.environ.get("PIPELINE_TF_LOGS"):
            # TensorFlow's C++ start-up notes (oneDNN, CUDA probing) bypass TF_CPP_MIN_LOG_LEVEL;
            # silence the stderr file descriptor while importing.
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            try:
                _import_keras()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                os.close(devnull)
        else:
            _import_keras()
        if backend() == "tensorflow":
            _grow_gpu_memory()
    return importlib.import_module("keras")


def _import_keras() -> None:
    try:
        importlib.import_module("keras")
    except ImportError as exc:  # pragma: no cover - install problem
        raise BackboneError(f"Keras (or its backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}) "
                            f"is not installed: {exc}") from None


def _grow_gpu_memory() -> None:
    """TensorFlow GPUs allocate as they need rather than grabbing all memory up front."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU was initialised already (by the user): too late, harmless
            pass


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


def kernels() -> dict[str, str]:
    """The compute kernels, for a store's metadata: ``kernels`` and the oneDNN variable.

    ``kernels`` is ``onednn`` (TensorFlow with oneDNN asked for), ``default``
    (TensorFlow's own choice: oneDNN only on some Intel CPUs), ``xla`` (JAX) or
    ``torch``.
    """
    name = backend()
    value = os.environ.get(ONEDNN_ENV, "")
    if name == "tensorflow":
        on = value.lower() in ("1", "true", "on", "yes")
        kind = "onednn" if on else "default"
    else:
        kind = {"jax": "xla"}.get(name, name)
    return {"kernels": kind, "onednn_env": f"{value or 'unset'} (set by {prepare_environment()})"}


POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@contextlib.contextmanager
def _global_setting(get: Callable[[], Any], set_: Callable[[Any], None], value: Any) -> Iterator[None]:
    """Set one of Keras' global settings for the block; the previous value is restored after."""
    previous = get()
    set_(value)
    try:
        yield
    finally:
        set_(previous)


def precision_scope(precision: str) -> contextlib.AbstractContextManager[None]:
    """Build models under ``precision`` (variables stay float32); the global policy is restored after.

    Layers keep the policy they were built with, so only model construction
    needs to be inside the scope.
    """
    if precision not in POLICIES:
        raise BackboneError(f"unknown precision {precision!r}; expected one of {', '.join(POLICIES)}")
    policy = keras().mixed_precision
    return _global_setting(policy.global_policy, policy.set_global_policy, POLICIES[precision])


def native_image_format() -> str:
    """The layout registry backbones are built in: ``channels_first`` on torch, else ``channels_last``.

    PyTorch's convolutions take NCHW; a channels-last Keras model on torch
    transposes around every convolution (MobileNetV2 ran at 15 img/s that way,
    27 built channels-first, on 2 busy AMD EPYC cores). Kernels have the same
    shape in both layouts, so weights files load either way.
    """
    return "channels_first" if backend() == "torch" else "channels_last"


def image_format_scope(image_format: str) -> contextlib.AbstractContextManager[None]:
    """Build models in ``image_format``; Keras' global setting is restored after.

    Restored before any preprocessing runs: ``preprocess_input`` reads the
    global setting to find the channel axis of the channels-last batches it gets.
    """
    config = keras().config
    return _global_setting(config.image_data_format, config.set_image_data_format, image_format)


def compiled_forward(model: Any, channels_first: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """An inference function ``x -> numpy outputs`` compiled the way each backend runs fastest.

    TensorFlow: ``predict_on_batch`` (a cached ``tf.function``). JAX: one
    ``jax.jit`` of ``model.stateless_call`` with the variables passed as
    arguments (read at each call, so ``set_weights`` is seen), traced once per
    input shape. Torch: the model called under ``torch.inference_mode()``.
    ``channels_first``: the model takes NCHW; the NHWC batches are transposed once.
    """
    forward = _backend_forward(model)
    if channels_first:
        return lambda x: forward(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return forward


def _backend_forward(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    name = backend()
    if name == "jax":
        import jax

        if jax.default_backend() == "cpu":
            use_fast_cpu_convolutions(model)

        @jax.jit
        def run(trainable: list[Any], non_trainable: list[Any], x: Any) -> Any:
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        def forward(x: np.ndarray) -> np.ndarray:
            return np.asarray(run([v.value for v in model.trainable_variables],
                                  [v.value for v in model.non_trainable_variables], x))

        return forward
    if name == "torch":
        import torch

        def forward_torch(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return keras().ops.convert_to_numpy(model(x, training=False))

        return forward_torch
    return model.predict_on_batch


def use_fast_cpu_convolutions(model: Any) -> int:
    """Run the model's depthwise and 1x1 convolutions the way XLA's CPU backend runs them fast.

    For JAX on a CPU only (see :mod:`pipeline.jax_kernels`: XLA's own
    depthwise convolution is about 10x slower, its 1x1 convolution about 1.8x
    slower than the same sums written out). Each channels-last 2-D
    ``DepthwiseConv2D`` and ungrouped 1x1 ``Conv2D`` of ``model`` gets a call
    computing the same function from the same variables (bias and activation
    included), so features agree to float32 rounding. Returns the number of
    layers changed.
    """
    from pipeline import jax_kernels

    k = keras()
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if getattr(layer, "data_format", None) != "channels_last" or getattr(layer, "rank", None) != 2:
            continue
        if isinstance(layer, k.layers.DepthwiseConv2D):
            conv: Callable[[Any, Any], Any] = functools.partial(
                _depthwise, jax_kernels.depthwise_conv2d, layer)
        elif (type(layer) is k.layers.Conv2D and layer.kernel_size == (1, 1) and layer.groups == 1
              and layer.dilation_rate == (1, 1)):
            conv = functools.partial(_pointwise, jax_kernels.pointwise_conv2d, layer)
        else:
            continue
        layer.call = functools.partial(_conv_call, layer, conv)
        changed += 1
    return changed


def _depthwise(kernel_fn: Callable[..., Any], layer: Any, x: Any, kernel: Any) -> Any:
    return kernel_fn(x, kernel, strides=layer.strides, padding=layer.padding, dilation=layer.dilation_rate)


def _pointwise(kernel_fn: Callable[..., Any], layer: Any, x: Any, kernel: Any) -> Any:
    return kernel_fn(x, kernel, strides=layer.strides)


def _conv_call(layer: Any, conv: Callable[[Any, Any], Any], inputs: Any) -> Any:
    """Keras' convolution layer ``call`` (convolution, bias, activation) with another convolution."""
    out = conv(inputs, layer.kernel.value)
    if layer.use_bias:
        out = out + layer.bias.value.astype(out.dtype)
    return layer.activation(out) if layer.activation is not None else out


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


def allow_memory_growth() -> None:
    """Let TensorFlow take GPU memory as it needs it, not all of it up front.

    Call before any model is built (a Ray actor does so first thing): with one
    GPU per actor, the decode threads and the model share the card with nothing
    else, but a co-located process (another actor, a notebook) still fits.
    Importing Keras through :func:`keras` turns it on too; this also covers a
    process where Keras was imported before (TensorFlow only; a GPU the user
    initialised already keeps its setting).
    """
    if backend() == "tensorflow":
        _grow_gpu_memory()
