"""The jobs behind the commands, as functions: train, evaluate, predict.

They wire stores, streams, heads and metrics together and report through
``echo`` (progress notes) and ``out`` (results); the CLI only parses options
and calls them.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.errors import ModelFileError, OptionError
from pipeline.heads import make_head
from pipeline.models import TrainedModel, backbone_metadata, load_model, save_model
from pipeline.stream import FeatureStream, check_identity
from pipeline.train import TrainOptions, check_model_fits, evaluate_head, make_tasks, train

Echo = Callable[[str], None]
HEAD_OPTIONS = ("optimizer", "lr", "l2", "batch_size", "memory", "class_means", "pool_size", "shrinkage",
                "ridge_lambda", "random_features")


def _head_options(params: dict[str, Any]) -> dict[str, Any]:
    """Head options given on the command line (make_head keeps those the head takes)."""
    opts = {k: params.get(k) for k in HEAD_OPTIONS if params.get(k) is not None}
    if params.get("no_scale"):
        opts["scale"] = False
    return opts


def run_training(stores: Sequence[Path], *, head: str | None = None, engine: str = "numpy",
                 holdout: float = 0.0, test_stores: Sequence[Path] = (), eval_every: int = 0, epochs: int = 1,
                 shuffle_buffer: int = 0, chunk_rows: int = 4096, seed: int = 0,
                 metrics_out: Path | None = None, plot: Path | None = None, model_out: Path | None = None,
                 checkpoint_every: int = 0, resume: Path | None = None, allow_incomplete: bool = False,
                 quiet: bool = False, increment: int | None = None, tasks: str | None = None,
                 class_order: str | None = None, no_joint: bool = False, replay: bool = False,
                 executor: str = "local", workers: int | None = None,
                 echo: Echo = print, out: Echo = print, **head_params: Any) -> dict[str, Any]:
    """Train (or continue) a head on feature stores; returns the metrics dictionary."""
    if checkpoint_every and model_out is None and resume is None:
        raise OptionError("--checkpoint-every needs --model-out (where to save the checkpoints)")
    if model_out is None and resume is not None:
        model_out = resume
    train_stream = FeatureStream(stores, allow_incomplete=allow_incomplete, chunk_rows=chunk_rows,
                                 holdout=holdout, split="train" if holdout else "all",
                                 shuffle_buffer=shuffle_buffer, seed=seed)
    test_stream: FeatureStream | None = None
    try:
        if test_stores:
            test_stream = FeatureStream(test_stores, allow_incomplete=allow_incomplete, chunk_rows=chunk_rows)
            test_stream.scan()  # refuses NaN / infinite features there too
        elif holdout:
            test_stream = train_stream.with_options(split="test", shuffle_buffer=0)
        scan = train_stream.scan()
        if scan.rows - scan.unlabelled == 0:
            raise OptionError("the stores hold no labelled rows to learn from")
        echo(f"{scan.rows} rows in {len(train_stream.stores)} store(s), {len(scan.class_counts)} classes, "
             f"{train_stream.feature_dim}-d features from {train_stream.meta.get('backbone')}"
             + (f"; {scan.unlabelled} unlabelled rows skipped" if scan.unlabelled else ""))

        if resume is not None:
            model = load_model(resume)
            if head is not None and head != model.head_name:
                raise OptionError(f"--head {head} does not match the resumed model's head ({model.head_name})")
            check_model_fits(model, train_stream, "the training stores")
            echo(f"resuming {model.head_name} from {resume}: {model.head.rows_seen_} rows seen, "
                 f"{len(model.classes)} classes")
            options = _head_options(head_params)
        else:
            head = head or "logreg"
            options = _head_options(head_params)
            model = TrainedModel(make_head(head, engine, train_stream.feature_dim, **options), head,
                                 {**backbone_metadata(train_stream.meta), "feature_dim": train_stream.feature_dim})
        head_name = model.head_name

        def fresh() -> Any:
            settings = {**model.head.settings(), **options}
            return make_head(head_name, settings.pop("engine", engine), train_stream.feature_dim, **settings)

        order = [c.strip() for c in class_order.split(",")] if class_order else None
        task_list = make_tasks(train_stream.classes, increment, tasks, order, seed)
        if task_list is not None and test_stream is None:
            raise OptionError("a class-incremental run needs held-out data: pass --holdout or --test")
        opts = TrainOptions(epochs=epochs, eval_every=eval_every, checkpoint_every=checkpoint_every, model_out=model_out,
                            tasks=task_list, joint_reference=not no_joint, replay=replay,
                            replay_memory=head_params.get("memory") or 2000,
                            pool_size=head_params.get("pool_size") or 1000, seed=seed, progress=not quiet)
        if executor == "local":
            metrics = train(model, train_stream, test_stream, opts, make_fresh_head=fresh, log=echo)
        else:  # mergeable heads only: map rows to workers, reduce with the heads' exact merge
            from pipeline.parallel_train import check_parallel, open_executor, train_parallel

            check_parallel(head_name, model.head, opts)
            with open_executor(executor, workers, progress=not quiet) as pool:
                metrics = train_parallel(model, train_stream, test_stream, opts, pool, log=echo)
        metrics["stores"] = [str(p) for p in stores]
        metrics["test"] = [str(p) for p in test_stores] if test_stores else ("holdout" if holdout else None)
        metrics["holdout_fraction"] = holdout
        if metrics_out is not None:
            write_json(metrics, metrics_out)
        if plot is not None:
            from pipeline.plots import plot_accuracy_matrix, plot_learning_curve

            (plot_accuracy_matrix if task_list else plot_learning_curve)(metrics, plot)
        out(summary(metrics, model_out))
    finally:
        train_stream.close()
        if test_stream is not None:
            test_stream.close()
    return metrics


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def summary(metrics: dict[str, Any], model_out: Path | None) -> str:
    held = metrics["heldout"]
    lines = [f"head {metrics['head']} {json.dumps(metrics['settings'])}",
             f"rows learnt this run: {metrics['rows_this_run']} (total {metrics['rows_seen']}), "
             f"{len(metrics['classes'])} classes"
             + (f", {metrics['timing']['rows_per_s']:.0f} rows/s" if metrics["timing"]["rows_per_s"] else ""),
             f"progressive accuracy: {_pct(metrics['progressive']['accuracy'])}",
             f"held-out accuracy:    {_pct(held.get('accuracy'))}"
             + (f" on {held['rows']} rows, log loss {held['log_loss']:.4f}" if held.get("rows") and held.get("log_loss") is not None else "")]
    if held.get("unseen_labels"):
        lines.append(f"held-out labels never seen in training (counted as errors): {held['unseen_labels']}")
    if "accuracy_matrix" in metrics:
        lines.append(f"class-incremental over {len(metrics['tasks'])} tasks: final {_pct(metrics.get('final_accuracy'))}, "
                     f"average incremental {_pct(metrics.get('average_incremental_accuracy'))}, "
                     f"forgetting {_pct(metrics.get('forgetting'))}, backward transfer {_pct(metrics.get('backward_transfer'))}"
                     + (f", joint reference {_pct(metrics['joint_accuracy'])}" if "joint_accuracy" in metrics else ""))
    if model_out is not None:
        lines.append(f"model saved to {model_out}")
    return "\n".join(lines)


def write_json(data: dict[str, Any], path: Path) -> None:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "item"):
            return v.item()
        return v

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=2))


def run_evaluation(model_path: Path, stores: Sequence[Path], holdout: float = 0.0, metrics_out: Path | None = None,
                   allow_incomplete: bool = False, out: Echo = print) -> dict[str, Any]:
    model = load_model(model_path)
    with FeatureStream(stores, allow_incomplete=allow_incomplete, holdout=holdout,
                       split="test" if holdout else "all") as stream:
        check_model_fits(model, stream, "the stores")
        report = evaluate_head(model.head, stream).report()
    metrics = {"model": str(model_path), "stores": [str(s) for s in stores], "holdout_fraction": holdout,
               "heldout": report, **model.summary()}
    if metrics_out is not None:
        write_json(metrics, metrics_out)
    out(f"accuracy {_pct(report.get('accuracy'))} on {report['rows']} rows"
        + (f", log loss {report['log_loss']:.4f}" if report.get("log_loss") is not None else ""))
    if report.get("unseen_labels"):
        out(f"labels the model never learnt (counted as errors): {report['unseen_labels']}")
    for label, r in (report.get("per_class") or {}).items():
        out(f"  {label:>20}  precision {r['precision']:.3f}  recall {r['recall']:.3f}  f1 {r['f1']:.3f}  n={r['support']}")
    return metrics


def run_prediction(model_path: Path, inputs: Sequence[Path], weights: str | None = None,
                   keras_model: str | None = None, batch_size: int = 32, output: Path | None = None,
                   out: Echo = print) -> list[Any]:
    from pipeline.predict import collect_images, model_backbone, predict_images

    model = load_model(model_path)
    files = collect_images(list(inputs))
    backbone = model_backbone(model, weights, keras_model)
    if backbone.feature_dim != model.feature_dim:
        raise ModelFileError(f"the rebuilt backbone gives {backbone.feature_dim}-d features, the model expects {model.feature_dim}")
    preds = list(predict_images(model, backbone, files, batch_size))
    for p in preds:
        out(f"{p.path}\t{p.label}\t{p.probability:.4f}" if p.error is None else f"{p.path}\tERROR\t{p.error}")
    if output is not None:
        rows = [{"path": p.path, "label": p.label, "probability": p.probability, "error": p.error} for p in preds]
        if output.suffix.lower() == ".json":
            output.write_text(json.dumps(rows, indent=2))
        else:
            with output.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=["path", "label", "probability", "error"])
                writer.writeheader()
                writer.writerows(rows)
    return preds


def run_merge(paths: Sequence[Path], output: Path, out: Echo = print) -> TrainedModel:
    """Merge saved slda / ridge models trained on disjoint data into one."""
    if len(paths) < 2:
        raise OptionError("merge needs at least two models")
    models = [load_model(p) for p in paths]
    first = models[0]
    if not getattr(first.head, "mergeable", False):
        raise OptionError(f"{first.head_name} models cannot be merged exactly; "
                          "only slda, ridge and nme --class-means exact can")
    for path, other in zip(paths[1:], models[1:]):
        check_identity(first.backbone, other.backbone, str(path))
        first.head.merge(other.head)
        first.stores.extend(s for s in other.stores if s not in first.stores)
    first.progress = None
    save_model(first, output)
    out(f"merged {len(models)} {first.head_name} models ({first.head.rows_seen_} rows, "
        f"{len(first.classes)} classes) into {output}")
    return first
