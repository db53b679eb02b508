"""What every command shares: the group, typed errors turned into clean messages, option types."""

from __future__ import annotations

import functools
import io
import os
import sys
import warnings
from typing import Any, Callable

import click

from pipeline.errors import PipelineError
from pipeline.heads.registry import Option


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
        except BrokenPipeError:  # `... | head -1`: the reader has gone; nothing to say to anyone
            _leave_quietly_on_broken_pipe()
        except OSError as exc:  # the environment, not a bug: a name too long, permission denied, ...
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None
        except KeyboardInterrupt:
            hint = INTERRUPT_HINTS.get(func.__name__)
            click.echo("\ninterrupted" + (f": {hint}" if hint else ""), err=True)
            sys.exit(130)

    return wrapper


def _leave_quietly_on_broken_pipe() -> None:
    """Exit as a process killed by SIGPIPE would (status 141), without Python's "Exception ignored" note
    when it flushes standard output at exit (the recipe of Python's signal documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (a test runner's buffer)
        pass
    sys.exit(141)


def note(text: str) -> None:
    """A log line on stderr, written through tqdm so that it never lands inside a progress bar's line."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def _show_warnings() -> None:
    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        click.echo(f"warning: {message}", err=True)

    warnings.showwarning = show


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}  # on the group and on the commands installed on their own


@click.group(context_settings=HELP_OPTIONS)
@click.version_option(package_name="incremental-pipeline")
def main() -> None:
    """Out-of-core, incremental image classification on frozen CNN features.

    \b
    Example:
      pipeline extract-features data/train -o data/train.h5 --backbone mobilenetv2
      pipeline train-incremental data/train.h5 --head logreg --holdout 0.3
    """
    _show_warnings()


TRUST_PICKLE_HELP = ("Also load models stored as Python pickles (version-1 files, --engine river models). "
                     "Unpickling can run any code the file holds: use only for files you trust.")


def trust_pickle_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--trust-pickle", is_flag=True, help=TRUST_PICKLE_HELP)(func)


class OptionType(click.ParamType):
    """A click type from a declared :class:`pipeline.heads.registry.Option`: the same rules as the library
    (finite numbers only, in range, ``auto`` where allowed)."""

    def __init__(self, option: Option):
        self.option = option
        self.name = {int: "integer", float: "number"}.get(option.type, "text") + "".join("|" + w for w in option.keywords)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        raw: Any = value
        if self.option.type is int:
            try:
                raw = int(value)
            except ValueError:
                self.fail(f"expected {self.option.range_text()}, got {value!r}", param, ctx)
        elif self.option.type is float and value not in self.option.keywords:
            try:
                raw = float(value)
            except ValueError:
                self.fail(f"expected {self.option.range_text()}, got {value!r}", param, ctx)
        try:
            return self.option.check(raw, "")
        except PipelineError:
            self.fail(f"expected {self.option.range_text()}, got {value!r}", param, ctx)


def click_option(option: Option, help: str | None = None, default: Any = None, show_default: bool = False) -> Any:
    """The click option for a declared Option (choices, bool on/off flags, validated numbers)."""
    text = help or option.help[:1].upper() + option.help[1:] + "."
    if option.type in (int, float) and (option.low is not None or option.high is not None):
        text += f" ({option.range_text()})"
    if option.type is bool:
        return click.option(option.flag or f"--{option.name}/--no-{option.name}", option.name, default=default,
                            help=text)
    kind: Any = click.Choice(list(option.choices)) if option.choices else OptionType(option)
    return click.option(option.cli_flag, option.name, type=kind, default=default, help=text,
                        show_default=show_default)


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
