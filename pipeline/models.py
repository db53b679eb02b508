"""Saved models: a head plus the metadata needed to use it safely.

Models are pickles (River's way of saving estimators): only load model files
you trust, since unpickling can run arbitrary code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.errors import ModelFileError
from pipeline.heads.base import Head
from pipeline.store import IDENTITY_KEYS, atomic_path

MODEL_FORMAT = "incremental-pipeline-model"
MODEL_VERSION = 1
# What predict needs to rebuild the backbone, on top of IDENTITY_KEYS.
BACKBONE_KEYS = (*IDENTITY_KEYS, "layer", "keras_version", "backend", "precision")


@dataclass
class TrainedModel:
    """A head and its provenance; ``progress`` lets an interrupted run continue."""

    head: Head
    head_name: str
    backbone: dict[str, Any]
    stores: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    replay: Any = None  # ExperienceReplay memory when trained with --replay
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def feature_dim(self) -> int:
        return int(self.backbone["feature_dim"])

    @property
    def classes(self) -> list[Any]:
        return list(self.head.classes_)

    def summary(self) -> dict[str, Any]:
        return {"head": self.head_name, "settings": self.head.settings(), "classes": self.classes,
                "rows_seen": self.head.rows_seen_, "backbone": self.backbone, "stores": self.stores,
                "created": self.created}


def backbone_metadata(store_meta: dict[str, Any]) -> dict[str, Any]:
    return {key: store_meta[key] for key in BACKBONE_KEYS if key in store_meta}


def save_model(model: TrainedModel, path: str | Path) -> None:
    """Write atomically: a crash mid-save leaves the previous file intact."""
    payload = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "model": model,
               "saved": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)


def load_model(path: str | Path) -> TrainedModel:
    """Load a model file written by :func:`save_model` (trusted files only: it is a pickle)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            payload = pickle.load(fh)
    except Exception as exc:  # unpickling fails in many ways on a foreign or torn file
        raise ModelFileError(f"{path} is not a readable model file: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a model saved by train-incremental")
    if payload.get("version", 0) > MODEL_VERSION:
        raise ModelFileError(f"{path} has model format version {payload['version']}; this tool reads up to {MODEL_VERSION}")
    return payload["model"]
