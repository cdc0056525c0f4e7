"""``--method parts``: adaptive facial-attribute obfuscation (Li et al., ACM MM 2021), training-free.

The privacy goal is inverted: the output should look like someone else to a person while face
recognition still matches it to the original (``privacy_goal = "human"``). Per face:

1. dlib's 68 landmarks on the aligned crop and a feathered mask per part (:mod:`.masks`);
2. each part's identity relevance from the recogniser's exact head decomposition (:mod:`.relevance`),
   parts ranked least relevant first;
3. candidates k = 1..4 (the k least relevant parts), one batch item each; or one candidate: the k
   least relevant parts with ``-p k=K`` (the paper's tables are per k), the parts given with
   ``-p parts=nose,lips``;
4. the edit, toward the attribute the paper names for each part (bushy eyebrows, narrow eyes, big
   nose, big lips): ``backend=latent`` optimises W+ codes from the e4e inversion with the loss of
   :mod:`.latent` (FALCO's weights; the whole regenerated face is written, or with ``paste=parts`` only
   the parts); ``backend=warp`` moves the parts' landmarks (:mod:`.warp`) and runs a bounded pixel PGD
   on the identity hinge (dlib's 68/5-point predictors and ResNet only, CPU friendly);
5. adaptive selection: the largest k whose output still passes the recogniser's threshold ``tau``
   (with ``select_with=dlib`` also dlib's own 0.6, run through dlib's C++ binding; dlib is then no
   longer held out from the run, and the manifest says so in ``parts_selected_by``).

With ``backend=warp`` or ``paste=parts``, pixels outside the chosen parts' masks are the original's, bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from anonymize.methods.latent.columns import OPTIMISATION
from anonymize.methods.base import AnonymizedFace, FaceCrop, Method, MethodContext, MethodError
from anonymize.methods.parts.identity import ArcFaceIdentity, DlibIdentity, IdentityModel, Reference
from anonymize.faces.landmarks import LandmarkFinder, shape_predictor
from anonymize.methods.parts.masks import PARTS, parse_parts, part_masks, union_mask
from anonymize.methods.parts.relevance import part_relevance, rank_parts
from anonymize.methods.parts.warp import PgdSettings, identity_pgd, warp_parts
from anonymize.models.checkpoint import CheckpointError
from anonymize.weights import WeightsError

BACKENDS = ("latent", "warp")
IDENTITY_LOSSES = ("layers", "hinge")
PASTES = ("face", "parts")
RECOGNISERS = ("dlib", "arcface")
DLIB_SAME_PERSON = 0.6


@dataclass(frozen=True)
class Candidate:
    parts: tuple[str, ...]
    image: np.ndarray  # S x S x 3 uint8
    score: float  # the loss recogniser's score (cosine or distance)
    passes: bool


class PartsMethod(Method):
    name = "parts"
    summary = 'Changes chosen facial parts so people see someone else; recognisers still match.'
    weights_needed = ("dlib_shape_predictor_68", "arcface_ir_se50", "e4e_ffhq_encode", "farl_ep64")
    no_download_with = '-p backend=warp'
    metric_columns = {
        "parts_backend": pa.string(),  # "latent" (W+ edit) or "warp" (landmark warps + pixel PGD)
        "parts_chosen": pa.string(),  # the edited parts, comma-separated, least identity-relevant first
        "parts_k": pa.int32(),  # how many parts were edited
        "parts_relevance": pa.string(),  # JSON part -> mean relevance (exact head decomposition of the recogniser)
        "parts_id_cos": pa.float32(),  # ArcFace cosine of the output to the original (ArcFace runs)
        "parts_id_distance_dlib": pa.float32(),  # dlib (PyTorch) distance of the output to the original (dlib runs)
        "parts_selected_by": pa.string(),  # the recogniser(s) whose threshold chose k ("arcface", "dlib", "+dlib")
        "parts_passed": pa.bool_(),  # the chosen output passed that threshold (False: none did, k = smallest)
        "seed": OPTIMISATION["seed"],
    }
    crop_size = 256
    privacy_goal: ClassVar[str] = "human"
    loss_recognisers: tuple[str, ...] = ("arcface-ir-se50",)  # per run: see __init__

    @dataclass(frozen=True)
    class Params:
        backend: str = field(default="latent", metadata={"help": '"latent" (FALCO\'s weights) or "warp" (CPU fallback, dlib only)'})
        parts: str = field(default="", metadata={"help": 'fixed parts, e.g. "nose,lips"; empty: adaptive over k = 1..4'})
        k: int = field(default=0, metadata={"help": "1..4: always the k least identity-relevant parts; 0: adaptive (largest k that passes)"})
        paste: str = field(default="", metadata={"help": 'latent: "face" (default: the whole regenerated face, as the paper) or "parts" (only the part masks)'})
        identity: str = field(default="layers", metadata={"help": 'latent: "layers" (Eq. 7, L2 over ArcFace\'s 4 stages, always on) or "hinge" (max(0, tau - cos))'})
        recogniser: str = field(default="dlib", metadata={"help": 'warp backend: the recogniser in the PGD ("dlib" or "arcface"); latent uses ArcFace'})
        tau: float = field(default=0.5, metadata={"help": 'ArcFace: pass when cos >= tau'})
        dlib_tau: float = field(default=0.5, metadata={"help": "dlib: pass when distance <= dlib_tau (dlib's own same-person threshold is 0.6)"})
        select_with: str = field(default="", metadata={"help": '"": the loss recogniser alone; "dlib": also dlib\'s 0.6 (dlib then not held out)'})
        pgd_steps: int = 20
        pgd_eps: float = 8.0  # per-pixel bound, 0..255
        pgd_step: float = 1.5
        steps: int = 50  # latent backend: W+ optimisation steps
        lr: float = 0.01
        lambda_id: float = 10.0  # final weight of the identity term, Eq. 7 or the hinge (ramped up from 0 over the steps)
        lambda_text: float = 1.0  # zero-shot attribute loss toward the named attributes' prompts
        lambda_tokens: float = 0.1  # FaRL-token preservation outside the parts
        lambda_latent: float = 0.001  # W+ regulariser
        trainable_layers: tuple[int, ...] = (3, 4, 5, 6, 7, 8)

        def validate(self) -> None:
            if self.backend not in BACKENDS:
                raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
            if self.recogniser not in RECOGNISERS:
                raise ValueError(f"recogniser must be one of {', '.join(RECOGNISERS)}, got {self.recogniser!r}")
            if self.select_with not in ("", "dlib"):
                raise ValueError(f"select_with must be empty or 'dlib', got {self.select_with!r}")
            parse_parts(self.parts)
            if not 0 <= self.k <= len(PARTS):
                raise ValueError(f"k must be 1..{len(PARTS)} (or 0: adaptive), got {self.k}")
            if self.k and self.parts:
                raise ValueError("give either k (how many of the least relevant parts) or parts (which), not both")
            if self.identity not in IDENTITY_LOSSES:
                raise ValueError(f"identity must be one of {', '.join(IDENTITY_LOSSES)}, got {self.identity!r}")
            if self.paste not in ("", *PASTES):
                raise ValueError(f"paste must be one of {', '.join(PASTES)}, got {self.paste!r}")
            if self.backend == "warp" and self.paste == "face":
                raise ValueError("paste=face needs backend=latent: the warp moves the parts only")
            if not -1 <= self.tau <= 1:
                raise ValueError(f"tau is a cosine in [-1, 1], got {self.tau}")
            if self.dlib_tau <= 0:
                raise ValueError(f"dlib_tau must be positive, got {self.dlib_tau}")
            if min(self.pgd_steps, self.steps) < 0 or min(self.pgd_eps, self.pgd_step, self.lr) < 0:
                raise ValueError("steps, pgd_steps, pgd_eps, pgd_step and lr must be >= 0")
            if min(self.lambda_id, self.lambda_text, self.lambda_tokens, self.lambda_latent) < 0:
                raise ValueError("the lambda_* weights must be >= 0")

    def __init__(self, context: MethodContext, options: dict[str, str] | None = None) -> None:
        super().__init__(context, options)
        self.device = torch.device(context.device)
        self.fixed_parts = parse_parts(self.params.parts)
        self.artefacts = ["dlib_shape_predictor_68", "dlib_shape_predictor_5", "dlib_face_recognition_resnet"]
        try:
            context.weights.require_all(self.artefacts[:1], purpose="the parts method (68 landmarks)")
            self.finder = LandmarkFinder(context.weights)
            if self.params.backend == "latent":
                from anonymize.models.registry import artefact_of

                self._require_latent([artefact_of(name) for name in ("arcface", "e4e", "farl")])
            self.model = self._identity_model()
            self.latent = self._latent_editor() if self.params.backend == "latent" else None
            self.judge = self._dlib_judge() if self.params.select_with == "dlib" else None
        except (WeightsError, CheckpointError) as exc:
            raise MethodError(f"method 'parts': {exc}") from exc
        self.sha256 = {name: context.weights.sha256(name) or "" for name in self.artefacts}
        # The recognisers that shape the output (loss, ranking, selection): the audit judges with another.
        in_loss = ("arcface-ir-se50",) if self.model.name == "arcface" else ("dlib",)
        self.loss_recognisers = tuple(dict.fromkeys(in_loss + (("dlib",) if self.judge is not None else ())))

    # -- construction ----------------------------------------------------------------------------------
    def _identity_model(self) -> IdentityModel:
        if self.params.backend == "latent" or self.params.recogniser == "arcface":
            from anonymize.models.registry import artefact_of, load_arcface_model

            self._require_latent([artefact_of("arcface")])
            self.artefacts.append(artefact_of("arcface"))
            return ArcFaceIdentity(load_arcface_model(self.context.weights, self.device), self.params.tau)
        from anonymize.metrics.identity import dlib_face_network

        network = dlib_face_network(self.context.weights.require("dlib_face_recognition_resnet"), str(self.device))
        predictor5 = shape_predictor(self.context.weights.require("dlib_shape_predictor_5"))
        return DlibIdentity(network, predictor5, self.finder, self.params.dlib_tau)

    def _require_latent(self, artefacts: Sequence[str]) -> None:
        """The weights beyond dlib's, or one line naming what is missing and the CPU fallback."""
        missing = []
        for name in artefacts:
            try:
                self.context.weights.require(name)
            except WeightsError:
                missing.append(name)
        if missing:
            why = f"backend={self.params.backend}" + ("" if self.params.backend == "latent" else " with recogniser=arcface")
            raise MethodError(f"method 'parts': {why} needs {', '.join(missing)} (get them with `anonymize weights fetch "
                              f"{' '.join(missing)}`); without them use -p backend=warp (dlib only, runs on CPU)")

    def _latent_editor(self):
        from anonymize.methods.parts.latent import LatentEditor
        from anonymize.models.registry import artefact_of

        needed = [artefact_of("e4e"), artefact_of("farl")]
        self._require_latent(needed)
        self.artefacts += needed
        return LatentEditor.load(self.context.weights, self.device, self.params)

    def _dlib_judge(self):
        from anonymize.metrics.identity import DlibRecogniser

        return DlibRecogniser(self.context.weights, backend="dlib")

    # -- what the manifest records ---------------------------------------------------------------------
    def weights_used(self) -> dict[str, str]:
        return dict(self.sha256)

    def default_batch_size(self) -> int:
        return 4

    # -- the method ------------------------------------------------------------------------------------
    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        return [self.anonymize_one(face) for face in faces]

    def anonymize_one(self, face: FaceCrop) -> AnonymizedFace:
        """One face: its candidates (one batch), then the adaptive choice."""
        crop = np.ascontiguousarray(face.image)
        size = crop.shape[0]
        landmarks = self.finder(crop, face.landmarks)
        reference = self.model.reference(crop)
        masks = part_masks(landmarks, size)
        relevance = part_relevance(self.model.relevance_on_crop(reference), masks)
        ranking = rank_parts(relevance)
        choices = candidate_parts(ranking, self.fixed_parts, self.params.k)
        candidate_masks = np.stack([union_mask([masks[part] for part in parts]) for parts in choices])
        if self.latent is not None:
            edit = self.latent.edit(crop, choices, candidate_masks, self.model, reference)
            images, scores = edit.images, edit.scores
        else:
            images, scores = self._warp(crop, landmarks, choices, candidate_masks, reference)
        passes = self.model.passes(torch.as_tensor(scores)).tolist()
        if self.judge is not None:
            passes = [ok and self._dlib_agrees(crop, image) for ok, image in zip(passes, images)]
        candidates = [Candidate(parts, image, float(score), bool(ok)) for parts, image, score, ok in zip(choices, images, scores, passes)]
        chosen = select_candidate(candidates)
        return AnonymizedFace(chosen.image, self._metrics(chosen, relevance))

    def _warp(self, crop: np.ndarray, landmarks: np.ndarray, choices: Sequence[tuple[str, ...]], masks: np.ndarray,
              reference: Reference) -> tuple[np.ndarray, list[float]]:
        warped = np.stack([warp_parts(crop, landmarks, parts) for parts in choices])
        device = self.device
        images = torch.from_numpy(warped).permute(0, 3, 1, 2).float().to(device)
        mask_tensor = torch.from_numpy(masks).unsqueeze(1).to(device)
        settings = PgdSettings(self.params.pgd_steps, self.params.pgd_eps, self.params.pgd_step)
        result = identity_pgd(images, mask_tensor, self.model, reference, settings)
        return result.images.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy(), result.score.tolist()

    def _dlib_agrees(self, original: np.ndarray, output: np.ndarray) -> bool:
        from anonymize.metrics.identity import distance

        rect = self.finder.face_rect(original)
        box = [(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)]
        before, after = self.judge.descriptors(original, box), self.judge.descriptors(output, box)
        return bool(distance(before[0], after[0]) < DLIB_SAME_PERSON)

    def _metrics(self, chosen: Candidate, relevance: dict[str, float]) -> dict[str, Any]:
        arcface = self.model.name == "arcface"
        selected_by = f"{self.model.name}+dlib" if self.judge is not None else self.model.name
        return {
            "parts_backend": self.params.backend,
            "parts_chosen": ",".join(chosen.parts),
            "parts_k": len(chosen.parts),
            "parts_relevance": json.dumps({part: round(value, 6) for part, value in relevance.items()}),
            "parts_id_cos": chosen.score if arcface else None,
            "parts_id_distance_dlib": None if arcface else chosen.score,
            "parts_selected_by": selected_by,
            "parts_passed": chosen.passes,
            "seed": self.context.seed,
        }


def candidate_parts(ranking: Sequence[str], fixed: tuple[str, ...] = (), k: int = 0) -> list[tuple[str, ...]]:
    """The candidates of one face: the fixed parts, or the ``k`` least relevant, else k = 1..4 (adaptive)."""
    if fixed:
        return [fixed]
    if k:
        return [tuple(ranking[:k])]
    return [tuple(ranking[:count]) for count in range(1, len(ranking) + 1)]


def select_candidate(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate with the most parts among those that pass; the fewest parts when none passes."""
    passing = [candidate for candidate in candidates if candidate.passes]
    if passing:
        return max(passing, key=lambda candidate: len(candidate.parts))
    return min(candidates, key=lambda candidate: len(candidate.parts))
