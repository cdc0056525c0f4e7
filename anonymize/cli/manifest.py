"""``anonymize manifest``: summarise a run's Parquet manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from anonymize.cli.app import app
from anonymize.cli.console import fail, stdout
from anonymize.io.manifest import MANIFEST_NAME, read_manifest


@app.command("manifest")
def manifest_command(
    path: Path = typer.Argument(..., help="A manifest.parquet, or the output folder holding one."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Print what a run did: images, faces, statuses, errors, methods and run metadata."""
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        fail(f"{path}: no manifest here", as_json=as_json)
    try:
        table, metadata = read_manifest(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line error
        fail(f"{path}: not a readable Parquet manifest ({' '.join(str(exc).split())})", as_json=as_json)
    rows = table.to_pylist()
    images = {row["source_path"] for row in rows if row["status"] != "skipped"}
    statuses = Counter(row["status"] for row in rows if row["face_index"] is None or row["status"] != "done")
    faces = sum(1 for row in rows if row["status"] == "done" and row["face_index"] is not None)
    errors = [row["error"] for row in rows if row["status"] == "error"]
    summary = {
        "manifest": str(path),
        "rows": len(rows),
        "images": len(images),
        "faces": faces,
        "no_face_images": statuses.get("no_face", 0),
        "errors": len(errors),
        "skipped": statuses.get("skipped", 0),
        "methods": sorted({row["method"] for row in rows if row["method"]}),
        "runs": sorted({row["run_id"] for row in rows}),
        "anonymize_version": metadata.get("anonymize_version"),
        "weights_sha256": json.loads(metadata.get("weights_sha256", "{}")),
    }
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    grid = Table(title=str(path), show_header=False)
    grid.add_column(style="bold")
    grid.add_column()
    for key in ("rows", "images", "faces", "no_face_images", "errors", "skipped"):
        grid.add_row(key.replace("_", " "), str(summary[key]))
    grid.add_row("methods", ", ".join(summary["methods"]))
    grid.add_row("runs", ", ".join(summary["runs"]))
    grid.add_row("version", str(summary["anonymize_version"]))
    stdout.print(grid)
    for message in errors[:20]:
        stdout.print(Text.assemble(("error", "red"), " ", message or ""), soft_wrap=True)
