"""Kernels and backends give the same features: oneDNN on vs off, JAX (and torch) vs TensorFlow.

The kernels and the Keras backend are fixed when TensorFlow / Keras are
imported, so each variant runs in its own Python process (one per backend:
its pooled and unpooled features, and on JAX and torch first an
``extract-features`` run that must not import TensorFlow).
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

from conftest import DVC, ROOT, WEIGHTS_025, kaggle_names, link_subset, requires_shared

PHOTOS = [f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(4)]

EMBED = """
import json, sys
import numpy as np
args = json.loads(sys.argv[1])
modules = None
if args["cli_extract"]:  # what the lent GPU machine runs (it has no TensorFlow): the CLI, before anything else
    from click.testing import CliRunner
    from pipeline.cli import main
    r = CliRunner().invoke(main, ["extract-features", *args["cli_extract"]])
    assert r.exit_code == 0, r.output
    modules = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
from pipeline.backbones import build_backbone
from pipeline.images import decode_image
info = {"modules_after_cli": modules}
for pooling, out in args["outs"].items():
    bb = build_backbone("mobilenet", args["weights"], alpha=0.25, image_size=128, precision=args["precision"],
                        pooling=pooling)
    x = np.stack([decode_image(f, bb.input_size) for f in args["files"]])
    np.save(out, bb.embed(x, batch_size=8))
    info.update({k: bb.info[k] for k in ("backend", "kernels", "onednn_env", "precision")})
print(json.dumps(info))
"""


def embed_in_process(tmp_path: Path, env: dict[str, str], precision: str = "float32",
                     poolings: tuple[str, ...] = ("avg",), cli_extract: list[str] | None = None,
                     ) -> tuple[dict[str, np.ndarray], dict]:
    """Features of the test photos for each pooling, computed in one fresh interpreter with ``env``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    n = len(list(tmp_path.iterdir()))
    outs = {pooling: str(tmp_path / f"features-{n}-{pooling}.npy") for pooling in poolings}
    args = {"weights": str(WEIGHTS_025), "precision": precision, "outs": outs, "cli_extract": cli_extract,
            "files": [str(DVC / p) for p in PHOTOS]}
    full_env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")}
    full_env.update({"PYTHONPATH": str(ROOT), **env})
    proc = subprocess.run([sys.executable, "-c", EMBED, json.dumps(args)],
                          env=full_env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {pooling: np.load(out) for pooling, out in outs.items()}, json.loads(proc.stdout.strip().splitlines()[-1])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def tf_reference(tmp_path_factory) -> tuple[dict[str, np.ndarray], dict]:
    """TensorFlow with the default kernels the pipeline picks (oneDNN on x86): pooled and unpooled features."""
    if not WEIGHTS_025.is_file() or not DVC.is_dir():
        pytest.skip(f"needs {WEIGHTS_025} and {DVC}")
    return embed_in_process(tmp_path_factory.mktemp("tf"), {}, poolings=("avg", "none"))


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
    assert cosines(fast["avg"], slow["avg"]).min() >= 0.9999


@requires_shared
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_give_tensorflows_features_without_importing_tensorflow(tmp_path, tf_reference, backend):
    """Pooled features, and unpooled feature maps flattened in TensorFlow's (h, w, c) order (torch builds
    backbones channels-first: ``--pooling none`` must still give it). The lent GPU machine has no TensorFlow:
    on JAX and torch, extract-features (a keras.applications CNN) must not import it, even where it is
    installed."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[{backend}]')")
    ref, _ = tf_reference
    src = link_subset(DVC, tmp_path / "src", kaggle_names(2))
    cli = [str(src), "-o", str(tmp_path / "f.h5"), "--backbone", "mobilenet", "--weights", str(WEIGHTS_025),
           "--alpha", "0.25", "--image-size", "128", "-q"]
    got, info = embed_in_process(tmp_path / "out", {"KERAS_BACKEND": backend}, poolings=("avg", "none"),
                                 cli_extract=cli)
    assert info["modules_after_cli"] == ["keras"]
    assert info["backend"] == backend and info["kernels"] == {"jax": "xla"}.get(backend, backend)
    assert cosines(ref["avg"], got["avg"]).min() >= 0.999
    assert got["none"].shape == ref["none"].shape == (len(PHOTOS), 4 * 4 * 256)
    assert cosines(ref["none"], got["none"]).min() >= 0.999


@requires_shared
def test_bfloat16_features_are_float32_and_close(tmp_path, tf_reference):
    ref, _ = tf_reference
    got, info = embed_in_process(tmp_path, {}, precision="bfloat16")
    assert got["avg"].dtype == np.float32 and info["precision"] == "bfloat16"
    assert cosines(ref["avg"], got["avg"]).mean() >= 0.99
