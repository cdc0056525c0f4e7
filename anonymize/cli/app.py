"""The one Typer app; each command module attaches its commands to it (anonymize.cli registers them)."""

from __future__ import annotations

from typing import Optional

import typer

from anonymize import __version__

app = typer.Typer(
    name="anonymize",
    help="Anonymize every face of an image dataset and write a shareable copy with a Parquet manifest.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"anonymize {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """Anonymize every face of an image dataset and write a shareable copy with a Parquet manifest."""
