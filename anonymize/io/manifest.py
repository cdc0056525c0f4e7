"""The Parquet manifest: one row per face, plus one per image without a face or with an error.

Rows are written batch by batch as small Parquet parts under ``<out>/.anonymize/parts`` (each
part written atomically), so a killed run loses at most the batch in flight; at the end the parts
and the rows carried over from earlier runs are merged into one ``manifest.parquet``. A re-run
reads both to decide what is already done.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from anonymize.io.write import atomic_write_bytes

MANIFEST_NAME = "manifest.parquet"
WORK_DIR_NAME = ".anonymize"

STATUS_DONE = "done"  # face anonymized and written
STATUS_NO_FACE = "no_face"  # image without a detected face (copied or skipped as asked)
STATUS_ERROR = "error"  # the image could not be processed; see the error column
FINISHED_STATUSES = (STATUS_DONE, STATUS_NO_FACE)

# Metric columns that methods fill (null where a method has nothing to say).
METRIC_COLUMNS: dict[str, pa.DataType] = {
    "identity_distance_dlib": pa.float32(),  # dlib 128-d distance, original face vs anonymized face
    "id_cos_before": pa.float32(),  # ArcFace cosine of the starting image (inversion of the paired fake) to the original
    "id_cos_after": pa.float32(),  # ArcFace cosine of the anonymized face to the original
    "id_margin_gap": pa.float32(),  # |cos - m| at the end
    "attr_loss_start": pa.float32(),
    "attr_loss_end": pa.float32(),
    "fake_index": pa.int64(),
    "pairing_similarity": pa.float32(),
    "steps": pa.int32(),
    "seed": pa.int64(),
    "latent_path": pa.string(),
}

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("source_path", pa.string()),
        ("output_path", pa.string()),
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
        *METRIC_COLUMNS.items(),
        ("extra_metrics", pa.string()),
    ]
)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def normalise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Fill every schema column; metrics outside the fixed columns go to ``extra_metrics`` as JSON."""
    known = set(SCHEMA.names)
    extra = {key: value for key, value in row.items() if key not in known}
    out = {name: row.get(name) for name in SCHEMA.names}
    if extra:
        out["extra_metrics"] = json.dumps(extra, sort_keys=True, default=float)
    return out


def rows_to_table(rows: Iterable[Mapping[str, Any]], metadata: Mapping[str, str] | None = None) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for row in rows:
        for name, value in normalise_row(row).items():
            columns[name].append(value)
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    if metadata:
        table = table.replace_schema_metadata({key.encode(): value.encode() for key, value in metadata.items()})
    return table


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
    _sequence: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.manifest_path = self.manifest_path or self.out_dir / MANIFEST_NAME
        self.parts_dir = self.out_dir / WORK_DIR_NAME / "parts"

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self._sequence += 1
        path = self.parts_dir / f"{self.run_id}-{self._sequence:06d}.parquet"
        atomic_write_bytes(path, _parquet_bytes(rows_to_table(rows, self.metadata)))

    def finalise(self, carried_rows: list[dict[str, Any]]) -> Path:
        """Merge rows carried from earlier runs with this run's parts into ``manifest.parquet``."""
        return consolidate(self.out_dir, self.manifest_path, self.metadata, carried_rows)


def _part_paths(out_dir: Path) -> list[Path]:
    parts_dir = out_dir / WORK_DIR_NAME / "parts"
    if not parts_dir.is_dir():
        return []
    return sorted(parts_dir.glob("*.parquet"), key=lambda p: (p.stat().st_mtime_ns, p.name))


def consolidate(out_dir: Path, manifest_path: Path, metadata: Mapping[str, str] | None,
                base_rows: list[dict[str, Any]]) -> Path:
    """Write ``base_rows`` followed by every part's rows (latest run per source wins), then drop the parts."""
    parts = _part_paths(out_dir)
    rows = list(base_rows)
    for part in parts:
        try:
            rows.extend(pq.read_table(part).to_pylist())
        except (pa.ArrowInvalid, OSError):
            continue  # a part cut short by a crash holds nothing we can trust
    rows = latest_rows_per_source(rows)
    rows.sort(key=lambda r: (r["source_path"], r["face_index"] if r["face_index"] is not None else -1))
    atomic_write_bytes(manifest_path, _parquet_bytes(rows_to_table(rows, metadata)))
    for part in parts:
        part.unlink()
    if parts:
        try:
            parts[0].parent.rmdir()
        except OSError:
            pass  # another writer's part appeared meanwhile
    return manifest_path


def latest_rows_per_source(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep, for each source image, only the rows of the last run that processed it (rows are in time order)."""
    last_run: dict[str, str] = {}
    for row in rows:
        last_run[row["source_path"]] = row["run_id"]
    return [row for row in rows if last_run[row["source_path"]] == row["run_id"]]


def recover_previous_rows(out_dir: Path, manifest_path: Path | None = None) -> list[dict[str, Any]]:
    """Rows of earlier runs into this output; parts left by an interrupted run are merged in first."""
    manifest_path = manifest_path or out_dir / MANIFEST_NAME
    previous: list[dict[str, Any]] = []
    metadata: dict[str, str] | None = None
    if manifest_path.is_file():
        table, metadata = read_manifest(manifest_path)
        previous = table.to_pylist()
    if _part_paths(out_dir):
        consolidate(out_dir, manifest_path, metadata, previous)
        previous = read_manifest(manifest_path)[0].to_pylist()
    return previous


def read_manifest(path: Path) -> tuple[pa.Table, dict[str, str]]:
    table = pq.read_table(path)
    metadata = {key.decode(): value.decode() for key, value in (table.schema.metadata or {}).items()}
    return table, metadata
