"""FALCO (Barattin et al., CVPR 2023) as a pipeline method: real face -> paired fake -> optimised W+ code.

Per batch of aligned 256 px crops: FaRL CLS features and ArcFace identities of the real faces, e4e
inversion into W+, nearest fake in the bank (:mod:`.pairing`), mixed starting code, and the
batched optimisation of :mod:`.optimize`. The output crop is the generated face at the
generator's resolution; the pipeline pastes it back at that resolution, by default the whole
aligned square (``default_region = "crop"``), and lets it replace the whole image only when the
input is FFHQ-framed (FFHQ, CelebA-HQ), as the paper does.

Everything that can fail for lack of weights fails in the constructor, before the pipeline writes
anything: every artefact is checked first and all problems are reported in one WeightsError. The
fake bank is loaded (or built and cached) on the first batch, so dry runs never build one.

Reproducibility. The run seed selects the fake bank (z is drawn from it; the bank's size is fixed,
not derived from the run, so a resumed or ``--limit`` run uses the same bank); nothing else in the
method is random (constant noise maps, deterministic initialisation, Adam). So a face's result is a
function of the seed, the weights, the options and the face itself, with these exceptions:

- ``unique_pairs``: a face's fake is the nearest one not reserved by faces paired before it, so it
  depends on the order of the run (fakes are reserved only once a batch succeeds, and a face paired
  again gives back its earlier fake, so failures and retries burn none);
- floating point: faces batched together run through batched kernels whose sums may round
  differently from batch 1 (about 1e-6 relative); on CUDA, cuDNN's algorithm choice and TF32 add
  run-to-run differences unless ``--deterministic`` is given, which makes a CUDA run with the same
  batching bit-stable (at some cost in speed). CPU runs are bit-stable as they are.

The manifest's ``seed`` column records the run seed.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from anonymize.io.manifest import WORK_DIR_NAME
from anonymize.io.write import atomic_write_bytes
from anonymize.methods.base import AnonymizedFace, FaceCrop, Method, MethodContext, MethodError
from anonymize.methods.falco.bank import (
    DEFAULT_PSI,
    BankKey,
    FakeBank,
    bank_dir,
    default_bank_size,
    default_build_batch_size,
    load_or_build_bank,
)
from anonymize.methods.falco.optimize import LossNetworks, OptimSettings, mix_codes, optimise_latents, real_targets
from anonymize.methods.falco.pairing import FakePairer, PairingError
from anonymize.models.checkpoint import CheckpointError
from anonymize.models.images import CanonicalImages
from anonymize.models.registry import (
    GENERATORS,
    artefact_of,
    generator_artefact,
    load_arcface_model,
    load_e4e_pair,
    load_farl_model,
    load_generator,
)
from anonymize.weights import WeightsStore

LATENTS_DIR = PurePosixPath(WORK_DIR_NAME) / "latents"
CPU_BATCH_SIZE = 4
MAX_CUDA_BATCH_SIZE = 64
CUDA_MEMORY_SHARE = 0.8  # of the free memory; the rest is headroom for fragmentation and faiss
# Memory one more face adds to an optimisation step at 1024 px, float32: autograd keeps 2.19 GiB per
# face for the backward pass through G, ArcFace and FaRL (counted with saved-tensor hooks,
# benchmarks/falco.py), plus about 30% for the transient gradients of the backward pass (estimated).
# It scales with the generator's pixel count.
BYTES_PER_FACE_1024 = 2.19 * 1.3 * 2**30
# Under bf16 autocast the saved tensors shrink to 0.69 of that (1.51 GiB; measured with CPU autocast,
# which casts the same operations; not yet measured on a GPU).
BF16_MEMORY_FACTOR = 0.69


@dataclass(frozen=True)
class FalcoModels:
    encoder: torch.nn.Module
    networks: LossNetworks


class FalcoMethod(Method):
    name = "falco"
    crop_size = 256
    replaces_aligned_image = True
    default_region = "crop"  # a generated face brings its own hair, ears and jaw: paste the whole square
    loss_recognisers = ("arcface-ir-se50",)  # the ID loss: the audit judges with another recogniser

    @dataclass(frozen=True)
    class Params:
        steps: int = 50
        lr: float = 0.01
        lr_gamma: float = 0.8  # learning-rate factor at 75% and 90% of the steps
        lambda_id: float = 10.0
        lambda_attr: float = 0.1
        trainable_layers: tuple[int, ...] = (3, 4, 5, 6, 7)  # W+ layers taken from the fake and optimised
        bank_size: int = 0  # 0: DEFAULT_BANK_SIZE (10000), whatever the run's size
        psi: float = DEFAULT_PSI  # truncation of the fake bank's W codes
        unique_pairs: bool = False  # every face of the run gets a different fake
        save_latents: bool = False  # write each final W+ code under <out>/.anonymize/latents/
        bf16: bool = False  # bf16 autocast for the networks (CUDA only)
        generator: str = "genforce"  # "genforce" (FALCO's file) or "e4e" (the decoder inside e4e's file)

        def validate(self) -> None:
            if self.steps < 0:
                raise ValueError(f"steps must be >= 0, got {self.steps}")
            if self.lr <= 0:
                raise ValueError(f"lr must be positive, got {self.lr}")
            if not 0 < self.lr_gamma <= 1:
                raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
            if self.lambda_id < 0 or self.lambda_attr < 0:
                raise ValueError("lambda_id and lambda_attr must be >= 0")
            check_latent_options(self)

    def __init__(self, context: MethodContext, options: dict[str, str] | None = None) -> None:
        super().__init__(context, options)
        stack = open_latent_stack(context, self.params, self.name, "FALCO", {"trainable_layers": self.params.trainable_layers})
        self.device, self.artefacts, self.sha256, self.models = stack.device, stack.artefacts, stack.sha256, stack.models
        self.bank_key = BankKey(
            generator_sha256=self.sha256[generator_artefact(self.params.generator)],
            farl_sha256=self.sha256[artefact_of("farl")],
            seed=context.seed,
            size=self.params.bank_size or default_bank_size(),
            psi=self.params.psi,
        )
        self.settings = OptimSettings(self.params.steps, self.params.lr, self.params.lr_gamma, self.params.lambda_id,
                                      self.params.lambda_attr, context.margin, self.params.bf16)
        self.bank: FakeBank | None = None
        self.pairer: FakePairer | None = None

    # -- what the manifest records ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bank": self.bank_key.as_dict()}

    def weights_used(self) -> dict[str, str]:
        return dict(self.sha256)

    def default_batch_size(self) -> int:
        return optimisation_batch_size(self.device, self.models.networks.generator.resolution, self.params.bf16)

    # -- the bank --------------------------------------------------------------------------------------
    def ensure_bank(self) -> FakeBank:
        """Load the cached bank or build it (once per method instance)."""
        if self.bank is None:
            self.bank, _ = load_or_build_bank(bank_dir(self.context.weights.root), self.bank_key,
                                              self.models.networks.generator, self.models.networks.farl,
                                              default_build_batch_size(self.device))
            self.pairer = FakePairer(self.bank.features, use_gpu=self.device.type == "cuda")
        return self.bank

    # -- the method ------------------------------------------------------------------------------------
    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        if not faces:
            return []
        bank = self.ensure_bank()
        networks = self.models.networks
        real = CanonicalImages.from_uint8(np.stack([face.image for face in faces]), self.device)
        with torch.no_grad():
            real_ws = self.models.encoder(real).float()
            query = networks.farl(real).cls.float().cpu().numpy()
        targets = real_targets(real, networks, self.params.bf16)
        keys = [face.key for face in faces]
        try:
            pairs = self.pairer.pair(query, unique=self.params.unique_pairs, keys=keys)
        except PairingError as exc:
            raise MethodError(f"method 'falco': {exc}") from exc
        fake_ws = torch.from_numpy(bank.ws[[pair.fake_index for pair in pairs]]).to(self.device)
        initial = mix_codes(real_ws, fake_ws, self.params.trainable_layers)
        result = optimise_latents(initial, self.params.trainable_layers, targets, networks, self.settings)
        crops = result.images.to_uint8()
        outputs = []
        for i, (face, pair) in enumerate(zip(faces, pairs)):
            latent_path = self._save_latent(face.key, result.ws[i]) if self.params.save_latents else None
            metrics = {
                "fake_index": pair.fake_index,
                "pairing_similarity": pair.similarity,
                "id_cos_before": float(result.id_cos_start[i]),
                "id_cos_after": float(result.id_cos_end[i]),
                "id_margin_gap": abs(float(result.id_cos_end[i]) - self.context.margin),
                "attr_loss_start": float(result.attr_start[i]),
                "attr_loss_end": float(result.attr_end[i]),
                "steps": self.params.steps,
                "seed": self.context.seed,
                "latent_path": latent_path,
            }
            outputs.append(AnonymizedFace(crops[i], metrics))
        if self.params.unique_pairs:
            self.pairer.reserve(keys, pairs)  # only now that the whole batch has succeeded
        return outputs

    def _save_latent(self, key: str, code: torch.Tensor) -> str:
        """Write one face's final W+ code [num_ws, w_dim] as .npy (atomically); its path relative to the output."""
        if self.context.output_dir is None:
            raise MethodError("method 'falco': save_latents needs an output folder (not a dry run)")
        relative = LATENTS_DIR / latent_filename(key)
        buffer = io.BytesIO()
        np.save(buffer, code.detach().float().cpu().numpy(), allow_pickle=False)
        atomic_write_bytes(Path(self.context.output_dir) / relative, buffer.getvalue())
        return relative.as_posix()


def check_latent_options(params: Any) -> None:
    """The option checks every W+ method shares (call it from Params.validate: a ValueError is one line)."""
    layers = params.trainable_layers
    if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
        raise ValueError(f"trainable_layers must be distinct non-negative W+ layer indices, got {layers}")
    if params.bank_size < 0:
        raise ValueError(f"bank_size must be >= 0 (0 = automatic), got {params.bank_size}")
    if not 0 < params.psi <= 1:
        raise ValueError(f"psi must be in (0, 1], got {params.psi}")
    if params.generator not in GENERATORS:
        raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {params.generator!r}")


@dataclass(frozen=True)
class LatentStack:
    """What every W+ method opens first: its device, the weight files it uses (with their sha256) and the models."""

    device: torch.device
    artefacts: list[str]
    sha256: dict[str, str]
    models: FalcoModels


def open_latent_stack(context: MethodContext, params: Any, method: str, purpose: str,
                      layers: Mapping[str, Sequence[int]]) -> LatentStack:
    """Check the device and the weights (one message for all that is missing), load e4e, the generator,
    ArcFace and FaRL, and check every named set of W+ ``layers`` exists in the generator."""
    device = torch.device(context.device)
    if params.bf16 and device.type != "cuda":
        raise MethodError(f"method {method!r}: bf16=true needs a CUDA device (--device cuda)")
    artefacts = list(dict.fromkeys([artefact_of("e4e"), artefact_of("arcface"), artefact_of("farl"),
                                    generator_artefact(params.generator)]))
    context.weights.require_all(artefacts, purpose=purpose, alternative="no download needed: --method blur|pixelate|mask")
    sha256 = {name: context.weights.sha256(name) or "" for name in artefacts}
    models = load_latent_models(context.weights, params.generator, device, method)
    num_ws = models.networks.generator.num_ws
    for name, chosen in layers.items():
        missing = [layer for layer in chosen if layer >= num_ws]
        if missing:
            raise MethodError(f"method {method!r}: {name} {missing} do not exist; the generator has W+ layers 0..{num_ws - 1}")
    return LatentStack(device, artefacts, sha256, models)


def load_latent_models(store: WeightsStore, generator_name: str, device: torch.device, method: str) -> FalcoModels:
    """e4e, the generator, ArcFace and FaRL (each cached per device by the registry); one MethodError if they disagree."""
    try:
        encoder, _ = load_e4e_pair(store, device)
        generator = load_generator(store, generator_name, device)
        networks = LossNetworks(generator, load_arcface_model(store, device), load_farl_model(store, device))
    except CheckpointError as exc:
        raise MethodError(f"method {method!r}: {exc}") from exc
    if (encoder.num_ws, encoder.w_dim) != (generator.num_ws, generator.w_dim):
        raise MethodError(
            f"method {method!r}: e4e makes {encoder.num_ws} x {encoder.w_dim} codes but the {generator_name} "
            f"generator takes {generator.num_ws} x {generator.w_dim}"
        )
    return FalcoModels(encoder, networks)


def optimisation_batch_size(device: torch.device, resolution: int, bf16: bool) -> int:
    """Faces per optimisation batch: CPU_BATCH_SIZE on the CPU, what fits in the free memory on CUDA."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    per_face = BYTES_PER_FACE_1024 * (resolution / 1024) ** 2 * (BF16_MEMORY_FACTOR if bf16 else 1.0)
    return int(max(1, min(MAX_CUDA_BATCH_SIZE, free * CUDA_MEMORY_SHARE // per_face)))


def latent_filename(key: str) -> str:
    """A file name for a face key such as ``a/b.jpg#0``: readable, and unique thanks to a hash of the key."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:100] or "face"
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.npy"


def require_all(store: WeightsStore, artefacts: Sequence[str]) -> None:
    """Check every artefact; one WeightsError saying what is missing and how to get it (see WeightsStore.require_all)."""
    store.require_all(artefacts, purpose="FALCO", alternative="no download needed: --method blur|pixelate|mask")
