"""The backbone registry: a Keras CNN that turns RGB batches into feature vectors.

Keras comes from :mod:`pipeline.keras_runtime`, lazily, so the store, the
stream and the heads load without TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import BackboneError
from pipeline.keras_runtime import (compiled_forward, image_format_scope, kernels, native_image_format,
                                    precision_scope)
from pipeline.keras_runtime import device as _device
from pipeline.keras_runtime import hub as _hub
from pipeline.keras_runtime import keras as _keras
from pipeline.options import IMAGE_SIZE_RANGE
from pipeline.precision import resolve_precision


@dataclass(frozen=True)
class BackboneSpec:
    """One ``keras.applications`` family: how to build it and feed it."""

    constructor: str      # attribute of keras.applications
    preprocess_module: str  # keras.applications.<module>.preprocess_input
    preprocessing: str    # what that function does, for the store's metadata
    input_size: int       # default square input side
    feature_dim: int      # pooled feature dimension at the default alpha
    has_alpha: bool = False


REGISTRY: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec("ResNet50", "resnet", "caffe: RGB->BGR, minus ImageNet mean", 224, 2048),
    "resnet101": BackboneSpec("ResNet101", "resnet", "caffe: RGB->BGR, minus ImageNet mean", 224, 2048),
    "resnet50v2": BackboneSpec("ResNet50V2", "resnet_v2", "tf: scale to [-1, 1]", 224, 2048),
    "vgg16": BackboneSpec("VGG16", "vgg16", "caffe: RGB->BGR, minus ImageNet mean", 224, 512),
    "inceptionv3": BackboneSpec("InceptionV3", "inception_v3", "tf: scale to [-1, 1]", 299, 2048),
    "xception": BackboneSpec("Xception", "xception", "tf: scale to [-1, 1]", 299, 2048),
    "mobilenet": BackboneSpec("MobileNet", "mobilenet", "tf: scale to [-1, 1]", 224, 1024, has_alpha=True),
    "mobilenetv2": BackboneSpec("MobileNetV2", "mobilenet_v2", "tf: scale to [-1, 1]", 224, 1280, has_alpha=True),
    "mobilenetv3small": BackboneSpec("MobileNetV3Small", "mobilenet_v3", "none: rescaling is inside the model", 224, 576, has_alpha=True),
    "mobilenetv3large": BackboneSpec("MobileNetV3Large", "mobilenet_v3", "none: rescaling is inside the model", 224, 960, has_alpha=True),
    "efficientnetb0": BackboneSpec("EfficientNetB0", "efficientnet", "none: rescaling is inside the model", 224, 1280),
    "efficientnetv2b0": BackboneSpec("EfficientNetV2B0", "efficientnet_v2", "none: rescaling is inside the model", 224, 1280),
    "densenet121": BackboneSpec("DenseNet121", "densenet", "torch: scale to [0, 1], ImageNet mean/std", 224, 1024),
    "convnexttiny": BackboneSpec("ConvNeXtTiny", "convnext", "none: normalisation is inside the model", 224, 768),
}
POOLINGS = ("avg", "max", "none")
HUB_PREFIX = "hub:"  # --backbone hub:NAME (a keras-hub preset) or hub:/path/to/preset_folder
HUB_POOLINGS = ("cls", "mean", "cls+mean", "embedding")
DEFAULT_BATCH_SIZE = 32


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_identity(weights: str) -> str:
    """``imagenet``, ``none``, or ``<file name>:sha256:<hex>`` for a local file."""
    if weights in ("imagenet", "none"):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise BackboneError(f"weights file {weights} does not exist (expected 'imagenet', 'none' or a path)")
    return f"{path.name}:sha256:{file_sha256(path)}"


class Backbone:
    """A built feature extractor: ``embed(uint8 batch) -> float32 features``.

    Attributes: ``name``, ``input_size`` (height, width), ``feature_dim`` and
    ``info`` (the metadata a store or a model records about it).
    """

    def __init__(self, model: Any, preprocess: Callable[[np.ndarray], np.ndarray], info: dict[str, Any],
                 channels_first: bool = False):
        self.model = model
        self._forward = compiled_forward(model, channels_first)
        self._preprocess = preprocess
        self.info = info
        self.name: str = info["backbone"]
        self.input_size: tuple[int, int] = tuple(info["input_size"])
        self.feature_dim: int = int(info["feature_dim"])
        self.config: BackboneConfig | None = None  # the recipe it was built from, when known

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        return self._preprocess(images.astype(np.float32, copy=True))

    def embed(self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Features of a ``(n, h, w, 3)`` uint8 batch, as float32 ``(n, feature_dim)``.

        Images go through the model ``batch_size`` at a time and a short last
        batch is padded to ``batch_size``: every image is computed in a batch
        of the same shape, so features do not depend on what was embedded
        before (bitwise-stable on resume) and the model is traced once.
        """
        n = len(images)
        if n == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        out = []
        for start in range(0, n, batch_size):
            x = self.preprocess(images[start:start + batch_size])
            k = len(x)
            if k < batch_size:
                x = np.concatenate([x, np.zeros((batch_size - k, *x.shape[1:]), x.dtype)])
            y = np.asarray(self._forward(x), dtype=np.float32).reshape(len(x), -1)
            out.append(y[:k])
        return np.concatenate(out) if len(out) > 1 else out[0]


def _build_failure(name: str, weights: str, alpha: float | None, size: int, exc: Exception) -> str:
    """One line: a weights file made for another architecture gets no tensor dump."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if weights not in ("imagenet", "none") and ("shape" in str(exc).lower() or "layer" in str(exc).lower()):
        return (f"the weights file {Path(weights).name} does not fit {name} (alpha={alpha}, image size {size}): "
                f"it was saved from another architecture or width ({first[:200]})")
    return f"cannot build {name} with weights={weights!r}, alpha={alpha}, image size {size}: {first[:300]}"


_FETCH_FAILURE = re.compile(r"URL fetch failure on (\S+?):? ")


def _download_failure(name: str, exc: BaseException) -> str | None:
    """One line for Keras' failed ImageNet download (offline), or None when ``exc`` is something else.

    Keras' ``get_file`` raises a bare ``Exception("URL fetch failure on URL: errno -- reason")``.
    """
    match = _FETCH_FAILURE.search(str(exc))
    if match is None:
        return None
    url = match.group(1).rstrip(":")
    cache = Path(os.environ.get("KERAS_HOME") or "~/.keras") / "models" / url.rsplit("/", 1)[-1]
    reason = str(exc).split(" -- ", 1)[-1].strip() or "no network?"
    return (f"the ImageNet weights of {name} could not be downloaded ({reason[:120]}); pass a local weights file "
            f"with --weights FILE, or put the file Keras downloads ({url}) at {cache}")


def _pool(keras: Any, model: Any, pooling: str) -> Any:
    out = model.output
    if len(out.shape) == 4:
        if pooling == "avg":
            out = keras.layers.GlobalAveragePooling2D()(out)
        elif pooling == "max":
            out = keras.layers.GlobalMaxPooling2D()(out)
    if len(out.shape) > 2:
        out = keras.layers.Flatten()(out)
    return keras.Model(model.input, out)


def build_backbone(
    name: str = "resnet50",
    weights: str = "imagenet",
    alpha: float | None = None,
    image_size: int | None = None,
    pooling: str = "avg",
    precision: str = "float32",
) -> Backbone:
    """Build a registry backbone, e.g. ``build_backbone("mobilenet", path, alpha=0.25, image_size=128)``.

    ``precision`` is the compute precision (``float32``, ``bfloat16``,
    ``float16`` or ``auto``, see :mod:`pipeline.precision`); features come out
    as float32 whatever it is.
    """
    if name not in REGISTRY:
        raise BackboneError(f"unknown backbone {name!r}; expected one of {', '.join(REGISTRY)}, or a keras-hub "
                            "preset as hub:NAME or hub:/path/to/preset_folder (see --list-backbones)")
    if pooling not in POOLINGS:
        raise BackboneError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
    spec = REGISTRY[name]
    check_image_size(image_size)
    if alpha is not None and not spec.has_alpha:
        raise BackboneError(f"backbone {name} has no width multiplier; drop --alpha")
    identity = weights_identity(weights)
    size = image_size or spec.input_size
    keras = _keras()
    precision = resolve_precision(precision, name, _device())
    image_format = native_image_format()
    kwargs: dict[str, Any] = {
        "include_top": False,
        "weights": None if weights == "none" else weights,
        "input_shape": (size, size, 3) if image_format == "channels_last" else (3, size, size),
        "pooling": None if pooling == "none" else pooling,
    }
    if alpha is not None:
        kwargs["alpha"] = alpha
    try:
        with precision_scope(precision), image_format_scope(image_format), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns once per mismatched layer before it raises
            model = getattr(keras.applications, spec.constructor)(**kwargs)
            if pooling == "none":  # Flatten built channels-first flattens in channels-last order, like TensorFlow
                model = _pool(keras, model, "none")
    except (ValueError, OSError) as exc:
        raise BackboneError(_build_failure(name, weights, alpha, size, exc)) from None
    except Exception as exc:  # Keras' failed download is a bare Exception; anything else is a bug: re-raise
        offline = _download_failure(name, exc) if weights == "imagenet" else None
        if offline is None:
            raise
        raise BackboneError(offline) from None
    if pooling == "none":
        warnings.warn(
            f"--pooling none keeps the flattened feature map: {int(np.prod(model.output.shape[1:]))} "
            "values per image, far larger than pooled features", stacklevel=2)
    preprocess = getattr(keras.applications, spec.preprocess_module).preprocess_input
    info = {
        "backbone": name,
        "weights": identity,
        "weights_path": "" if weights in ("imagenet", "none") else str(Path(weights).resolve()),
        "alpha": alpha if alpha is not None else "",
        "input_size": [size, size],
        "preprocessing": f"keras.applications.{spec.preprocess_module}.preprocess_input ({spec.preprocessing})",
        "pooling": pooling,
        "feature_dim": int(np.prod(model.output.shape[1:])),
        "precision": precision,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "device": _device(),
        **kernels(),
    }
    backbone = Backbone(model, preprocess, info, channels_first=image_format == "channels_first")
    backbone.config = BackboneConfig(name, weights, alpha, image_size, pooling, precision)
    return backbone


def check_image_size(image_size: int | None) -> None:
    """A one-line BackboneError for an input side outside :data:`pipeline.options.IMAGE_SIZE_RANGE`."""
    low, high = IMAGE_SIZE_RANGE
    if image_size is not None and not low <= image_size <= high:
        raise BackboneError(f"image size {image_size} is outside the allowed range {low}..{high} pixels")


def build_hub_backbone(spec: str, image_size: int | None = None, pooling: str | None = None,
                       precision: str = "float32") -> Backbone:
    """A keras-hub preset as the backbone: ``spec`` is ``hub:NAME`` or ``hub:/path/to/preset_folder``.

    Images get the preset's own image-converter scaling (its mean/std), the
    vision tower runs at ``precision``, and ``pooling`` (``cls``, ``mean``,
    ``cls+mean``, ``embedding``; None: the family's default, see
    :mod:`pipeline.hub_runtime`) makes one vector per image.
    """
    check_image_size(image_size)
    keras = _keras()
    precision = resolve_precision(precision, spec, _device())
    from pipeline.keras_runtime import POLICIES

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras' notes on dict inputs of nested functional models
        built = _hub().build(spec, pooling, image_size, POLICIES[precision])
    scale, offset = built.scale, built.offset

    def preprocess(x: np.ndarray) -> np.ndarray:
        return x * scale + offset  # the converter's own order: scale, then offset, in float32

    info = {
        "backbone": built.info["backbone"],
        "weights": built.info["weights"],
        "weights_path": built.info["weights_path"],
        "hub_preset": built.info["hub_preset"],
        "alpha": "",
        "input_size": [built.size, built.size],
        "preprocessing": built.info["preprocessing"],
        "pooling": built.pooling,
        "feature_dim": int(np.prod(built.model.output.shape[1:])),
        "precision": precision,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "device": _device(),
        **kernels(),
        "hub_family": built.info["hub_family"],
        "keras_hub_version": built.info["keras_hub_version"],
    }
    backbone = Backbone(built.model, preprocess, info)
    backbone.config = BackboneConfig(spec, "none", None, image_size, pooling or "", precision)
    return backbone


def load_user_model(path: str | Path, layer: str | None = None, pooling: str = "avg") -> Backbone:
    """Use a saved Keras model as the backbone, taking features from ``layer``.

    The default layer is the one before the last (the classifier). The model
    is loaded with Keras' safe mode on and is fed raw RGB values in [0, 255]:
    a model that needs other scaling must include it as layers.
    """
    keras = _keras()
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"model file {path} does not exist")
    try:
        full = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a bad file
        raise BackboneError(f"cannot load Keras model {path}: {exc}") from None
    if layer is None:
        if len(full.layers) < 2:
            raise BackboneError(f"model {path} has a single layer; pass --layer")
        target = full.layers[-2]
    else:
        try:
            target = full.get_layer(layer)
        except ValueError:
            names = ", ".join(lay.name for lay in full.layers)
            raise BackboneError(f"model {path} has no layer {layer!r}; its layers are: {names}") from None
    sub = keras.Model(full.inputs, target.output)
    model = _pool(keras, sub, pooling)
    shape = full.input_shape
    if shape[1] is None or shape[2] is None:
        raise BackboneError(f"model {path} has no fixed input size ({shape}); save it with one")
    info = {
        "backbone": f"user:{path.name}",
        "weights": f"{path.name}:sha256:{file_sha256(path)}",
        "weights_path": str(path.resolve()),
        "alpha": "",
        "input_size": [int(shape[1]), int(shape[2])],
        "preprocessing": "none: raw RGB in [0, 255]",
        "pooling": pooling,
        "feature_dim": int(np.prod(model.output.shape[1:])),
        "precision": "float32",
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "device": _device(),
        **kernels(),
        "layer": target.name,
    }
    backbone = Backbone(model, lambda x: x, info)
    backbone.config = BackboneConfig(pooling=pooling, model_path=str(path), layer=layer)
    return backbone


def config_from_info(info: dict[str, Any], weights: str | None = None, model_path: str | None = None,
                     precision: str | None = None) -> "BackboneConfig":
    """The recipe of the backbone a store or model recorded (``weights`` / ``model_path``: local files).

    ``precision`` defaults to the recorded compute precision (float32 for
    stores and models made before it was recorded).
    """
    name = str(info["backbone"])
    recorded = str(info["weights"])
    if name.startswith("user:"):
        if model_path is None:
            model_path = recorded_file(info, "model file", "--model")
        return BackboneConfig(pooling=str(info["pooling"]), model_path=str(model_path),
                              layer=info.get("layer") or None)
    if name.startswith(HUB_PREFIX):
        if weights is not None:  # --weights (or --backbone) names the preset folder or name again
            spec = weights if weights.startswith(HUB_PREFIX) else HUB_PREFIX + weights
        elif info.get("weights_path"):
            spec = HUB_PREFIX + recorded_file(info, "keras-hub preset folder", "--weights", folder=True)
        else:  # a named preset: keras-hub's download cache, or the network
            spec = HUB_PREFIX + str(info.get("hub_preset") or "")
        size = int(info["input_size"][0])
        return BackboneConfig(spec, "none", None, size, str(info["pooling"]),
                              precision or str(info.get("precision") or "float32"))
    if weights is None:
        if recorded not in ("imagenet", "none"):
            weights = recorded_file(info, "weights file", "--weights")
        else:
            weights = recorded
    alpha = info.get("alpha")
    return BackboneConfig(name, weights, float(alpha) if alpha not in (None, "") else None,
                          int(info["input_size"][0]), str(info["pooling"]),
                          precision or str(info.get("precision") or "float32"))


def recorded_file(info: dict[str, Any], what: str, option: str, folder: bool = False) -> str:
    """The file (or preset folder) the features were made with, at the path recorded when they were.

    Its contents are checked against the recorded hash once the backbone is
    rebuilt (:func:`check_rebuilt`); only when it is gone must the user name it.
    """
    recorded = Path(str(info.get("hub_preset") or info["weights"]).split(":")[0]).name
    path = str(info.get("weights_path") or "")
    if path and (Path(path).is_dir() if folder else Path(path).is_file()):
        return path
    where = f" (it is no longer at {path})" if path else ""
    raise BackboneError(f"the features came from the {what} {recorded}{where}; pass it with {option}")


def check_rebuilt(recorded: dict[str, Any], built: dict[str, Any]) -> None:
    """Refuse a rebuilt backbone whose weights differ from those the features were made with."""
    if built["weights"] != recorded["weights"]:
        raise BackboneError(f"weights differ from those the features were made with: expected "
                            f"{recorded['weights']}, got {built['weights']}")


def backbone_from_info(info: dict[str, Any], weights: str | None = None, model_path: str | None = None,
                       precision: str | None = None) -> Backbone:
    """Rebuild the backbone a store or model recorded, checking the weights match."""
    bb = config_from_info(info, weights, model_path, precision).build()
    check_rebuilt(info, bb.info)
    return bb


@dataclass(frozen=True)
class BackboneConfig:
    """A picklable recipe for a backbone: workers rebuild the model from it, never receive one.

    Either a registry ``name`` (with ``weights``, ``alpha``, ``image_size``,
    ``pooling``, ``precision``), a keras-hub preset ``name="hub:..."`` (with
    ``image_size``, ``pooling``: "" for the family's default, ``precision``)
    or a user ``model_path`` (with ``layer``).
    """

    name: str = "resnet50"
    weights: str = "imagenet"
    alpha: float | None = None
    image_size: int | None = None
    pooling: str = "avg"
    precision: str = "float32"
    model_path: str | None = None
    layer: str | None = None

    def build(self) -> Backbone:
        if self.model_path is not None:
            return load_user_model(self.model_path, self.layer, self.pooling)
        if self.name.startswith(HUB_PREFIX):
            return build_hub_backbone(self.name, self.image_size, self.pooling or None, self.precision)
        return build_backbone(self.name, self.weights, self.alpha, self.image_size, self.pooling,
                              self.precision)


_BUILT: dict[BackboneConfig, Backbone] = {}


def backbone_for(config: BackboneConfig) -> Backbone:
    """The backbone of ``config``, built once per process and cached."""
    if config not in _BUILT:
        _BUILT[config] = config.build()
    return _BUILT[config]


def as_config(backbone: "Backbone | BackboneConfig") -> BackboneConfig:
    """The recipe of ``backbone``; a built one is cached so this process reuses it."""
    if isinstance(backbone, BackboneConfig):
        return backbone
    if backbone.config is None:  # a hand-made Backbone: usable in this process only
        backbone.config = BackboneConfig(name=f"live:{id(backbone)}")
    _BUILT[backbone.config] = backbone
    return backbone.config
