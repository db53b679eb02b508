"""Kernels and backends give the same features: oneDNN on vs off, JAX (and torch) vs TensorFlow.

The kernels and the Keras backend are fixed when TensorFlow / Keras are
imported, so each variant runs in its own Python process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DVC, ROOT, WEIGHTS_025, requires_shared

PHOTOS = [f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(4)]

EMBED = """
import json, sys
import numpy as np
from pipeline.backbones import build_backbone
from pipeline.images import decode_image
weights, out, precision, pooling, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
bb = build_backbone("mobilenet", weights, alpha=0.25, image_size=128, precision=precision, pooling=pooling)
x = np.stack([decode_image(f, bb.input_size) for f in files])
np.save(out, bb.embed(x, batch_size=8))
print(json.dumps({k: bb.info[k] for k in ("backend", "kernels", "onednn_env", "precision")}))
"""


def embed_in_process(tmp_path: Path, env: dict[str, str], precision: str = "float32",
                     pooling: str = "avg") -> tuple[np.ndarray, dict]:
    out = tmp_path / f"features-{len(list(tmp_path.iterdir()))}.npy"
    full_env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")}
    full_env.update({"PYTHONPATH": str(ROOT), **env})
    proc = subprocess.run([sys.executable, "-c", EMBED, str(WEIGHTS_025), str(out), precision, pooling,
                           *[str(DVC / p) for p in PHOTOS]],
                          env=full_env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out), json.loads(proc.stdout.strip().splitlines()[-1])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def tf_reference(tmp_path_factory) -> tuple[np.ndarray, dict]:
    """TensorFlow with the default kernels the pipeline picks (oneDNN on x86)."""
    if not WEIGHTS_025.is_file() or not DVC.is_dir():
        pytest.skip(f"needs {WEIGHTS_025} and {DVC}")
    return embed_in_process(tmp_path_factory.mktemp("tf"), {})


def test_onednn_is_on_by_default_and_the_users_setting_wins():
    # set just before Keras is imported (issue 18: importing pipeline changes no environment variable)
    code = ("import os; from pipeline.keras_runtime import prepare_environment; prepare_environment(); "
            "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    base = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    run = lambda env: subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT)},
                                     capture_output=True, text=True, cwd=ROOT).stdout.strip()
    import platform

    assert run(base) == ("1" if platform.machine().lower() in ("x86_64", "amd64") else "None")
    assert run({**base, "TF_ENABLE_ONEDNN_OPTS": "0"}) == "0"


@requires_shared
def test_onednn_features_match_the_default_kernels(tmp_path, tf_reference):
    fast, info = tf_reference
    slow, slow_info = embed_in_process(tmp_path, {"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert slow_info["kernels"] == "default" and slow_info["onednn_env"].startswith("0 (set by user")
    if info["onednn_env"].startswith("1"):
        assert info["kernels"] == "onednn"
    assert cosines(fast, slow).min() >= 0.9999


@requires_shared
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_give_tensorflows_features(tmp_path, tf_reference, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[{backend}]')")
    ref, _ = tf_reference
    got, info = embed_in_process(tmp_path, {"KERAS_BACKEND": backend})
    assert info["backend"] == backend and info["kernels"] == {"jax": "xla"}.get(backend, backend)
    assert cosines(ref, got).min() >= 0.999


@requires_shared
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_unpooled_feature_maps_flatten_in_tensorflows_order(tmp_path, backend):
    """torch builds backbones channels-first: ``--pooling none`` must still give TensorFlow's (h, w, c) order."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[{backend}]')")
    ref, _ = embed_in_process(tmp_path, {}, pooling="none")
    got, _ = embed_in_process(tmp_path, {"KERAS_BACKEND": backend}, pooling="none")
    assert got.shape == ref.shape == (len(PHOTOS), 4 * 4 * 256)
    assert cosines(ref, got).min() >= 0.999


@requires_shared
def test_bfloat16_features_are_float32_and_close(tmp_path, tf_reference):
    ref, _ = tf_reference
    got, info = embed_in_process(tmp_path, {}, precision="bfloat16")
    assert got.dtype == np.float32 and info["precision"] == "bfloat16"
    assert cosines(ref, got).mean() >= 0.99
