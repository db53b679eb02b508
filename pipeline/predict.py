"""End-to-end prediction on raw images with a saved model.

The backbone recorded in the model is rebuilt (same preprocessing and input
size as extraction) and images go through the same reader -> mapper path as
extraction (:func:`read_batches` decodes in threads ahead of the model,
:func:`embed_decoded` embeds). :func:`predict_on_ray` runs that path on a
pool of Ray actors over fixed runs of files (whole batches, so every image is
embedded in the same batch as locally), and yields the predictions in order.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.backbones import Backbone, BackboneConfig, backbone_for, backbone_from_info
from pipeline.errors import SourceError
from pipeline.extraction.decoding import read_batches
from pipeline.extraction.partition import embed_decoded
from pipeline.images import IMAGE_EXTENSIONS, scan_folder, try_decode
from pipeline.models import TrainedModel
from pipeline.workers import resolve_workers


@dataclass
class Prediction:
    path: str
    label: str | None
    probability: float | None
    error: str | None = None


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and visible image files found recursively in folders (sorted).

    Folders are walked like ``extract-features`` walks them (hidden entries
    left out, links to folders not followed). A named entry that is not a
    regular file (a FIFO, a device) is kept: its prediction carries the reason
    it was not decoded, and it is never opened.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            entries, _ = scan_folder(item)
            found.extend(p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())
        elif os.path.lexists(item):
            found.append(item)
        else:
            raise SourceError(f"{item} does not exist")
    if not found:
        raise SourceError(f"no images found in {', '.join(map(str, inputs))}")
    return found


def model_backbone(model: TrainedModel, weights: str | None = None, keras_model: str | None = None) -> Backbone:
    return backbone_from_info(model.backbone, weights=weights, model_path=keras_model)


def model_decoder(model: TrainedModel, decoder: str | None = None) -> str:
    """``decoder`` if given, else the one the model's features were extracted with (``pil`` before it was recorded)."""
    from pipeline.images import check_decoder

    return check_decoder(decoder or str(model.backbone.get("decoder") or "pil"))


def predict_images(model: TrainedModel, backbone: Backbone, files: list[Path],
                   batch_size: int = 32, decode_threads: int = 2, decoder: str = "pil") -> Iterator[Prediction]:
    """Yield one prediction per file, in order; undecodable files give a prediction with ``error`` set.

    ``decoder``: as extraction decoded (:func:`model_decoder`), so the features are computed the same way.
    """
    classes = model.head.classes_
    batch_size = max(1, min(batch_size, len(files)))  # a short batch is padded to the batch size: no larger
    decode_threads = resolve_workers(decode_threads, "CPU")  # no more decoders than cores
    groups = [files[s:s + batch_size] for s in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(decode_threads) as pool:
        decode = lambda f: try_decode(f, backbone.input_size, decoder=decoder)  # noqa: E731
        for group, decoded in zip(groups, read_batches(pool, groups, decode)):
            feats, good, skipped = embed_decoded(backbone, decoded, batch_size)
            proba = model.head.predict_proba(feats) if good else np.zeros((0, 0))
            rows = dict(zip(good, proba))
            errors = dict(skipped)
            for k, f in enumerate(group):
                if k in errors:
                    yield Prediction(str(f), None, None, errors[k])
                else:
                    best = int(np.argmax(rows[k]))
                    yield Prediction(str(f), str(classes[best]), float(rows[k][best]))


class PredictWorker:
    """The body of one Ray actor for ``predict``: the backbone is built once per actor."""

    def __init__(self, decode_threads: int, gpu: bool):
        self.decode_threads = decode_threads
        if gpu:
            from pipeline.keras_runtime import allow_memory_growth

            allow_memory_growth()

    def info(self, config: BackboneConfig) -> dict[str, Any]:
        return backbone_for(config).info

    def run(self, model: TrainedModel, config: BackboneConfig, files: Sequence[Path],
            batch_size: int, decoder: str = "pil") -> list[Prediction]:
        return list(predict_images(model, backbone_for(config), list(files), batch_size, self.decode_threads,
                                   decoder))


def predict_on_ray(model: TrainedModel, config: BackboneConfig, files: list[Path], batch_size: int = 32,
                   workers: int | None = None, batches_per_part: int = 8, decoder: str = "pil") -> Iterator[Prediction]:
    """Like :func:`predict_images`, on a Ray cluster (``RAY_ADDRESS``, else a local Ray); same predictions."""
    from pipeline.backbones import check_rebuilt
    from pipeline.errors import ModelFileError
    from pipeline.ray_executor import WorkerPool, actor_shape, ray_session

    size = batch_size * batches_per_part
    parts = [files[s:s + size] for s in range(0, len(files), size)]
    with ray_session() as resources:
        n, cpus, gpus = actor_shape(resources, workers)
        with WorkerPool(PredictWorker, (max(1, int(cpus)), gpus > 0), size=min(n, len(parts)), num_cpus=cpus,
                        num_gpus=gpus) as pool:
            info = pool.call_all("info", config)[0]
            check_rebuilt(model.backbone, info)
            if info["feature_dim"] != model.feature_dim:
                raise ModelFileError(f"the rebuilt backbone gives {info['feature_dim']}-d features, the model "
                                     f"expects {model.feature_dim}")
            model_ref = pool.put(model)
            done: dict[int, list[Prediction]] = {}
            next_part = 0
            for index, preds in pool.map_unordered("run", [(model_ref, config, p, batch_size, decoder) for p in parts]):
                done[index] = preds
                while next_part in done:
                    yield from done.pop(next_part)
                    next_part += 1
