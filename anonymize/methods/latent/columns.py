"""Manifest columns the latent (W+) methods share: each method declares the ones it fills."""

from __future__ import annotations

import pyarrow as pa

ID_COS_BEFORE = {"id_cos_before": pa.float32()}  # ArcFace cosine of the starting image (the paired fake's inversion) to the original
ID_COS_AFTER = {"id_cos_after": pa.float32()}  # ArcFace cosine of the anonymized face to the original
PAIRED_FAKE = {
    "fake_index": pa.int64(),  # the bank's fake the face started from
    "pairing_similarity": pa.float32(),
}
OPTIMISATION = {
    "steps": pa.int32(),
    "seed": pa.int64(),
}
