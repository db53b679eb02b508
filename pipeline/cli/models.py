"""Commands on saved models: evaluate, predict, merge, migrate-model."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.common import friendly_errors, trust_pickle_option


EVALUATE_EPILOG = """\b
Example:
  pipeline evaluate model.model data/val.h5 --metrics-out eval.json --report eval.html
  pipeline evaluate model.model data/dvc.h5 --holdout 0.3   # the held-out split used in training
"""


@click.command("evaluate", epilog=EVALUATE_EPILOG)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Evaluate only the held-out split of the stores (same hash split as training).")
@click.option("--metrics-out", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a self-contained HTML report (confusion matrix, per-class precision and recall, the "
                   "misclassified photos, the model's learning curve).")
@click.option("--allow-incomplete", is_flag=True)
@trust_pickle_option
@friendly_errors
def evaluate_cmd(model: Path, stores: tuple[Path, ...], holdout: float, metrics_out: Path | None, report: Path | None,
                 allow_incomplete: bool, trust_pickle: bool) -> None:
    """Evaluate a saved MODEL on feature STORES."""
    from pipeline.runs import run_evaluation

    run_evaluation(model, stores, holdout, metrics_out, allow_incomplete, out=click.echo, trust_pickle=trust_pickle,
                   report=report)
    if report is not None:
        click.echo(f"report written to {report}")


PREDICT_EPILOG = """\b
Examples:
  pipeline predict model.model photos/cat.1.jpg photos/dog.2.jpg
  pipeline predict model.model photos/ --weights ../shared/weights/mobilenetv2_1.0_224_imagenet_no_top.weights.h5 --output preds.csv
"""


@click.command("predict", epilog=PREDICT_EPILOG)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--weights", default=None, help="Local weights file, when the model's features came from one.")
@click.option("--model", "keras_model", default=None, help="The Keras model file, when the features came from --model.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write predictions to a .csv or .json file.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: embed runs of files on a pool of Ray actors (RAY_ADDRESS, else a local Ray); same output.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="local: decoding threads [2]; ray: model workers (actors) [one per GPU, else one per 2 CPUs].")
@trust_pickle_option
@friendly_errors
def predict_cmd(model: Path, inputs: tuple[Path, ...], weights: str | None, keras_model: str | None,
                batch_size: int, output: Path | None, executor: str, workers: int | None, trust_pickle: bool) -> None:
    """Label raw images (files or folders) with a saved MODEL, end to end."""
    from pipeline.runs import run_prediction

    run_prediction(model, inputs, weights, keras_model, batch_size, output, out=click.echo, trust_pickle=trust_pickle,
                   executor=executor, workers=workers)


MERGE_EPILOG = """\b
Example:
  pipeline merge shard-a.model shard-b.model -o all.model   # slda / ridge models of disjoint stores
"""


@click.command("merge", epilog=MERGE_EPILOG)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False))
@trust_pickle_option
@friendly_errors
def merge_cmd(models: tuple[Path, ...], output: Path, trust_pickle: bool) -> None:
    """Combine MODELS trained on disjoint stores into the model of their union (slda, ridge).

    The result equals one model trained on all the stores.
    """
    from pipeline.runs import run_merge

    run_merge(models, output, out=click.echo, trust_pickle=trust_pickle)


MIGRATE_EPILOG = """\b
Example:
  pipeline migrate-model old.pkl -o model.model --trust-pickle
"""


@click.command("migrate-model", epilog=MIGRATE_EPILOG)
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False))
@trust_pickle_option
@friendly_errors
def migrate_model_cmd(source: Path, output: Path, trust_pickle: bool) -> None:
    """Rewrite a model file in the current, data-only format.

    Version-1 model files were Python pickles: converting one loads it once, so
    it needs --trust-pickle and must come from someone you trust. The new file
    holds only data (arrays and JSON), safe to load from anyone.
    """
    from pipeline.runs import run_migration

    run_migration(source, output, trust_pickle=trust_pickle, out=click.echo)
