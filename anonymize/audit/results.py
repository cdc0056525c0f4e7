"""The audit's files: one Parquet row per audited face (or per image without one) and a summary JSON.

Both are written atomically next to each other, by default in ``<anonymized>-audit/`` beside the
anonymized folder (or in the ``--report`` folder), never inside the original or anonymized folder:
the audit must not change what it audits, nor leave files in the release.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from anonymize.io.manifest import readable, readable_values
from anonymize.io.write import atomic_write_bytes

AUDIT_PARQUET_NAME = "audit.parquet"
AUDIT_SUMMARY_NAME = "audit-summary.json"

ROW_SCHEMA = pa.schema(
    [
        ("source_path", pa.string()),  # relative to the original folder; null for an unpaired output
        ("output_path", pa.string()),  # relative to the anonymized folder
        ("identity", pa.string()),  # the source's identity folder (its first face only), when identities are known
        ("face_index", pa.int32()),  # null: an image row (no face found in the original, or an error)
        ("box", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1 in the original
        ("found_by", pa.string()),  # audit | manifest | both | whole-image
        ("sampled", pa.bool_()),  # audited face by face (false: --sample left it to the file checks)
        ("face_status", pa.string()),  # face | possible face (one detector only, not confirmed: kept out of re-identification)
        ("confirmed_by", pa.string()),  # the second opinion: "retinaface+mtcnn", "close-up: dlib-hog", ...
        ("det_score", pa.float32()),
        ("detected_in_output", pa.bool_()),  # a face is still found at this place in the output
        ("output_iou", pa.float32()),
        ("identity_distance", pa.float32()),  # dlib distance, anonymized face vs its own original
        ("reidentified", pa.bool_()),  # identity_distance < threshold (verification); null for a possible face
        ("nearest_original", pa.string()),  # "<source_path>#<face_index>" of the nearest original face
        ("nearest_distance", pa.float32()),
        ("rank1_hit", pa.bool_()),  # nearest original is its own (or the same identity)
        ("region_change", pa.float32()),  # mean |original - output| in the face's central part
        ("missed", pa.bool_()),  # region left unchanged
        ("mesh_score", pa.float32()),  # a possible face left unchanged: the face mesh's presence score (< 0.5: ruled out)
        ("detected_by", pa.list_(pa.string())),  # output detectors (default thresholds) still finding a face at this place
        ("psnr_face_db", pa.float32()),  # PSNR inside the face box (CFA-Net Table 3)
        ("ssim_face", pa.float32()),  # SSIM inside the face box
        ("ms_ssim_face", pa.float32()),  # MS-SSIM (Wang et al. 2003) of the face box; null when the box is too small
        ("lpips_face", pa.float32()),  # LPIPS (AlexNet) of the face-box crops; null when unavailable
        ("facenet_casia_distance", pa.float32()),  # FaceNet (CASIA-WebFace) distance to its original; null when unavailable
        ("facenet_vggface2_distance", pa.float32()),  # FaceNet (VGGFace2) distance to its original
        ("faceres_distance", pa.float32()),  # faceres: L2 distance of unit features to its original; null when unavailable
        ("mobileface_distance", pa.float32()),  # mobileface: likewise
        ("psnr_outside_db", pa.float32()),  # the image's PSNR outside every face
        ("ssim_outside", pa.float32()),
        ("metadata_leak", pa.list_(pa.string())),  # kinds of metadata beyond ICC in the output
        ("metadata_detail", pa.string()),
        ("identical_to_source", pa.bool_()),  # the output file is a byte-for-byte copy of its source
        ("size_mismatch", pa.bool_()),  # output and source differ in size (compared after resizing)
        ("error", pa.string()),
    ]
)


def _text(value: Any) -> Any:
    """File names that are not UTF-8 (surrogate escapes) as readable text, as the run's manifest writes them."""
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, list):
        return [_text(item) for item in value]
    return value


def rows_table(rows: Sequence[Mapping[str, Any]], metadata: Mapping[str, str] | None = None) -> pa.Table:
    columns = {name: [_text(row.get(name)) for row in rows] for name in ROW_SCHEMA.names}
    table = pa.Table.from_pydict(columns, schema=ROW_SCHEMA)
    if metadata:
        table = table.replace_schema_metadata({key.encode(): value.encode() for key, value in metadata.items()})
    return table


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]], metadata: Mapping[str, str] | None = None) -> Path:
    sink = pa.BufferOutputStream()
    pq.write_table(rows_table(rows, metadata), sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    text = json.dumps(readable_values(summary), indent=2, sort_keys=False)  # no lone surrogate from a non-UTF-8 name
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def default_audit_dir(anonymized_dir: Path) -> Path:
    """``<anonymized>-audit`` beside the anonymized folder."""
    resolved = Path(anonymized_dir).resolve()
    return resolved.parent / f"{resolved.name}-audit"
