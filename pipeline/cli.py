"""Command-line interface: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from pipeline.errors import PipelineError


INTERRUPT_HINTS = {
    "extract_features_cmd": "finished shards are kept; rerun the same command to continue",
}


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's typed errors into ``click.ClickException`` (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            hint = INTERRUPT_HINTS.get(func.__name__)
            click.echo("\ninterrupted" + (f": {hint}" if hint else ""), err=True)
            sys.exit(130)

    return wrapper


def _show_warnings() -> None:
    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        click.echo(f"warning: {message}", err=True)

    warnings.showwarning = show  # type: ignore[assignment]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="incremental-pipeline")
def main() -> None:
    """Out-of-core, incremental image classification on frozen CNN features.

    \b
    Example:
      pipeline extract-features data/train -o data/train.h5 --backbone mobilenetv2
      pipeline train-incremental data/train.h5 --head logreg --holdout 0.3
    """
    _show_warnings()


class AutoOrFloat(click.ParamType):
    """``auto`` or a number within bounds."""

    name = "auto|number"

    def __init__(self, low: float | None, high: float | None):
        self.low, self.high = low, high

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value == "auto" or isinstance(value, float):
            return value
        try:
            number = float(value)
        except ValueError:
            self.fail(f"expected 'auto' or a number, got {value!r}", param, ctx)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            self.fail(f"{number} is outside [{self.low}, {self.high if self.high is not None else 'inf'}]", param, ctx)
        return number


EXTRACT_EPILOG = """\b
Examples:
  extract-features data/dogs-vs-cats/train -o data/dvc.h5
  extract-features ../shared/data/dogs-vs-cats/train -o data/dvc.h5 --backbone mobilenet \\
      --alpha 0.25 --image-size 128 --weights ../shared/weights/mobilenet_0.25_128_imagenet_no_top.weights.h5
  extract-features photos/ -o mine.h5 --model my_model.keras --layer global_average_pooling2d
"""


@click.command("extract-features", epilog=EXTRACT_EPILOG)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The HDF5 feature store to write.")
@click.option("--layout", type=click.Choice(["auto", "folder", "kaggle", "csv"]), default="auto", show_default=True,
              help="folder: ROOT/<class>/*.jpg; kaggle: ROOT/cat.1.jpg; csv: a path,label manifest.")
@click.option("--backbone", default="resnet50", show_default=True, help="A keras.applications backbone (see --list-backbones).")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or a local .weights.h5 file.")
@click.option("--alpha", type=float, default=None, help="Width multiplier (MobileNet families).")
@click.option("--image-size", type=int, default=None, help="Square input side (default: the backbone's own).")
@click.option("--pooling", type=click.Choice(["avg", "max", "none"]), default="avg", show_default=True,
              help="none keeps the flattened feature map (large).")
@click.option("--model", "model_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Your own Keras model (.keras) as the backbone, loaded in safe mode.")
@click.option("--layer", default=None, help="With --model: the layer whose output is the feature (default: the one before the last).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--mixed-precision", is_flag=True, help="float16 compute (useful on GPUs).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Stored feature type; float16 halves the file.")
@click.option("--compression", type=click.Choice(["lzf", "gzip"]), default=None, help="HDF5 compression (slower reads).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the image order shuffle.")
@click.option("--no-shuffle", is_flag=True, help="Keep the sorted file order.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Decoding threads.")
@click.option("--checkpoint-rows", type=click.IntRange(1), default=256, show_default=True,
              help="Rows per resumable shard: an interrupted run redoes at most this many.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store or partial run.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@friendly_errors
def extract_features_cmd(source: Path, out: Path, layout: str, backbone: str, weights: str, alpha: float | None,
                         image_size: int | None, pooling: str, model_path: Path | None, layer: str | None,
                         batch_size: int, mixed_precision: bool, dtype: str, compression: str | None, seed: int,
                         no_shuffle: bool, workers: int, checkpoint_rows: int, overwrite: bool, quiet: bool) -> None:
    """Embed the images of SOURCE with a pre-trained CNN into a chunked HDF5 store.

    Interrupt it at any time and rerun the same command to continue.
    """
    _show_warnings()
    from pipeline.backbones import build_backbone, load_user_model
    from pipeline.extract import extract_features
    from pipeline.images import list_images

    listed = list_images(source, layout)
    if model_path is not None:
        bb = load_user_model(model_path, layer, pooling)
    else:
        bb = build_backbone(backbone, weights, alpha, image_size, pooling, mixed_precision)
    if not quiet:
        click.echo(f"{len(listed.paths)} files, {len(listed.classes)} classes ({listed.layout} layout); "
                   f"{bb.name} -> {bb.feature_dim}-d features on {bb.info['device']}", err=True)
    res = extract_features(listed, out, bb, seed=seed, shuffle=not no_shuffle, batch_size=batch_size, dtype=dtype,
                           compression=compression, workers=workers, checkpoint_rows=checkpoint_rows,
                           overwrite=overwrite, progress=not quiet)
    if quiet:
        return
    if res.already_complete:
        click.echo(f"{out} is already complete ({res.rows} rows, {res.skipped} skipped); pass --overwrite to redo it")
        return
    resumed = f", resumed at file {res.resumed_at}" if res.resumed_at else ""
    click.echo(f"wrote {res.rows} rows to {out} ({res.skipped} files skipped{resumed}) in "
               f"{res.elapsed_s:.1f} s, {res.images_per_s:.1f} images/s")


main.add_command(extract_features_cmd)


TRAIN_EPILOG = """\b
Examples:
  train-incremental data/dvc.h5 --head logreg --holdout 0.3 --metrics-out m.json --plot curve.png
  train-incremental data/a.h5 data/b.h5 --head softmax --test data/val.h5 --model-out model.pkl
  train-incremental data/new_classes.h5 --resume model.pkl --holdout 0.3
  train-incremental data/train.h5 --head nme --increment 2 --test data/val.h5 --plot matrix.png

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


EVALUATE_EPILOG = """\b
Example:
  pipeline evaluate model.pkl data/val.h5 --metrics-out eval.json
  pipeline evaluate model.pkl data/dvc.h5 --holdout 0.3   # the held-out split used in training
"""


@click.command("evaluate", epilog=EVALUATE_EPILOG)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Evaluate only the held-out split of the stores (same hash split as training).")
@click.option("--metrics-out", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--allow-incomplete", is_flag=True)
@friendly_errors
def evaluate_cmd(model: Path, stores: tuple[Path, ...], holdout: float, metrics_out: Path | None,
                 allow_incomplete: bool) -> None:
    """Evaluate a saved MODEL on feature STORES (only load model files you trust)."""
    from pipeline.runs import run_evaluation

    run_evaluation(model, stores, holdout, metrics_out, allow_incomplete, out=click.echo)


PREDICT_EPILOG = """\b
Examples:
  pipeline predict model.pkl photos/cat.1.jpg photos/dog.2.jpg
  pipeline predict model.pkl photos/ --weights ../shared/weights/mobilenetv2_1.0_224_imagenet_no_top.weights.h5 --output preds.csv
"""


@click.command("predict", epilog=PREDICT_EPILOG)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--weights", default=None, help="Local weights file, when the model's features came from one.")
@click.option("--model", "keras_model", default=None, help="The Keras model file, when the features came from --model.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write predictions to a .csv or .json file.")
@friendly_errors
def predict_cmd(model: Path, inputs: tuple[Path, ...], weights: str | None, keras_model: str | None,
                batch_size: int, output: Path | None) -> None:
    """Label raw images (files or folders) with a saved MODEL, end to end.

    Only load model files you trust: they are pickles.
    """
    from pipeline.runs import run_prediction

    run_prediction(model, inputs, weights, keras_model, batch_size, output, out=click.echo)


MERGE_EPILOG = """\b
Example:
  pipeline merge shard-a.pkl shard-b.pkl -o all.pkl   # slda / ridge models of disjoint stores
"""


@click.command("merge", epilog=MERGE_EPILOG)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False))
@friendly_errors
def merge_cmd(models: tuple[Path, ...], output: Path) -> None:
    """Combine MODELS trained on disjoint stores into the model of their union (slda, ridge).

    The result equals one model trained on all the stores. Only load model files you trust.
    """
    from pipeline.runs import run_merge

    run_merge(models, output, out=click.echo)


for _cmd in (train_incremental_cmd, evaluate_cmd, predict_cmd, merge_cmd):
    main.add_command(_cmd)
