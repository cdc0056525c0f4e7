"""The W+ stack every latent method opens first: e4e, a StyleGAN2 generator, ArcFace and FaRL, and its fake bank.

Everything that can fail for lack of weights fails in :func:`open_latent_stack`, called from a
method's constructor, before the pipeline writes anything: every artefact is checked first and all
problems are reported in one WeightsError. The fake bank's key is fixed there too (it goes into the
manifest), but the bank itself is loaded, or built and cached, only when a method first needs it
(:meth:`LatentStack.load_bank`), so dry runs never build one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from anonymize.methods.base import MethodContext, MethodError
from anonymize.methods.latent.bank import (
    BankKey,
    FakeBank,
    bank_dir,
    default_bank_size,
    default_build_batch_size,
    load_or_build_bank,
)
from anonymize.methods.latent.optimize import LossNetworks
from anonymize.methods.latent.params import LatentParams
from anonymize.models.checkpoint import CheckpointError
from anonymize.models.registry import (
    artefact_of,
    generator_artefact,
    load_arcface_model,
    load_e4e_pair,
    load_farl_model,
    load_generator,
)
from anonymize.weights import WeightsStore

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
class LatentModels:
    """e4e's encoder (the inversion of real faces) and the networks the objectives use."""

    encoder: torch.nn.Module
    networks: LossNetworks


@dataclass(frozen=True)
class LatentStack:
    """What a W+ method works with: its device, the weight files it uses (with their sha256), the models,
    and the key and folder of its fake bank."""

    device: torch.device
    artefacts: list[str]
    sha256: dict[str, str]
    models: LatentModels
    bank_key: BankKey
    bank_folder: Path
    bf16: bool = False

    def load_bank(self, with_norms: bool = False) -> FakeBank:
        """The cached bank of :attr:`bank_key`, or a new one rendered and stored (a few minutes for 10000 fakes);
        ``with_norms``: one that stores its features' norms (Euclidean pairing)."""
        networks = self.models.networks
        bank, _ = load_or_build_bank(self.bank_folder, self.bank_key, networks.generator, networks.farl,
                                     default_build_batch_size(self.device), with_norms=with_norms)
        return bank

    def batch_size(self) -> int:
        """Faces per optimisation batch on this device, at this generator's resolution and precision."""
        return optimisation_batch_size(self.device, self.models.networks.generator.resolution, self.bf16)


def open_latent_stack(context: MethodContext, params: LatentParams, method: str, purpose: str,
                      layers: Mapping[str, Sequence[int]], faces: int | None = None) -> LatentStack:
    """Check the device and the weights (one message for all that is missing), load e4e, the generator,
    ArcFace and FaRL, check every named set of W+ ``layers`` exists in the generator, and key the fake
    bank by the generator, FaRL, the run seed, ``bank_size`` (when 0, :func:`default_bank_size` of the
    run's known face count ``faces``) and ``psi``."""
    device = torch.device(context.device)
    if params.bf16 and device.type != "cuda":
        raise MethodError(f"method {method!r}: bf16=true needs a CUDA device (--device cuda)")
    artefacts = list(dict.fromkeys([artefact_of("e4e"), artefact_of("arcface"), artefact_of("farl"),
                                    generator_artefact(params.generator)]))
    require_all(context.weights, artefacts, purpose)
    sha256 = {name: context.weights.sha256(name) or "" for name in artefacts}
    models = load_latent_models(context.weights, params.generator, device, method)
    num_ws = models.networks.generator.num_ws
    for name, chosen in layers.items():
        missing = [layer for layer in chosen if layer >= num_ws]
        if missing:
            raise MethodError(f"method {method!r}: {name} {missing} do not exist; the generator has W+ layers 0..{num_ws - 1}")
    bank_key = BankKey(sha256[generator_artefact(params.generator)], sha256[artefact_of("farl")], context.seed,
                       params.bank_size or default_bank_size(faces), params.psi)
    return LatentStack(device, artefacts, sha256, models, bank_key, bank_dir(context.weights.root), params.bf16)


def load_latent_models(store: WeightsStore, generator_name: str, device: torch.device, method: str) -> LatentModels:
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
    return LatentModels(encoder, networks)


def optimisation_batch_size(device: torch.device, resolution: int, bf16: bool) -> int:
    """Faces per optimisation batch: CPU_BATCH_SIZE on the CPU, what fits in the free memory on CUDA."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    per_face = BYTES_PER_FACE_1024 * (resolution / 1024) ** 2 * (BF16_MEMORY_FACTOR if bf16 else 1.0)
    return int(max(1, min(MAX_CUDA_BATCH_SIZE, free * CUDA_MEMORY_SHARE // per_face)))


def require_all(store: WeightsStore, artefacts: Sequence[str], purpose: str = "FALCO") -> None:
    """Check every artefact; one WeightsError saying what is missing, how to get it, and that the classical
    methods need none (see WeightsStore.require_all)."""
    from anonymize.methods.registry import no_download_alternative

    store.require_all(artefacts, purpose=purpose, alternative=no_download_alternative())
