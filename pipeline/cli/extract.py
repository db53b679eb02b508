"""extract-features: images -> feature store."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from pipeline.cli.common import HELP_OPTIONS, WorkersType, _show_warnings, friendly_errors


EXTRACT_EPILOG = """\b
Examples:
  extract-features data/dogs-vs-cats/train -o data/dvc.h5
  extract-features ../shared/data/dogs-vs-cats/train -o data/dvc.h5 --backbone mobilenet \\
      --alpha 0.25 --image-size 128 --weights ../shared/weights/mobilenet_0.25_128_imagenet_no_top.weights.h5
  extract-features photos/ -o mine.h5 --model my_model.keras --layer global_average_pooling2d
  extract-features 'shards/train-{000..099}.tar' -o train.h5     # WebDataset shards
  extract-features photos/ -o new.h5 --exclude month1.h5 --exclude month2.h5   # only what is new
"""


@click.command("extract-features", epilog=EXTRACT_EPILOG, context_settings=HELP_OPTIONS)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The HDF5 feature store to write.")
@click.option("--layout", type=click.Choice(["auto", "folder", "kaggle", "csv", "webdataset"]), default="auto",
              show_default=True, help="folder: ROOT/<class>/*.jpg; kaggle: ROOT/cat.1.jpg; csv: a path,label manifest; "
              "webdataset: .tar shards (a .tar, a folder of them, or a brace pattern such as 'shards-{000..099}.tar').")
@click.option("--label-key", default=None, metavar="EXT",
              help="WebDataset: the member extension holding the label (default: cls, else txt).")
@click.option("--exclude", "exclude", multiple=True, type=click.Path(path_type=Path, dir_okay=False), metavar="STORE",
              help="Skip the files already in STORE (its rows and skipped files; same source root). Repeatable.")
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
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="Compute precision: auto = float16 on a GPU, bfloat16 on a CPU with bf16 "
              "instructions where measured faster, else float32. Features are stored as --dtype whatever it is.")
@click.option("--mixed-precision", is_flag=True, hidden=True, help="Deprecated: --precision float16.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Stored feature type; float16 halves the file.")
@click.option("--compression", type=click.Choice(["lzf", "gzip"]), default=None, help="HDF5 compression (slower reads).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the image order shuffle.")
@click.option("--no-shuffle", is_flag=True, help="Keep the sorted file order.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: run the partitions on a Ray cluster (RAY_ADDRESS, else a local Ray); OUT must be on a "
                   "filesystem every worker sees.")
@click.option("--workers", type=WorkersType(), default="auto", show_default=True,
              help="local: decoding threads, or auto (every core but one with a GPU; enough to feed the model on "
                   "a CPU). ray: model workers (actors); auto = one per GPU, else one per 2 CPUs.")
@click.option("--decode", type=click.Choice(["auto", "threads", "processes"]), default="auto", show_default=True,
              help="local: decode in threads or processes; auto = processes from 4 decoders on (threads queue on "
                   "Python's GIL at a few thousand images/s).")
@click.option("--checkpoint-rows", type=click.IntRange(1), default=256, show_default=True,
              help="Rows per resumable shard: an interrupted run redoes at most this many.")
@click.option("--overwrite", is_flag=True,
              help="Redo: the existing store stays until the new one is complete, then is replaced.")
@click.option("--no-merge", is_flag=True,
              help="Leave OUT.parts/ (shards + manifest) as the store instead of merging it into OUT.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@friendly_errors
def extract_features_cmd(source: Path, out: Path, layout: str, label_key: str | None, exclude: tuple[Path, ...],
                         backbone: str, weights: str, alpha: float | None,
                         image_size: int | None, pooling: str, model_path: Path | None, layer: str | None,
                         batch_size: int, precision: str, mixed_precision: bool, dtype: str, compression: str | None, seed: int,
                         no_shuffle: bool, executor: str, workers: int | str, decode: str, checkpoint_rows: int, overwrite: bool, no_merge: bool,
                         quiet: bool) -> None:
    """Embed the images of SOURCE with a pre-trained CNN into a chunked HDF5 store.

    Interrupt it at any time and rerun the same command to continue.
    """
    _show_warnings()
    from pipeline.backbones import BackboneConfig
    from pipeline.extract import extract_features
    from pipeline.extraction import make_executor
    from pipeline.images import list_images
    from pipeline.keras_runtime import device
    from pipeline.workers import resolve_workers

    if mixed_precision:
        if precision not in ("auto", "float16"):
            raise click.UsageError(f"--mixed-precision (deprecated) means --precision float16; it conflicts with "
                                   f"--precision {precision}")
        warnings.warn("--mixed-precision is deprecated; use --precision float16 (or auto: float16 on a GPU)",
                      stacklevel=1)
        precision = "float16"
    listed = list_images(source, layout, label_key=label_key)  # a wrong path fails before Keras is imported
    n_workers: int | None
    if executor == "local":
        n_workers = resolve_workers(workers, device())
    else:  # actors: the cluster's shape decides (the driver does not look at its own device)
        n_workers = None if workers == "auto" else int(workers)
    excluded = 0
    if exclude:
        from pipeline.exclude import exclude_stored

        kept = exclude_stored(listed, exclude)
        listed, excluded = kept.source, kept.excluded
        if not listed.paths:
            click.echo(f"nothing to extract: all {excluded} files are already in the excluded stores")
            return
    done_before = f"; {excluded} files already in the excluded stores were left out" if exclude else ""
    if model_path is not None:
        config = BackboneConfig(pooling=pooling, model_path=str(model_path), layer=layer)
    else:
        config = BackboneConfig(backbone, weights, alpha, image_size, pooling, precision)
    if not quiet:
        click.echo(f"{len(listed.paths)} files, {len(listed.classes)} classes ({listed.layout} layout{done_before})",
                   err=True)
    res = extract_features(listed, out, config, seed=seed, shuffle=not no_shuffle, batch_size=batch_size,
                           dtype=dtype, compression=compression, executor=make_executor(executor, n_workers, decode),
                           checkpoint_rows=checkpoint_rows, overwrite=overwrite, merge=not no_merge, progress=not quiet)
    if quiet:
        return
    where = out if res.merged else f"{out}.parts/ (--no-merge)"
    if res.already_complete:
        click.echo(f"{where} is already complete ({res.rows} rows, {res.skipped} skipped{done_before}); "
                   "pass --overwrite to redo it")
        return
    bb = res.backbone
    resumed = f", resumed with {res.resumed_at} files already done" if res.resumed_at else ""
    click.echo(f"wrote {res.rows} rows of {bb['backbone']} {bb['feature_dim']}-d features ({bb['device']}) to "
               f"{where} ({res.skipped} files skipped{resumed}{done_before}) in {res.elapsed_s:.1f} s, "
               f"{res.images_per_s:.1f} images/s" + (f" [{res.executor}]" if res.executor != "local" else ""))
