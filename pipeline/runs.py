"""The jobs behind the commands, as functions: train, evaluate, predict.

They wire stores, streams, heads and metrics together and report through
``echo`` (progress notes) and ``out`` (results); the CLI only parses options
and calls them.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.errors import ModelFileError, OptionError, PipelineError
from pipeline.extraction.lock import output_locks
from pipeline.fsutil import write_atomically
from pipeline.heads import head_class, heads, make_head
from pipeline.heads.defaults import DEFAULT_HEAD
from pipeline.heads.registry import mergeable_text, readers
from pipeline.models import TrainedModel, backbone_metadata, load_model, migrate_model, save_model
from pipeline.options import check_run_options
from pipeline.plugins import REPLAY_OPTIONS
from pipeline.identity import check_identity
from pipeline.metrics import add_sources
from pipeline.stream import FeatureStream, StoreScan
from pipeline.train import TrainOptions, check_model_fits, evaluate_head, make_tasks, train

Echo = Callable[[str], None]


def open_checked(paths: Sequence[Path], what: str, **stream_options: Any) -> tuple[FeatureStream, StoreScan]:
    """Open stores as one stream and validate every row once (NaN / infinite features refused):
    the one validation every command uses."""
    stream = FeatureStream(paths, **stream_options)
    try:
        scan = stream.scan()
        if scan.labelled == 0:
            raise OptionError(f"the {what} hold no labelled rows")
    except Exception:
        stream.close()
        raise
    return stream, scan


def _split_head_options(head: str, given: dict[str, Any], replay: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options for the head, options for --replay); refuses what neither reads."""
    caps = head_class(head).capabilities
    if replay and caps.keeps_exemplars:
        raise OptionError(f"--replay: --head {head} keeps its own exemplars; replay would only count them twice")
    own_memory = [f"{o.cli_flag} {given[o.name]}" for o in head_class(head).options
                  if o.name in given and given[o.name] in dict(caps.keeps_exemplars_when).get(o.name, ())]
    if replay and own_memory:
        raise OptionError(f"--replay: {own_memory[0]} keeps its own exemplar memory; "
                          "replay would only count those rows twice")
    if replay and caps.order_free:
        raise OptionError(f"--replay: --head {head} does not forget (its result does not depend on row order), "
                          "so replay would only count rows twice")
    taken = {o.name: given.pop(o.name) for o in REPLAY_OPTIONS if replay and o.name in given}
    for o in REPLAY_OPTIONS:
        if o.name in given and head not in readers(o.name):
            raise OptionError(f"{o.cli_flag} is read by {', '.join(readers(o.name))} and by --replay; "
                              f"--head {head} without --replay does not use it")
    replay_opts = {o.name: o.check(taken.get(o.name, o.default), "--replay") for o in REPLAY_OPTIONS} if replay else {}
    return given, replay_opts


def _check_contradictions(holdout: float, test_stores: Sequence[Path], checkpoint_every: int,
                          model_out: Path | None, incremental: bool, replay: bool, no_joint: bool) -> None:
    if holdout and test_stores:
        raise OptionError("--holdout and --test both say what to evaluate on: give one")
    if checkpoint_every and model_out is None:
        raise OptionError("--checkpoint-every needs --model-out (where to save the checkpoints)")
    if not incremental:
        for flag, given in (("--replay", replay), ("--no-joint", no_joint)):
            if given:
                raise OptionError(f"{flag} only acts in class-incremental runs (--increment or --tasks)")


def run_training(stores: Sequence[Path], *, head: str | None = None, head_options: dict[str, Any] | None = None,
                 holdout: float = 0.0, test_stores: Sequence[Path] = (), eval_every: int = 0,
                 epochs: int | None = None, shuffle_buffer: int = 0, chunk_rows: int = 4096, seed: int = 0,
                 metrics_out: Path | None = None, plot: Path | None = None, model_out: Path | None = None,
                 checkpoint_every: int = 0, resume: Path | None = None, allow_incomplete: bool = False,
                 quiet: bool = False, increment: int | None = None, tasks: str | None = None,
                 class_order: str | None = None, no_joint: bool = False, replay: bool = False,
                 first_increment: int | None = None, orders: int | None = None, order_seed: int | None = None,
                 log_dir: Path | None = None, executor: str = "local", workers: int | None = None,
                 trust_pickle: bool = False, report: Path | None = None,
                 echo: Echo = print, out: Echo = print) -> dict[str, Any]:
    """Train (or continue) a head on feature stores; returns the metrics dictionary.

    ``head_options`` are the head's own options (see ``pipeline.heads.registry``), plus
    ``memory`` / ``pool_size`` for ``replay``. Everything is validated before anything is written.
    ``order_seed`` seeds the class order of an ``increment`` run (default: ``seed``); ``orders=K``
    repeats the run over K class orders (:func:`run_orders`).
    ``trust_pickle`` lets ``resume`` load a model stored as a pickle (River heads, version-1 files).
    ``report``: write the run report there (HTML, :mod:`pipeline.report`).
    """
    nums = check_run_options({"holdout": holdout, "eval_every": eval_every, "epochs": epochs,
                              "shuffle_buffer": shuffle_buffer, "chunk_rows": chunk_rows, "seed": seed,
                              "checkpoint_every": checkpoint_every, "increment": increment,
                              "first_increment": first_increment, "orders": orders, "order_seed": order_seed})
    if orders is not None:
        _check_orders(increment, tasks, class_order, resume, checkpoint_every)
        return run_orders(orders, stores=stores, head=head, head_options=head_options, holdout=holdout,
                          test_stores=test_stores, eval_every=eval_every, epochs=epochs, shuffle_buffer=shuffle_buffer,
                          chunk_rows=chunk_rows, seed=seed, metrics_out=metrics_out, plot=plot, model_out=model_out,
                          checkpoint_every=checkpoint_every, resume=resume, allow_incomplete=allow_incomplete,
                          quiet=quiet, increment=increment, tasks=tasks, class_order=class_order, no_joint=no_joint,
                          replay=replay, first_increment=first_increment, log_dir=log_dir, executor=executor,
                          workers=workers, trust_pickle=trust_pickle, report=report, order_seed=order_seed,
                          echo=echo, out=out)
    if order_seed is not None and (increment is None or class_order is not None):
        raise OptionError("--order-seed seeds the class order of an --increment run"
                          + ("; --class-order already fixes it" if class_order is not None else ": give --increment"))
    if model_out is None and resume is not None:
        model_out = resume
    incremental = increment is not None or tasks is not None
    _check_contradictions(holdout, test_stores, checkpoint_every, model_out, incremental, replay, no_joint)
    with output_locks(model_out, metrics_out, log_dir, plot):  # a second run on one output is refused
        given = dict(head_options or {})
        model = load_model(resume, trust_pickle=trust_pickle) if resume is not None else None
        if model is not None and head is not None and head != model.head_name:
            raise OptionError(f"--head {head} does not match the resumed model's head ({model.head_name})")
        head = model.head_name if model is not None else head or DEFAULT_HEAD
        given, replay_opts = _split_head_options(head, given, replay)
        if model is not None:
            _check_resumed_settings(model, given)
        elif "seed" in {o.name for o in head_class(head).options}:
            given.setdefault("seed", seed)
        epochs = nums["epochs"] or head_class(head).capabilities.default_epochs

        train_stream, scan = open_checked(stores, "training stores", allow_incomplete=allow_incomplete,
                                          chunk_rows=chunk_rows, holdout=holdout, split="train" if holdout else "all",
                                          shuffle_buffer=shuffle_buffer, seed=seed)
        test_stream: FeatureStream | None = None
        try:
            if scan.labelled - scan.heldout == 0:
                raise OptionError(f"--holdout {holdout} leaves no labelled row to learn from")
            if holdout and scan.heldout == 0:
                raise OptionError(f"--holdout {holdout} leaves no row to evaluate on")
            _refuse_one_class(scan, model, stores)
            if test_stores:
                test_stream = open_checked(test_stores, "test stores", allow_incomplete=allow_incomplete,
                                           chunk_rows=chunk_rows)[0]
            elif holdout:
                test_stream = train_stream.with_options(split="test", shuffle_buffer=0)
            echo(f"{scan.rows} rows in {len(train_stream.stores)} store(s), {len(scan.class_counts)} classes, "
                 f"{train_stream.feature_dim}-d features from {train_stream.meta.get('backbone')}"
                 + (f"; {scan.unlabelled} unlabelled rows skipped" if scan.unlabelled else ""))
            if model is not None:
                check_model_fits(model, train_stream, "the training stores")
                echo(f"resuming {model.head_name} from {resume}: {model.head.rows_seen_} rows seen, "
                     f"{len(model.classes)} classes")
            else:
                model = TrainedModel(make_head(head, n_features=train_stream.feature_dim, **given), head,
                                     {**backbone_metadata(train_stream.meta), "feature_dim": train_stream.feature_dim})
            fitted = model

            def fresh() -> Any:
                return make_head(fitted.head_name, n_features=train_stream.feature_dim, **fitted.head.settings())

            order = [c.strip() for c in class_order.split(",")] if class_order is not None else None
            task_list = make_tasks(train_stream.classes, increment, tasks, order,
                                   seed if order_seed is None else order_seed, first_increment)
            if task_list is not None and test_stream is None:
                raise OptionError("a class-incremental run needs held-out data: pass --holdout or --test")
            opts = TrainOptions(epochs=epochs, eval_every=eval_every, checkpoint_every=checkpoint_every,
                                auto_points=not eval_every and (plot is not None or log_dir is not None
                                                                or report is not None),
                                model_out=model_out, tasks=task_list, joint_reference=not no_joint, replay=replay,
                                replay_memory=replay_opts.get("memory", TrainOptions.replay_memory),
                                pool_size=replay_opts.get("pool_size", TrainOptions.pool_size), seed=seed, progress=not quiet,
                                log_dir=log_dir)
            if executor == "local":
                metrics = train(model, train_stream, test_stream, opts, make_fresh_head=fresh, log=echo)
            else:  # mergeable heads only: map rows to workers, reduce with the heads' exact merge
                from pipeline.parallel_train import check_parallel, open_executor, train_parallel

                check_parallel(model.head_name, model.head, opts)
                with open_executor(executor, workers, progress=not quiet) as pool:
                    metrics = train_parallel(model, train_stream, test_stream, opts, pool, log=echo)
            add_sources(metrics, stores, test_stores, holdout)
            if metrics_out is not None:
                write_json(metrics, metrics_out)
            if plot is not None:
                from pipeline.plots import confusion_path, plot_accuracy_matrix, plot_confusion, plot_learning_curve

                (plot_accuracy_matrix if task_list else plot_learning_curve)(metrics, plot)
                if metrics["heldout"].get("rows"):
                    plot_confusion(metrics, confusion_path(plot))
            if report is not None:
                from pipeline.report import write_report

                names = ", ".join(Path(p).name for p in stores)
                write_report(report, {**model.summary(), **metrics}, head=model.head, test=test_stream,
                             title=f"train-incremental: {model.head_name} on {names}")
            out(summary(metrics, model_out) + (f"\nreport written to {report}" if report is not None else ""))
            if metrics.get("log_failure"):
                kept = f"the model was saved to {model_out}" if model_out is not None else "no --model-out was given"
                raise PipelineError(f"{metrics['log_failure']}; training finished and {kept}")
        finally:
            train_stream.close()
            if test_stream is not None:
                test_stream.close()
        return metrics


def _refuse_one_class(scan: StoreScan, model: TrainedModel | None, stores: Sequence[Path]) -> None:
    """A classifier needs two classes: one class alone (a resumed model's included) learns nothing."""
    classes = sorted(set(scan.class_counts) | set(model.classes if model is not None else ()))
    if len(classes) < 2:
        names = ", ".join(str(p) for p in stores)
        raise OptionError(f"{names} hold{'s' if len(stores) == 1 else ''} one class only ({classes[0]!r}): a "
                          "classifier needs at least two, so nothing was trained or saved (if that class is a "
                          "folder such as train/, extract from the folder holding the class folders)")


def _check_orders(increment: int | None, tasks: str | None, class_order: str | None, resume: Path | None,
                  checkpoint_every: int) -> None:
    for flag, given in (("--tasks", tasks), ("--class-order", class_order)):
        if given is not None:
            raise OptionError(f"--orders repeats the run over seeded class orders; {flag} fixes the order: give one")
    if increment is None:
        raise OptionError("--orders repeats a class-incremental run over class orders: give --increment")
    if resume is not None:
        raise OptionError("--orders starts every order from scratch: it cannot --resume a model")
    if checkpoint_every:
        raise OptionError("--orders cannot --checkpoint-every: an interrupted multi-order run is rerun whole")


ORDER_KEYS = ("final_accuracy", "average_incremental_accuracy", "forgetting", "backward_transfer", "learning_accuracy",
              "joint_accuracy")


def run_orders(orders: int, *, seed: int = 0, order_seed: int | None = None, metrics_out: Path | None = None,
               plot: Path | None = None, model_out: Path | None = None, log_dir: Path | None = None,
               report: Path | None = None, quiet: bool = False, echo: Echo = print, out: Echo = print, **options: Any) -> dict[str, Any]:
    """The same class-incremental run over ``orders`` distinct class orders (:func:`pipeline.train.distinct_orders`):
    order 1 is the shuffle seeded with ``order_seed`` (default ``seed``), the order of a plain run; each
    next one the shuffle of the next seed that splits the classes into tasks differently. Everything else
    (row shuffle, head seed) keeps ``seed``, so the joint reference, which ignores the class order, is trained
    once and reported for every order.

    Returns ``{"orders": [metrics of each order], "class_orders": [...], "order_seeds": [...],
    "orders_summary": {key: {mean, std, values}}}`` (std: numpy's, ddof=0). Only the first order's model is
    saved to ``model_out``; ``plot`` and ``log_dir`` get one file / folder per order (``NAME.order-K.png``,
    ``DIR/order-K``), and so does ``report``.
    """
    with output_locks(model_out, metrics_out, log_dir):
        return _run_orders_locked(orders, seed=seed, order_seed=order_seed, metrics_out=metrics_out, plot=plot,
                                  model_out=model_out, log_dir=log_dir, report=report, quiet=quiet, echo=echo, out=out,
                                  **options)


def _run_orders_locked(orders: int, *, seed: int, order_seed: int | None, metrics_out: Path | None,
                       plot: Path | None, model_out: Path | None, log_dir: Path | None, report: Path | None,
                       quiet: bool, echo: Echo, out: Echo, **options: Any) -> dict[str, Any]:
    from pipeline.train import distinct_orders

    base = seed if order_seed is None else order_seed
    with FeatureStream(options["stores"], allow_incomplete=options.get("allow_incomplete", False)) as probe:
        classes = list(probe.classes)
    chosen = distinct_orders(classes, options["increment"], orders, base, options.get("first_increment"))
    results: list[dict[str, Any]] = []
    for k, (s, _) in enumerate(chosen):
        echo(f"order {k + 1}/{orders}: classes shuffled with seed {s}")
        if k == 1 and "joint_accuracy" in results[0]:
            options["no_joint"] = True  # the joint reference ignores the class order: the same for every order
        m = run_training(**options, seed=seed, order_seed=s, quiet=quiet, echo=echo,
                         out=(lambda s: None) if orders > 1 else out, model_out=model_out if k == 0 else None,
                         plot=_numbered(plot, k) if plot is not None and orders > 1 else plot,
                         report=_numbered(report, k) if report is not None and orders > 1 else report,
                         log_dir=log_dir / f"order-{k + 1}" if log_dir is not None and orders > 1 else log_dir)
        if k and "joint_accuracy" in results[0]:
            m["joint_accuracy"] = results[0]["joint_accuracy"]
            m["joint_minus_final"] = (m["joint_accuracy"] - m["final_accuracy"]
                                      if m.get("final_accuracy") is not None else None)
        results.append({"order": k + 1, "order_seed": s, "class_order": [c for t in m["tasks"] for c in t],
                        **m})
    summary_ = {key: _mean_std([r.get(key) for r in results]) for key in ORDER_KEYS}
    metrics = {"head": results[0]["head"], "settings": results[0]["settings"], "seed": seed,
               "order_seeds": [r["order_seed"] for r in results], "class_orders": [r["tasks"] for r in results],
               "orders": results, "orders_summary": summary_}
    if metrics_out is not None:
        write_json(metrics, metrics_out)
    if orders > 1:
        out(orders_summary_text(metrics, model_out))
    return metrics


def _numbered(path: Path, k: int) -> Path:
    return path.with_name(f"{path.stem}.order-{k + 1}{path.suffix}")


def _mean_std(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return {"mean": float(np.mean(got)) if got else None, "std": float(np.std(got)) if got else None,
            "values": values}


def orders_summary_text(metrics: dict[str, Any], model_out: Path | None) -> str:
    runs, agg = metrics["orders"], metrics["orders_summary"]
    lines = [f"head {metrics['head']} {json.dumps(metrics['settings'])}",
             f"{len(runs)} class orders, all distinct (seeds {', '.join(str(r['order_seed']) for r in runs)}), "
             f"{len(runs[0]['tasks'])} tasks each:"]
    for r in runs:
        lines.append(f"  order {r['order']} (seed {r['order_seed']}): final {_pct(r.get('final_accuracy'))}, "
                     f"average incremental {_pct(r.get('average_incremental_accuracy'))}, "
                     f"forgetting {_pct(r.get('forgetting'))}, learning {_pct(r.get('learning_accuracy'))}"
                     + (f", joint {_pct(r['joint_accuracy'])}" if r.get("joint_accuracy") is not None else ""))
        if r.get("tasks_not_learnt"):
            lines.append("    " + not_learnt_text(r["tasks_not_learnt"], r["tasks"]))
    for key in ORDER_KEYS:
        if agg[key]["mean"] is not None:
            lines.append(f"{key.replace('_', ' ')}: {_pct(agg[key]['mean'])} +/- {_pct(agg[key]['std'])}")
    if model_out is not None:
        lines.append(f"model of order 1 saved to {model_out}")
    return "\n".join(lines)


def _check_resumed_settings(model: TrainedModel, given: dict[str, Any]) -> None:
    """A resumed model keeps its settings: options that would change them are refused, by name."""
    settings = model.head.settings()
    declared = {o.name: o for o in head_class(model.head_name).options}
    make_head(model.head_name, **{**settings, **given})  # validates names and values
    changed = [f"{declared[k].cli_flag} {v!r} (the model has {settings.get(k)!r})" for k, v in given.items()
               if k in settings and settings[k] != declared[k].check(v, model.head_name)]
    if changed:
        raise OptionError("--resume keeps the saved model's settings; these options would change them: "
                          + ", ".join(changed))


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
        lines.append(f"learning accuracy (each task right after it): {_pct(metrics.get('learning_accuracy'))}")
        if metrics.get("tasks_not_learnt"):
            lines.append(not_learnt_text(metrics["tasks_not_learnt"], metrics["tasks"]))
    if model_out is not None:
        lines.append(f"model saved to {model_out}")
    return "\n".join(lines)


def not_learnt_text(numbers: list[int], tasks: list[list[str]]) -> str:
    """The warning for tasks whose classes were never predicted, even right after learning them."""
    names = "; ".join(f"task {k} ({', '.join(tasks[k - 1])})" for k in numbers)
    return (f"warning: never learnt (0% right after learning it, so its forgetting of 0 means nothing was "
            f"learnt, not that nothing was forgotten): {names}")


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

    text = json.dumps(clean(data), indent=2)
    write_atomically(path, lambda tmp: tmp.write_text(text))


def run_evaluation(model_path: Path, stores: Sequence[Path], holdout: float = 0.0, metrics_out: Path | None = None,
                   allow_incomplete: bool = False, out: Echo = print, trust_pickle: bool = False,
                   report: Path | None = None) -> dict[str, Any]:
    holdout = check_run_options({"holdout": holdout})["holdout"]
    with output_locks(metrics_out):
        return _evaluate_locked(model_path, stores, holdout, metrics_out, allow_incomplete, out, trust_pickle, report)


def _evaluate_locked(model_path: Path, stores: Sequence[Path], holdout: float, metrics_out: Path | None,
                     allow_incomplete: bool, out: Echo, trust_pickle: bool,
                     report: Path | None) -> dict[str, Any]:
    model = load_model(model_path, trust_pickle=trust_pickle)
    stream, scan = open_checked(stores, "stores", allow_incomplete=allow_incomplete, holdout=holdout,
                                split="test" if holdout else "all")
    with stream:
        if holdout and scan.heldout == 0:
            raise OptionError(f"--holdout {holdout} leaves no row to evaluate on")
        check_model_fits(model, stream, "the stores")
        for note in training_overlap(model, [(s.path, s.n_rows) for s in stream.stores], holdout):
            warnings.warn(note, stacklevel=2)
        held = evaluate_head(model.head, stream).report()
        metrics = {"model": str(model_path), "stores": [str(s) for s in stores], "holdout_fraction": holdout,
                   "heldout": held, **model.summary()}
        if report is not None:
            from pipeline.report import write_report

            write_report(report, {**metrics, "stores": [s.get("path") for s in model.stores],
                                  "test": [str(s) for s in stores], "learning_curve": model.history},
                         head=model.head, test=stream, title=f"evaluate: {Path(model_path).name}")
    if metrics_out is not None:
        write_json(metrics, metrics_out)
    out(f"accuracy {_pct(held.get('accuracy'))} on {held['rows']} rows"
        + (f", log loss {held['log_loss']:.4f}" if held.get("log_loss") is not None else ""))
    if held.get("unseen_labels"):
        out(f"labels the model never learnt (counted as errors): {held['unseen_labels']}")
    for label, r in (held.get("per_class") or {}).items():
        out(f"  {label:>20}  precision {r['precision']:.3f}  recall {r['recall']:.3f}  f1 {r['f1']:.3f}  n={r['support']}")
    return metrics


def training_overlap(model: TrainedModel, stores: Sequence[tuple[Path, int]], holdout: float) -> list[str]:
    """One line per evaluated store (path, rows) the model learnt from (same file, or same name and row count),
    unless ``holdout`` picks only rows it held out (the held-out split of a fraction holds that of every smaller
    one)."""
    notes = []
    for path, rows in stores:
        resolved, name = str(Path(path).resolve()), Path(path).name
        learnt = [r for r in model.stores if r.get("resolved") == resolved
                  or (Path(str(r.get("path", ""))).name == name and r.get("rows") == rows)]
        if not learnt:
            continue
        kept_out = min(float(r.get("holdout") or 0.0) for r in learnt)  # records before the field: trained on all
        if holdout <= kept_out and holdout > 0:
            continue
        fix = (f"pass --holdout {kept_out:g} to evaluate on the rows it held out" if kept_out
               else "evaluate on a store it did not learn from")
        notes.append(f"the model was trained on {path}, so these rows include training rows and the accuracy is "
                     f"optimistic (leakage); {fix}")
    return notes


def run_prediction(model_path: Path, inputs: Sequence[Path], weights: str | None = None,
                   keras_model: str | None = None, batch_size: int = 32, output: Path | None = None,
                   out: Echo = print, trust_pickle: bool = False, executor: str = "local",
                   workers: int | None = None, decoder: str | None = None) -> list[Any]:
    from pipeline.predict import collect_images, model_backbone, model_decoder, predict_images, predict_on_ray

    model = load_model(model_path, trust_pickle=trust_pickle)
    decoder = model_decoder(model, decoder)
    files = collect_images(list(inputs))
    if executor == "ray":
        from pipeline.backbones import config_from_info

        config = config_from_info(model.backbone, weights, keras_model)
        preds = list(predict_on_ray(model, config, files, batch_size, workers, decoder=decoder))
    else:
        backbone = model_backbone(model, weights, keras_model)
        if backbone.feature_dim != model.feature_dim:
            raise ModelFileError(f"the rebuilt backbone gives {backbone.feature_dim}-d features, the model expects {model.feature_dim}")
        preds = list(predict_images(model, backbone, files, batch_size, workers or 2, decoder))
    for p in preds:
        out(f"{p.path}\t{p.label}\t{p.probability:.4f}" if p.error is None else f"{p.path}\tERROR\t{p.error}")
    if output is not None:
        rows = [{"path": p.path, "label": p.label, "probability": p.probability, "error": p.error} for p in preds]
        with output_locks(output):
            write_atomically(output, lambda tmp: _write_predictions(rows, tmp, output.suffix.lower() == ".json"))
    return preds


def _write_predictions(rows: list[dict[str, Any]], path: Path, as_json: bool) -> None:
    if as_json:
        path.write_text(json.dumps(rows, indent=2))
        return
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "probability", "error"])
        writer.writeheader()
        writer.writerows(rows)


def run_merge(paths: Sequence[Path], output: Path, out: Echo = print, trust_pickle: bool = False) -> TrainedModel:
    """Merge saved slda / ridge models trained on disjoint data into one."""
    if len(paths) < 2:
        raise OptionError("merge needs at least two models")
    with output_locks(output):
        return _merge_locked(paths, output, out, trust_pickle)


def _merge_locked(paths: Sequence[Path], output: Path, out: Echo, trust_pickle: bool) -> TrainedModel:
    models = [load_model(p, trust_pickle=trust_pickle) for p in paths]
    first = models[0]
    if not first.head.mergeable:
        raise OptionError(f"{first.head_name} models cannot be merged exactly; only {mergeable_text()} can")
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise OptionError("merge was given the same model file twice: its rows would count twice")
    _refuse_overlap(paths, models)
    for path, other in zip(paths[1:], models[1:]):
        check_identity(first.backbone, other.backbone, str(path))
        first.head.merge(other.head)
        first.stores.extend(s for s in other.stores if s not in first.stores)
    first.progress = None
    save_model(first, output)
    out(f"merged {len(models)} {first.head_name} models ({first.head.rows_seen_} rows, "
        f"{len(first.classes)} classes) into {output}")
    return first


def _store_ids(model: TrainedModel) -> set[str]:
    return {str(s.get("resolved") or s.get("path")) for s in model.stores}


def _refuse_overlap(paths: Sequence[Path], models: list[TrainedModel]) -> None:
    """Models that learnt from the same store would count its rows twice: refuse, naming them."""
    seen: dict[str, Path] = {}
    for path, model in zip(paths, models):
        for store in sorted(_store_ids(model)):
            if store in seen:
                raise OptionError(f"{seen[store]} and {path} both learnt from {store}: merging would count "
                                  "its rows twice (merge only models of disjoint stores)")
            seen[store] = path


def run_migration(source: Path, output: Path, trust_pickle: bool = False, out: Echo = print) -> TrainedModel:
    """Rewrite a model file (a version-1 pickle included) in the current, data-only format."""
    with output_locks(output):
        model = migrate_model(source, output, trust_pickle=trust_pickle)
    out(f"wrote {output}: {model.head_name} model, {len(model.classes)} classes, {model.head.rows_seen_} rows seen"
        + ("; its River estimators are still stored as a pickle (--engine river has no data-only form), "
           "so loading it needs --trust-pickle" if model.needs_pickle else "; it holds only data"))
    return model
