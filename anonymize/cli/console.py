"""What every command shares: the consoles, the one-line error exit, the device choice, the progress bar."""

from __future__ import annotations

from enum import Enum
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Human-readable output goes to stderr so that --json output on stdout stays machine-readable.
console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)

EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: <message>`` on one line and exit."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def progress_bar(label: str, *columns: ProgressColumn, quiet: bool = False, transient: bool = False) -> Progress:
    """The one progress-bar look of every command (on stderr; ``quiet`` turns it off)."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *columns, TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=quiet, transient=transient)
