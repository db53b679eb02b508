"""extract-features: images -> feature store."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from pipeline.cli.common import HELP_OPTIONS, WorkersType, _show_warnings, friendly_errors, note
from pipeline.options import IMAGE_SIZE_RANGE


EXTRACT_EPILOG = """\b
Examples:
  extract-features data/dogs-vs-cats/train -o data/dvc.h5
  extract-features ../shared/data/dogs-vs-cats/train -o data/dvc.h5 --backbone mobilenet \\
      --alpha 0.25 --image-size 128 --weights ../shared/weights/mobilenet_0.25_128_imagenet_no_top.weights.h5
  extract-features photos/ -o mine.h5 --model my_model.keras --layer global_average_pooling2d
  extract-features 'shards/train-{000..099}.tar' -o train.h5     # WebDataset shards
  extract-features photos/ -o new.h5 --exclude month1.h5 --exclude month2.h5   # only what is new
"""


def _list_backbones(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """--list-backbones: both families, then exit (keras-hub presets listed without downloading)."""
    if not value or ctx.resilient_parsing:
        return
    from pipeline.backbones import REGISTRY

    click.echo("keras.applications (--backbone NAME; --weights imagenet, none or a .weights.h5 file):")
    click.echo(f"  {'name':<20} {'input':>7} {'dim':>6}  preprocessing")
    for name, spec in REGISTRY.items():
        alpha = " (--alpha)" if spec.has_alpha else ""
        click.echo(f"  {name:<20} {spec.input_size:>7} {spec.feature_dim:>6}  {spec.preprocessing}{alpha}")
    click.echo("\nkeras-hub presets (--backbone hub:NAME downloads once; hub:/path/to/preset_folder loads offline):")
    click.echo("  default pooling: DINOv2/DINOv3 cls+mean, ViT cls, CLIP cls, SigLIP embedding; the input size and "
               "feature dim are in the preset's config (a hidden size, x2 with cls+mean)")
    from pipeline.errors import BackboneError
    from pipeline.keras_runtime import hub

    try:
        rows = hub().list_presets()
    except BackboneError as exc:
        click.echo(f"  ({exc})")
        ctx.exit()
    for name, family, desc in rows:
        click.echo(f"  hub:{name:<36} {family:<7} {desc}")
    ctx.exit()


@click.command("extract-features", epilog=EXTRACT_EPILOG, context_settings=HELP_OPTIONS)
@click.option("--list-backbones", is_flag=True, expose_value=False, is_eager=True, callback=_list_backbones,
              help="List the keras.applications backbones and the keras-hub presets, then exit.")
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
@click.option("--backbone", default="resnet50", show_default=True,
              help="A keras.applications backbone, or a keras-hub preset: hub:NAME (downloaded once) or "
                   "hub:/path/to/preset_folder (offline). See --list-backbones and docs/backbones.md.")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or a local .weights.h5 file.")
@click.option("--alpha", type=float, default=None, help="Width multiplier (MobileNet families).")
@click.option("--image-size", type=click.IntRange(*IMAGE_SIZE_RANGE), default=None,
              help="Square input side (default: the backbone's own). keras-hub: DINOv2/DINOv3 only.")
@click.option("--pooling", type=click.Choice(["avg", "max", "none", "cls", "mean", "cls+mean", "embedding"]),
              default=None, help="keras.applications: avg (default), max, none (the flattened feature map, large). "
              "keras-hub: cls (class token), mean (patch tokens, registers excluded), cls+mean (both, "
              "concatenated), embedding (CLIP/SigLIP joint image-text space); default per family, from its paper: "
              "DINOv2/v3 cls+mean, ViT cls, CLIP cls (before the projection), SigLIP embedding.")
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
@click.option("--seed", type=click.IntRange(0), default=42, show_default=True, help="Seed of the image order shuffle.")
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
@click.option("--decoder", type=click.Choice(["pil", "simplejpeg"]), default="pil", show_default=True,
              help="JPEG decoder: pil (Pillow), or simplejpeg (libjpeg-turbo at the smallest DCT scale + OpenCV "
                   "area resize, about 2x per core; pip install 'incremental-pipeline[fastjpeg]'). Pixels differ "
                   "slightly: recorded in the store, kept by a resumed run, used by predict.")
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
                         image_size: int | None, pooling: str | None, model_path: Path | None, layer: str | None,
                         batch_size: int, precision: str, mixed_precision: bool, dtype: str, compression: str | None, seed: int,
                         no_shuffle: bool, executor: str, workers: int | str, decode: str, decoder: str, checkpoint_rows: int, overwrite: bool, no_merge: bool,
                         quiet: bool) -> None:
    """Embed the images of SOURCE with a pre-trained CNN into a chunked HDF5 store.

    Interrupt it at any time and rerun the same command to continue.
    """
    _show_warnings()
    if layer is not None and model_path is None:
        raise click.UsageError("--layer names a layer of your own model: pass it with --model FILE.keras")
    from pipeline.backbones import HUB_PREFIX, BackboneConfig
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
    listed = list_images(source, layout, label_key=label_key, decoder=decoder)  # fails before Keras is imported
    n_workers: int | None
    if executor == "local":
        n_workers = resolve_workers(workers, device())
        if workers != "auto" and n_workers < int(workers):
            note(f"note: --workers {workers} capped to {n_workers}, the cores this process may use")
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
        config = BackboneConfig(pooling=pooling or "avg", model_path=str(model_path), layer=layer)
    elif backbone.startswith(HUB_PREFIX):
        if weights != "imagenet" or alpha is not None:
            raise click.UsageError("--weights and --alpha are for keras.applications backbones; a keras-hub preset "
                                   "carries its own weights")
        config = BackboneConfig(backbone, "none", None, image_size, pooling or "", precision)
    else:
        config = BackboneConfig(backbone, weights, alpha, image_size, pooling or "avg", precision)
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
