"""Shared console and the one-line error exit every command uses."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

# Human-readable output goes to stderr so that --json output on stdout stays machine-readable.
console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)

EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: <message>`` on one line and exit."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)
