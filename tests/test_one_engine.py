"""One training engine: local and Ray training of a mergeable head write metrics with the same keys
(one schema, :mod:`pipeline.metrics`), record their stores the same way, and predict the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_blobs_store
from pipeline.models import load_model
from pipeline.runs import run_training
from pipeline.stream import FeatureStream

CLASSES = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("engine")
    return [make_blobs_store(folder / f"s{i}.h5", n, 8, CLASSES, seed=i) for i, n in enumerate((400, 200))]


def keys(value, prefix=""):
    """Every key path of a JSON document; list items contribute the keys of their dictionaries."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{prefix}{k}"} | keys(v, f"{prefix}{k}.")}
    if isinstance(value, list):
        return {p for v in value for p in keys(v, f"{prefix}[].")}
    return set()


def _run(stores, tmp, executor, **kw):
    metrics_out, model_out = tmp / f"{executor}.json", tmp / f"{executor}.model"
    run_training(stores, head="slda", metrics_out=metrics_out, model_out=model_out, executor=executor,
                 chunk_rows=64, quiet=True, echo=lambda s: None, out=lambda s: None,
                 **({"workers": 2} if executor == "ray" else {}), **kw)
    return json.loads(metrics_out.read_text()), load_model(model_out)


@pytest.mark.parametrize("options", [dict(holdout=0.25),
                                     dict(holdout=0.3, increment=2, class_order=",".join(CLASSES))],
                         ids=["one-task", "class-incremental"])
def test_local_and_ray_metrics_have_one_schema(ray_cluster, stores, tmp_path, options):
    local, m_local = _run(stores, tmp_path, "local", **options)
    ray, m_ray = _run(stores, tmp_path, "ray", **options)
    assert keys(local) == keys(ray), (keys(local) ^ keys(ray))
    assert local["executor"]["name"] == "local" and ray["executor"]["name"] == "ray"
    assert ray["executor"]["partitions"] >= 2
    assert m_local.stores == m_ray.stores  # one store record (with "resolved")
    with FeatureStream(stores) as stream:
        for batch in stream:
            assert m_local.head.predict(batch.X).tolist() == m_ray.head.predict(batch.X).tolist()
