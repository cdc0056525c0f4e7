"""The one Typer app; each command module attaches its commands to it (anonymize.cli registers them).

Command modules import the heavy libraries (torch, OpenCV, PyArrow) through the code they run, so the
root group lists the commands from :data:`COMMANDS` instead of importing every module: ``anonymize --help``
and ``--version`` stay fast (``benchmarks/startup.py`` measures them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import typer
from typer.core import TyperGroup

from anonymize import __version__

if TYPE_CHECKING:  # Typer vendors Click (typer._click) from 0.16 on; the names are Click's either way
    from click import Context, HelpFormatter

# name -> (module that registers it, the one line the root --help shows); tests/test_cli_reading.py checks
# that every registered command is here and nothing else.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("anonymize.cli.run", "Anonymize every face of a folder (or one image) into a mirrored copy."),
    "methods": ("anonymize.cli.methods", "List the methods: goal, weights needed, -p options."),
    "manifest": ("anonymize.cli.manifest", "Print what a run did: images, faces, statuses, errors."),
    "audit": ("anonymize.cli.audit", "Audit an anonymized folder against the original; compare runs."),
    "calibrate": ("anonymize.cli.calibrate", "Measure a recogniser's same-person threshold on a folder."),
    "weights": ("anonymize.cli.weights", "List, download and verify the pinned pretrained weights."),
    "bank": ("anonymize.cli.bank", "Build FALCO's cached bank of fake faces."),
    "attributes": ("anonymize.cli.attributes", "Estimate CelebA attributes of faces; their k / l / t privacy."),
}
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class RootGroup(TyperGroup):
    """The root group: its command list comes from :data:`COMMANDS`, so printing it imports no command module."""

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """The Commands section: one line per command from :data:`COMMANDS`, wrapped at word boundaries."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, line) for name, (_, line) in COMMANDS.items()])


app = typer.Typer(
    name="anonymize",
    help="Anonymize every face of an image dataset and write a shareable copy with a Parquet manifest.",
    cls=RootGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain Click help: wraps at word boundaries, no markup eating `[ray]`
    context_settings=CONTEXT_SETTINGS,
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
