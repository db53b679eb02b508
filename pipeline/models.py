"""Saved models: a head plus the metadata needed to use it safely.

A model file (format version 2) holds only data: a zip of ``model.json`` and
numpy ``.npy`` arrays (docs/file-formats.md, "Model files"), written by
:mod:`pipeline.state_codec`; loading one builds only the allow-listed classes
of this package and runs no code from the file. The one exception is River's
own estimators (``--engine river``), which have no data-only form: their head
is stored as a pickle member that loads only with ``trust_pickle=True``.
Version 1 files were whole pickles: they load only with ``trust_pickle=True``
(``pipeline migrate-model`` converts them).
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ModelFileError
from pipeline.heads.base import Head
from pipeline.heads.state_check import StateError, check_head, check_object
from pipeline.model_format import Container, sniff, write_container
from pipeline.state_codec import CodecError, class_name, decode, encode
from pipeline.identity import REBUILD_KEYS, rebuild_keys_of

MODEL_FORMAT = "incremental-pipeline-model"
MODEL_VERSION = 2
BACKBONE_KEYS = REBUILD_KEYS  # what predict needs to rebuild the backbone (pipeline.identity)
# Heads holding third-party estimators that only pickle can store (loaded only when trusted).
PICKLED_HEADS = ("pipeline.heads.river_engine.RiverLinearHead",
                 "pipeline.heads.river_linear.RiverLinearHead")  # its module until 7790fdb
HEAD_PICKLE = "head.pickle"
NOT_A_MODEL = {"empty": "is empty", "hdf5": "is an HDF5 file (a feature store?), not a model file",
               "unknown": "is not a model file saved by train-incremental"}


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

    @property
    def needs_pickle(self) -> bool:
        """True when the head can only be stored as a pickle (River's own estimators)."""
        return class_name(type(self.head)) in PICKLED_HEADS

    def summary(self) -> dict[str, Any]:
        return {"head": self.head_name, "settings": self.head.settings(), "classes": self.classes,
                "rows_seen": self.head.rows_seen_, "backbone": self.backbone, "stores": self.stores,
                "created": self.created}


def backbone_metadata(store_meta: dict[str, Any]) -> dict[str, Any]:
    return rebuild_keys_of(store_meta)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def save_model(model: TrainedModel, path: str | Path) -> None:
    """Write atomically: a crash or a full disk mid-save leaves the previous file intact."""
    path = Path(path)
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    blobs: dict[str, bytes] = {}
    if model.needs_pickle:
        blobs[HEAD_PICKLE] = pickle.dumps(fields.pop("head"), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        body, arrays = encode(fields)
        about, _ = encode({"classes": model.classes, "settings": model.head.settings()})
    except CodecError as exc:
        raise ModelFileError(f"cannot save the model to {path}: {exc}") from None
    if model.needs_pickle:
        body["head"] = {"__pickle__": HEAD_PICKLE}
    document = {"format": MODEL_FORMAT, "format_version": MODEL_VERSION, "saved": _now(),
                "head_name": model.head_name, "head_class": class_name(type(model.head)),
                "storage": "pickle" if model.needs_pickle else "data", **about, "model": body}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_container(path, document, arrays, blobs)
    except (OSError, RuntimeError) as exc:  # h5py-style RuntimeError carries errno 28 too
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
        raise ModelFileError(f"cannot save the model to {path}: {reason}; "
                             + ("the previous file is unchanged" if path.exists() else "nothing was written")) from None


def load_model(path: str | Path, trust_pickle: bool = False) -> TrainedModel:
    """Load a model file; pickles (version 1 files, River heads) only with ``trust_pickle=True``."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    kind = sniff(path)
    if kind == "pickle":
        return _load_version_1(path, trust_pickle)
    if kind != "zip":
        raise ModelFileError(f"{path} {NOT_A_MODEL[kind]}")
    with Container(path) as container:
        doc = container.document
        if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{path} is not a model file saved by train-incremental")
        version = doc.get("format_version")
        if not isinstance(version, int) or version < 2:
            raise ModelFileError(f"{path} has an invalid format_version {version!r}")
        if version > MODEL_VERSION:
            raise ModelFileError(f"{path} has model format version {version}; this tool reads up to {MODEL_VERSION}")
        try:
            model = _decode(doc["model"], container, trust_pickle)
        except ModelFileError:
            raise
        except Exception as exc:  # a crafted or damaged payload fails in many ways; none runs code
            raise ModelFileError(f"{path} holds an invalid model ({type(exc).__name__}: {exc})") from None
    _check(model, path)
    return model


def _decode(body: dict[str, Any], container: Container, trust_pickle: bool) -> TrainedModel:
    names = {f.name for f in dataclasses.fields(TrainedModel)}
    if not isinstance(body, dict) or set(body) - names or "head" not in body:
        raise ModelFileError(f"{container.path}: the model's fields are not those of a saved model")
    head = body["head"]
    pickled = isinstance(head, dict) and "__pickle__" in head
    if pickled and not trust_pickle:
        raise ModelFileError(f"{container.path} holds River estimators (--engine river), stored as a Python pickle "
                             "that can run code when loaded: pass --trust-pickle only if you trust this file")
    values = decode({k: v for k, v in body.items() if not (pickled and k == "head")}, container.array)
    if pickled:
        values["head"] = pickle.loads(container.blob(str(head["__pickle__"])))
    return TrainedModel(**values)


def _load_version_1(path: Path, trust_pickle: bool) -> TrainedModel:
    if not trust_pickle:
        raise ModelFileError(
            f"{path} is a version-1 model file, a Python pickle: loading it can run any code it holds. "
            f"If you trust it, convert it once with `pipeline migrate-model {path} -o NEW.model --trust-pickle` "
            "(or pass --trust-pickle)")
    try:
        with open(path, "rb") as fh:
            payload = pickle.load(fh)
    except Exception as exc:  # unpickling fails in many ways on a foreign or torn file
        raise ModelFileError(f"{path} is not a readable model file: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT or payload.get("version") != 1:
        raise ModelFileError(f"{path} is a pickle, but not a model saved by train-incremental")
    model = payload["model"]
    _check(model, path)
    return model


def _check(model: Any, path: Path) -> None:
    """Refuse a payload that decodes but is not a usable model: its state has the declared types and shapes
    (:mod:`pipeline.heads.state_check`), its run record the types a resume reads, and one prediction works."""
    if not isinstance(model, TrainedModel) or not isinstance(model.head, Head):
        raise ModelFileError(f"{path} does not hold a model")
    try:
        _check_record(model)
        check_head(model.head)
        if model.replay is not None:  # --replay's memory: exemplars of the model's features
            check_object(model.replay, {"C": len(model.head.classes_), "D": model.feature_dim}, "replay", set())
    except StateError as exc:
        raise ModelFileError(f"{path} holds an inconsistent model ({exc})") from None
    try:
        dim = model.feature_dim
        head = model.head
        if head.classes_ and head.n_features_in_ is not None:
            if head.n_features_in_ != dim:
                raise ValueError(f"head expects {head.n_features_in_} features, backbone gives {dim}")
            proba = head.predict_proba(np.zeros((1, dim)))
            if np.shape(proba) != (1, len(head.classes_)):
                raise ValueError(f"predictions of shape {np.shape(proba)} for {len(head.classes_)} classes")
    except Exception as exc:
        raise ModelFileError(f"{path} holds an inconsistent model ({type(exc).__name__}: {exc})") from None


def _check_record(model: TrainedModel) -> None:
    """The fields besides the head: a backbone record with a feature count, and lists (``progress``, the
    checkpoint of a run, is checked by the run that resumes it: :meth:`pipeline.loop.RunState.restore`)."""
    if not isinstance(model.backbone, dict):
        raise StateError(f"backbone is a {type(model.backbone).__name__}; expected a record of the backbone")
    dim = model.backbone.get("feature_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise StateError(f"backbone feature_dim is {dim!r}; expected an integer >= 1")
    for name in ("stores", "history"):
        if not isinstance(getattr(model, name), list):
            raise StateError(f"{name} is a {type(getattr(model, name)).__name__}; expected a list")
    if not isinstance(model.head_name, str):
        raise StateError(f"head_name is {model.head_name!r}; expected a head's name")
    if model.progress is not None and not isinstance(model.progress, dict):
        raise StateError(f"progress is a {type(model.progress).__name__}; expected a record of the run")


def migrate_model(source: str | Path, output: str | Path, trust_pickle: bool = False) -> TrainedModel:
    """Rewrite any model file (a version-1 pickle included) in the current format."""
    model = load_model(source, trust_pickle=trust_pickle)
    save_model(model, output)
    return model
