"""CFA on ArcFace's sphere: each face becomes a chosen new identity at a chosen angle from its own.

CFA-Net (Ma et al.) trains an encoder whose identity code lives on a recogniser's unit sphere and
anonymizes by moving that code to a new unit vector at an angle from the original (their Eq. 10).
Its sphere is a recogniser's embedding sphere, so here ArcFace's is used directly and the encoder is
replaced by the shared W+ toolkit (:mod:`anonymize.methods.latent`: e4e inversion, W+ optimisation of
the middle layers under FaRL's attribute loss):

1. survey (pass 1): the unit ArcFace embedding of every face of the run, that of its e4e
   reconstruction (how far the inversion alone already is: :meth:`CfaMethod.plan_warnings`), and its
   FaRL CLS feature when directions come from the fake bank;
2. plan: people (by ArcFace clusters or folders), one target unit per face or per person
   (``consistency``): its anchor ``e`` (the face's embedding, or the person's mean), and per variant a
   direction ``u`` orthogonal to ``e`` (:mod:`.sphere`), screened for leakage (:mod:`.leakage`);
3. anonymize: for each variant and each angle of the sweep, ``z* = cos(alpha) e + sin(alpha) u`` and
   the W+ optimisation of :mod:`.objective` from the e4e inversion (each angle of a sweep warm-starts
   from the previous one's code), with the content term of :mod:`.content` when ``content_weight > 0``.

Angles are degrees or relative to ArcFace's calibrated threshold (``threshold+10``, :mod:`.angles`).

The first angle of the first variant is the face written in place of the original; every other
(angle, variant) rendering is returned to the pipeline under its label (``a55-v1``) and written
beside the main output (see :func:`anonymize.io.write.render_relpath`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from anonymize.io.write import render_relpath
from anonymize.methods.latent.columns import ID_COS_AFTER, OPTIMISATION, PAIRED_FAKE
from anonymize.methods.base import AnonymizedFace, FaceCrop, Method, MethodContext, MethodError
from anonymize.methods.cfa.angles import AngleSpec, calibrated_threshold, parse_angle, parse_angles, relative_to_threshold, resolve_angles
from anonymize.methods.cfa.content import ContentTarget, identity_region
from anonymize.methods.cfa.leakage import NOBODY, LeakageIndex
from anonymize.methods.cfa.objective import CfaLoss, CfaWeights
from anonymize.methods.cfa.sphere import (
    DegenerateDirection,
    angle_between,
    direction_seed,
    orthogonal_direction,
    random_direction,
    target_on_sphere,
)
from anonymize.methods.latent.bank import FakeBank
from anonymize.methods.latent.optimize import optimise_codes, real_targets
from anonymize.methods.latent.pairing import FakePairer
from anonymize.methods.latent.params import LatentParams
from anonymize.methods.latent.references import embed_folder
from anonymize.methods.latent.stack import open_latent_stack
from anonymize.methods.persons import person_ids, stable_person_ids
from anonymize.models.images import CanonicalImages

DIRECTIONS = ("random", "bank")  # random: the paper's; bank: the project's option
CONSISTENCIES = ("face", "person")
PLAN_FORMAT = 1


@dataclass(frozen=True)
class Render:
    """One (variant, angle) rendering of a face."""

    variant: int
    angle: float

    @property
    def label(self) -> str:
        return f"a{self.angle:g}-v{self.variant}"


@dataclass
class CfaPlan:
    """Who is who and where each target unit goes; see :meth:`CfaMethod.plan`."""

    keys: list[str]
    embeddings: np.ndarray  # [N, E] unit ArcFace embeddings of the original faces
    persons: np.ndarray  # [N] person id of each face
    units: np.ndarray  # [N] target unit of each face (the face itself, or its person)
    anchors: np.ndarray  # [U, E] e of each unit
    directions: np.ndarray  # [U, V, E] u of each unit and variant
    fakes: np.ndarray  # [U, V] the bank fake a direction points to (-1: random)
    tries: np.ndarray  # [U, V] directions drawn until one passed the screen
    leak: np.ndarray  # [U, V, A] nearest cosine of each target to another person's face
    unit_persons: np.ndarray  # [U]
    row: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.row = {key: index for index, key in enumerate(self.keys)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"keys": np.asarray(self.keys, dtype=str), "embeddings": self.embeddings, "persons": self.persons,
                "units": self.units, "anchors": self.anchors, "directions": self.directions, "fakes": self.fakes,
                "tries": self.tries, "leak": self.leak, "unit_persons": self.unit_persons}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> CfaPlan:
        return cls([str(key) for key in arrays["keys"]], *(arrays[name] for name in (
            "embeddings", "persons", "units", "anchors", "directions", "fakes", "tries", "leak", "unit_persons")))


class CfaMethod(Method):
    name = "cfa"
    summary = "Moves each identity to a new one at a chosen angle on ArcFace's sphere (CFA)."
    weights_needed = ("e4e_ffhq_encode", "arcface_ir_se50", "farl_ep64", "stylegan2_ffhq1024_genforce")
    metric_columns = {
        **ID_COS_AFTER,
        "fake_index": PAIRED_FAKE["fake_index"],
        **OPTIMISATION,
        "cfa_target_angle": pa.float32(),  # degrees from the original identity e to the target z*
        "cfa_achieved_angle": pa.float32(),  # degrees from e to the written face's ArcFace identity
        "cfa_target_cos": pa.float32(),  # cosine of the written face's identity to z*
        "cfa_angle_error": pa.float32(),  # achieved - target angle, degrees
        "cfa_variant": pa.int32(),  # which direction (new identity) the written face took
        "cfa_leak_cos": pa.float32(),  # highest cosine of z* to another person's face (leakage screen)
        "cfa_leak_tries": pa.int32(),  # directions drawn until one passed the screen
        "cfa_leak_cos_after": pa.float32(),  # the same for the written face's identity
        "cfa_person": pa.int64(),  # person (cluster or folder) the face was counted as
        "cfa_renders": pa.string(),  # JSON list of the further renders (sweep angles, variants) and their figures
        "cfa_e4e_angle": pa.float32(),  # degrees from e to the e4e reconstruction's identity: alpha at step 0
        "cfa_content": pa.float32(),  # the content term at the written face (content_weight > 0; else null)
    }
    crop_size = 256
    replaces_aligned_image = True
    default_region = "crop"
    loss_recognisers = ("arcface-ir-se50",)
    dataset_level = True

    @dataclass(frozen=True)
    class Params(LatentParams):
        angle: str = field(default="70", metadata={"help": "degrees between the original identity and the new one, or relative to ArcFace's calibrated threshold: \"threshold+10\" (anonymize calibrate --recognizer arcface)"})
        angles: str = field(default="", metadata={"help": "a sweep, e.g. \"40,55,70,85\" or \"threshold,threshold+10\" (replaces angle); each warm-starts from the previous"})
        variants: int = field(default=1, metadata={"help": "new identities per face at each angle (different directions)"})
        direction: str = field(default="random", metadata={"help": "\"random\": uniform over the directions orthogonal to e (the paper); \"bank\": toward a paired fake's identity"})
        consistency: str = field(default="face", metadata={"help": "\"person\": every photo of a person becomes the same new person"})
        cluster_distance: float = field(default=0.6, metadata={"help": "ArcFace cosine distance within which faces are one person (clusters)"})
        tau_leak: float = field(default=0.3, metadata={"help": "a target with cosine above this to another person's face is redrawn"})
        max_tries: int = field(default=10, metadata={"help": "directions drawn per variant before the least leaky one is kept"})
        gallery: str = field(default="", metadata={"help": "a folder of aligned faces of other people, added to the leakage index"})
        lambda_tgt: float = 10.0
        lambda_ang: float = 10.0
        lambda_attr: float = 0.1
        lambda_lat: float = 0.001
        content_weight: float = field(default=0.0, metadata={"help": "weight of the content term: pixel L1 + LPIPS to the original outside eyes, brows, nose and mouth (0: off; needs LPIPS's weights)"})

        def angle_list(self) -> tuple[AngleSpec, ...]:
            """The requested angles (:class:`~anonymize.methods.cfa.angles.AngleSpec`), unresolved."""
            if not self.angles.strip():
                return (parse_angle(self.angle),)
            return parse_angles(self.angles)

        def validate(self) -> None:
            try:
                angles = self.angle_list()
            except ValueError as exc:
                raise ValueError(f"angles must be comma-separated degrees or threshold+N, got {self.angles or self.angle!r} ({exc})") from None
            plain = [spec.value for spec in angles if not spec.relative]
            if not angles or any(not 0 < angle <= 180 for angle in plain):
                raise ValueError(f"every angle must be in (0, 180] degrees, got {', '.join(spec.text for spec in angles)}")
            if len({(spec.relative, spec.value) for spec in angles}) != len(angles):
                raise ValueError(f"angles must be distinct, got {self.angles!r}")
            if self.content_weight < 0:
                raise ValueError(f"content_weight must be >= 0, got {self.content_weight}")
            if self.variants < 1:
                raise ValueError(f"variants must be >= 1, got {self.variants}")
            if self.direction not in DIRECTIONS:
                raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
            if self.consistency not in CONSISTENCIES:
                raise ValueError(f"consistency must be one of {', '.join(CONSISTENCIES)}, got {self.consistency!r}")
            if not -1 <= self.tau_leak <= 1:
                raise ValueError(f"tau_leak is a cosine in [-1, 1], got {self.tau_leak}")
            if self.max_tries < 1:
                raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")
            if min(self.lambda_tgt, self.lambda_ang, self.lambda_attr, self.lambda_lat) < 0:
                raise ValueError("the lambdas must be >= 0")
            super().validate()

    def __init__(self, context: MethodContext, options: dict[str, str] | None = None) -> None:
        super().__init__(context, options)
        self.gallery = Path(self.params.gallery).expanduser() if self.params.gallery else None
        if self.gallery is not None and not self.gallery.is_dir():
            raise MethodError(f"method 'cfa': gallery {self.gallery}: not a folder")
        self.threshold = calibrated_threshold(context.weights)
        specs = self.params.angle_list()
        try:
            self.angles = resolve_angles(specs, self.threshold, context.weights)
        except ValueError as exc:
            raise MethodError(f"method 'cfa': {exc}") from None
        self.relative = any(spec.relative for spec in specs)
        stack = self.stack = open_latent_stack(context, self.params, self.name, "CFA",
                                               {"trainable_layers": self.params.trainable_layers})
        self.device, self.artefacts, self.sha256, self.models = stack.device, stack.artefacts, stack.sha256, stack.models
        self.perceptual = self._perceptual(context) if self.params.content_weight > 0 else None
        self.renders = [Render(variant, angle) for variant in range(self.params.variants) for angle in self.angles]
        self.weights = CfaWeights(self.params.lambda_tgt, self.params.lambda_ang, self.params.lambda_attr, self.params.lambda_lat,
                                  self.params.content_weight)
        self.bank_key = stack.bank_key
        self.bank: FakeBank | None = None
        self.surveyed: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}  # key -> (ArcFace unit embedding, FaRL CLS)
        self.reconstructed: dict[str, np.ndarray] = {}  # key -> ArcFace embedding of G(e4e(x)), the optimisation's start
        self.below_start: tuple[int, int, list[float]] | None = None  # (faces, of, their start angles): plan_warnings
        self.state: CfaPlan | None = None
        self.leakage: LeakageIndex | None = None
        self.gallery_embeddings: np.ndarray | None = None

    # -- what the manifest records ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        described = {**super().describe(), "angles": list(self.angles)}
        if self.relative and self.threshold is not None:  # what threshold+N resolved against (only then: a later
            described["arcface_threshold"] = {"angle": self.threshold.angle, "far": self.threshold.far,  # calibration must not
                                              "faces_dir": self.threshold.faces_dir}  # change a plain run's settings)
        if self.params.direction == "bank":
            described["bank"] = self.bank_key.as_dict()
        return described

    def weights_used(self) -> dict[str, str]:
        return dict(self.sha256)

    def _perceptual(self, context: MethodContext) -> Any:
        """LPIPS (AlexNet, the audit's) and dlib's 68 landmarks for the content term; one MethodError if missing."""
        try:
            import lpips  # noqa: F401
        except ImportError:
            raise MethodError("method 'cfa': content_weight > 0 needs the lpips package (pip install lpips==0.1.4)") from None
        from anonymize.faces.landmarks import LandmarkFinder
        from anonymize.models.checkpoint import CheckpointError
        from anonymize.models.registry import load_pretrained, pretrained
        from anonymize.weights import WeightsError

        artefacts = [*pretrained("lpips_alex").artefacts, "dlib_shape_predictor_68"]
        try:
            context.weights.require_all(artefacts, purpose="CFA's content term (-p content_weight)")
            self.landmarks = LandmarkFinder(context.weights)
            model = load_pretrained("lpips_alex", context.weights, self.device)
        except (WeightsError, CheckpointError) as exc:
            raise MethodError(f"method 'cfa': -p content_weight needs LPIPS's and dlib's landmark weights: {exc}") from None
        self.sha256.update({name: context.weights.sha256(name) or "" for name in artefacts})
        return model

    def default_batch_size(self) -> int:
        return self.stack.batch_size()

    # -- pass 1 ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def survey(self, faces: Sequence[FaceCrop]) -> None:
        if not faces:
            return
        real = CanonicalImages.from_uint8(np.stack([face.image for face in faces]), self.device)
        identity = self.models.networks.arcface(real).float().cpu().numpy()  # float32 in memory; the plan works in float64
        cls = self.models.networks.farl(real).cls.float().cpu().numpy() if self.params.direction == "bank" else None
        generator = self.models.networks.generator
        start = generator(self.models.encoder(real).float(), noise_mode="const")
        reconstructed = self.models.networks.arcface(start).float().cpu().numpy()
        for index, face in enumerate(faces):
            self.surveyed[face.key] = (identity[index], None if cls is None else cls[index])
            self.reconstructed[face.key] = reconstructed[index]

    # -- the plan --------------------------------------------------------------------------------------
    def plan_info(self) -> dict[str, Any]:
        p = self.params
        return {"format": PLAN_FORMAT, "angles": list(self.angles), "variants": p.variants, "direction": p.direction,
                "consistency": p.consistency, "identity_from": self.context.identity_from, "seed": self.context.seed,
                "tau_leak": p.tau_leak, "max_tries": p.max_tries, "cluster_distance": p.cluster_distance,
                "gallery": str(self.gallery) if self.gallery else None}

    def plan(self) -> dict[str, Any]:
        """People, target units, directions and the leakage screen, for every face of the run.

        Faces of a stored plan keep their person, unit, anchor and directions (they may already be
        written); a new face that clusters with a stored face joins that face's person (and, with
        ``consistency=person``, its unit and new identity)."""
        stored = self.stored_plan()
        old = CfaPlan.from_arrays(stored[0]) if stored and stored[1] == self.plan_info() else None
        new_keys = [key for key in self.surveyed if old is None or key not in old.row]
        keys = (old.keys if old else []) + new_keys
        dim = old.embeddings.shape[1] if old else 1
        new_embeddings = np.stack([self.surveyed[key][0] for key in new_keys]).astype(np.float64) if new_keys else np.zeros((0, dim))
        embeddings = np.concatenate([old.embeddings, new_embeddings]) if old else new_embeddings
        persons = self._persons(keys, embeddings, old)
        state = self._extend(old, keys, embeddings, persons)
        if self.context.plan is not None:
            self.context.plan.write_plan(state.arrays(), self.plan_info())
        self.state = state
        self.below_start = self._below_start(state, new_keys)
        accepted = state.leak.max(axis=2) <= self.params.tau_leak
        figures: dict[str, Any] = {"people": int(len(set(state.persons.tolist()))), "targets": int(len(state.anchors)),
                                   "redraws": int((state.tries - 1).sum()), "leaky targets": int((~accepted).sum())}
        if self.threshold is not None:  # alpha stated against the recogniser's own "other person" angle
            far = f" at FAR {self.threshold.far:g}" if self.threshold.far is not None else ""
            figures["angles"] = (f"{relative_to_threshold(self.angles, self.threshold)} (ArcFace's calibrated "
                                 f"{self.threshold.angle:.1f} degrees{far})")
        return figures

    def _below_start(self, state: CfaPlan, new_keys: list[str]) -> tuple[int, int, list[float]] | None:
        """The newly planned faces whose e4e reconstruction is already farther from e than the smallest angle asked."""
        faces = [key for key in new_keys if key in self.reconstructed]
        if not faces:
            return None
        starts = [angle_between(self.reconstructed[key], state.anchors[state.units[state.row[key]]]) for key in faces]
        below = [start for start in starts if min(self.angles) < start]
        return len(below), len(faces), below

    def plan_warnings(self) -> list[str]:
        """One line when some faces cannot start at the angle asked: their e4e reconstruction alone is farther."""
        if not self.below_start or not self.below_start[0]:
            return []
        count, total, starts = self.below_start
        return [f"cfa: for {count} of {total} faces the e4e reconstruction alone is already farther from the original "
                f"identity than the angle asked ({min(self.angles):g} degrees; their reconstructions: median "
                f"{float(np.median(starts)):.1f}, max {max(starts):.1f}): those faces will likely end above it (read "
                f"cfa_e4e_angle and cfa_angle_error in the manifest; ask a larger angle, e.g. threshold+N, to avoid it)"]

    def _persons(self, keys: list[str], embeddings: np.ndarray, old: CfaPlan | None) -> np.ndarray:
        """Person ids: stored faces keep theirs; new faces take a stored face's id if they share its group."""
        if not keys:
            return np.zeros(0, dtype=np.int64)
        groups = person_ids(keys, embeddings, self.context.identity_from, self.params.cluster_distance, "cosine")
        return stable_person_ids(groups, old.persons if old else np.zeros(0, np.int64))

    def _extend(self, old: CfaPlan | None, keys: list[str], embeddings: np.ndarray, persons: np.ndarray) -> CfaPlan:
        """The stored plan plus units and directions for the new faces."""
        count_old = len(old.keys) if old else 0
        units = np.empty(len(keys), dtype=np.int64)
        if old:
            units[:count_old] = old.units
        by_person = self.params.consistency == "person"
        unit_of_person = {int(p): int(u) for p, u in zip(old.persons, old.units)} if old and by_person else {}
        stored_units = next_unit = len(old.anchors) if old else 0
        new_units: dict[int, list[int]] = {}  # a new unit -> the rows of its faces
        for row in range(count_old, len(keys)):
            person = int(persons[row])
            if by_person and person in unit_of_person:
                unit = unit_of_person[person]
            else:
                unit, next_unit = next_unit, next_unit + 1
                if by_person:
                    unit_of_person[person] = unit
            units[row] = unit
            if unit >= stored_units:
                new_units.setdefault(unit, []).append(row)
        self.leakage = self._leakage_index(embeddings, persons)
        variants, num_angles, dim = self.params.variants, len(self.angles), embeddings.shape[1]
        anchors = [old.anchors] if old else []
        shapes = {"directions": (0, variants, dim), "fakes": (0, variants), "tries": (0, variants), "leak": (0, variants, num_angles)}
        parts: dict[str, list[np.ndarray]] = {name: [getattr(old, name)] if old else [np.zeros(shape)] for name, shape in shapes.items()}
        unit_persons = [old.unit_persons] if old else []
        for unit in sorted(new_units):
            rows = new_units[unit]
            anchor = embeddings[rows].mean(axis=0)
            anchor = anchor / np.linalg.norm(anchor)
            first_key = keys[rows[0]]
            farl = [self.surveyed[keys[row]][1] for row in rows]
            person = int(persons[rows[0]])
            directions, fakes, tries, leak = self._directions(anchor, first_key, person, farl)
            anchors.append(anchor[None])
            for name, value in (("directions", directions), ("fakes", fakes), ("tries", tries), ("leak", leak)):
                parts[name].append(value[None])
            unit_persons.append(np.asarray([person]))
        return CfaPlan(keys, embeddings.astype(np.float64), persons, units,
                       np.concatenate(anchors) if anchors else np.zeros((0, dim)),
                       np.concatenate(parts["directions"]).astype(np.float64), np.concatenate(parts["fakes"]).astype(np.int64),
                       np.concatenate(parts["tries"]).astype(np.int64), np.concatenate(parts["leak"]).astype(np.float64),
                       np.concatenate(unit_persons).astype(np.int64) if unit_persons else np.zeros(0, np.int64))

    def _directions(self, anchor: np.ndarray, key: str, person: int,
                    farl: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per variant: the first direction whose targets (at every angle) pass the leakage screen, or the
        least leaky of ``max_tries``; with the fake it points to, the tries and the screen's cosines."""
        variants, tries_allowed = self.params.variants, self.params.max_tries
        candidates = self._bank_candidates(farl, variants * tries_allowed) if self.params.direction == "bank" else []
        directions, fakes, tries, leaks = [], [], [], []
        used = 0
        for variant in range(variants):
            best: tuple[float, np.ndarray, int, np.ndarray] | None = None
            attempts = 0
            for attempt in range(tries_allowed):
                attempts = attempt + 1
                try:
                    if self.params.direction == "random":
                        fake = -1
                        direction = random_direction(anchor, direction_seed(self.context.seed, key, variant, attempt), directions)
                    else:
                        if used >= len(candidates):
                            break
                        fake, used = candidates[used], used + 1
                        direction = orthogonal_direction(anchor, self._fake_identity(fake))
                except DegenerateDirection:
                    continue
                targets = np.stack([target_on_sphere(anchor, direction, angle) for angle in self.angles])
                leak = self.leakage.nearest(targets, np.full(len(targets), person))
                if best is None or leak.max() < best[0]:
                    best = (float(leak.max()), direction, fake, leak)
                if leak.max() <= self.params.tau_leak:
                    break
            if best is None:
                raise MethodError(f"method 'cfa': no usable direction for {key} (the bank's fakes all share its identity)")
            directions.append(best[1])
            fakes.append(best[2])
            tries.append(attempts)
            leaks.append(best[3])
        return np.stack(directions), np.asarray(fakes), np.asarray(tries), np.stack(leaks)

    # -- the fake bank (direction=bank) ----------------------------------------------------------------
    def ensure_bank(self) -> FakeBank:
        if self.bank is None:
            self.bank = self.stack.load_bank()
            self.pairer = FakePairer(self.bank.features, use_gpu=self.device.type == "cuda")
            self.fake_identities: dict[int, np.ndarray] = {}
        return self.bank

    def _bank_candidates(self, farl: list[np.ndarray | None], count: int) -> list[int]:
        """The fakes nearest (FaRL CLS cosine) to the unit's mean attribute feature, best first."""
        self.ensure_bank()
        query = np.mean([feature / np.linalg.norm(feature) for feature in farl if feature is not None], axis=0)
        _, indices = self.pairer.search(query[None].astype(np.float32), count)
        return [int(index) for index in indices[0] if index >= 0]

    @torch.no_grad()
    def _fake_identity(self, fake: int) -> np.ndarray:
        """ArcFace embedding of bank fake ``fake`` (rendered once, then cached)."""
        if fake not in self.fake_identities:
            generator = self.models.networks.generator
            w = torch.from_numpy(self.bank.ws[fake]).to(self.device).float()
            image = generator(w.view(1, 1, -1).repeat(1, generator.num_ws, 1), noise_mode="const")
            self.fake_identities[fake] = self.models.networks.arcface(image).float().cpu().numpy()[0].astype(np.float64)
        return self.fake_identities[fake]

    def _gallery_embeddings(self) -> np.ndarray:
        """ArcFace embeddings of the gallery's images (each taken as an aligned face crop), once per instance."""
        if self.gallery is None:
            return np.zeros((0, 1))
        if self.gallery_embeddings is not None:
            return self.gallery_embeddings
        arcface = self.models.networks.arcface
        embedded = embed_folder(self.gallery, self.crop_size, self.device,
                                lambda real: arcface(real).float().cpu().numpy()[0], self.name, "gallery")
        embeddings = [embedding for _, embedding in embedded]
        self.gallery_embeddings = np.stack(embeddings).astype(np.float64) if embeddings else np.zeros((0, 1))
        return self.gallery_embeddings

    def _leakage_index(self, embeddings: np.ndarray, persons: np.ndarray) -> LeakageIndex:
        """Every original face of the run, plus the gallery's faces (nobody's person)."""
        gallery = self._gallery_embeddings()
        if len(gallery) == 0:
            return LeakageIndex(embeddings, persons)
        return LeakageIndex(np.concatenate([embeddings, gallery]), np.concatenate([persons, np.full(len(gallery), NOBODY)]))

    def _load_plan(self) -> CfaPlan:
        if self.state is None:
            stored = self.stored_plan()
            if stored is None or stored[1] != self.plan_info():
                raise MethodError(f"method 'cfa': no plan for these options in {self.context.plan} (the survey pass makes it)")
            self.state = CfaPlan.from_arrays(stored[0])
            self.leakage = self._leakage_index(self.state.embeddings, self.state.persons)
        return self.state

    # -- pass 2 ----------------------------------------------------------------------------------------
    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        if not faces:
            return []
        plan = self._load_plan()
        missing = [face.key for face in faces if face.key not in plan.row]
        if missing:
            raise MethodError(f"method 'cfa': {missing[0]} was not surveyed (not in the plan)")
        rows = [plan.row[face.key] for face in faces]
        units = plan.units[rows]
        networks = self.models.networks
        real = CanonicalImages.from_uint8(np.stack([face.image for face in faces]), self.device)
        with torch.no_grad():
            inversion = self.models.encoder(real).float()
        originals = real_targets(real, networks, self.params.bf16)
        content = None
        if self.perceptual is not None:
            regions = np.stack([identity_region(self.landmarks(face.image, face.landmarks), face.image.shape[0]) for face in faces])
            content = ContentTarget.from_regions(real, regions)
        anchors = plan.anchors[units]
        crops: dict[Render, np.ndarray] = {}
        measures: dict[Render, dict[str, np.ndarray]] = {}
        for variant in range(self.params.variants):
            start = inversion
            for angle_index, angle in enumerate(self.angles):
                render = Render(variant, angle)
                targets = np.stack([target_on_sphere(anchor, plan.directions[unit, variant], angle)
                                    for anchor, unit in zip(anchors, units)])
                loss = CfaLoss(networks, self._tensor(anchors), self._tensor(targets),
                               torch.full((len(faces),), math.cos(math.radians(angle)), device=self.device),
                               originals.tokens, inversion, self.weights, content, self.perceptual)
                result = optimise_codes(start, self.params.trainable_layers, networks.generator, loss, self.params)
                if variant == 0 and angle_index == 0:  # started from the inversion itself: alpha at step 0
                    start_cos = result.start["cos_anchor"].float().clamp(-1, 1).cpu().numpy().astype(np.float64)
                    e4e_angle = np.degrees(np.arccos(start_cos))
                start = result.ws
                crops[render] = result.images.to_uint8()
                achieved = result.end["identity"].cpu().numpy().astype(np.float64)
                own = torch.nn.functional.cosine_similarity(result.end["identity"], originals.identity, dim=1)
                measures[render] = {
                    "achieved_angle": np.asarray([angle_between(a, e) for a, e in zip(achieved, anchors)]),
                    "target_cos": result.end["cos_target"].cpu().numpy(),
                    "leak_cos": plan.leak[units, variant, angle_index],
                    "leak_cos_after": self.leakage.nearest(achieved, plan.unit_persons[units]),
                    "id_cos_after": own.cpu().numpy(),
                    "content": result.end["content"].cpu().numpy() if "content" in result.end else None,
                }
        return [self._face_output(face, index, rows[index], crops, measures, float(e4e_angle[index]))
                for index, face in enumerate(faces)]

    def _face_output(self, face: FaceCrop, index: int, row: int, crops: dict[Render, np.ndarray],
                     measures: dict[Render, dict[str, np.ndarray]], e4e_angle: float) -> AnonymizedFace:
        plan = self.state
        unit = int(plan.units[row])
        relpath = PurePosixPath(face.key.rpartition("#")[0])
        listed = []
        for render in self.renders:
            values = measures[render]
            achieved = float(values["achieved_angle"][index])
            listed.append({
                "label": render.label,
                "path": None if render == self.renders[0] else render_relpath(relpath, render.label).as_posix(),
                "variant": render.variant,
                "target_angle": render.angle,
                "achieved_angle": achieved,
                "angle_error": achieved - render.angle,
                "target_cos": float(values["target_cos"][index]),
                "leak_cos": float(values["leak_cos"][index]),
                "leak_cos_after": float(values["leak_cos_after"][index]),
                "id_cos_after": float(values["id_cos_after"][index]),
                "content": None if values["content"] is None else float(values["content"][index]),
                "fake_index": int(plan.fakes[unit, render.variant]),
                "leak_tries": int(plan.tries[unit, render.variant]),
            })
        main = listed[0]
        metrics = {
            "cfa_target_angle": main["target_angle"],
            "cfa_achieved_angle": main["achieved_angle"],
            "cfa_target_cos": main["target_cos"],
            "cfa_angle_error": main["angle_error"],
            "cfa_variant": main["variant"],
            "cfa_leak_cos": main["leak_cos"],
            "cfa_leak_tries": main["leak_tries"],
            "cfa_leak_cos_after": main["leak_cos_after"],
            "cfa_person": int(plan.persons[row]),
            "cfa_renders": json.dumps(listed[1:]) if len(listed) > 1 else None,
            "cfa_e4e_angle": e4e_angle,
            "cfa_content": main["content"],
            "id_cos_after": main["id_cos_after"],
            "fake_index": main["fake_index"] if main["fake_index"] >= 0 else None,
            "steps": self.params.steps,
            "seed": self.context.seed,
        }
        renders = {render.label: crops[render][index] for render in self.renders[1:]}
        return AnonymizedFace(crops[self.renders[0]][index], metrics, renders)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=self.device)
