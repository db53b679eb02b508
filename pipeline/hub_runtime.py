"""keras-hub presets as backbones: the one module that imports ``keras_hub``.

Only :mod:`pipeline.keras_runtime` imports it (through :func:`pipeline.keras_runtime.hub`).
A preset is named ``hub:NAME`` (a keras-hub preset, downloaded once when a
network is there) or ``hub:/path/to/folder`` (a preset folder: ``config.json``,
``model.weights.h5``, ``image_converter.json``; loaded with no network).

The image goes through the preset's own image converter (its scale and
offset: the family's mean/std), the vision tower, then a pooling of its
tokens. Token layouts and the default pooling of each family:

=============  =======================  ======================================================
family         tokens                    default pooling (the family's paper)
=============  =======================  ======================================================
DINOv2/v3      class, registers, patches ``cls+mean``: DINOv2's linear probe (class token and
                                         mean patch token concatenated, Oquab et al. 2023, 7)
ViT            class, patches            ``cls``: the class token (Dosovitskiy et al. 2021)
CLIP           class, patches            ``cls``: the image feature before the projection, as
                                         CLIP's linear probes (Radford et al. 2021, A.3)
SigLIP/SigLIP2 patches (no class token)  ``embedding``: the attention-pooling head's output, the
                                         joint image-text embedding (Zhai et al. 2023)
=============  =======================  ======================================================
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import BackboneError
from pipeline.fsutil import read_json

HUB_PREFIX = "hub:"
HUB_POOLINGS = ("cls", "mean", "cls+mean", "embedding")
# Files whose bytes make a preset's identity (metadata.json only records versions and dates).
IDENTITY_FILES = ("config.json", "image_converter.json")


@dataclass(frozen=True)
class Family:
    """How to read one keras-hub backbone class: its tokens, its pooling, its input sizes."""

    label: str
    default_pooling: str
    has_cls: bool
    any_size: bool           # position embeddings interpolated (or rotary): any input size works
    has_embedding: bool      # a joint image-text embedding exists (CLIP with its projection, SigLIP)


FAMILIES: dict[str, Family] = {
    "DINOV2Backbone": Family("DINOv2", "cls+mean", True, True, False),
    "DINOV3Backbone": Family("DINOv3", "cls+mean", True, True, False),
    "ViTBackbone": Family("ViT", "cls", True, False, False),
    "CLIPBackbone": Family("CLIP", "cls", True, False, True),
    "CLIPVisionEncoder": Family("CLIP", "cls", True, False, False),
    "SigLIPBackbone": Family("SigLIP", "embedding", False, False, True),
    "SigLIPVisionEncoder": Family("SigLIP", "embedding", False, False, True),
}


def keras_hub() -> Any:
    try:
        import keras_hub as kh
    except ImportError:
        raise BackboneError("hub: backbones need keras-hub: pip install 'incremental-pipeline[hub]'") from None
    return kh


def is_local(preset: str) -> bool:
    """A folder path rather than a preset name (names have no slash)."""
    return "/" in preset or "\\" in preset or preset.startswith(".") or Path(preset).is_dir()


def split_spec(spec: str) -> str:
    """``hub:dinov2_small`` -> ``dinov2_small``; ``hub:/models/x`` -> ``/models/x``."""
    preset = spec[len(HUB_PREFIX):] if spec.startswith(HUB_PREFIX) else spec
    if not preset:
        raise BackboneError("--backbone hub: needs a preset name or folder, e.g. hub:dinov2_small or hub:/models/dinov2_small")
    return preset


def preset_folder(preset: str) -> Path:
    """The local folder of ``preset``: the folder itself, or keras-hub's download cache of a named preset."""
    if is_local(preset):
        folder = Path(preset).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise BackboneError(f"{folder} is not a keras-hub preset folder (no config.json in it)")
        return folder
    kh = keras_hub()
    from keras_hub.src.utils.preset_utils import get_file

    if preset not in kh.models.Backbone.presets:
        raise BackboneError(f"unknown keras-hub preset {preset!r}; see extract-features --list-backbones, "
                            "or pass a preset folder as hub:/path/to/folder")
    try:
        return Path(get_file(preset, "config.json")).parent
    except Exception as exc:  # kagglehub raises many kinds when there is no network
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BackboneError(f"cannot download the keras-hub preset {preset!r} ({first}); offline, copy its "
                            "preset folder from a connected machine and pass --backbone hub:/path/to/folder") from None


def preset_sha256(folder: Path) -> str:
    """One hash of a preset's config, image converter and weights files (names and bytes)."""
    from pipeline.backbones import file_sha256

    files = [folder / name for name in IDENTITY_FILES if (folder / name).is_file()]
    files += sorted(p for p in folder.iterdir() if p.name.endswith(".weights.h5") or p.name.endswith(".weights.json"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


@dataclass
class HubModel:
    """A built keras-hub feature extractor: ``model`` takes images already scaled by ``scale``/``offset``."""

    model: Any
    scale: np.ndarray
    offset: np.ndarray
    size: int
    pooling: str
    info: dict[str, Any]


def _family(backbone: Any) -> Family:
    name = type(backbone).__name__
    if name not in FAMILIES:
        raise BackboneError(f"keras-hub backbone {name} is not an image backbone the pipeline knows; expected "
                            f"one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def _config_class(folder: Path) -> str:
    try:
        return str(read_json(folder / "config.json")["class_name"]).rsplit(">", 1)[-1]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackboneError(f"cannot read {folder / 'config.json'}: {exc}") from None


def _pooled(keras: Any, family: Family, backbone: Any, images: Any, pooling: str) -> Any:
    """The pooled features of ``images`` (a Keras input) through ``backbone``'s vision tower."""
    ops = keras.ops
    name = type(backbone).__name__
    if name.startswith("SigLIP"):
        tower = backbone.vision_encoder if name == "SigLIPBackbone" else backbone
        if pooling == "embedding":
            return tower({"images": images})
        norm = tower.post_layer_norm
        tokens = keras.Model(tower.inputs, norm.output)({"images": images})
        return ops.mean(tokens, axis=1)
    if name == "CLIPBackbone":
        tokens = backbone.vision_encoder({"images": images})
    else:
        tokens = backbone({"images": images} if isinstance(backbone.input, dict) else images)
    skip = 1 + int(getattr(backbone, "num_register_tokens", 0))  # class token, then any registers
    cls = tokens[:, 0, :]
    if pooling == "cls":
        return cls
    if pooling == "embedding":
        return backbone.vision_projection(backbone.vision_pooler(tokens))
    mean = ops.mean(tokens[:, skip:, :], axis=1)
    if pooling == "mean":
        return mean
    return ops.concatenate([cls, mean], axis=-1)


def build(spec: str, pooling: str | None, image_size: int | None, policy: str) -> HubModel:
    """Load the preset of ``spec`` (``hub:NAME`` or ``hub:/folder``) and wrap its pooled features as one Keras model."""
    kh = keras_hub()
    keras = importlib.import_module("keras")

    preset = split_spec(spec)
    folder = preset_folder(preset)
    class_name = _config_class(folder)
    family = FAMILIES.get(class_name)
    if family is None:
        raise BackboneError(f"the preset {preset} holds a {class_name}, not an image backbone the pipeline knows; "
                            f"expected one of {', '.join(sorted(FAMILIES))}")
    pooling = pooling or family.default_pooling
    if pooling not in HUB_POOLINGS:
        raise BackboneError(f"--pooling {pooling} is for keras.applications backbones; a {family.label} preset "
                            f"takes one of {', '.join(HUB_POOLINGS)} (default {family.default_pooling})")
    if pooling in ("cls", "cls+mean") and not family.has_cls:
        raise BackboneError(f"{family.label} has no class token: --pooling {pooling} is not defined; "
                            "use mean or embedding")
    if pooling == "embedding" and not family.has_embedding:
        raise BackboneError(f"{family.label} ({class_name}) has no image-text embedding: --pooling embedding needs "
                            "a CLIP or SigLIP preset with its projection; use cls, mean or cls+mean")
    if not (folder / "image_converter.json").is_file():
        raise BackboneError(f"the preset {preset} has no image_converter.json: its preprocessing is unknown")
    converter = kh.layers.ImageConverter.from_preset(str(folder))
    kwargs: dict[str, Any] = {"dtype": policy}
    if family.any_size:
        size = image_size or int((converter.image_size or _saved_shape(folder))[0])
        kwargs["image_shape"] = (size, size, 3)
    try:
        backbone = kh.models.Backbone.from_preset(str(folder), **kwargs)
    except Exception as exc:  # keras-hub raises many types for a broken folder
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise BackboneError(f"cannot load the keras-hub preset {preset}: {first}") from None
    tower = backbone.vision_encoder if class_name in ("CLIPBackbone", "SigLIPBackbone") else backbone
    native = int(tower.image_shape[0])
    if not family.any_size:
        if image_size not in (None, native):
            raise BackboneError(f"{family.label} has fixed position embeddings for {native}x{native} images: "
                                f"--image-size {image_size} is not supported (DINOv2/DINOv3 take any size)")
        size = native
    images = keras.Input((size, size, 3), name="images", dtype=backbone.dtype_policy.compute_dtype)
    model = keras.Model(images, _pooled(keras, family, backbone, images, pooling))
    channels = 3
    scale = np.broadcast_to(np.asarray(converter.scale if converter.scale is not None else 1.0, np.float32),
                            (channels,)).copy()
    offset = np.broadcast_to(np.asarray(converter.offset if converter.offset is not None else 0.0, np.float32),
                             (channels,)).copy()
    # Identity is content: the same preset copied to another folder (or downloaded by name) is the same backbone.
    info = {
        "backbone": f"{HUB_PREFIX}{class_name}",
        "weights": f"sha256:{preset_sha256(folder)}",
        "hub_preset": str(folder) if is_local(preset) else preset,
        "weights_path": str(folder) if is_local(preset) else "",
        "preprocessing": (f"keras-hub {type(converter).__name__}: x * {np.round(scale, 8).tolist()} + "
                          f"{np.round(offset, 8).tolist()} (images resized by the pipeline's decoder)"),
        "hub_family": class_name,
        "keras_hub_version": kh.__version__,
    }
    return HubModel(model, scale, offset, size, pooling, info)


def _saved_shape(folder: Path) -> tuple[int, int]:
    config = read_json(folder / "config.json")["config"]
    shape = config.get("image_shape") or config["vision_encoder"]["config"]["image_shape"]
    return int(shape[0]), int(shape[1])


def list_presets() -> list[tuple[str, str, str]]:
    """(name, family, description) of every named image preset keras-hub knows, without downloading."""
    kh = keras_hub()
    rows = []
    for class_name in FAMILIES:
        cls = getattr(kh.models, class_name, None)
        for name, entry in (getattr(cls, "presets", None) or {}).items():
            meta = entry.get("metadata", {})
            params = meta.get("params")
            desc = (f"{params / 1e6:.0f}M params; " if params else "") + str(meta.get("description", ""))[:70]
            rows.append((name, FAMILIES[class_name].label, desc))
    return sorted(set(rows))
