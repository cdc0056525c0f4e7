"""What every command shares: the consoles, the one-line error exit, the device choice, the progress bar.

Summaries and tables go to stdout (``stdout``); progress bars, warnings and errors to stderr
(``console``), so that ``--json`` output and redirected summaries stay clean.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import NoReturn

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)

EXIT_USAGE = 2


def report_error(message: str, code: int = EXIT_USAGE, as_json: bool = False) -> int:
    """Print ``error: <message>`` on stderr (and the JSON error object on stdout with ``as_json``); returns ``code``."""
    console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    if as_json:
        stdout.out(json.dumps({"error": message, "exit_code": code}), highlight=False)
    return code


def fail(message: str, code: int = EXIT_USAGE, as_json: bool = False) -> NoReturn:
    """Print ``error: <message>`` on one line (JSON error object on stdout with ``as_json``) and exit."""
    raise typer.Exit(report_error(message, code, as_json))


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def progress_bar(label: str, *columns: ProgressColumn, quiet: bool = False, transient: bool = False) -> Progress:
    """The one progress-bar look of every command (on stderr; ``quiet`` turns it off)."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *columns, TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=quiet, transient=transient)


class DefaultCommandGroup(TyperGroup):
    """A command group where a first word that is no sub-command means ``default_command``
    (``anonymize audit A B`` is ``anonymize audit check A B``)."""

    default_command: str = ""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)
