"""Attribute tables in and out: estimated by a named source, stored as Parquet, read back.

The Parquet file has one row per face: ``key`` (``"<relative path>#<face index>"``, the run
manifest's join key), ``source_path``, ``face_index``, ``source`` and ``heuristic`` (so every value
says where it came from), then one float32 column per attribute (probability in [0, 1], null where
the source says nothing). Methods and the audit call :func:`estimate_attributes`; the command line
and the audit store and reload tables with :func:`write_attribute_table` / :func:`read_attribute_table`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from anonymize.attributes.sources import create_source
from anonymize.attributes.table import AttributeTable
from anonymize.errors import AnonymizeError
from anonymize.io.manifest import readable
from anonymize.io.write import atomic_write_bytes
from anonymize.faces.types import FaceCrop
from anonymize.weights import WeightsStore

FACE_COLUMNS = ("key", "source_path", "face_index", "source", "heuristic")
SOURCE_KEY, HEURISTIC_KEY = "anonymize.attributes.source", "anonymize.attributes.heuristic"


class AttributeFileError(AnonymizeError, ValueError):
    """An attribute table file that cannot be read (one line, naming the file and the cause)."""


def estimate_attributes(faces: Sequence[FaceCrop], source: str, weights: WeightsStore, device: str = "cpu",
                        options: Mapping[str, str] | None = None) -> AttributeTable:
    """The attribute table of ``faces`` (one row each, in order) from the named source."""
    return create_source(source, weights, device, options).estimate(faces)


def concat_attribute_tables(tables: Sequence[AttributeTable], source: str, heuristic: bool,
                            names: tuple[str, ...] | None = None) -> AttributeTable:
    """The rows of ``tables`` (batches from one source) one after the other; ``names`` for an empty list."""
    if not tables:
        from anonymize.attributes.table import CELEBA_ATTRIBUTES

        columns = names if names is not None else CELEBA_ATTRIBUTES
        return AttributeTable((), columns, np.zeros((0, len(columns)), np.float32), source, heuristic)
    first = tables[0]
    if any(table.names != first.names or table.source != first.source for table in tables):
        raise ValueError("attribute tables to concatenate must share their source and columns")
    return AttributeTable(tuple(key for table in tables for key in table.keys), first.names,
                          np.concatenate([table.probabilities for table in tables]), first.source, first.heuristic)


def _split_key(key: str) -> tuple[str, int | None]:
    path, sep, index = key.rpartition("#")
    if sep and index.isdigit():
        return path, int(index)
    return key, None


def attribute_arrow_table(table: AttributeTable) -> pa.Table:
    """The Parquet layout of ``table`` (see the module docstring)."""
    keys = [readable(key) for key in table.keys]  # names that are not UTF-8 as \xNN, as the manifest's source_path
    split = [_split_key(key) for key in keys]
    columns: dict[str, pa.Array] = {
        "key": pa.array(keys, pa.string()),
        "source_path": pa.array([path for path, _ in split], pa.string()),
        "face_index": pa.array([index for _, index in split], pa.int32()),
        "source": pa.array([table.source] * len(table.keys), pa.string()),
        "heuristic": pa.array([table.heuristic] * len(table.keys), pa.bool_()),
    }
    for column, name in enumerate(table.names):
        values = table.probabilities[:, column]
        columns[name] = pa.array(values, pa.float32(), mask=np.isnan(values))
    metadata = {SOURCE_KEY: table.source, HEURISTIC_KEY: "true" if table.heuristic else "false"}
    return pa.table(columns).replace_schema_metadata(metadata)  # an empty table keeps its source too


def write_attribute_table(path: Path, table: AttributeTable) -> None:
    """Write ``table`` as Parquet at ``path``, atomically (a reader sees the old file or the whole new one)."""
    sink = pa.BufferOutputStream()
    pq.write_table(attribute_arrow_table(table), sink, compression="zstd")
    atomic_write_bytes(Path(path), sink.getvalue().to_pybytes())


def read_attribute_table(path: Path) -> AttributeTable:
    """The table stored by :func:`write_attribute_table` (one source per file)."""
    path = Path(path)
    try:
        data = pq.read_table(path)
    except FileNotFoundError:
        raise AttributeFileError(f"{path}: attribute table not found") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise AttributeFileError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())})") from None
    missing = [name for name in FACE_COLUMNS if name not in data.column_names]
    if missing:
        raise AttributeFileError(f"{path}: missing column(s) {', '.join(missing)}: not an attribute table")
    sources = set(data.column("source").to_pylist())
    if len(sources) > 1:
        raise AttributeFileError(f"{path}: rows from several sources ({', '.join(sorted(map(str, sources)))}); one per file")
    names = tuple(name for name in data.column_names if name not in FACE_COLUMNS)
    values = np.stack([data.column(name).to_numpy(zero_copy_only=False).astype(np.float32) for name in names], axis=1) \
        if names else np.zeros((data.num_rows, 0), np.float32)
    metadata = {key.decode(): value.decode() for key, value in (data.schema.metadata or {}).items()}
    source = next(iter(sources)) if sources else metadata.get(SOURCE_KEY, "")
    heuristic = bool(data.column("heuristic")[0].as_py()) if data.num_rows else metadata.get(HEURISTIC_KEY) == "true"
    try:
        return AttributeTable(tuple(data.column("key").to_pylist()), names, values, source, heuristic)
    except ValueError as exc:
        raise AttributeFileError(f"{path}: {exc}") from None
