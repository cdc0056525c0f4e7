"""``anonymize attributes DIR``: every face's CelebA attributes, as a Parquet table keyed like the run's manifest,
and ``anonymize attributes fit DIR --labels FILE``: the ``probe`` source's heads.

``anonymize attributes DIR`` is short for ``anonymize attributes estimate DIR``. Faces are found and
aligned exactly as ``anonymize run`` finds them (same --detector, --aligned), so the keys
``<relative path>#<face index>`` join the run's manifest. Nothing is written into DIR.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from anonymize.run.collect import FaceCollector
from anonymize.attributes.io import concat_attribute_tables, write_attribute_table
from anonymize.attributes.sources import SOURCES, create_source
from anonymize.attributes.table import AttributeTable
from anonymize.cli.app import app
from anonymize.cli.console import DefaultCommandGroup, Device, console, fail, print_json, progress_bar, shown, stdout
from anonymize.cli.run import parse_options  # -p KEY=VALUE, parsed as `run` parses it
from anonymize.errors import AnonymizeError
from anonymize.faces.detect import CHOICES as DETECTORS
from anonymize.faces.types import FaceCrop
from anonymize.weights import WeightsStore

DetectorName = Enum("DetectorName", {name: name for name in DETECTORS}, type=str)


class AttributesGroup(DefaultCommandGroup):
    """``attributes`` with sub-commands, where a first word that is no sub-command means ``estimate``."""

    default_command = "estimate"


attributes_app = typer.Typer(
    cls=AttributesGroup,
    help="Estimate each face's CelebA attributes (`anonymize attributes DIR`, short for `attributes estimate`), "
         "fit the probe source's heads (`anonymize attributes fit DIR --labels FILE`), or measure a source against "
         "labels (`anonymize attributes evaluate DIR --labels FILE`).",
    no_args_is_help=True,
)
app.add_typer(attributes_app, name="attributes")
from anonymize.cli.attribute_privacy import attribute_privacy  # noqa: E402  (stage II: k / l / t of a table)
attributes_app.command("privacy")(attribute_privacy)


def _check_output(input_dir: Path, out: Path, as_json: bool) -> None:
    """Never write into the input tree."""
    source, target = input_dir.resolve(), out.resolve()
    if target == source or source in target.parents:
        fail(f"{out}: inside the input folder {input_dir}; write the table elsewhere (--out)", as_json=as_json)


def _collector(input_dir: Path, weights: WeightsStore, detector: str, aligned: bool, device: str,
               as_json: bool) -> FaceCollector:
    try:
        return FaceCollector(input_dir, weights, detector, aligned, device)
    except (AnonymizeError, ValueError) as exc:  # RunError (bad folder), WeightsError, a bad option
        fail(str(exc), as_json=as_json)


def _batches(collector: FaceCollector, quiet: bool) -> Iterator[list[FaceCrop]]:
    """The collector's face batches, with the one progress bar; skipped images reported at the end."""
    with progress_bar("finding faces", quiet=quiet) as bar:
        task = bar.add_task("faces", total=len(collector.files))
        yield from collector.batches(advance=lambda faces: bar.advance(task, 1))
    if not quiet:
        for error in collector.errors:
            console.print(f"[yellow]skipped:[/] {shown(error)}", soft_wrap=True, highlight=False)


def _summary(table: AttributeTable, collector: FaceCollector, out: Path) -> dict[str, object]:
    bits = table.bits()
    present = {name: float((bits[:, column] == 1).sum() / known) for column, name in enumerate(table.names)
               if (known := int((bits[:, column] >= 0).sum()))}
    return {"source": table.source, "heuristic": table.heuristic, "images": collector.images, "faces": len(table.keys),
            "detector": collector.detector_used, "without_face": collector.without_face, "errors": collector.errors,
            "out": str(out), "present": present}


def _device(device: Device, as_json: bool) -> str:
    from anonymize.models.device import resolve_device

    try:
        return resolve_device(device.value)
    except AnonymizeError as exc:
        fail(str(exc), as_json=as_json)


@attributes_app.command("estimate")
def estimate_command(
    input_dir: Path = typer.Argument(..., help="Folder of images (searched recursively, as `anonymize run` does)."),
    source: str = typer.Option("landmarks", help=f"Where the values come from: {', '.join(SOURCES)}."),
    option: list[str] = typer.Option([], "--option", "-p", help="Source option KEY=VALUE (repeatable), e.g. -p labels=list_attr_celeba.txt (as `run -p`)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Short for -p labels=FILE (the labels source)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Parquet table to write (default: <DIR>-attributes.parquet beside DIR)."),
    aligned: bool = typer.Option(False, "--aligned", help="One centred face per image (CelebA, FFHQ crops), as `anonymize run --aligned`."),
    detector: DetectorName = typer.Option("auto", metavar="NAME", help="Face detector, as `anonymize run --detector`."),
    weights_dir: Optional[Path] = typer.Option(None, envvar="ANONYMIZE_HOME", help="Weights folder (default: ~/.cache/anonymize)."),
    device: Device = typer.Option("auto", help="Where neural sources run."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Estimate the CelebA attributes of every face under INPUT_DIR and write them as Parquet, one row per face."""
    options = parse_options(option, as_json)
    if labels is not None:
        options["labels"] = str(labels)
    resolved = input_dir.resolve()
    out = out if out is not None else resolved.parent / f"{resolved.name}-attributes.parquet"
    _check_output(input_dir, out, as_json)
    device_name = _device(device, as_json)
    try:  # the source first: a bad labels file or missing heads fail before any face is searched
        weights = WeightsStore(weights_dir)
        attribute_source = create_source(source, weights, device_name, options)
    except (AnonymizeError, ValueError) as exc:
        fail(str(exc), as_json=as_json)
    collector = _collector(input_dir, weights, detector.value, aligned, device_name, as_json)
    try:
        tables = [attribute_source.estimate(batch) for batch in _batches(collector, as_json)]
    except (AnonymizeError, ValueError) as exc:
        fail(str(exc), as_json=as_json)
    table = concat_attribute_tables(tables, attribute_source.name, attribute_source.heuristic)
    write_attribute_table(out, table)
    summary = _summary(table, collector, out)
    if as_json:
        print_json(summary)
        return
    grid = Table(title=f"anonymize attributes ({shown(table.source)}{', heuristic' if table.heuristic else ''})")
    grid.add_column("attribute", style="bold")
    grid.add_column("present", justify="right")
    for name, share in summary["present"].items():  # type: ignore[union-attr]
        grid.add_row(shown(name), f"{share:.0%}")
    stdout.print(grid)
    stdout.print(f"{len(table.keys)} faces in {collector.images} images ({len(collector.without_face)} without a face, "
                 f"{len(collector.errors)} errors); detector: {collector.detector_used}", soft_wrap=True)
    stdout.print(f"table: {shown(out)}", soft_wrap=True)


@attributes_app.command("evaluate")
def evaluate_command(
    input_dir: Path = typer.Argument(..., help="Folder of labelled images."),
    labels: Path = typer.Option(..., "--labels", help="Their labels: list_attr_celeba.txt, a CSV or a Parquet file (see the labels source)."),
    source: str = typer.Option("landmarks", help=f"The source to evaluate: {', '.join(SOURCES)}."),
    option: list[str] = typer.Option([], "--option", "-p", help="Source option KEY=VALUE (repeatable), as `attributes estimate -p`."),
    aligned: bool = typer.Option(False, "--aligned", help="One centred face per image (CelebA, FFHQ crops)."),
    detector: DetectorName = typer.Option("auto", metavar="NAME", help="Face detector, as `anonymize run --detector`."),
    weights_dir: Optional[Path] = typer.Option(None, envvar="ANONYMIZE_HOME", help="Weights folder (default: ~/.cache/anonymize)."),
    device: Device = typer.Option("auto", help="Where neural sources run."),
    as_json: bool = typer.Option(False, "--json", help="Print the accuracies as JSON on stdout."),
) -> None:
    """Per-attribute accuracy of a source against labels (AnonymousNet reports its stage I estimator's accuracy)."""
    from anonymize.attributes.labels import LabelsSource
    from anonymize.attributes.measure import source_accuracy

    options = parse_options(option, as_json)
    device_name = _device(device, as_json)
    try:  # both sources first: a bad labels file or missing weights fail before any face is searched
        truth_source = LabelsSource(options={"labels": str(labels), "missing": "nan"})
        weights = WeightsStore(weights_dir)
        attribute_source = create_source(source, weights, device_name, options)
    except (AnonymizeError, ValueError) as exc:
        fail(str(exc), as_json=as_json)
    collector = _collector(input_dir, weights, detector.value, aligned, device_name, as_json)
    truths: list[AttributeTable] = []
    estimates: list[AttributeTable] = []
    try:
        for batch in _batches(collector, as_json):
            truths.append(truth_source.estimate(batch))
            estimates.append(attribute_source.estimate(batch))
    except (AnonymizeError, ValueError) as exc:
        fail(str(exc), as_json=as_json)
    truth = concat_attribute_tables(truths, "labels", False)
    if not truth.keys or np.isnan(truth.probabilities).all():
        fail(f"{labels}: no face under {input_dir} has a label (rows are matched by relative path or file name)", as_json=as_json)
    estimated = concat_attribute_tables(estimates, attribute_source.name, attribute_source.heuristic)
    figures = {name: row for name, row in source_accuracy(truth, estimated).items() if row["faces"]}
    if not figures:
        fail(f"source {source} estimates none of the attributes {labels} labels", as_json=as_json)
    summary = {"source": attribute_source.name, "heuristic": attribute_source.heuristic, "labels": str(labels),
               "faces": len(truth.keys), "attributes": figures}
    if as_json:
        print_json(summary)
        return
    grid = Table(title=f"{shown(attribute_source.name)} against {shown(labels)} ({len(truth.keys)} faces)")
    for column in ("attribute", "accuracy", "majority baseline", "faces"):
        grid.add_column(column, justify="left" if column == "attribute" else "right")
    for name, row in figures.items():
        grid.add_row(shown(name), f"{row['accuracy']:.3f}", f"{row['majority']:.3f}", str(row["faces"]))
    stdout.print(grid)


@attributes_app.command("fit")
def fit_command(
    input_dir: Path = typer.Argument(..., help="Folder of labelled images."),
    labels: Path = typer.Option(..., "--labels", help="Their labels: list_attr_celeba.txt, a CSV or a Parquet file (see the labels source)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Heads file (.npz; default: attribute_heads.npz in the weights folder)."),
    c: float = typer.Option(1.0, "--c", min=1e-6, help="Inverse L2 regularisation strength of each logistic regression."),
    aligned: bool = typer.Option(False, "--aligned", help="One centred face per image (CelebA, FFHQ crops)."),
    detector: DetectorName = typer.Option("auto", metavar="NAME", help="Face detector, as `anonymize run --detector`."),
    weights_dir: Optional[Path] = typer.Option(None, envvar="ANONYMIZE_HOME", help="Weights folder (default: ~/.cache/anonymize)."),
    device: Device = typer.Option("auto", help="Where FaRL runs."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Fit the probe source: a logistic head per attribute on FaRL features of INPUT_DIR's faces, saved as plain arrays."""
    from anonymize.attributes.labels import LabelsSource
    from anonymize.attributes.probe import DEFAULT_HEADS_NAME, FARL_ARTEFACT, farl_features, fit_heads, save_heads
    try:
        labels_source = LabelsSource(options={"labels": str(labels), "missing": "nan"})  # a bad file fails first
    except ValueError as exc:
        fail(str(exc), as_json=as_json)
    weights = WeightsStore(weights_dir)
    target = out if out is not None else weights.root / DEFAULT_HEADS_NAME
    _check_output(input_dir, target, as_json)
    device_name = _device(device, as_json)
    collector = _collector(input_dir, weights, detector.value, aligned, device_name, as_json)
    keys: list[str] = []
    features: list[np.ndarray] = []
    values: list[np.ndarray] = []
    try:
        for batch in _batches(collector, as_json):  # only the features of labelled faces are kept
            table = labels_source.estimate(batch)
            labelled = ~np.isnan(table.probabilities).all(axis=1)
            faces = [face for face, keep in zip(batch, labelled) if keep]
            if faces:
                keys += [face.key for face in faces]
                features.append(farl_features(faces, weights, device_name))
                values.append(table.probabilities[labelled])
        if not keys:
            fail(f"{labels}: no face under {input_dir} has a label (rows are matched by relative path or file name)", as_json=as_json)
        heads = fit_heads(np.concatenate(features), AttributeTable(tuple(keys), table.names, np.concatenate(values), "labels"),
                          weights.sha256(FARL_ARTEFACT) or "", c)
    except (AnonymizeError, ValueError) as exc:
        fail(str(exc), as_json=as_json)
    save_heads(target, heads)
    summary = {"heads": str(target), "faces": len(keys), "attributes": {name: {"positives": int(p), "labelled": int(n)}
               for name, p, n in zip(heads.names, heads.positives, heads.labelled)}}
    if as_json:
        print_json(summary)
        return
    stdout.print(f"{len(heads.names)} heads fitted on {len(keys)} labelled faces: {shown(target)}", soft_wrap=True)
