"""train-incremental: feature stores -> a trained head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipeline.cli.common import AutoOrFloat, _show_warnings, friendly_errors


TRAIN_EPILOG = """\b
Examples:
  train-incremental data/dvc.h5 --head logreg --holdout 0.3 --metrics-out m.json --plot curve.png
  train-incremental data/a.h5 data/b.h5 --head softmax --test data/val.h5 --model-out model.pkl
  train-incremental data/new_classes.h5 --resume model.pkl --holdout 0.3
  train-incremental data/train.h5 --head nme --increment 2 --test data/val.h5 --plot matrix.png
  train-incremental data/shard-*.h5 --head slda --holdout 0.2 --executor ray --workers 8

Saved models are pickles: only load (--resume) model files you trust.
"""


def _parse_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command("train-incremental", epilog=TRAIN_EPILOG)
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--head", type=click.Choice(["logreg", "softmax", "nme", "slda", "ridge"]), default=None,
              help="logreg: River logistic regression (one-vs-rest beyond two classes); softmax: River softmax "
                   "regression; nme: iCaRL nearest-mean-of-exemplars; slda: streaming LDA; ridge: analytic "
                   "ridge. [default: logreg]")
@click.option("--engine", type=click.Choice(["numpy", "river"]), default="numpy", show_default=True,
              help="numpy: fast estimators with River's exact math; river: River's own estimators.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None, help="[default: sgd]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate [default: 1/feature_dim for sgd, 3e-4 for adam].")
@click.option("--l2", type=click.FloatRange(min=0), default=None, help="L2 penalty [default: 0].")
@click.option("--no-scale", is_flag=True, help="No StandardScaler before the linear model.")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Mini-batches (River learn_many) instead of row by row (logreg only).")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Fraction held out for evaluation, split by a hash of each image path.")
@click.option("--test", "test_stores", multiple=True, type=click.Path(path_type=Path),
              help="A held-out store (repeatable); all its rows are evaluated.")
@click.option("--eval-every", type=click.IntRange(0), default=0, help="Evaluate every N rows (learning curve).")
@click.option("--epochs", type=click.IntRange(1), default=1, show_default=True)
@click.option("--shuffle-buffer", type=click.IntRange(0), default=0, help="Shuffle rows in a buffer of N rows (and chunk order).")
@click.option("--chunk-rows", type=click.IntRange(1), default=4096, show_default=True, help="Rows read per chunk.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--metrics-out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write all metrics as JSON.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PNG: learning curve, or the accuracy-matrix heatmap for class-incremental runs.")
@click.option("--model-out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Save the trained model here (atomically).")
@click.option("--checkpoint-every", type=click.IntRange(0), default=0, help="Save to --model-out every N rows.")
@click.option("--resume", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Continue training a saved model (an interrupted run continues where it stopped).")
@click.option("--allow-incomplete", is_flag=True, help="Accept stores whose extraction did not finish.")
@click.option("--increment", type=click.IntRange(1), default=None,
              help="Class-incremental: N classes per task, in --class-order.")
@click.option("--tasks", default=None, help='Class-incremental tasks spelled out: "cat,dog;fox;owl,bat".')
@click.option("--class-order", default=None, help="Comma-separated class order for --increment [default: seeded shuffle].")
@click.option("--no-joint", is_flag=True, help="Skip the joint reference (same head trained on all classes at once).")
@click.option("--memory", type=click.IntRange(1), default=None,
              help="Exemplar budget in rows, all classes together (nme, --replay) [default: 2000].")
@click.option("--class-means", type=click.Choice(["exemplar", "exact"]), default=None,
              help="nme: mean of the exemplars (iCaRL) or the exact running mean of every row [default: exemplar].")
@click.option("--pool-size", type=click.IntRange(1), default=None,
              help="Candidates kept per class for herding (reservoir sample) [default: 1000].")
@click.option("--replay", is_flag=True, help="Mix exemplars of earlier classes into the stream (experience replay).")
@click.option("--shrinkage", type=AutoOrFloat(0.0, 1.0), default=None,
              help="slda: covariance shrinkage in [0, 1], or auto (OAS estimate) [default: auto].")
@click.option("--lambda", "ridge_lambda", type=AutoOrFloat(0.0, None), default=None,
              help="ridge: L2 penalty, or auto (generalised cross-validation) [default: auto].")
@click.option("--random-features", type=click.IntRange(1), default=None,
              help="ridge: RanPAC random ReLU projection to M dimensions before the ridge.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: learn stores / row ranges in parallel on a Ray cluster (RAY_ADDRESS, else a local Ray) "
                   "and merge exactly; slda, ridge and nme --class-means exact only.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Ray tasks running at once [default: one per CPU of the cluster].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
@friendly_errors
def train_incremental_cmd(stores: tuple[Path, ...], head: str | None, engine: str, optimizer: str | None,
                          lr: float | None, l2: float | None, no_scale: bool, batch_size: int | None, holdout: float,
                          test_stores: tuple[Path, ...], eval_every: int, epochs: int, shuffle_buffer: int,
                          chunk_rows: int, seed: int, metrics_out: Path | None, plot: Path | None,
                          model_out: Path | None, checkpoint_every: int, resume: Path | None,
                          allow_incomplete: bool, quiet: bool, **extra: Any) -> None:
    """Stream feature STORES chunk by chunk into an incremental classifier.

    Evaluates progressively (predict, then learn, every row) and on held-out
    data (--holdout or --test), saves the model, and resumes.
    """
    _show_warnings()
    from pipeline.runs import run_training

    params = dict(locals())
    params.pop("extra")
    params.update(extra)
    run_training(**params, echo=(lambda s: None) if quiet else (lambda s: click.echo(s, err=True)), out=click.echo)
