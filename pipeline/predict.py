"""End-to-end prediction on raw images with a saved model.

The backbone recorded in the model is rebuilt (same preprocessing and input
size as extraction) and images are decoded with the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.backbones import Backbone, backbone_from_info
from pipeline.errors import SourceError
from pipeline.images import IMAGE_EXTENSIONS, decode_image
from pipeline.models import TrainedModel


@dataclass
class Prediction:
    path: str
    label: str | None
    probability: float | None
    error: str | None = None


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and image files found recursively in folders (sorted)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        elif item.is_file():
            found.append(item)
        else:
            raise SourceError(f"{item} does not exist")
    if not found:
        raise SourceError(f"no images found in {', '.join(map(str, inputs))}")
    return found


def model_backbone(model: TrainedModel, weights: str | None = None, keras_model: str | None = None) -> Backbone:
    return backbone_from_info(model.backbone, weights=weights, model_path=keras_model)


def predict_images(model: TrainedModel, backbone: Backbone, files: list[Path],
                   batch_size: int = 32) -> Iterator[Prediction]:
    """Yield one prediction per file; undecodable files give a prediction with ``error`` set."""
    classes = model.head.classes_
    for start in range(0, len(files), batch_size):
        group = files[start:start + batch_size]
        arrays, ok, failed = [], [], {}
        for f in group:
            try:
                arrays.append(decode_image(f, backbone.input_size))
                ok.append(f)
            except Exception as exc:  # reported per file, the run goes on
                failed[f] = f"{type(exc).__name__}: {exc}"
        proba = model.head.predict_proba(backbone.embed(np.stack(arrays), batch_size)) if arrays else np.zeros((0, 0))
        rows = {f: proba[i] for i, f in enumerate(ok)}
        for f in group:
            if f in failed:
                yield Prediction(str(f), None, None, failed[f])
            else:
                k = int(np.argmax(rows[f]))
                yield Prediction(str(f), str(classes[k]), float(rows[f][k]))
