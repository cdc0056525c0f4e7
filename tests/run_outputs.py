"""What two runs must agree on: the decoded pixels of every output and the manifest rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anonymize.io.decode import decode_image
from anonymize.io.manifest import read_rows, row_identity

VARYING_COLUMNS = ("run_id", "seconds")  # differ between any two runs, by design


def manifest_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of ``out``'s manifest without the columns that differ between runs, in identity order."""
    rows = read_rows(out / "manifest.parquet")
    return [{key: value for key, value in row.items() if key not in VARYING_COLUMNS}
            for row in sorted(rows, key=row_identity)]


def identities(out: Path) -> list[tuple[bytes, int]]:
    return [row_identity(row) for row in read_rows(out / "manifest.parquet")]


def decoded_outputs(out: Path) -> dict[str, np.ndarray]:
    """Every image written under ``out`` (the work folder and the manifest aside), decoded."""
    return {str(path.relative_to(out)): decode_image(path).rgb for path in sorted(out.rglob("*"))
            if path.is_file() and ".anonymize" not in path.parts and path.suffix != ".parquet"}


def assert_same_run(first: Path, second: Path) -> None:
    """Same outputs (pixel for pixel) and same rows (timings and run ids aside)."""
    a, b = decoded_outputs(first), decoded_outputs(second)
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert manifest_rows(first) == manifest_rows(second)
