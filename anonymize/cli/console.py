"""What every command shares: the consoles, the one-line error exit, the device choice, the progress bar.

Summaries and tables go to stdout (``stdout``); progress bars, warnings and errors to stderr
(``console``), so that ``--json`` output and redirected summaries stay clean.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)

EXIT_USAGE = 2


def shown(value: object) -> str:
    """A user-supplied value (a file name, a path, an option) ready to go inside a Rich markup string:
    undecodable file-name bytes written ``\\xNN`` (stdout cannot encode them) and ``[`` escaped, so
    that a file named ``[bold]x.jpg`` or ``a[/]b.jpg`` prints as itself."""
    from anonymize.io.manifest import readable  # PyArrow: only once something is printed

    return escape(readable(str(value)))


def json_text(value: Any) -> str:
    """``value`` as JSON, every string readable (undecodable bytes as ``\\xNN``): what ``--json`` prints."""
    from anonymize.io.manifest import readable_values

    return json.dumps(readable_values(value))


def print_json(value: Any) -> None:
    """The ``--json`` summary on stdout (see :func:`json_text`)."""
    stdout.print_json(json_text(value))


def report_error(message: str, code: int = EXIT_USAGE, as_json: bool = False) -> int:
    """Print ``error: <message>`` on stderr (and the JSON error object on stdout with ``as_json``); returns ``code``."""
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: its bytes as \xNN
        from anonymize.io.manifest import readable

        message = readable(message)
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
