"""Typed errors for user mistakes; the CLI turns each into a clean message."""

import os
import re


class PipelineError(Exception):
    """Base class: a problem the user can fix (bad input, bad option)."""


class SourceError(PipelineError):
    """The image source is missing, empty or in an unknown layout."""


class BackboneError(PipelineError):
    """The backbone cannot be built or its weights cannot be loaded."""


class StoreError(PipelineError):
    """A feature store is not a store, is incomplete, corrupt or mismatched."""


class HeadError(PipelineError):
    """A head was misused (unknown name, predict before fit, bad shapes)."""


class ModelFileError(PipelineError):
    """A saved model cannot be read or does not fit the data given to it."""


class OptionError(PipelineError):
    """A command-line option has a value that cannot work."""


class TrainingError(PipelineError):
    """Training produced nothing usable (diverged, learnt nothing); the model is not saved."""


class ExecutorError(PipelineError):
    """A parallel executor is not installed, cannot be reached, or cannot run this job."""


class InteropError(PipelineError):
    """An embedding folder cannot be imported or exported (layout, columns, missing pyarrow)."""


class OutputError(PipelineError):
    """An output file cannot be written (a full disk, no permission); the old file, if any, is unchanged."""


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (HDF5 write errors span several)."""
    return " ".join(str(exc).split())


def write_failure(exc: BaseException) -> str:
    """Why a write failed, in the system's words: HDF5's long "file write failed: time = ..., errno = 28,
    ..., buf = 0x..." becomes "No space left on device"; other errors their one-line text."""
    text = one_line(exc)
    found = re.search(r"errno = (\d+)", text)
    if found:
        return os.strerror(int(found.group(1)))
    return getattr(exc, "strerror", None) or text
