"""The JAX-on-CPU convolutions compute what XLA's own convolutions compute."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, WEIGHTS_025, requires_shared

CASES = [  # (kernel, strides, padding, dilation, multiplier); Keras refuses strides and dilation both > 1
    (kernel, strides, padding, (1, 1), multiplier)
    for kernel in [(3, 3), (5, 5), (1, 3)] for strides in [(1, 1), (2, 2), (1, 2)]
    for padding in ["same", "valid"] for multiplier in [1, 2]
] + [((3, 3), (1, 1), padding, (2, 2), 1) for padding in ["same", "valid"]]

# JAX runs in its own process: its thread pools stay out of the test process (which forks Ray and
# subprocesses, and runs TensorFlow), and one process compiles every case.
COMPARE = """
import json, sys
import numpy as np
from jax import lax
from pipeline.jax_kernels import depthwise_conv2d, pointwise_conv2d
out = []
for kernel_size, strides, padding, dilation, multiplier in json.loads(sys.argv[1]):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 11, 3)).astype(np.float32)
    k = rng.standard_normal((*kernel_size, 3, multiplier)).astype(np.float32)
    ours = np.asarray(depthwise_conv2d(x, k, strides=tuple(strides), padding=padding, dilation=tuple(dilation)))
    ref = np.asarray(lax.conv_general_dilated(
        x, k.reshape(*kernel_size, 1, 3 * multiplier), tuple(strides), padding.upper(), rhs_dilation=tuple(dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3))
    out.append([list(ours.shape), list(ref.shape), float(np.abs(ours - ref).max()) if ours.shape == ref.shape else -1])
for strides in [(1, 1), (2, 2)]:
    for padding in ["SAME", "VALID"]:
        rng = np.random.default_rng(1)
        x = rng.standard_normal((2, 7, 6, 5)).astype(np.float32)
        k = rng.standard_normal((1, 1, 5, 4)).astype(np.float32)
        ref = np.asarray(lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")))
        ours = np.asarray(pointwise_conv2d(x, k, strides=strides))
        out.append([list(ours.shape), list(ref.shape), float(np.abs(ours - ref).max()) if ours.shape == ref.shape else -1])
print(json.dumps(out))
"""


def run_jax(script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update({"KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def compared() -> list[list]:
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed (pip install -e '.[jax]')")
    return json.loads(run_jax(COMPARE, json.dumps(CASES)))


@pytest.mark.parametrize("case", range(len(CASES)), ids=[str(c) for c in CASES])
def test_depthwise_matches_xla(compared, case):
    ours_shape, ref_shape, max_error = compared[case]
    assert ours_shape == ref_shape and max_error <= 1e-5


@pytest.mark.parametrize("case", range(4), ids=["stride1-same", "stride1-valid", "stride2-same", "stride2-valid"])
def test_pointwise_matches_xla(compared, case):
    ours_shape, ref_shape, max_error = compared[len(CASES) + case]
    assert ours_shape == ref_shape and max_error <= 1e-5


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
def test_a_jax_backbone_uses_them_and_keeps_its_features(compared):
    """On JAX's CPU backend the backbone's depthwise and 1x1 layers run these kernels, with Keras' results."""
    changed, diff, scale = run_jax(SAME_MODEL, str(WEIGHTS_025)).split()
    assert int(changed) == 26  # MobileNet v1: 13 depthwise + 13 pointwise convolutions
    assert float(diff) <= 1e-4 * float(scale)
