"""Saved W+ codes: a face's final code as one ``.npy`` under the run's work folder (``<out>/.anonymize/latents/``).

The file is named after the face key (readable, plus a hash of the key, so two keys never share a
file) and written atomically; the manifest records its path relative to the output folder.
"""

from __future__ import annotations

import hashlib
import re

import torch

from anonymize.io.storage import Storage

LATENTS_DIR = "latents"


def latent_filename(key: str) -> str:
    """A file name for a face key such as ``a/b.jpg#0``: readable, and unique thanks to a hash of the key."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:100] or "face"
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.npy"


def save_latent(work: Storage, key: str, code: torch.Tensor) -> str:
    """Write one face's W+ code [num_ws, w_dim] as float32 .npy (atomically); its path relative to the output folder."""
    return work.child(LATENTS_DIR).save_array(latent_filename(key), code.detach().float().cpu().numpy())
