"""Convolutions that XLA runs fast on a CPU, for Keras models on JAX.

XLA's CPU backend is slow on the two convolutions mobile backbones are made
of (measured on an AMD EPYC, 2 cores, jaxlib 0.10):

- a depthwise convolution (a grouped ``conv_general_dilated`` with one group
  per channel) runs through a generic loop: one 3x3 layer of MobileNetV2 on a
  (32, 112, 112, 96) batch took 1.77 s, against 0.17 s for
  :func:`depthwise_conv2d`, which writes it as ``kh * kw`` shifted, strided
  slices of the padded input, each multiplied by one kernel tap and added
  (XLA fuses that into one elementwise loop);
- a 1x1 convolution took 171 ms on a (32, 112, 112, 16) -> 96 batch, against
  95 ms for the same product written as a matrix product
  (:func:`pointwise_conv2d`).

Results agree with XLA's convolutions to float32 rounding (the order of the
sums differs). Only :mod:`pipeline.keras_runtime` uses this module, and only
on JAX's CPU backend: GPUs keep cuDNN's kernels.

>>> import numpy as np
>>> from jax import lax
>>> x = np.random.default_rng(0).random((2, 9, 9, 4), np.float32)
>>> k = np.random.default_rng(1).random((3, 3, 4, 1), np.float32)
>>> ref = lax.conv_general_dilated(x, k.reshape(3, 3, 1, 4), (2, 2), "SAME",
...                                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4)
>>> out = depthwise_conv2d(x, k, strides=(2, 2), padding="same", dilation=(1, 1))
>>> out.shape, bool(np.allclose(out, ref, atol=1e-5))
((2, 5, 5, 4), True)
"""

from __future__ import annotations

from typing import Any

# jax is imported inside the functions: collecting this module (doctests) must not start JAX's thread pools
# in a process that forks later.


def _pads(size: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """(pad before, pad after, output size) along one axis, with TensorFlow's ``same``/``valid`` rules."""
    span = (k - 1) * dilation + 1
    if padding == "valid":
        return 0, 0, (size - span) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2, out


def depthwise_conv2d(x: Any, kernel: Any, *, strides: tuple[int, int], padding: str,
                     dilation: tuple[int, int]) -> Any:
    """Depthwise 2-D convolution of NHWC ``x`` by ``kernel`` of shape (kh, kw, channels, multiplier).

    Output channel ``c * multiplier + m`` is channel ``c`` convolved with
    ``kernel[:, :, c, m]`` (Keras' and TensorFlow's order).
    """
    import jax.numpy as jnp
    from jax import lax

    kh, kw, channels, multiplier = kernel.shape
    if multiplier > 1:
        x = jnp.repeat(x, multiplier, axis=-1)
    taps = kernel.reshape(kh, kw, channels * multiplier).astype(x.dtype)
    top, bottom, out_h = _pads(x.shape[1], kh, strides[0], dilation[0], padding)
    left, right, out_w = _pads(x.shape[2], kw, strides[1], dilation[1], padding)
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    n, _, _, c = padded.shape
    total = None
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            window = lax.slice(padded, (0, r0, c0, 0),
                               (n, r0 + (out_h - 1) * strides[0] + 1, c0 + (out_w - 1) * strides[1] + 1, c),
                               (1, strides[0], strides[1], 1))
            term = window * taps[i, j]
            total = term if total is None else total + term
    return total


def pointwise_conv2d(x: Any, kernel: Any, *, strides: tuple[int, int]) -> Any:
    """1x1 convolution of NHWC ``x`` by ``kernel`` (1, 1, in, out) as a matrix product.

    With a 1x1 kernel, ``same`` and ``valid`` padding agree and a stride only
    subsamples the input.

    >>> import numpy as np
    >>> x = np.ones((1, 4, 4, 2), np.float32); k = np.ones((1, 1, 2, 3), np.float32)
    >>> pointwise_conv2d(x, k, strides=(2, 2)).shape
    (1, 2, 2, 3)
    """
    import jax.numpy as jnp

    if strides != (1, 1):
        x = x[:, ::strides[0], ::strides[1], :]
    return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0].astype(x.dtype))
