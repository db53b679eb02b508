"""Command-line interface: each command parses and checks its arguments, calls the library, and prints.

The library does the work (a command holds only argument checks and messages); heavy libraries are
imported inside the commands, after the arguments are checked. One module per command family; each
command is registered on the ``pipeline`` group here.
"""

from pipeline.cli.common import friendly_errors, main
from pipeline.cli.extract import extract_features_cmd
from pipeline.cli.info import info_cmd
from pipeline.cli.interop import export_cmd, import_cmd
from pipeline.cli.models import evaluate_cmd, merge_cmd, migrate_model_cmd, predict_cmd
from pipeline.cli.train import train_incremental_cmd

for _cmd in (extract_features_cmd, train_incremental_cmd, evaluate_cmd, predict_cmd, merge_cmd, migrate_model_cmd,
             info_cmd, export_cmd, import_cmd):
    main.add_command(_cmd)

__all__ = ["main", "friendly_errors", "extract_features_cmd", "train_incremental_cmd", "evaluate_cmd",
           "predict_cmd", "merge_cmd", "migrate_model_cmd", "info_cmd", "export_cmd", "import_cmd"]
