"""The fake bank: StyleGAN2 faces from random z, kept as W codes plus FaRL CLS features.

FALCO pairs every real face with its nearest fake in FaRL space (:mod:`.pairing`), CFA points new
identities at fakes, camouflage borrows their appearance and the attribute edits fit InterFaceGAN
boundaries on their codes, so one bank serves every latent method. Rendering tens of thousands of
1024 px faces takes a while, so a bank is built once, in batches, and stored under
``<weights dir>/banks/``; later runs (and ``anonymize bank build``) find it by its key. Only what
the methods reuse is stored: the W code of each fake, its L2-normalised CLS feature and that
feature's norm before normalising (FALCO's ``pairing_metric=euclidean`` compares the raw embeddings,
as the paper does); the images are never written.

The key is the generator file's sha256, the FaRL file's sha256 (the features depend on it as much
as on the generator), the seed, the truncation psi and the size. z is drawn in chunks of
``Z_CHUNK`` rows, each chunk from its own seed derived from (seed, chunk index), so the first N
fakes are the same whatever the bank's size: a cached bank of N' >= N fakes serves a request for N
by taking its first N rows. (The chunk seeds hash the text ``falco-bank``, the bank's first user:
changing it would change every cached bank.)

Files are ``.npz`` written atomically (never half a bank under the final name) and read with
``allow_pickle=False``. A file that does not match its key or cannot be read is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from anonymize.io.write import atomic_write_bytes
from anonymize.models.farl import FaRLEncoder
from anonymize.models.stylegan2 import StyleGAN2Generator

BANK_DIR_NAME = "banks"
BANK_FORMAT = 1
Z_CHUNK = 1000
# The automatic size: this many fakes, or twice the run's faces where the method knows their count
# (FALCO with aligned input), since FALCO's paper requires more fakes than real faces (its authors
# used 60,000 for CelebA-HQ's 30,000). Below 5,000 faces it is this constant, so one cached bank
# serves every small run; above, the size follows the run's image count (a resumed run has the
# same count; a --limit run another, hence another bank).
DEFAULT_BANK_SIZE = 10_000
FAKES_PER_FACE = 2
DEFAULT_PSI = 0.7
CPU_BUILD_BATCH = 8  # a 1024 px render holds ~0.5 GB of activations per face on the way
CUDA_BUILD_BATCH = 64

BankProgress = Callable[[int, int], None]  # (fakes done, fakes wanted)


@dataclass(frozen=True)
class BankKey:
    """Everything that determines a bank's content."""

    generator_sha256: str
    farl_sha256: str
    seed: int
    size: int
    psi: float = DEFAULT_PSI

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"a fake bank needs at least one face, got size {self.size}")
        if not 0.0 < self.psi <= 1.0:
            raise ValueError(f"truncation psi must be in (0, 1], got {self.psi}")

    @property
    def family(self) -> str:
        """The key without the size: banks of one family agree on their common first rows."""
        return f"g{self.generator_sha256[:16]}-f{self.farl_sha256[:16]}-psi{self.psi:g}-seed{self.seed}"

    @property
    def filename(self) -> str:
        return f"{self.family}-n{self.size}.npz"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "name": self.filename}


@dataclass
class FakeBank:
    key: BankKey
    ws: np.ndarray  # [size, w_dim] float32: truncated W of each fake (its W+ repeats it on every layer)
    features: np.ndarray  # [size, embed_dim] float32, L2-normalised FaRL CLS embeddings
    path: Path  # the file it was read from (may hold more rows than key.size)
    norms: np.ndarray | None = None  # [size] float32, each embedding's norm before normalising (None: an older file)

    def raw_features(self) -> np.ndarray:
        """The FaRL CLS embeddings as the network gives them (for Euclidean pairing); needs the stored norms."""
        if self.norms is None:
            raise ValueError(f"{self.path}: this bank stores no feature norms (built by an older version)")
        return self.features * self.norms[:, None]


def default_bank_size(faces: int | None = None) -> int:
    """The bank size when ``bank_size`` is not given: max(DEFAULT_BANK_SIZE, FAKES_PER_FACE x ``faces``)
    when the run's face count is known, DEFAULT_BANK_SIZE otherwise (see DEFAULT_BANK_SIZE)."""
    return max(DEFAULT_BANK_SIZE, FAKES_PER_FACE * faces) if faces else DEFAULT_BANK_SIZE


def default_build_batch_size(device: torch.device | str) -> int:
    """Fakes rendered per batch: no gradients are kept, so far more than an optimisation batch."""
    return CUDA_BUILD_BATCH if torch.device(device).type == "cuda" else CPU_BUILD_BATCH


def bank_dir(weights_root: Path) -> Path:
    return Path(weights_root) / BANK_DIR_NAME


def _chunk_seed(seed: int, chunk: int) -> int:
    digest = hashlib.sha256(f"falco-bank:{seed}:{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample_z(seed: int, size: int, z_dim: int) -> Iterator[torch.Tensor]:
    """z rows 0..size-1 as CPU chunks; row i is the same for every ``size`` > i."""
    for chunk in range(math.ceil(size / Z_CHUNK)):
        generator = torch.Generator().manual_seed(_chunk_seed(seed, chunk))
        rows = torch.randn(Z_CHUNK, z_dim, generator=generator)
        yield rows[: min(Z_CHUNK, size - chunk * Z_CHUNK)]


@torch.no_grad()
def build_bank_arrays(
    key: BankKey,
    generator: StyleGAN2Generator,
    farl: FaRLEncoder,
    batch_size: int,
    progress: BankProgress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map, render and embed ``key.size`` fakes, ``batch_size`` at a time -> (ws, unit features, their norms)."""
    device = generator.w_avg.device
    ws, features, norms, done = [], [], [], 0
    for z_chunk in sample_z(key.seed, key.size, generator.z_dim):
        for z in z_chunk.split(batch_size):
            w = generator.mapping(z.to(device), truncation_psi=key.psi)
            images = generator(w.unsqueeze(1).repeat(1, generator.num_ws, 1), noise_mode="const")
            ws.append(w.float().cpu())
            embedded = farl(images)
            features.append(torch.nn.functional.normalize(embedded.cls.float(), dim=1).cpu())
            norms.append(embedded.cls_norm.float().cpu())
            done += len(z)
            if progress is not None:
                progress(done, key.size)
    return torch.cat(ws).numpy(), torch.cat(features).numpy(), torch.cat(norms).numpy()


def write_bank(path: Path, key: BankKey, ws: np.ndarray, features: np.ndarray, norms: np.ndarray) -> None:
    """Store a bank atomically: the file appears complete under its final name, or not at all."""
    meta = json.dumps({"format": BANK_FORMAT, **asdict(key)}, sort_keys=True)
    buffer = io.BytesIO()
    np.savez(buffer, ws=ws.astype(np.float32), features=features.astype(np.float32), norms=norms.astype(np.float32),
             meta=np.array(meta))
    atomic_write_bytes(path, buffer.getvalue())


def read_bank(path: Path, key: BankKey) -> FakeBank | None:
    """The first ``key.size`` rows of the bank at ``path``; None if it is unreadable or another family's."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            ws, features = data["ws"], data["features"]
            norms = data["norms"] if "norms" in data.files else None
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    stored = {name: meta.get(name) for name in ("generator_sha256", "farl_sha256", "seed", "psi")}
    wanted = {"generator_sha256": key.generator_sha256, "farl_sha256": key.farl_sha256, "seed": key.seed, "psi": key.psi}
    size = meta.get("size")
    if meta.get("format") != BANK_FORMAT or stored != wanted or not isinstance(size, int) or size < key.size:
        return None
    if ws.ndim != 2 or features.ndim != 2 or len(ws) != size or len(features) != size:
        return None
    if norms is not None and norms.shape != (size,):
        return None
    return FakeBank(key, np.ascontiguousarray(ws[: key.size]), np.ascontiguousarray(features[: key.size]), path,
                    None if norms is None else np.ascontiguousarray(norms[: key.size]))


_SIZE_SUFFIX = re.compile(r"-n(\d+)\.npz$")


def cached_bank_paths(directory: Path, key: BankKey) -> list[Path]:
    """Files of ``key``'s family holding at least ``key.size`` fakes, smallest first."""
    if not directory.is_dir():
        return []
    candidates = []
    for path in directory.glob(f"{key.family}-n*.npz"):
        match = _SIZE_SUFFIX.search(path.name)
        if match and int(match.group(1)) >= key.size:
            candidates.append((int(match.group(1)), path.name, path))
    return [path for _, _, path in sorted(candidates)]


def find_cached_bank(directory: Path, key: BankKey, with_norms: bool = False) -> FakeBank | None:
    """The first readable cached bank of ``key`` (one storing feature norms, if ``with_norms``)."""
    for path in cached_bank_paths(directory, key):
        bank = read_bank(path, key)
        if bank is not None and (bank.norms is not None or not with_norms):
            return bank
    return None


def load_or_build_bank(
    directory: Path,
    key: BankKey,
    generator: StyleGAN2Generator,
    farl: FaRLEncoder,
    batch_size: int,
    progress: BankProgress | None = None,
    with_norms: bool = False,
) -> tuple[FakeBank, bool]:
    """The cached bank for ``key`` if there is one (storing feature norms, if ``with_norms``: a file from
    before they were stored is then rebuilt), else a new one written to ``directory``.

    Returns the bank and whether it had to be built.
    """
    cached = find_cached_bank(directory, key, with_norms)
    if cached is not None:
        return cached, False
    ws, features, norms = build_bank_arrays(key, generator, farl, batch_size, progress)
    path = directory / key.filename
    write_bank(path, key, ws, features, norms)
    return FakeBank(key, ws, features, path, norms), True
