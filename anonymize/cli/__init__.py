"""The ``anonymize`` command line: one Typer app, each sub-command in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="anonymize",
    help="Anonymize every face of an image dataset and write a shareable copy with a Parquet manifest.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    """Import the command modules; each attaches its commands to ``app``."""
    from anonymize.cli import run, manifest, weights, bank, audit  # noqa: F401


def main() -> None:
    _register_commands()
    app()
