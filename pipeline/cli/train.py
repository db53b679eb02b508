"""train-incremental: feature stores -> a trained head.

``--head`` and the head options come from the head registry
(:mod:`pipeline.heads.registry`): one click option per declared option name,
its help saying which heads read it. Options are passed on explicitly; one
the chosen head does not take is refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from pipeline.cli.common import (HELP_OPTIONS, _show_warnings, click_option, friendly_errors, note,
                                 trust_pickle_option)
from pipeline.heads import heads
from pipeline.heads.registry import Option
from pipeline.options import RUN_OPTIONS
from pipeline.heads.defaults import DEFAULT_HEAD, REPLAY_OPTIONS

TRAIN_EPILOG = """\b
Examples:
  train-incremental data/dvc.h5 --head logreg --holdout 0.3 --metrics-out m.json --plot curve.png
  train-incremental data/train.h5 --test data/val.h5 --report run.html     # open run.html in a browser
  train-incremental data/a.h5 data/b.h5 --head softmax --test data/val.h5 --model-out model.model
  train-incremental data/new_classes.h5 --resume model.model --holdout 0.3
  train-incremental data/train.h5 --head nme --increment 2 --test data/val.h5 --plot matrix.png
  train-incremental data/train.h5 --holdout 0.3 --eval-every 1000 --log-dir runs/logreg
  train-incremental data/c100.h5 --test data/c100-val.h5 --head nme --first-increment 50 --increment 10
  train-incremental data/train.h5 --test data/val.h5 --head slda --increment 2 --orders 3 --metrics-out m.json
  train-incremental data/shard-*.h5 --head slda --holdout 0.2 --executor ray --workers 8
"""


def head_option_table() -> dict[str, tuple[Option, list[str]]]:
    """Every head option name -> (its declaration, who reads it), --replay's included."""
    table: dict[str, tuple[Option, list[str]]] = {}
    for name, cls in heads().items():
        for opt in cls.options:
            if not opt.from_run:
                table.setdefault(opt.name, (opt, []))[1].append(name)
    for opt in REPLAY_OPTIONS:
        table.setdefault(opt.name, (opt, []))[1].append("--replay")
    return table


def _help(name: str, readers: list[str]) -> str:
    texts: dict[str, list[str]] = {}
    for head in readers:
        cls = heads().get(head)
        opt = next(o for o in (cls.options if cls else REPLAY_OPTIONS) if o.name == name)
        default = "" if opt.default is None else f" [default: {str(opt.default).lower() if opt.type is bool else opt.default}]"
        texts.setdefault(opt.help + default, []).append(head)
    return "; ".join(f"{', '.join(who)}: {text}" for text, who in texts.items())


def head_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Shared decorator (sqlite-utils style): ``--head`` plus every registered head option."""
    for name, (opt, readers) in reversed(list(head_option_table().items())):
        func = click_option(opt, help=_help(name, readers))(func)
    summaries = "; ".join(f"{n}: {cls.summary}" for n, cls in heads().items())
    return click.option("--head", type=click.Choice(list(heads())), default=None,
                        help=f"{summaries}. [default: {DEFAULT_HEAD}]")(func)


def _run(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    opt = RUN_OPTIONS[name]
    return click_option(opt, default=opt.default, show_default=opt.default is not None, **kwargs)


@click.command("train-incremental", epilog=TRAIN_EPILOG, context_settings=HELP_OPTIONS)
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@head_options
@_run("holdout")
@click.option("--test", "test_stores", multiple=True, type=click.Path(path_type=Path),
              help="A held-out store (repeatable); all its rows are evaluated.")
@_run("eval_every")
@_run("epochs")
@_run("shuffle_buffer")
@_run("chunk_rows")
@_run("seed")
@click.option("--metrics-out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write all metrics as JSON.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PNG: learning curve, or the accuracy-matrix heatmap for class-incremental runs; the held-out "
                   "confusion matrix goes next to it as NAME.confusion.png.")
@click.option("--log-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Log every evaluation point to DIR/points.csv and TensorBoard event files in DIR "
                   "(view them with TensorBoard: pip install tensorboard); event files need tensorboardX: "
                   "pip install 'incremental-pipeline[logging]'.")
@click.option("--model-out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Save the trained model here (atomically).")
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a self-contained HTML run report (curves, confusion matrix, per-class precision and "
                   "recall, the misclassified held-out photos); open it in any browser.")
@_run("checkpoint_every")
@click.option("--resume", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Continue training a saved model (an interrupted run continues where it stopped).")
@click.option("--allow-incomplete", is_flag=True, help="Accept stores whose extraction did not finish.")
@_run("increment")
@_run("first_increment")
@click.option("--tasks", default=None, help='Class-incremental tasks spelled out: "cat,dog;fox;owl,bat".')
@click.option("--class-order", default=None, help="Comma-separated class order for --increment [default: seeded shuffle].")
@click.option("--no-joint", is_flag=True, help="Skip the joint reference (same head trained on all classes at once).")
@click.option("--replay", is_flag=True, help="Mix exemplars of earlier classes into the stream (experience replay).")
@_run("orders")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: learn stores / row ranges in parallel on a Ray cluster (RAY_ADDRESS, else a local Ray) "
                   "and merge exactly; slda, ridge and nme --class-means exact only.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Ray tasks running at once [default: one per CPU of the cluster].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
@trust_pickle_option
@friendly_errors
def train_incremental_cmd(stores: tuple[Path, ...], head: str | None, holdout: float, test_stores: tuple[Path, ...],
                          eval_every: int, epochs: int | None, shuffle_buffer: int, chunk_rows: int, seed: int,
                          metrics_out: Path | None, plot: Path | None, log_dir: Path | None, model_out: Path | None,
                          report: Path | None,
                          checkpoint_every: int, resume: Path | None, allow_incomplete: bool,
                          increment: int | None, first_increment: int | None, tasks: str | None,
                          class_order: str | None, no_joint: bool, replay: bool, orders: int | None, executor: str,
                          workers: int | None, quiet: bool, trust_pickle: bool, **options: Any) -> None:
    """Stream feature STORES chunk by chunk into an incremental classifier.

    Evaluates progressively (predict, then learn, every row) and on held-out
    data (--holdout or --test), saves the model, and resumes.
    """
    _show_warnings()
    from pipeline.runs import run_training

    given = {name: value for name, value in options.items() if value is not None}
    run_training(stores, head=head, head_options=given, holdout=holdout, test_stores=test_stores,
                 eval_every=eval_every, epochs=epochs, shuffle_buffer=shuffle_buffer, chunk_rows=chunk_rows,
                 seed=seed, metrics_out=metrics_out, plot=plot, model_out=model_out,
                 checkpoint_every=checkpoint_every, resume=resume, allow_incomplete=allow_incomplete, quiet=quiet,
                 increment=increment, tasks=tasks, class_order=class_order, no_joint=no_joint, replay=replay,
                 first_increment=first_increment, orders=orders, log_dir=log_dir,
                 executor=executor, workers=workers, trust_pickle=trust_pickle, report=report,
                 echo=(lambda s: None) if quiet else note, out=click.echo)
