from __future__ import annotations

import numpy as np
import pytest

from conftest import WEIGHTS_025, requires_shared
from pipeline.backbones import REGISTRY, backbone_from_info, build_backbone, load_user_model, weights_identity
from pipeline.errors import BackboneError

FAST = {"mobilenet", "mobilenetv2", "mobilenetv3small", "mobilenetv3large", "efficientnetb0", "efficientnetv2b0"}


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in REGISTRY])
def test_registry_backbone_builds_and_reports_its_dim(name):
    size = 75  # the smallest input every family accepts
    bb = build_backbone(name, "none", image_size=size)
    assert bb.feature_dim == REGISTRY[name].feature_dim
    out = bb.embed(np.random.default_rng(0).integers(0, 255, (2, size, size, 3), dtype=np.uint8))
    assert out.shape == (2, REGISTRY[name].feature_dim) and np.isfinite(out).all()


def test_preprocessing_is_per_family():
    funcs = {spec.preprocess_module for spec in REGISTRY.values()}
    assert len(funcs) > 8
    x = np.full((1, 4, 4, 3), 255, np.uint8)
    caffe = build_backbone("vgg16", "none", image_size=32).preprocess(x)
    tf_mode = build_backbone("mobilenet", "none", image_size=32).preprocess(x)
    assert np.allclose(tf_mode, 1.0) and not np.allclose(caffe, tf_mode)


def test_unknown_backbone_and_bad_options():
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone("alexnet")
    with pytest.raises(BackboneError, match="no width multiplier"):
        build_backbone("resnet50", "none", alpha=0.5)
    with pytest.raises(BackboneError, match="does not exist"):
        weights_identity("/no/such/weights.h5")


@requires_shared
def test_shared_weight_files_load_through_options():
    shared = WEIGHTS_025.parent
    cases = [("mobilenet", "mobilenet_0.25_128_imagenet_no_top.weights.h5", 0.25, 128, 256),
             ("mobilenet", "mobilenet_1.0_224_imagenet_no_top.weights.h5", 1.0, 224, 1024),
             ("mobilenetv2", "mobilenetv2_1.0_224_imagenet_no_top.weights.h5", 1.0, 224, 1280)]
    for name, fname, alpha, size, dim in cases:
        bb = build_backbone(name, str(shared / fname), alpha=alpha, image_size=size)
        assert bb.feature_dim == dim and bb.info["weights"].startswith(fname + ":sha256:")
        assert backbone_from_info(bb.info, weights=str(shared / fname)).feature_dim == dim


def test_pooling_none_keeps_feature_map():
    with pytest.warns(UserWarning, match="flattened feature map"):
        bb = build_backbone("mobilenet", "none", alpha=0.25, image_size=64, pooling="none")
    assert bb.feature_dim == 2 * 2 * 256


def test_user_model_named_and_default_layer(tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(7, name="embed")(x)
    out = keras.layers.Dense(3, activation="softmax", name="classifier")(x)
    path = tmp_path / "m.keras"
    keras.Model(inputs, out).save(path)
    bb = load_user_model(path)
    assert bb.feature_dim == 7 and bb.info["layer"] == "embed" and bb.input_size == (32, 32)
    assert load_user_model(path, "conv").feature_dim == 4  # 4-d map average-pooled
    assert load_user_model(path, "conv", pooling="none").feature_dim == 30 * 30 * 4
    with pytest.raises(BackboneError, match="no layer 'nope'"):
        load_user_model(path, "nope")
    (tmp_path / "bad.keras").write_text("junk")
    with pytest.raises(BackboneError, match="cannot load"):
        load_user_model(tmp_path / "bad.keras")


def test_mixed_precision_gives_float32_features_close_to_full_precision():
    x = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    full = build_backbone("mobilenet", "none", alpha=0.25, image_size=64)
    half = build_backbone("mobilenet", "none", alpha=0.25, image_size=64, precision="float16")
    half.model.set_weights(full.model.get_weights())
    a, b = full.embed(x), half.embed(x)
    assert b.dtype == np.float32 and half.info["precision"] == "float16"
    np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05)
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # not leaked to later models
