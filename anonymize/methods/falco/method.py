"""FALCO (Barattin et al., CVPR 2023) as a pipeline method: real face -> paired fake -> optimised W+ code.

Per batch of aligned 256 px crops: FaRL CLS features and ArcFace identities of the real faces, e4e
inversion into W+, nearest fake in the bank (:mod:`anonymize.methods.latent.pairing`), mixed
starting code, and the batched optimisation of FALCO's loss (:mod:`.loss`) in the shared W+ loop.
The output crop is the generated face at the generator's resolution; the pipeline pastes it back at
that resolution, by default the whole aligned square (``default_region = "crop"``), and lets it replace the whole image only when the
input is FFHQ-framed (FFHQ, CelebA-HQ), as the paper does.

Everything that can fail for lack of weights fails in the constructor, before the pipeline writes
anything (:func:`anonymize.methods.latent.stack.open_latent_stack`). The fake bank is loaded (or
built and cached) on the first batch, so dry runs never build one.

Reproducibility. The run seed selects the fake bank (z is drawn from it; its automatic size is
10,000, or twice the run's faces when that is more and the count is known, i.e. with ``--aligned``:
one face per image; a resumed run has the same count, a ``--limit`` run may not); nothing else in the
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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from anonymize.methods.latent.columns import ID_COS_AFTER, ID_COS_BEFORE, OPTIMISATION, PAIRED_FAKE
from anonymize.methods.base import AnonymizedFace, FaceCrop, Method, MethodContext, MethodError
from anonymize.methods.falco.loss import OptimSettings, optimise_latents
from anonymize.methods.falco.preprocessing import PREPROCESSINGS, falco_targets
from anonymize.methods.latent.bank import FakeBank, default_bank_size
from anonymize.methods.latent.optimize import mix_codes
from anonymize.methods.latent.pairing import PAIRING_METRICS, FakePairer, PairingError
from anonymize.methods.latent.params import LatentParams
from anonymize.methods.latent.saved import save_latent
from anonymize.methods.latent.stack import open_latent_stack
from anonymize.models.images import CanonicalImages


class FalcoMethod(Method):
    name = "falco"
    summary = 'Swaps each face for a fake paired by attributes, optimised away from its identity (FALCO).'
    weights_needed = ("e4e_ffhq_encode", "arcface_ir_se50", "farl_ep64", "stylegan2_ffhq1024_genforce")
    metric_columns = {
        **ID_COS_BEFORE,
        **ID_COS_AFTER,
        "id_margin_gap": pa.float32(),  # |cos - m| at the end
        "attr_loss_start": pa.float32(),
        "attr_loss_end": pa.float32(),
        **PAIRED_FAKE,
        **OPTIMISATION,
        "latent_path": pa.string(),  # --save-latents: the final W+ code, relative to the output folder
    }
    crop_size = 256
    replaces_aligned_image = True
    default_region = "crop"  # a generated face brings its own hair, ears and jaw: paste the whole square
    loss_recognisers = ("arcface-ir-se50",)  # the ID loss: the audit judges with another recogniser

    @dataclass(frozen=True)
    class Params(LatentParams):
        lambda_id: float = field(default=10.0, metadata={"help": "weight of the identity term |cos - m|"})
        lambda_attr: float = field(default=0.1, metadata={"help": "weight of the attribute term (FaRL tokens L1)"})
        margin: float = field(default=0.0, metadata={"help": "m: the target ArcFace cosine of the output to the original (--margin)"})
        unique_pairs: bool = field(default=False, metadata={"help": "every face of the run gets a different fake"})
        save_latents: bool = field(default=False, metadata={"help": "write each final W+ code under <out>/.anonymize/latents/"})
        preprocessing: str = field(default="corrected", metadata={
            "help": "loss networks' inputs: \"corrected\" (both sides alike, CLIP-normalised for FaRL) or \"reference\" "
                    "(the authors' code: real in [0,1], generated in [-1,1], no CLIP normalisation)"})
        pairing_metric: str = field(default="cosine", metadata={
            "help": "nearest fake by \"cosine\" (the authors' commands) or \"euclidean\" (the paper; raw FaRL CLS embeddings)"})

        def validate(self) -> None:
            if self.lambda_id < 0 or self.lambda_attr < 0:
                raise ValueError("lambda_id and lambda_attr must be >= 0")
            if self.preprocessing not in PREPROCESSINGS:
                raise ValueError(f"preprocessing must be one of {', '.join(PREPROCESSINGS)}, got {self.preprocessing!r}")
            if self.pairing_metric not in PAIRING_METRICS:
                raise ValueError(f"pairing_metric must be one of {', '.join(PAIRING_METRICS)}, got {self.pairing_metric!r}")
            if not 0 <= self.margin <= 1:
                raise ValueError(f"margin={self.margin:g}: expected 0 <= m <= 1")
            super().validate()

    def __init__(self, context: MethodContext, options: dict[str, str] | None = None) -> None:
        super().__init__(context, options)
        self.known_faces = context.expected_faces if context.aligned_input else None
        stack = self.stack = open_latent_stack(context, self.params, self.name, "FALCO",
                                               {"trainable_layers": self.params.trainable_layers}, faces=self.known_faces)
        self.device, self.artefacts, self.sha256, self.models = stack.device, stack.artefacts, stack.sha256, stack.models
        self.bank_key = stack.bank_key
        self.settings = OptimSettings(self.params.steps, self.params.lr, self.params.lr_gamma, self.params.lambda_id,
                                      self.params.lambda_attr, self.params.margin, self.params.bf16,
                                      self.params.preprocessing)
        self.bank: FakeBank | None = None
        self.pairer: FakePairer | None = None

    # -- what the manifest records ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bank": self.bank_key.as_dict()}

    def weights_used(self) -> dict[str, str]:
        return dict(self.sha256)

    def default_batch_size(self) -> int:
        return self.stack.batch_size()

    def privacy_caveat(self) -> str | None:
        """A user-set bank smaller than the run's faces breaks the paper's |fakes| > |real faces|: faces share fakes."""
        size, faces = self.bank_key.size, self.known_faces
        if self.params.bank_size and faces and size < faces:
            return (f"falco: bank_size={size} is smaller than the run's {faces} faces, so several faces start from the "
                    f"same fake (the paper needs more fakes than faces); the automatic size would be {default_bank_size(faces)}")
        return None

    # -- the bank --------------------------------------------------------------------------------------
    def ensure_bank(self) -> FakeBank:
        """Load the cached bank or build it (once per method instance)."""
        if self.bank is None:
            euclidean = self.params.pairing_metric == "euclidean"
            self.bank = self.stack.load_bank(with_norms=euclidean)
            features = self.bank.raw_features() if euclidean else self.bank.features
            self.pairer = FakePairer(features, use_gpu=self.device.type == "cuda", metric=self.params.pairing_metric)
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
            pairing = networks.farl(real)
            query = (pairing.cls * pairing.cls_norm[:, None] if self.params.pairing_metric == "euclidean"
                     else pairing.cls).float().cpu().numpy()
        targets = falco_targets(real, networks, self.params.preprocessing, self.params.bf16)
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
                "id_margin_gap": abs(float(result.id_cos_end[i]) - self.params.margin),
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
        """Write one face's final W+ code (see :mod:`anonymize.methods.latent.saved`); its path relative to the output."""
        if self.context.work is None:
            raise MethodError("method 'falco': save_latents needs an output folder (not a dry run)")
        return save_latent(self.context.work, key, code)
