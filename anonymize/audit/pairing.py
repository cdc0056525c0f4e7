"""Pair every released image with the source it was made from.

The anonymized folder is what gets published, so the audit starts from it: every image in it is
checked, and each is paired with its source through the run's manifest (``output_path`` ->
``source_path``) or, without one, by the same relative path. An output that pairs with no source
cannot have its faces checked and is reported as unpaired. Sources without an output were not
released (no face and ``--on-no-face skip``, or an error) and need no check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from anonymize.errors import AnonymizeError
from anonymize.io.manifest import MANIFEST_NAME, STATUS_DONE, read_manifest
from anonymize.io.walk import walk_images

Box = tuple[float, float, float, float]


class AuditError(AnonymizeError):
    """An audit that cannot start (missing folders, unreadable manifest, unsafe paths): one line."""


@dataclass(frozen=True)
class ImagePair:
    """One released image and, when known, its source; paths relative to their folders, posix form."""

    output_rel: str
    output_path: Path
    source_rel: str | None
    source_path: Path | None
    manifest_boxes: tuple[Box, ...] = ()  # faces the run itself anonymized in this image


@dataclass
class Pairing:
    pairs: list[ImagePair]
    not_released: list[str]  # sources with no output in the anonymized folder
    missing_outputs: list[str]  # outputs the manifest lists but the folder lacks
    manifest_path: Path | None
    run_arguments: dict[str, object] = field(default_factory=dict)  # the run's options, from the manifest
    run_detector: str | None = None  # the detector the run actually used (its --detector auto resolved), when recorded
    privacy_goal: str | None = None  # "machine" or "human", as the run's method recorded it (None: not recorded)
    loss_recognisers: tuple[str, ...] = ()  # recognisers inside the run's loss (white-box for it)
    originals: dict[str, Path] = field(default_factory=dict)  # every original image, released or not (relative path -> path)

    @property
    def unpaired(self) -> list[ImagePair]:
        return [pair for pair in self.pairs if pair.source_path is None]


def resolve_manifest(anonymized_dir: Path, manifest_path: Path | None) -> Path | None:
    """The given manifest (it must exist), else ``<anonymized>/manifest.parquet`` when present."""
    if manifest_path is not None:
        if not Path(manifest_path).is_file():
            raise AuditError(f"{manifest_path}: manifest not found")
        return Path(manifest_path)
    default = anonymized_dir / MANIFEST_NAME
    return default if default.is_file() else None


def pair_images(original_dir: Path, anonymized_dir: Path, manifest_path: Path | None = None) -> Pairing:
    """Every image under ``anonymized_dir`` with its source under ``original_dir`` (or None)."""
    for folder, role in ((original_dir, "original"), (anonymized_dir, "anonymized")):
        if not folder.is_dir():
            raise AuditError(f"{folder}: {role} folder does not exist or is not a folder")
    manifest = resolve_manifest(anonymized_dir, manifest_path)
    rows, arguments, run_detector, goal = _manifest_rows(manifest) if manifest is not None else ([], {}, None, (None, ()))
    originals = {str(found.relpath): found.path for found in walk_images(original_dir, exclude=anonymized_dir)}
    outputs = list(walk_images(anonymized_dir))
    if not outputs:
        raise AuditError(f"{anonymized_dir}: no image found to audit")

    source_of_output: dict[str, str] = {}
    boxes_of_output: dict[str, list[Box]] = {}
    for row in rows:
        if row.get("output_path") and row.get("source_path"):
            for output in (row["output_path"], *_further_renders(row)):
                source_of_output[output] = row["source_path"]
                if row.get("status") == STATUS_DONE and row.get("box") is not None:
                    boxes_of_output.setdefault(output, []).append(tuple(float(v) for v in row["box"]))

    pairs = []
    for found in outputs:
        output_rel = str(found.relpath)
        source_rel = source_of_output.get(output_rel, output_rel)
        source_path = originals.get(source_rel)
        pairs.append(ImagePair(output_rel, found.path, source_rel if source_path else None, source_path,
                               tuple(boxes_of_output.get(output_rel, ()))))
    released_sources = {pair.source_rel for pair in pairs if pair.source_rel}
    present_outputs = {pair.output_rel for pair in pairs}
    return Pairing(
        pairs=pairs,
        not_released=sorted(set(originals) - released_sources),
        missing_outputs=sorted(set(source_of_output) - present_outputs),
        manifest_path=manifest,
        run_arguments=arguments,
        run_detector=run_detector if run_detector else arguments.get("detector"),
        privacy_goal=goal[0],
        loss_recognisers=goal[1],
        originals=originals,
    )


def _manifest_rows(path: Path) -> tuple[list[dict], dict[str, object], str | None, tuple[str | None, tuple[str, ...]]]:
    try:
        table, metadata = read_manifest(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise AuditError(f"{path}: not a readable manifest ({type(exc).__name__}: {exc})") from None
    missing = {"source_path", "output_path", "status", "box"} - set(table.column_names)
    if missing:
        raise AuditError(f"{path}: not an anonymize manifest (no column {', '.join(sorted(missing))})")
    try:
        arguments = json.loads(metadata.get("arguments", "{}"))
    except json.JSONDecodeError:
        arguments = {}
    try:
        detector = json.loads(metadata.get("detector", "{}"))
    except json.JSONDecodeError:
        detector = {}
    used = detector.get("detector") or detector.get("used") if isinstance(detector, dict) else None
    rows = table.select(["source_path", "output_path", "status", "box",
                         *(["cfa_renders"] if "cfa_renders" in table.column_names else [])]).to_pylist()
    return rows, arguments if isinstance(arguments, dict) else {}, used if isinstance(used, str) else None, _privacy_goal(metadata)


def _privacy_goal(metadata: dict[str, str]) -> tuple[str | None, tuple[str, ...]]:
    """The run's privacy goal and the recognisers in its loss (manifests older than the goal: None, ())."""
    try:
        recognisers = json.loads(metadata.get("loss_recognisers", "[]"))
    except json.JSONDecodeError:
        recognisers = []
    names = tuple(str(name) for name in recognisers) if isinstance(recognisers, list) else ()
    return metadata.get("privacy_goal"), names


def _further_renders(row: dict) -> list[str]:
    """The other renderings of a row's image (CFA's sweep and variants), released beside its output."""
    try:
        listed = json.loads(row.get("cfa_renders") or "[]")
    except json.JSONDecodeError:
        return []
    return [entry["path"] for entry in listed if isinstance(entry, dict) and isinstance(entry.get("path"), str)]


def same_size(output: np.ndarray, original: np.ndarray) -> tuple[np.ndarray, bool]:
    """The output at the original's size (resized when it differs) and whether it differed."""
    if output.shape == original.shape:
        return output, False
    height, width = original.shape[:2]
    return cv2.resize(output, (width, height), interpolation=cv2.INTER_AREA), True
