"""What every command shares: the group, typed errors turned into clean messages, option types."""

from __future__ import annotations

import functools
import sys
import warnings
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


class WorkersType(click.ParamType):
    """``auto`` or a positive number of threads."""

    name = "auto|N"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value == "auto" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"expected 'auto' or a number of threads, got {value!r}", param, ctx)
        if number < 1:
            self.fail(f"expected at least 1 thread, got {number}", param, ctx)
        return number
