"""pipeline info: what stores, partial extractions and model files hold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pipeline.cli.common import friendly_errors, trust_pickle_option


INFO_EPILOG = """\b
Examples:
  pipeline info data/train.h5                 # rows, classes with counts, skipped files, backbone
  pipeline info data/train.h5 model.model --json
  pipeline info data/big.h5.parts             # an extraction still running or interrupted
  pipeline info data/big.h5                   # the same, when only big.h5.parts exists yet

A path that cannot be read prints one error line; the others are still shown, and the exit status is 1.
Model files hold only data and load safely; River models (--engine river) need --trust-pickle.
"""


@click.command("info", epilog=INFO_EPILOG)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list with one object per path (machine-readable).")
@trust_pickle_option
@friendly_errors
def info_cmd(paths: tuple[Path, ...], as_json: bool, trust_pickle: bool) -> None:
    """Describe feature STORES, partial extractions (OUT.parts folders) and MODEL files.

    For a store: rows, feature dimension and dtype, classes with their row counts, unlabelled rows,
    skipped files, backbone identity, precision, backend, creation time and whether it is complete.
    For a partial extraction: shards, rows and files done. For a model: head, settings, classes,
    rows seen, the stores it was trained on and the backbone it expects.
    """
    from pipeline.errors import PipelineError
    from pipeline.info import describe, format_info

    results, failed = [], False
    for path in paths:
        try:
            info = describe(path, trust_pickle)
        except PipelineError as exc:
            failed = True
            click.echo(f"Error: {exc}", err=True)
            results.append({"path": str(path), "kind": "error", "error": str(exc)})
            continue
        results.append(info)
        if not as_json:
            click.echo("\n".join(format_info(info)))
    if as_json:
        click.echo(json.dumps(results, indent=1, default=str))
    if failed:
        sys.exit(1)
