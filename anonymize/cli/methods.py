"""``anonymize methods``: every method, what it does, whom it must fool, its weights and its ``-p`` options,
so that they are discoverable without provoking an error."""

from __future__ import annotations

import json
import shutil
import textwrap
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Optional

import typer

from anonymize.cli.app import app
from anonymize.cli.console import stdout


def method_info(name: str, weights_dir: Path | None = None) -> dict[str, Any]:
    """One method's declaration as data: summary, privacy goal, weights (present or missing on this machine),
    the options it needs for no download, and its ``-p`` options (name, type, default, help where declared)."""
    from anonymize.methods import method_class
    from anonymize.weights import WeightsError, WeightsStore

    cls = method_class(name)
    store = WeightsStore(weights_dir)
    weights = {}
    for artefact in cls.weights_needed:
        try:
            weights[artefact] = "present" if store.path(artefact).is_file() else "missing"
        except WeightsError:  # a packaged model whose package is not installed
            weights[artefact] = "missing"
    options = [{"name": field.name, "type": str(field.type),
                "default": None if field.default is MISSING else field.default,
                "help": field.metadata.get("help", "")}
               for field in fields(cls.Params)]
    return {"name": name, "summary": cls.summary, "privacy_goal": cls.privacy_goal,
            "dataset_level": cls.dataset_level, "weights": weights,
            "no_download_with": cls.no_download_with, "options": options}


def option_text(value: object) -> str:
    """A default as it is written after ``-p NAME=``: true/false, 3,4,5, '' for empty."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    return str(value) if value != "" else "''"


def format_method(info: dict[str, Any], width: int = 80) -> list[str]:
    """A method's block of lines, wrapped at word boundaries to ``width`` columns; one line per option."""
    def wrapped(text: str, indent: str = "  ") -> list[str]:
        return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                             break_long_words=False, break_on_hyphens=False)

    kind = ", dataset-level" if info["dataset_level"] else ""
    lines = [f"{info['name']}  (privacy goal: {info['privacy_goal']}{kind})", *wrapped(info["summary"])]
    weights = ", ".join(f"{name} ({status})" for name, status in info["weights"].items()) or "none"
    if info["no_download_with"]:
        weights += f"; none with {info['no_download_with']}"
    lines += wrapped(f"weights: {weights}")
    lines.append("  -p options:" if info["options"] else "  -p options: none")
    for item in info["options"]:
        help_text = f": {item['help']}" if item["help"] else ""
        lines += wrapped(f"-p {item['name']}={option_text(item['default'])}  ({item['type']}){help_text}", indent="    ")
    return lines


@app.command("methods")
def methods_command(
    weights_dir: Optional[Path] = typer.Option(None, envvar="ANONYMIZE_HOME", metavar="DIR",
                                               help="Weights folder (default: ~/.cache/anonymize)."),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout."),
) -> None:
    """List every method: what it does, its privacy goal, the weights it needs and its -p options."""
    from anonymize.methods import METHODS

    infos = [method_info(name, weights_dir) for name in METHODS]
    if as_json:
        stdout.print_json(json.dumps(infos, default=str))
        return
    width = min(shutil.get_terminal_size((80, 24)).columns, 100)
    blocks = ["\n".join(format_method(info, width)) for info in infos]
    stdout.out("\n\n".join(blocks), highlight=False)
