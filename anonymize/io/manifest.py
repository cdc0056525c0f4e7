"""The Parquet manifest: one row per face, plus one per image without a face or with an error,
and one per file or folder the walk met and did not process.

Rows are written batch by batch as small Parquet parts under ``<out>/.anonymize/parts`` (each
part written atomically, named so that their names sort in time order), so a killed run loses at
most the batch in flight; at the end the manifest and the parts are merged into one
``manifest.parquet``. The merge is idempotent: a row is identified by (source path, face index),
the newest run wins for each source, so a merge killed at any step and done again gives the same
manifest, never duplicates.

File names are bytes on POSIX and need not be UTF-8. ``source_path`` holds a readable form (bytes
that are not UTF-8 shown as ``\\xNN``) and ``source_path_bytes`` the exact name, which is what
identifies a row; :func:`read_rows` gives the exact names back as Python strings.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from anonymize.io.outdir import WORK_DIR_NAME
from anonymize.io.store import StoreError, StorePath
from anonymize.io.write import atomic_write_bytes

MANIFEST_NAME = "manifest.parquet"

STATUS_DONE = "done"  # face anonymized and written
STATUS_NO_FACE = "no_face"  # image without a detected face (copied or skipped as asked)
STATUS_ERROR = "error"  # the image (or folder) could not be processed; see the error column
STATUS_SKIPPED = "skipped"  # met by the walk and deliberately not processed; the note says why
FINISHED_STATUSES = (STATUS_DONE, STATUS_NO_FACE)

# The columns of every manifest; a run adds the metric columns its method and finishing steps declare
# (anonymize.methods.base.Method.metric_columns, anonymize.steps), between these and the last two.
CORE_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("run_id", pa.string()),
    ("source_path", pa.string()),
    ("source_path_bytes", pa.binary()),
    ("output_path", pa.string()),
    ("output_sha256", pa.string()),  # sha256 of the output's bytes as written: a resume re-checks it
    ("source_sha256", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("face_index", pa.int32()),
    ("box", pa.list_(pa.float32(), 4)),
    ("det_score", pa.float32()),
    ("landmarks", pa.list_(pa.float32())),
    ("method", pa.string()),
    ("method_params", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("seconds", pa.float64()),
)
TRAILING_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("extra_metrics", pa.string()),  # metrics no column was declared for, as JSON
    ("note", pa.string()),  # why a file was skipped, or a conversion the output could not avoid
)
CORE_SCHEMA = pa.schema([*CORE_COLUMNS, *TRAILING_COLUMNS])


def manifest_schema(metric_columns: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    """The core columns with ``metric_columns`` (name -> Arrow type) between them and the trailing two."""
    core = {name for name, _ in (*CORE_COLUMNS, *TRAILING_COLUMNS)}
    clashes = sorted(core & set(metric_columns or {}))
    if clashes:
        raise ValueError(f"metric columns {', '.join(clashes)} clash with the manifest's own columns")
    return pa.schema([*CORE_COLUMNS, *(metric_columns or {}).items(), *TRAILING_COLUMNS])


_TEXT_COLUMNS = ("source_path", "output_path", "error", "note")


INPUTS_KEY = "inputs"  # metadata: every input folder whose runs have rows in this manifest (input_key), as JSON


def input_key(location: Path | StorePath) -> str:
    """How the manifest names an input folder: its real path (a URI without its query), readable."""
    if isinstance(location, StorePath):
        return str(location)
    return readable(os.fsdecode(os.path.realpath(location)))


def recorded_inputs(metadata: Mapping[str, str]) -> list[str]:
    """The input folders of the runs in a manifest (or part) with this metadata; one written before
    :data:`INPUTS_KEY` existed gives its last run's ``input_dir`` (resolved here), or nothing."""
    try:
        if INPUTS_KEY in metadata:
            return [str(item) for item in json.loads(metadata[INPUTS_KEY])]
        given = json.loads(metadata["arguments"]).get("input_dir")
    except (KeyError, ValueError, TypeError, AttributeError):
        return []
    if not isinstance(given, str):
        return []
    return [given if "://" in given else input_key(Path(given))]


def _with_inputs(metadata: Mapping[str, str] | None, inputs: list[str]) -> Mapping[str, str] | None:
    if metadata is None or not inputs:
        return metadata
    return {**metadata, INPUTS_KEY: json.dumps(list(dict.fromkeys(inputs)))}


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def readable(text: str) -> str:
    """``text`` as valid UTF-8: undecodable file-name bytes (surrogate escapes) shown as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def readable_values(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, scalars) with every string, key included, made :func:`readable`;
    any other object becomes its readable ``str`` (as ``json.dumps(default=str)`` would show it)."""
    if isinstance(value, str):
        return readable(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {readable(str(key)): readable_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [readable_values(item) for item in value]
    return readable(str(value))


def normalise_row(row: Mapping[str, Any], schema: pa.Schema = CORE_SCHEMA) -> dict[str, Any]:
    """Fill every schema column; metrics outside its columns go to ``extra_metrics`` as JSON."""
    known = set(schema.names)
    extra = {key: value for key, value in row.items() if key not in known}
    out = {name: row.get(name) for name in schema.names}
    if out["source_path"] is not None and out["source_path_bytes"] is None:
        out["source_path_bytes"] = os.fsencode(out["source_path"])
    for name in _TEXT_COLUMNS:
        if isinstance(out[name], str):
            out[name] = readable(out[name])
    if extra:
        out["extra_metrics"] = json.dumps(extra, sort_keys=True, default=float)
    return out


def rows_to_table(rows: Iterable[Mapping[str, Any]], metadata: Mapping[str, str] | None = None,
                  schema: pa.Schema = CORE_SCHEMA) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for row in rows:
        for name, value in normalise_row(row, schema).items():
            columns[name].append(value)
    table = pa.Table.from_pydict(columns, schema=schema)
    stored = {key: value for key, value in (metadata or {}).items() if key != PANDAS_METADATA_KEY}
    stored[PANDAS_METADATA_KEY] = pandas_metadata(schema)  # integer columns stay integers in pandas
    return table.replace_schema_metadata({key.encode(): value.encode() for key, value in stored.items()})


PANDAS_METADATA_KEY = "pandas"
_NULLABLE_INTEGERS = {pa.int8(): "Int8", pa.int16(): "Int16", pa.int32(): "Int32", pa.int64(): "Int64"}


def pandas_metadata(schema: pa.Schema) -> str:
    """pandas' own schema note mapping every integer column to a nullable Int dtype.

    Integer columns have nulls (``face_index`` of a no-face or error row, ``width`` of an unreadable
    file); without this note ``pd.read_parquet`` turns them into float64 (``face_index`` 0.0, 1.0, NaN).
    Only those columns are listed; pyarrow reads the rest as usual and ignores the note itself.
    """
    columns = [{"name": field.name, "field_name": field.name, "pandas_type": str(field.type),
                "numpy_type": _NULLABLE_INTEGERS[field.type], "metadata": None}
               for field in schema if field.type in _NULLABLE_INTEGERS]
    return json.dumps({"index_columns": [], "column_indexes": [], "columns": columns,
                       "creator": {"library": "anonymize"}}, sort_keys=True)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


@dataclass
class ManifestWriter:
    """Appends rows as atomic Parquet parts and merges everything into the final manifest."""

    out_dir: Path
    run_id: str
    metadata: dict[str, str]
    manifest_path: Path | None = None
    tag: str = ""  # tells apart the parts of writers of one run in several processes (Ray shards)
    schema: pa.Schema = CORE_SCHEMA  # the run's: core columns and its method's and steps' metric columns
    drop_sources: set[bytes] = field(default_factory=set)  # sources gone from the input: their rows leave the manifest
    _sequence: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.manifest_path = self.manifest_path or self.out_dir / MANIFEST_NAME
        self.parts_dir = self.out_dir / WORK_DIR_NAME / "parts"
        self._stamp = time.time_ns()  # part names sort by run start, then by sequence: time order

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self._sequence += 1
        tag = f"-{self.tag}" if self.tag else ""
        path = self.parts_dir / f"{self._stamp:020d}-{self.run_id}{tag}-{self._sequence:06d}.parquet"
        atomic_write_bytes(path, _parquet_bytes(rows_to_table(rows, self.metadata, self.schema)), root=self.out_dir)

    def shard(self, tag: str) -> ManifestWriter:
        """A writer of the same run for another process (its own part names)."""
        return ManifestWriter(self.out_dir, self.run_id, self.metadata, self.manifest_path, tag=tag, schema=self.schema)

    def finalise(self) -> Path:
        """Merge the manifest of earlier runs with this run's parts into ``manifest.parquet``."""
        return consolidate(self.out_dir, self.manifest_path, self.metadata, self.schema, self.drop_sources)


def _part_paths(out_dir: Path) -> list[Path]:
    parts_dir = out_dir / WORK_DIR_NAME / "parts"
    if isinstance(parts_dir, StorePath):
        return [parts_dir / relpath for relpath, info in parts_dir.files(recursive=False)
                if info.is_file and relpath.suffix == ".parquet" and not relpath.name.startswith(".")]
    if parts_dir.is_symlink() or not parts_dir.is_dir():
        return []
    return sorted(path for path in parts_dir.glob("*.parquet") if not path.name.startswith("."))


class UnreadablePart(OSError):
    """A manifest part could not be read (the disk or the store failed, not the part): the merge stopped
    before changing anything, so the manifest and every part stay as they were for the next merge."""


def consolidate(out_dir: Path, manifest_path: Path, metadata: Mapping[str, str] | None = None,
                schema: pa.Schema | None = None, drop_sources: set[bytes] | frozenset[bytes] = frozenset()) -> Path:
    """Merge ``manifest_path`` and every part into ``manifest_path``, then drop the parts.

    Idempotent at every step: until the new manifest is renamed into place the old one and all the
    parts are intact; afterwards the parts still present only repeat rows the manifest has. A part
    that cannot be read (an I/O or store error) stops the merge before anything is written:
    :class:`UnreadablePart`, and the next merge reads it again, in its place in time order. Rows of
    the sources in ``drop_sources`` (exact names; sources gone from the input) are left out.
    """
    parts = _part_paths(out_dir)
    rows: list[dict[str, Any]] = []
    schemas: list[pa.Schema] = []
    inputs: list[str] = []
    if manifest_path.is_file():
        table, old_metadata = read_manifest(manifest_path)
        rows = table.to_pylist()
        schemas.append(table.schema)
        inputs += recorded_inputs(old_metadata)
        metadata = metadata if metadata is not None else old_metadata
    merged: list[Path] = []
    for part in parts:
        try:
            table = _read_table(part)
        except FileNotFoundError:
            continue  # merged and removed already
        except pa.ArrowInvalid:
            merged.append(part)  # a part cut short by a crash holds nothing we can trust
            continue
        except OSError as exc:
            if exc.errno is None and not isinstance(exc, StoreError):  # pyarrow could not parse it: corrupt
                merged.append(part)
                continue
            # the disk or the store failed, not the part: merge nothing, keep everything for the next merge
            cause = exc.strerror or str(exc) or type(exc).__name__
            raise UnreadablePart(exc.errno, f"cannot read the manifest part {WORK_DIR_NAME}/parts/{part.name} ({cause})", str(part)) from None
        merged.append(part)
        rows.extend(table.to_pylist())
        schemas.append(table.schema)
        part_metadata = {key.decode(): value.decode() for key, value in (table.schema.metadata or {}).items()
                         if key.decode() != PANDAS_METADATA_KEY}
        inputs += recorded_inputs(part_metadata)
        if metadata is None:
            metadata = part_metadata
    if metadata is not None:
        inputs += recorded_inputs(metadata)
        metadata = _with_inputs(metadata, inputs)
    rows = merge_rows(rows)
    if drop_sources:
        rows = [row for row in rows if row_identity(row)[0] not in drop_sources]
    inside = out_dir == manifest_path.parent or out_dir in manifest_path.parents
    if schema is None:  # merging what a killed run left: every column any of its files had
        schema = _union(schemas)
    atomic_write_bytes(manifest_path, _parquet_bytes(rows_to_table(rows, metadata, schema)), root=out_dir if inside else None)
    for part in merged:
        part.unlink(missing_ok=True)
    if parts:
        try:
            parts[0].parent.rmdir()
        except OSError:
            pass
    return manifest_path


def earlier_rows_unmerged(out_dir: Path, manifest_path: Path | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of earlier runs (manifest and parts merged in memory, exact names) and their input
    folders (:func:`recorded_inputs`), without writing anything; whatever cannot be read is left out
    (--overwrite reads them only to find the outputs of gone sources before forgetting them)."""
    manifest_path = manifest_path or out_dir / MANIFEST_NAME
    rows: list[dict[str, Any]] = []
    inputs: list[str] = []
    unread = False
    for path in ([manifest_path] if manifest_path.is_file() else []) + _part_paths(out_dir):
        try:
            table, metadata = read_manifest(path)
        except (pa.ArrowException, OSError, ValueError):
            unread = True
            continue
        rows.extend(table.to_pylist())
        inputs += recorded_inputs(metadata)
    if unread:  # a file left out may hold runs over another input: no input list to trust
        inputs = []
    try:
        return _exact_names(merge_rows(rows)), list(dict.fromkeys(inputs))
    except (KeyError, TypeError, ValueError):  # Parquet, but not a manifest
        return [], []


def _union(schemas: list[pa.Schema]) -> pa.Schema:
    """The columns of ``schemas`` in a manifest's order (core, metrics as first met, trailing)."""
    core = {name for name, _ in (*CORE_COLUMNS, *TRAILING_COLUMNS)}
    metrics: dict[str, pa.DataType] = {}
    for schema in schemas:
        for column in schema:
            if column.name not in core:
                metrics.setdefault(column.name, column.type)
    return manifest_schema(metrics)


def row_identity(row: Mapping[str, Any]) -> tuple[bytes, int]:
    """(exact source name, face index): what makes a manifest row unique."""
    raw = row.get("source_path_bytes")
    name = bytes(raw) if raw is not None else os.fsencode(row["source_path"])
    index = row.get("face_index")
    return name, -1 if index is None else int(index)


def merge_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in time order -> per source only the newest run's rows, one per face index, sorted.

    A source redone by a later run loses all its older rows (it may now have fewer faces); a row
    seen twice (a part merged once already) is kept once.
    """
    last_run: dict[bytes, str] = {}
    for row in rows:
        last_run[row_identity(row)[0]] = row["run_id"]
    kept: dict[tuple[bytes, int], dict[str, Any]] = {}
    for row in rows:
        identity = row_identity(row)
        if last_run[identity[0]] == row["run_id"]:
            kept[identity] = row
    return [kept[identity] for identity in sorted(kept)]


def latest_rows_per_source(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kept for callers of the earlier name: see :func:`merge_rows`."""
    return merge_rows(rows)


def recover_previous_rows(out_dir: Path, manifest_path: Path | None = None) -> list[dict[str, Any]]:
    """Rows of earlier runs into this output (exact names); parts left by an interrupted run are merged in first."""
    manifest_path = manifest_path or out_dir / MANIFEST_NAME
    if _part_paths(out_dir):
        consolidate(out_dir, manifest_path)
    return read_rows(manifest_path) if manifest_path.is_file() else []


def _read_table(path: Path | StorePath) -> pa.Table:
    if isinstance(path, StorePath):
        return pq.read_table(pa.BufferReader(path.read_bytes()))
    return pq.read_table(path)


def manifest_inputs(path: Path | StorePath) -> list[str]:
    """:func:`recorded_inputs` of the manifest at ``path`` (its schema only, locally); nothing if unreadable."""
    try:
        if isinstance(path, StorePath):
            schema = pq.read_schema(pa.BufferReader(path.read_bytes()))
        else:
            schema = pq.read_schema(path)
    except (pa.ArrowException, OSError, ValueError):
        return []
    return recorded_inputs({key.decode(): value.decode() for key, value in (schema.metadata or {}).items()})


def read_manifest(path: Path) -> tuple[pa.Table, dict[str, str]]:
    """The table and the run's metadata (pandas' own note, derived from the schema, left out)."""
    table = _read_table(path)
    metadata = {key.decode(): value.decode() for key, value in (table.schema.metadata or {}).items()
                if key.decode() != PANDAS_METADATA_KEY}
    return table, metadata


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The manifest's rows with ``source_path`` (and the mirrored ``output_path``) as exact file names."""
    return _exact_names(read_manifest(path)[0].to_pylist())


def _exact_names(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        raw = row.get("source_path_bytes")
        if raw is None:
            continue
        exact = os.fsdecode(bytes(raw))
        if row.get("output_path") is not None and row["output_path"] == row["source_path"]:
            row["output_path"] = exact
        row["source_path"] = exact
    return rows
