"""``anonymize attributes DIR``: every face's CelebA attributes, as a Parquet table keyed like the run's manifest,
and ``anonymize attributes fit DIR --labels FILE``: the ``probe`` source's heads.

``anonymize attributes DIR`` is short for ``anonymize attributes estimate DIR``. Faces are found and
aligned exactly as ``anonymize run`` finds them (same --detector, --aligned), so the keys
``<relative path>#<face index>`` join the run's manifest. Nothing is written into DIR.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table
from typer.core import TyperGroup

from anonymize.attributes.collect import CollectedFaces, collect_faces
from anonymize.attributes.io import write_attribute_table
from anonymize.attributes.sources import SOURCES, UnknownSource, create_source
from anonymize.attributes.table import AttributeTable
from anonymize.cli import app
from anonymize.cli.console import Device, console, fail, progress_bar, stdout
from anonymize.faces.detect import CHOICES as DETECTORS

DetectorName = Enum("DetectorName", {name: name for name in DETECTORS}, type=str)


class AttributesGroup(TyperGroup):
    """``attributes`` with sub-commands, where a first word that is no sub-command means ``estimate``."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["estimate", *args]
        return super().parse_args(ctx, args)


attributes_app = typer.Typer(
    cls=AttributesGroup,
    help="Estimate each face's CelebA attributes (`anonymize attributes DIR`, short for `attributes estimate`), "
         "or fit the probe source's heads (`anonymize attributes fit DIR --labels FILE`).",
    no_args_is_help=True,
)
app.add_typer(attributes_app, name="attributes")


def _parse_options(pairs: list[str], as_json: bool) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--option {pair!r}: expected KEY=VALUE", as_json=as_json)
        options[key.strip()] = value.strip()
    return options


def _check_output(input_dir: Path, out: Path, as_json: bool) -> None:
    """Never write into the input tree."""
    source, target = input_dir.resolve(), out.resolve()
    if target == source or source in target.parents:
        fail(f"{out}: inside the input folder {input_dir}; write the table elsewhere (--out)", as_json=as_json)


def _collect(input_dir: Path, weights_dir: Optional[Path], detector: str, aligned: bool, device: str,
             quiet: bool) -> tuple[CollectedFaces, object, str]:
    from anonymize.pipeline import RunError, resolve_device
    from anonymize.weights import WeightsError, WeightsStore

    try:
        device = resolve_device(device)
        weights = WeightsStore(weights_dir)
        with progress_bar("finding faces", quiet=quiet) as bar:
            task = bar.add_task("faces", total=None)
            collected = collect_faces(input_dir, weights, detector, aligned, device, lambda faces: bar.advance(task, 1),
                                      lambda total: bar.update(task, total=total))
    except (RunError, WeightsError, ValueError) as exc:
        fail(str(exc), as_json=quiet)
    if not quiet:
        for error in collected.errors:
            console.print(f"[yellow]skipped:[/] {error}", soft_wrap=True, highlight=False)
    return collected, weights, device


def _summary(table: AttributeTable, collected: CollectedFaces, out: Path) -> dict[str, object]:
    bits = table.bits()
    present = {name: float((bits[:, column] == 1).sum() / known) for column, name in enumerate(table.names)
               if (known := int((bits[:, column] >= 0).sum()))}
    return {"source": table.source, "heuristic": table.heuristic, "images": collected.images, "faces": len(table.keys),
            "detector": collected.detector, "without_face": collected.without_face, "errors": collected.errors,
            "out": str(out), "present": present}


@attributes_app.command("estimate")
def estimate_command(
    input_dir: Path = typer.Argument(..., help="Folder of images (searched recursively, as `anonymize run` does)."),
    source: str = typer.Option("landmarks", help=f"Where the values come from: {', '.join(SOURCES)}."),
    option: list[str] = typer.Option([], "--option", "-p", help="Source option KEY=VALUE (repeatable), e.g. -p labels=list_attr_celeba.txt (as `run -p`)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Short for -p labels=FILE (the labels source)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Parquet table to write (default: <DIR>-attributes.parquet beside DIR)."),
    aligned: bool = typer.Option(False, "--aligned", help="One centred face per image (CelebA, FFHQ crops), as `anonymize run --aligned`."),
    detector: DetectorName = typer.Option("auto", help="Face detector, as `anonymize run --detector`."),
    weights_dir: Optional[Path] = typer.Option(None, envvar="ANONYMIZE_HOME", help="Weights folder (default: ~/.cache/anonymize)."),
    device: Device = typer.Option("auto", help="Where neural sources run."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Estimate the CelebA attributes of every face under INPUT_DIR and write them as Parquet, one row per face."""
    options = _parse_options(option, as_json)
    if labels is not None:
        options["labels"] = str(labels)
    resolved = input_dir.resolve()
    out = out if out is not None else resolved.parent / f"{resolved.name}-attributes.parquet"
    _check_output(input_dir, out, as_json)
    from anonymize.pipeline import RunError, resolve_device
    from anonymize.weights import WeightsError, WeightsStore

    try:  # the source first: a bad labels file or missing heads fail before any face is searched
        device_name = resolve_device(device.value)
        attribute_source = create_source(source, WeightsStore(weights_dir), device_name, options)
    except (UnknownSource, RunError, WeightsError, ValueError) as exc:
        fail(str(exc), as_json=as_json)
    collected, _, _ = _collect(input_dir, weights_dir, detector.value, aligned, device_name, as_json)
    try:
        table = attribute_source.estimate(collected.faces)
    except (ValueError, WeightsError) as exc:
        fail(str(exc), as_json=as_json)
    write_attribute_table(out, table)
    summary = _summary(table, collected, out)
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    grid = Table(title=f"anonymize attributes ({table.source}{', heuristic' if table.heuristic else ''})")
    grid.add_column("attribute", style="bold")
    grid.add_column("present", justify="right")
    for name, share in summary["present"].items():  # type: ignore[union-attr]
        grid.add_row(name, f"{share:.0%}")
    stdout.print(grid)
    stdout.print(f"{len(table.keys)} faces in {collected.images} images ({len(collected.without_face)} without a face, "
                 f"{len(collected.errors)} errors); detector: {collected.detector}", soft_wrap=True)
    stdout.print(f"table: {out}", soft_wrap=True)


@attributes_app.command("fit")
def fit_command(
    input_dir: Path = typer.Argument(..., help="Folder of labelled images."),
    labels: Path = typer.Option(..., "--labels", help="Their labels: list_attr_celeba.txt, a CSV or a Parquet file (see the labels source)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Heads file (.npz; default: attribute_heads.npz in the weights folder)."),
    c: float = typer.Option(1.0, "--c", min=1e-6, help="Inverse L2 regularisation strength of each logistic regression."),
    aligned: bool = typer.Option(False, "--aligned", help="One centred face per image (CelebA, FFHQ crops)."),
    detector: DetectorName = typer.Option("auto", help="Face detector, as `anonymize run --detector`."),
    weights_dir: Optional[Path] = typer.Option(None, envvar="ANONYMIZE_HOME", help="Weights folder (default: ~/.cache/anonymize)."),
    device: Device = typer.Option("auto", help="Where FaRL runs."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Fit the probe source: a logistic head per attribute on FaRL features of INPUT_DIR's faces, saved as plain arrays."""
    from anonymize.attributes.labels import LabelsSource
    from anonymize.attributes.probe import DEFAULT_HEADS_NAME, FARL_ARTEFACT, farl_features, fit_heads, save_heads
    from anonymize.weights import WeightsError, WeightsStore

    try:
        labels_source = LabelsSource(options={"labels": str(labels), "missing": "nan"})  # a bad file fails first
    except ValueError as exc:
        fail(str(exc), as_json=as_json)
    target = out if out is not None else WeightsStore(weights_dir).root / DEFAULT_HEADS_NAME
    _check_output(input_dir, target, as_json)
    collected, weights, device_name = _collect(input_dir, weights_dir, detector.value, aligned, device.value, as_json)
    try:
        table = labels_source.estimate(collected.faces)
        labelled = ~np.isnan(table.probabilities).all(axis=1)
        if not labelled.any():
            fail(f"{labels}: no face under {input_dir} has a label (rows are matched by relative path or file name)", as_json=as_json)
        faces = [face for face, keep in zip(collected.faces, labelled) if keep]
        features = farl_features(faces, weights, device_name)  # type: ignore[arg-type]
        heads = fit_heads(features, AttributeTable(tuple(f.key for f in faces), table.names, table.probabilities[labelled], "labels"),
                          weights.sha256(FARL_ARTEFACT) or "", c)  # type: ignore[attr-defined]
    except (ValueError, WeightsError) as exc:
        fail(str(exc), as_json=as_json)
    save_heads(target, heads)
    summary = {"heads": str(target), "faces": len(faces), "attributes": {name: {"positives": int(p), "labelled": int(n)}
               for name, p, n in zip(heads.names, heads.positives, heads.labelled)}}
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    stdout.print(f"{len(heads.names)} heads fitted on {len(faces)} labelled faces: {target}", soft_wrap=True)
