"""keras-hub presets as backbones (--backbone hub:/path/to/preset_folder).

No pretrained preset can be fetched here, so each family is built tiny and
random-initialised (2 layers, hidden size 32, 56 px images) and saved with
keras-hub's own ``save_to_preset``: the folder has what a downloaded preset
has (config.json, model.weights.h5, image_converter.json, metadata.json).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import (DVC, ROOT, WEIGHTS_025, assert_same_store, kaggle_names, link_subset, requires_shared,
                      sigkill_after_shards)
from pipeline.cli import main

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("keras_hub") is None,
                       reason="keras-hub is not installed: pip install -e '.[hub]'"),
    requires_shared,
]

SIZE = 56
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = kaggle_names(4)  # 8 Dogs vs Cats photos
POOLINGS = {"dinov2": ("cls", "mean", "cls+mean"), "vit": ("cls", "mean", "cls+mean"),
            "clip": ("cls", "mean", "cls+mean", "embedding"), "siglip": ("mean", "embedding")}
DEFAULTS = {"dinov2": "cls+mean", "vit": "cls", "clip": "cls", "siglip": "embedding"}


def _make(family: str, folder: Path) -> Path:
    import keras
    import keras_hub as kh

    keras.utils.set_random_seed(len(family))
    tiny = dict(num_layers=2, num_heads=2)
    if family == "dinov2":  # with registers: mean pooling must leave them out
        backbone = kh.models.DINOV2Backbone(patch_size=14, hidden_dim=32, intermediate_dim=64, num_register_tokens=2,
                                            image_shape=(SIZE, SIZE, 3), position_embedding_shape=(70, 70, 3), **tiny)
        converter = kh.layers.DINOV2ImageConverter(image_size=(SIZE, SIZE), scale=[1 / (255 * s) for s in STD],
                                                  offset=[-m / s for m, s in zip(MEAN, STD)])
    elif family == "vit":
        backbone = kh.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=14, hidden_dim=32, mlp_dim=64, **tiny)
        converter = kh.layers.ViTImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)
    elif family == "clip":
        vision = kh.models.CLIPVisionEncoder(patch_size=14, hidden_dim=32, intermediate_dim=64,
                                             image_shape=(SIZE, SIZE, 3), **tiny)
        text = kh.models.CLIPTextEncoder(vocabulary_size=50, embedding_dim=32, hidden_dim=32, intermediate_dim=64,
                                         max_sequence_length=8, **tiny)
        backbone = kh.models.CLIPBackbone(vision, text, projection_dim=24)
        converter = kh.layers.CLIPImageConverter(image_size=(SIZE, SIZE), scale=[1 / (255 * s) for s in STD],
                                                offset=[-m / s for m, s in zip(MEAN, STD)])
    else:
        vision = kh.models.SigLIPVisionEncoder(patch_size=14, hidden_dim=32, intermediate_dim=64,
                                               image_shape=(SIZE, SIZE, 3), **tiny)
        text = kh.models.SigLIPTextEncoder(vocabulary_size=50, embedding_dim=32, hidden_dim=32, intermediate_dim=64,
                                           max_sequence_length=8, **tiny)
        backbone = kh.models.SigLIPBackbone(vision, text)
        converter = kh.layers.SigLIPImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)
    backbone.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="session")
def presets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub_presets")
    return {family: _make(family, root / f"tiny_{family}") for family in POOLINGS}


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    return link_subset(DVC, tmp_path_factory.mktemp("hub_photos") / "src", PHOTOS)


@functools.cache
def _keras_hub_model(folder: Path) -> tuple:
    """keras-hub's own image converter and backbone of a preset, loaded once per preset."""
    import keras_hub as kh

    return kh.layers.ImageConverter.from_preset(str(folder)), kh.models.Backbone.from_preset(str(folder))


def _reference(folder: Path, files: list[str], pooling: str) -> np.ndarray:
    """keras-hub's own forward pass: its image converter, its backbone, then the pooling by hand."""
    import keras

    from pipeline.images import decode_image

    converter, backbone = _keras_hub_model(folder)
    x = keras.ops.convert_to_numpy(converter(np.stack([decode_image(f, (SIZE, SIZE)) for f in files])))
    name = type(backbone).__name__
    if name == "SigLIPBackbone":
        if pooling == "embedding":
            return keras.ops.convert_to_numpy(backbone.get_vision_embeddings(x))
        tower = backbone.vision_encoder
        tokens = keras.Model(tower.inputs, tower.post_layer_norm.output).predict(x, verbose=0)
        return tokens.mean(axis=1)
    if name == "CLIPBackbone":
        if pooling == "embedding":
            return keras.ops.convert_to_numpy(backbone.get_vision_embeddings(x))
        tokens = keras.ops.convert_to_numpy(backbone.vision_encoder({"images": x}))
    else:
        tokens = backbone.predict(x, verbose=0)
    skip = 1 + getattr(backbone, "num_register_tokens", 0)
    cls, mean = tokens[:, 0], tokens[:, skip:].mean(axis=1)
    return {"cls": cls, "mean": mean, "cls+mean": np.concatenate([cls, mean], axis=1)}[pooling]


def _read(path: Path) -> tuple[np.ndarray, list[str]]:
    with h5py.File(path) as f:
        return f["features"][:], [p.decode() for p in f["paths"][:]]


# --- loading and parity -----------------------------------------------------------------------

@pytest.mark.parametrize("family", list(POOLINGS))
def test_each_family_loads_from_its_folder_with_its_papers_default_pooling(presets, family):
    from pipeline.backbones import BackboneConfig, backbone_for

    bb = backbone_for(BackboneConfig(f"hub:{presets[family]}", "none", None, None, "", "float32"))
    assert bb.info["pooling"] == DEFAULTS[family] and bb.input_size == (SIZE, SIZE)
    assert bb.info["hub_preset"] == str(presets[family]) and bb.info["weights"].startswith("sha256:")
    assert bb.embed(np.zeros((3, SIZE, SIZE, 3), np.uint8), batch_size=2).shape == (3, bb.feature_dim)


@pytest.mark.parametrize("family,pooling", [(f, p) for f, ps in POOLINGS.items() for p in ps])
def test_stored_features_equal_keras_hubs_own_forward_pass(presets, photos, tmp_path, family, pooling):
    from pipeline.backbones import BackboneConfig
    from pipeline.extract import extract_features
    from pipeline.images import list_images

    out = tmp_path / "s.h5"
    config = BackboneConfig(f"hub:{presets[family]}", "none", None, None, pooling, "float32")
    extract_features(list_images(photos), out, config, batch_size=3, progress=False)
    X, paths = _read(out)
    files = [str(photos / Path(p).name) for p in paths]
    ref = _reference(presets[family], files, pooling)
    assert X.shape == ref.shape
    np.testing.assert_allclose(X, ref, rtol=1e-4, atol=1e-5)


def test_dinov2_takes_another_image_size_and_fixed_size_families_refuse_it(presets):
    from pipeline.backbones import build_hub_backbone
    from pipeline.errors import BackboneError

    bb = build_hub_backbone(f"hub:{presets['dinov2']}", image_size=84)
    assert bb.input_size == (84, 84) and bb.embed(np.zeros((2, 84, 84, 3), np.uint8)).shape == (2, 64)
    for family in ("vit", "clip", "siglip"):
        with pytest.raises(BackboneError, match="fixed position embeddings"):
            build_hub_backbone(f"hub:{presets[family]}", image_size=84)


@pytest.mark.parametrize("family,pooling,message", [
    ("siglip", "cls", "no class token"), ("dinov2", "embedding", "no image-text embedding"),
    ("vit", "avg", "keras.applications"),
])
def test_a_pooling_the_family_does_not_have_is_refused(presets, family, pooling, message):
    from pipeline.backbones import build_hub_backbone
    from pipeline.errors import BackboneError

    with pytest.raises(BackboneError, match=message):
        build_hub_backbone(f"hub:{presets[family]}", pooling=pooling)


def test_a_folder_that_is_not_a_preset_and_an_unknown_name_are_one_line_errors(tmp_path):
    from pipeline.backbones import build_hub_backbone
    from pipeline.errors import BackboneError

    with pytest.raises(BackboneError, match="not a keras-hub preset folder"):
        build_hub_backbone(f"hub:{tmp_path}")
    with pytest.raises(BackboneError, match="unknown keras-hub preset 'no_such_preset'"):
        build_hub_backbone("hub:no_such_preset")


# --- identity ---------------------------------------------------------------------------------

def test_identity_is_the_presets_content_and_mixing_presets_or_poolings_is_refused(presets, photos, tmp_path):
    from pipeline.backbones import BackboneConfig, backbone_for
    from pipeline.errors import StoreError
    from pipeline.extract import extract_features
    from pipeline.images import list_images
    from pipeline.stream import FeatureStream

    copy = shutil.copytree(presets["dinov2"], tmp_path / "renamed_copy")
    a = backbone_for(BackboneConfig(f"hub:{presets['dinov2']}", "none", None, None, "", "float32")).info
    b = backbone_for(BackboneConfig(f"hub:{copy}", "none", None, None, "", "float32")).info
    assert a["weights"] == b["weights"] and a["backbone"] == b["backbone"] == "hub:DINOV2Backbone"

    def store(name, family, pooling):
        out = tmp_path / f"{name}.h5"
        extract_features(list_images(photos), out, BackboneConfig(f"hub:{presets[family]}", "none", None, None,
                                                                   pooling, "float32"), progress=False)
        return out

    cls_store, mean_store = store("cls", "vit", "cls"), store("mean", "vit", "mean")  # both 32-d
    clip_store = store("clip", "clip", "cls")  # 32-d too
    for other, reason in ((mean_store, "pooling"), (clip_store, "backbone")):
        with pytest.raises(StoreError, match=reason):
            with FeatureStream([cls_store, other]) as stream:
                next(iter(stream))
    # resuming (or completing) a store with another pooling is refused with the setting that differs
    with pytest.raises(StoreError, match="pooling"):
        extract_features(list_images(photos), cls_store,
                         BackboneConfig(f"hub:{presets['vit']}", "none", None, None, "mean", "float32"),
                         progress=False)


# --- every path -------------------------------------------------------------------------------

def test_ray_extraction_equals_local_bitwise(presets, photos, tmp_path, ray_cluster):
    from pipeline.backbones import BackboneConfig
    from pipeline.extraction import RayExecutor, extract_features
    from pipeline.images import list_images

    config = BackboneConfig(f"hub:{presets['dinov2']}", "none", None, None, "", "float32")
    opts = dict(batch_size=2, checkpoint_rows=4, progress=False)
    extract_features(list_images(photos), tmp_path / "local.h5", config, **opts)
    res = extract_features(list_images(photos), tmp_path / "ray.h5", config, executor=RayExecutor(workers=2), **opts)
    assert res.rows == len(PHOTOS) and res.executor.startswith("ray")
    assert_same_store(tmp_path / "ray.h5", tmp_path / "local.h5")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def test_kill_9_then_rerun_equals_uninterrupted_run(presets, tmp_path):
    src = link_subset(DVC, tmp_path / "src", kaggle_names(300))
    killed, clean = tmp_path / "killed.h5", tmp_path / "clean.h5"
    opts = ["--backbone", f"hub:{presets['dinov2']}", "--batch-size", "16", "--checkpoint-rows", "32", "-q"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(_cli("extract-features", str(src), "-o", str(killed), *opts), env=env, cwd=ROOT)
    sigkill_after_shards(proc, tmp_path / "killed.h5.parts", 4, timeout=240)
    assert not killed.exists(), "the run finished before it could be killed"
    subprocess.run(_cli("extract-features", str(src), "-o", str(killed), *opts), env=env, check=True, cwd=ROOT)
    subprocess.run(_cli("extract-features", str(src), "-o", str(clean), *opts), env=env, check=True, cwd=ROOT)
    (Xk, pk), (Xc, pc) = _read(killed), _read(clean)
    assert pk == pc and len(pk) == 600
    assert Xk.tobytes() == Xc.tobytes()


EMBED = """
import sys
import numpy as np
from pipeline.backbones import build_hub_backbone
from pipeline.images import decode_image
spec, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
bb = build_hub_backbone(spec)
np.save(out, bb.embed(np.stack([decode_image(f, bb.input_size) for f in files]), batch_size=4))
print(bb.info["backend"])
"""


def _embed_in(backend: str, preset: Path, photos: Path, out: Path) -> np.ndarray:
    """The preset's features of the test photos, computed in a fresh interpreter on ``backend``."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update({"KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-c", EMBED, f"hub:{preset}", str(out), *(str(photos / p) for p in PHOTOS)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == backend
    return np.load(out)


@pytest.fixture(scope="module")
def tensorflow_features(presets, photos) -> np.ndarray:
    """TensorFlow's features (the backend of this process: no interpreter to start), computed once for every
    other backend to be compared with."""
    from pipeline.backbones import build_hub_backbone
    from pipeline.images import decode_image

    bb = build_hub_backbone(f"hub:{presets['dinov2']}")
    assert bb.info["backend"] == "tensorflow"
    return bb.embed(np.stack([decode_image(str(photos / p), bb.input_size) for p in PHOTOS]), batch_size=4)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_give_tensorflows_features(presets, photos, tmp_path, backend, request):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[{backend}]')")
    a = request.getfixturevalue("tensorflow_features")  # after the skip: not computed when both are missing
    b = _embed_in(backend, presets["dinov2"], photos, tmp_path / f"{backend}.npy")
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.999


# --- predict with no option repeated ----------------------------------------------------------

class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def _run(*args: str) -> Ran:
    """A command run in-process (no interpreter and TensorFlow start-up per command); an exception the CLI
    did not turn into an error message is written to stderr as the command's traceback would be."""
    r = CliRunner().invoke(main, list(args))
    stderr = r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        stderr += "".join(traceback.format_exception(r.exception))
    return Ran(r.exit_code, r.stdout, stderr)


def _train_and_predict(tmp_path: Path, extract_opts: list[str]) -> tuple[Path, Path, list[str]]:
    src = link_subset(DVC, tmp_path / "src", kaggle_names(6))
    store, model = tmp_path / "s.h5", tmp_path / "m.model"
    for args in (["extract-features", str(src), "-o", str(store), "-q", *extract_opts],
                 ["train-incremental", str(store), "--head", "nme", "--model-out", str(model), "-q"]):
        done = _run(*args)
        assert done.returncode == 0, done.stderr[-3000:]
    return src, model, [str(src / p) for p in kaggle_names(6)]


def _predict(model: Path, files: list[str], *extra: str) -> Ran:
    return _run("predict", str(model), *files, *extra)


def test_a_model_on_hub_features_predicts_raw_photos_with_no_option_repeated(presets, tmp_path):
    from pipeline.models import load_model
    from pipeline.store import open_store

    folder = shutil.copytree(presets["clip"], tmp_path / "preset")
    src, model, files = _train_and_predict(tmp_path, ["--backbone", f"hub:{folder}", "--pooling", "embedding"])
    proc = _predict(model, files)
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted = {Path(line.split("\t")[0]).name: line.split("\t")[1] for line in proc.stdout.strip().splitlines()}
    head = load_model(model).head
    with open_store(tmp_path / "s.h5") as store:
        X, paths = _read(tmp_path / "s.h5")
        expected = dict(zip((Path(p).name for p in paths), map(str, head.predict(X))))
    assert predicted == expected
    # moved: a one-line error naming the option; given the new place, the recorded hash is checked
    moved = folder.rename(tmp_path / "moved")
    proc = _predict(model, files[:1])
    assert proc.returncode != 0 and "no longer at" in proc.stderr and "--weights" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _predict(model, files[:1], "--weights", str(moved)).returncode == 0
    other = _predict(model, files[:1], "--weights", str(presets["clip"].parent / "tiny_siglip"))
    assert other.returncode != 0 and "differ" in other.stderr and "Traceback" not in other.stderr


def test_a_model_on_weights_file_features_predicts_without_weights_again(tmp_path):
    weights = shutil.copy(WEIGHTS_025, tmp_path / "w.weights.h5")
    src, model, files = _train_and_predict(tmp_path, ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size",
                                                      "128", "--weights", str(weights)])
    proc = _predict(model, files[:2])
    assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 2, proc.stderr[-2000:]
    Path(weights).unlink()
    proc = _predict(model, files[:1])
    assert proc.returncode != 0 and "pass it with --weights" in proc.stderr and "Traceback" not in proc.stderr
