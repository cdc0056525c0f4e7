"""The ``labels`` source: the user's own attribute labels, the exact route (option ``labels=FILE``).

Three formats, told apart by the file's name and first line:

- CelebA's ``list_attr_celeba.txt``: a line with the number of rows, a line of attribute names,
  then one row per image: its file name and one ``1`` / ``-1`` per attribute (whitespace-separated);
- CSV (``.csv``) or Parquet (``.parquet``, ``.pq``): a file-name column (``image_id``, ``file``,
  ``filename``, ``image``, ``path``, ``source_path`` or ``key``) and one column per CelebA attribute
  (any subset; the others are unknown, NaN), values ``1``/``-1``, ``1``/``0`` or ``true``/``false``
  (an empty cell is unknown).

A face ``"<relative path>#<index>"`` takes the row named by its key, else by its image's relative
path, else by the image's file name when exactly one row has that name (the file name alone is
ambiguous when several rows, or several images of different folders, share it: an error asking
for rows named by relative path). A row naming an image, not a face, labels that image's only face;
an image with several faces needs one row per face key. A face with no row is an error naming it, unless ``missing=nan``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from anonymize.attributes.table import CELEBA_ATTRIBUTES, AttributeTable
from anonymize.errors import AnonymizeError
from anonymize.faces.types import FaceCrop
from anonymize.weights import WeightsStore

NAME_COLUMNS = ("image_id", "file", "filename", "image", "path", "source_path", "key")
_TRUE = {"1", "+1", "1.0", "+1.0", "true", "yes"}
_FALSE = {"-1", "0", "-1.0", "0.0", "false", "no"}
_UNKNOWN = {"", "nan", "none", "null", "na"}


class LabelsError(AnonymizeError, ValueError):
    """A labels file that cannot be read or does not cover the faces (one line, naming the file)."""


@dataclass(frozen=True)
class Labels:
    """Rows of a labels file: names as written (keys, relative paths or file names) and their values."""

    path: Path
    names: tuple[str, ...]
    attributes: tuple[str, ...]
    values: np.ndarray  # [rows, attributes] float32: 1, 0 or NaN


def read_labels(path: Path) -> Labels:
    """Read a labels file in any of the three formats (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        names, columns = _read_parquet(path)
    elif suffix == ".csv":
        names, columns = _read_csv(path)
    else:
        names, columns = _read_celeba(path)
    return _labels(path, names, columns)


def _read_celeba(path: Path) -> tuple[list[str], dict[str, list[object]]]:
    try:
        lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not a text file (labels: CelebA's list_attr_celeba.txt, .csv or .parquet)") from None
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise LabelsError(f"{path}: not in list_attr_celeba.txt format (first line: the number of rows; "
                          "use a .csv or .parquet name for a table)")
    header, rows = lines[1], lines[2:]
    if int(lines[0][0]) != len(rows):
        raise LabelsError(f"{path}: first line announces {lines[0][0]} rows, the file holds {len(rows)}")
    for number, row in enumerate(rows, start=3):
        if len(row) != len(header) + 1:
            raise LabelsError(f"{path}: line {number} has {len(row) - 1} values for {len(header)} attributes")
    columns = {name: [row[index + 1] for row in rows] for index, name in enumerate(header)}
    return [row[0] for row in rows], columns


def _read_csv(path: Path) -> tuple[list[str], dict[str, list[object]]]:
    import pyarrow as pa
    from pyarrow import csv

    try:
        table = csv.read_csv(path, convert_options=csv.ConvertOptions(column_types={}, strings_can_be_null=False,
                                                                      auto_dict_encode=False))
        table = table.cast(pa.schema([pa.field(name, pa.string()) for name in table.column_names]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise LabelsError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    return _table_columns(path, table)


def _read_parquet(path: Path) -> tuple[list[str], dict[str, list[object]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise LabelsError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())})") from None
    return _table_columns(path, table)


def _table_columns(path: Path, table: object) -> tuple[list[str], dict[str, list[object]]]:
    columns = {name: table.column(name).to_pylist() for name in table.column_names}  # type: ignore[attr-defined]
    lowered = {name.lower(): name for name in columns}
    name_column = next((lowered[name] for name in NAME_COLUMNS if name in lowered), None)
    if name_column is None:
        raise LabelsError(f"{path}: missing file-name column (one of {', '.join(NAME_COLUMNS)})")
    names = [str(value) if value is not None else "" for value in columns.pop(name_column)]
    return names, columns


def _labels(path: Path, names: list[str], columns: dict[str, list[object]]) -> Labels:
    unknown = [name for name in columns if name not in CELEBA_ATTRIBUTES]
    if unknown:
        raise LabelsError(f"{path}: unknown attribute column(s) {', '.join(unknown[:5])} "
                          "(expected CelebA's 40 names, e.g. Smiling, Mouth_Slightly_Open)")
    if not columns:
        raise LabelsError(f"{path}: missing attribute columns (none of CelebA's 40 attributes)")
    if any(not name for name in names):
        raise LabelsError(f"{path}: row {names.index('') + 1} has an empty file name")
    duplicates = [name for name, count in Counter(names).items() if count > 1]
    if duplicates:
        raise LabelsError(f"{path}: {duplicates[0]} is labelled twice")
    attributes = tuple(name for name in CELEBA_ATTRIBUTES if name in columns)
    values = np.stack([_column_values(path, names, attribute, columns[attribute]) for attribute in attributes], axis=1)
    return Labels(path, tuple(names), attributes, values)


def _column_values(path: Path, names: list[str], attribute: str, column: list[object]) -> np.ndarray:
    """One attribute column as float32: 1 present, 0 absent, NaN unknown; a bad cell is an error naming it."""
    text = np.char.lower(np.char.strip(np.array(["" if value is None else str(value) for value in column], dtype=str)))
    present, absent = np.isin(text, list(_TRUE)), np.isin(text, list(_FALSE))
    bad = ~(present | absent | np.isin(text, list(_UNKNOWN)))
    if bad.any():
        row = int(np.argmax(bad))
        raise LabelsError(f"{path}: bad value {column[row]!r} for {attribute} of {names[row]} "
                          "(expected 1/-1, 1/0 or true/false)")
    values = np.full(len(column), np.nan, dtype=np.float32)
    values[present], values[absent] = 1.0, 0.0
    return values


def match_faces(labels: Labels, keys: Sequence[str], missing_ok: bool = False,
                claimed: dict[int, str] | None = None) -> list[int | None]:
    """Each face key's row in ``labels`` (None when it has none and ``missing_ok``); see the module docstring.

    ``claimed`` (row -> image) carries the file-name matches of earlier batches, so an ambiguity
    between two batches is caught too. An image's faces must come in one call."""
    rows = {name: index for index, name in enumerate(labels.names)}
    by_file: dict[str, list[int]] = {}
    for index, name in enumerate(labels.names):
        if "#" not in name:
            by_file.setdefault(PurePosixPath(name).name, []).append(index)
    faces_per_image: dict[str, int] = {}
    for key in keys:
        image = key.rpartition("#")[0] or key
        faces_per_image[image] = faces_per_image.get(image, 0) + 1
    claimed = {} if claimed is None else claimed  # row -> the image a file-name match gave it to
    matched: list[int | None] = []
    unmatched: list[str] = []
    for key in keys:
        image = key.rpartition("#")[0] or key
        row = rows.get(key)
        if row is None:
            row = rows.get(image)
            if row is None:
                candidates = by_file.get(PurePosixPath(image).name, [])
                if len(candidates) > 1:
                    raise LabelsError(f"{labels.path}: file name {PurePosixPath(image).name} is ambiguous for {image} "
                                      f"({len(candidates)} rows have it): name the rows by relative path")
                row = candidates[0] if candidates else None
                if row is not None and claimed.setdefault(row, image) != image:
                    raise LabelsError(f"{labels.path}: file name {PurePosixPath(image).name} is ambiguous: its one row "
                                      f"would label both {claimed[row]} and {image}; name the rows by relative path")
            if row is not None and faces_per_image[image] > 1:
                raise LabelsError(f"{labels.path}: {image} has {faces_per_image[image]} faces but one row; "
                                  f"label each face by its key ({image}#0, {image}#1, ...)")
        if row is None:
            unmatched.append(key)
        matched.append(row)
    if unmatched and not missing_ok:
        more = f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else ""
        raise LabelsError(f"{labels.path}: unknown file: no row for {', '.join(unmatched[:3])}{more} "
                          "(pass -p missing=nan to leave them unknown)")
    return matched


class LabelsSource:
    """Attributes read from a labels file: exact where the labels are."""

    name = "labels"
    heuristic = False

    def __init__(self, weights: WeightsStore | None = None, device: str = "cpu", options: Mapping[str, str] | None = None) -> None:
        options = dict(options or {})
        if "labels" not in options:
            raise LabelsError("attribute source labels needs its file: -p labels=FILE (or --labels FILE)")
        missing = options.pop("missing", "error")
        if missing not in ("error", "nan"):
            raise LabelsError(f"attribute source labels: missing={missing!r}: expected error or nan")
        path = Path(options.pop("labels"))
        if options:
            raise LabelsError(f"attribute source labels: unknown option(s) {', '.join(sorted(options))} (known: labels, missing)")
        self.labels = read_labels(path)
        self.missing_ok = missing == "nan"
        self.claimed: dict[int, str] = {}  # rows matched by file name so far (see match_faces)

    def estimate(self, faces: Sequence[FaceCrop]) -> AttributeTable:
        keys = tuple(face.key for face in faces)
        return self.table(keys)

    def table(self, keys: Sequence[str]) -> AttributeTable:
        """The labels of the faces ``keys`` (no pixels needed)."""
        values = np.full((len(keys), len(CELEBA_ATTRIBUTES)), np.nan, dtype=np.float32)
        columns = [CELEBA_ATTRIBUTES.index(name) for name in self.labels.attributes]
        for index, row in enumerate(match_faces(self.labels, keys, self.missing_ok, self.claimed)):
            if row is not None:
                values[index, columns] = self.labels.values[row]
        return AttributeTable(tuple(keys), CELEBA_ATTRIBUTES, values, self.name, self.heuristic)
