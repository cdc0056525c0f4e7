"""The ``anonymize`` command line: one Typer app, each sub-command in its own module.

Every way a command can fail reaches the user as one line ``error: ...`` on stderr (and, with
``--json``, as ``{"error": ..., "exit_code": ...}`` on stdout): usage mistakes, the project's own
errors (every :class:`~anonymize.errors.AnonymizeError` a command lets through, exit code 2, as the
commands' own ``fail`` gives), environment problems (disk full, read-only folder, no permission) and,
as a last resort, bugs. Set ``ANONYMIZE_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable

import typer

from anonymize.cli.app import COMMANDS, app
from anonymize.errors import AnonymizeError

try:  # Typer >= 0.16 vendors Click; older releases depend on it
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 1
DEBUG_ENV = "ANONYMIZE_DEBUG"
__all__ = ["app", "main"]

def _register_commands(names: Iterable[str] | None = None) -> None:
    """Import the command modules of ``names`` (all when None); each attaches its commands to ``app``.
    Importing only the one a command line names keeps ``--help`` and ``--version`` free of torch."""
    for name in COMMANDS if names is None else names:
        importlib.import_module(COMMANDS[name][0])


def _named_command(args: list[str]) -> list[str] | None:
    """The commands to register for ``args``: none for the root's own options (``--help``, ``--version``,
    nothing), the one named, or every one (None) for an unknown word, so Click can suggest a spelling."""
    words = [arg for arg in args if not arg.startswith("-")]
    if not words:
        return []
    return [words[0]] if words[0] in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns (and exits with) the exit code. Never shows a traceback unless asked."""
    from anonymize.cli.console import EXIT_USAGE, report_error

    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    _register_commands(_named_command(args))
    try:
        code = app(args=args, prog_name="anonymize", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.format_message(), err=True)
        code = 2
    except click_exceptions.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        code = report_error(" ".join(exc.format_message().split()) + where, exc.exit_code, as_json)
    except click_exceptions.ClickException as exc:
        code = report_error(" ".join(exc.format_message().split()), exc.exit_code, as_json)
    except (typer.Abort, KeyboardInterrupt):
        code = report_error("interrupted", EXIT_INTERRUPTED, as_json)
    except AnonymizeError as exc:  # the project's own errors: their one line, whichever command raised them
        code = report_error(" ".join(str(exc).split()), EXIT_USAGE, as_json)
    except OSError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        code = report_error(f"{where}{exc.strerror or exc}", 2, as_json)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, the traceback only on request
        if os.environ.get(DEBUG_ENV):
            raise
        code = report_error(f"internal error ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                            f"set {DEBUG_ENV}=1 to see the traceback", EXIT_INTERNAL, as_json)
    code = code if isinstance(code, int) else 0
    sys.exit(code)
