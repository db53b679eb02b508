"""pipeline export / import: feature stores <-> npy + parquet embedding folders (clip-retrieval layout)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.common import friendly_errors


EXPORT_EPILOG = """\b
Examples:
  pipeline export data/train.h5 -o emb/                    # emb/img_emb/img_emb_0.npy + emb/metadata/metadata_0.parquet
  pipeline export data/train.h5 -o emb/ --format parquet   # emb/img_emb/img_emb_0.parquet with an 'embedding' column

\b
Read it back with embedding-reader:
  EmbeddingReader("emb/img_emb", file_format="parquet_npy", metadata_folder="emb/metadata", meta_columns=["image_path", "label"])
  EmbeddingReader("emb/img_emb", file_format="parquet", embedding_column="embedding", meta_columns=["image_path", "label"])

Needs pyarrow: pip install 'incremental-pipeline[interop]'.
"""


@click.command("export", epilog=EXPORT_EPILOG)
@click.argument("store", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder to create (written next to it, then renamed into place when complete).")
@click.option("--format", "fmt", type=click.Choice(["npy", "parquet"]), default="npy", show_default=True,
              help="npy: img_emb/*.npy + metadata/*.parquet; parquet: embeddings as a list column.")
@click.option("--shard-rows", type=click.IntRange(1), default=1_000_000, show_default=True, help="Rows per shard file.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--allow-incomplete", is_flag=True, help="Export a store whose extraction did not finish.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def export_cmd(store: Path, output: Path, fmt: str, shard_rows: int, overwrite: bool, allow_incomplete: bool,
               quiet: bool) -> None:
    """Write a feature STORE as embedding shards plus a parquet metadata table (image_path, label).

    The layout is the one clip-retrieval writes and embedding-reader reads; memory is bounded by a chunk,
    not by the store size. `pipeline import` turns the folder back into the same store.
    """
    from pipeline.interop import export_store

    result = export_store(store, output, fmt, shard_rows=shard_rows, overwrite=overwrite,
                          allow_incomplete=allow_incomplete, progress=not quiet)
    click.echo(f"exported {result.rows} rows ({result.feature_dim}-d {result.dtype}, {len(result.classes)} classes) "
               f"to {result.out} in {result.files} {fmt} shard(s)")


IMPORT_EPILOG = """\b
Examples:
  pipeline import emb/ -o data/clip.h5 --backbone-name clip-vit-b32 --label-column label
  pipeline import clip_out/ -o data/clip.h5 --label-column caption --backbone-name ViT-B/32
  train-incremental data/clip.h5 --head slda --holdout 0.3

\b
DIR is either a clip-retrieval output folder (img_emb/*.npy with metadata/*.parquet aligned row by row),
a folder of parquet files with an embedding column, or a folder of bare .npy files (rows unlabelled).
Missing labels become unlabelled rows (-1). Needs pyarrow: pip install 'incremental-pipeline[interop]'.
"""


@click.command("import", epilog=IMPORT_EPILOG)
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The feature store to write (atomically).")
@click.option("--label-column", default=None, help="Metadata column holding the class [default: label, if present].")
@click.option("--path-column", default=None, help="Metadata column naming each row [default: image_path, if present].")
@click.option("--embedding-column", default="embedding", show_default=True, help="For parquet embeddings.")
@click.option("--backbone-name", default=None,
              help="Identity to record (weights are recorded as 'external') [default: the identity an export "
                   "recorded, else 'external']. Stores trained together must share it.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def import_cmd(folder: Path, output: Path, label_column: str | None, path_column: str | None, embedding_column: str,
               backbone_name: str | None, overwrite: bool, quiet: bool) -> None:
    """Turn an embedding FOLDER (e.g. CLIP embeddings made elsewhere) into a feature store any head trains on."""
    from pipeline.interop import import_embeddings

    result = import_embeddings(folder, output, label_column=label_column, path_column=path_column,
                               backbone_name=backbone_name, embedding_column=embedding_column,
                               overwrite=overwrite, progress=not quiet)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"imported {result.rows} rows ({result.feature_dim}-d {result.dtype}, {len(result.classes)} classes) "
               f"from {result.files} file(s) into {result.out}")
