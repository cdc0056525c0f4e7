"""``anonymize weights list | fetch | verify``: see, download and check the pinned pretrained files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from anonymize.cli.app import app
from anonymize.weights import Check, FetchError, WeightsError, WeightsStore, read_lock

EXIT_ERROR = 2
EXIT_CORRUPT = 1

weights_app = typer.Typer(
    help="List, download and verify the pretrained weights pinned in weights.lock.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")

WeightsDirOption = Annotated[
    Path | None,
    typer.Option("--weights-dir", envvar="ANONYMIZE_HOME", help="Weights folder (default ~/.cache/anonymize).", show_default=False),
]
LockOption = Annotated[
    Path | None,
    typer.Option("--lock", envvar="ANONYMIZE_WEIGHTS_LOCK", help="weights.lock to use (default: the one shipped with anonymize).", show_default=False),
]
STATUS_STYLE = {"present": "green", "missing": "yellow", "corrupt": "bold red", "unverified": "magenta"}


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _store(weights_dir: Path | None, lock: Path | None, trust_unverified: bool = False) -> WeightsStore:
    try:
        return WeightsStore(root=weights_dir, lock=read_lock(lock), trust_unverified=trust_unverified)
    except WeightsError as exc:
        raise _fail(str(exc)) from None


def _size(store: WeightsStore, check: Check) -> str:
    size = check.path.stat().st_size if check.status != "missing" and check.path else store.artifact(check.name).size
    if size is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return "?"


def _status_text(check: Check) -> str:
    label = "unverified (trusted)" if check.trusted else check.status
    return f"[{STATUS_STYLE[check.status]}]{label}[/]"


def _names(store: WeightsStore, names: list[str] | None) -> list[str]:
    names = store.expand(names) if names else list(store.lock)
    unknown = [name for name in names if name not in store.lock]
    if unknown:
        raise _fail(f"unknown weights {', '.join(unknown)}; known: {', '.join(store.lock)}")
    return names


@weights_app.command("list")
def list_weights(weights_dir: WeightsDirOption = None, lock: LockOption = None) -> None:
    """Show every pinned file: size, status, where it lives and what uses it."""
    store = _store(weights_dir, lock)
    table = Table(title=f"Weights in {store.root}")
    for column in ("name", "size", "status", "path", "used by"):
        table.add_column(column, overflow="fold")
    for name in store.lock:
        check = store.check(name)
        path = check.path if check.path is not None else check.detail
        table.add_row(name, _size(store, check), _status_text(check), str(path), ", ".join(store.artifact(name).used_by))
    Console().print(table)


@weights_app.command("fetch")
def fetch(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Artefacts to fetch, or archives standing for all they hold (default: all).", show_default=False),
    ] = None,
    trust_unverified: Annotated[
        bool, typer.Option("--trust-unverified", help="Accept files whose hash cannot be checked or does not match.")
    ] = False,
    weights_dir: WeightsDirOption = None,
    lock: LockOption = None,
) -> None:
    """Download, or verify and extract from a tarball placed in the weights dir by hand."""
    store = _store(weights_dir, lock, trust_unverified)
    names = _names(store, names)
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console, transient=True
    ) as progress:
        tasks: dict[str, int] = {}

        def report(label: str, done: int, total: int | None) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done, total=total)

        try:
            store.fetch(names, progress=report)
        except FetchError as exc:
            for line in exc.errors:
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(EXIT_ERROR) from None
        except WeightsError as exc:
            raise _fail(str(exc)) from None
    for name in names:
        typer.echo(f"{name}: {store.status(name)}")


@weights_app.command("verify")
def verify(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Artefacts to verify, or archives standing for all they hold (default: all).", show_default=False),
    ] = None,
    weights_dir: WeightsDirOption = None,
    lock: LockOption = None,
) -> None:
    """Re-hash every file in use; exit 1 if any is corrupt."""
    store = _store(weights_dir, lock)
    corrupt = False
    for name in _names(store, names):
        check = store.check(name, rehash=True)
        line = f"{name}: {check.status}"
        if check.trusted:
            line += " (trusted)"
        if check.status == "corrupt":
            corrupt = True
            line += f": {check.path} sha256 {check.actual_sha256}, expected {check.expected_sha256} ({check.detail})"
        elif check.status != "missing":
            line += f": {check.path}"
        typer.echo(line)
    if corrupt:
        raise _fail("some weight files are corrupt; delete them and run `anonymize weights fetch`", EXIT_CORRUPT)
