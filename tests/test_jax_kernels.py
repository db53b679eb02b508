"""The JAX-on-CPU convolutions compute what XLA's own convolutions compute."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, WEIGHTS_025, requires_shared

jax = pytest.importorskip("jax", reason="JAX is not installed (pip install -e '.[jax]')")
from jax import lax  # noqa: E402

from pipeline.jax_kernels import depthwise_conv2d, pointwise_conv2d  # noqa: E402


def xla_depthwise(x: np.ndarray, kernel: np.ndarray, strides, padding, dilation) -> np.ndarray:
    kh, kw, c, m = kernel.shape
    return np.asarray(lax.conv_general_dilated(
        x, kernel.reshape(kh, kw, 1, c * m), strides, padding.upper(), rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c))


CASES = [  # (kernel, strides, padding, dilation, multiplier); Keras refuses strides and dilation both > 1
    (kernel, strides, padding, (1, 1), multiplier)
    for kernel in [(3, 3), (5, 5), (1, 3)] for strides in [(1, 1), (2, 2), (1, 2)]
    for padding in ["same", "valid"] for multiplier in [1, 2]
] + [((3, 3), (1, 1), padding, (2, 2), 1) for padding in ["same", "valid"]]


@pytest.mark.parametrize("kernel_size,strides,padding,dilation,multiplier", CASES)
def test_depthwise_matches_xla(kernel_size, strides, padding, dilation, multiplier):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 11, 3)).astype(np.float32)
    kernel = rng.standard_normal((*kernel_size, 3, multiplier)).astype(np.float32)
    ours = np.asarray(depthwise_conv2d(x, kernel, strides=strides, padding=padding, dilation=dilation))
    ref = xla_depthwise(x, kernel, strides, padding, dilation)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_pointwise_matches_xla(strides, padding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 6, 5)).astype(np.float32)
    kernel = rng.standard_normal((1, 1, 5, 4)).astype(np.float32)
    ref = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(pointwise_conv2d(x, kernel, strides=strides)), np.asarray(ref),
                               rtol=1e-5, atol=1e-5)


SAME_MODEL = """
import sys
import numpy as np
from pipeline.backbones import build_backbone
bb = build_backbone("mobilenet", sys.argv[1], alpha=0.25, image_size=128)
x = np.random.default_rng(0).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
fast = bb.embed(x, batch_size=4)
patched = [layer for layer in bb.model._flatten_layers() if "call" in vars(layer)]
for layer in patched:
    del layer.call  # back to Keras' own convolution
stock = np.asarray(bb.model.predict_on_batch(bb.preprocess(x)))
print(len(patched), float(np.abs(fast - stock).max()), float(np.abs(stock).max()))
"""


@requires_shared
def test_a_jax_backbone_uses_them_and_keeps_its_features():
    """On JAX's CPU backend the backbone's depthwise and 1x1 layers run these kernels, with Keras' results."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update({"KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-c", SAME_MODEL, str(WEIGHTS_025)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    changed, diff, scale = proc.stdout.split()
    assert int(changed) == 26  # MobileNet v1: 13 depthwise + 13 pointwise convolutions
    assert float(diff) <= 1e-4 * float(scale)
