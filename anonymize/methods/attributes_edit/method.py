"""AnonymousNet's stage III as a pipeline method: W+ edits of StyleGAN2 toward target attributes.

Per batch of aligned 256 px crops:

1. the targets: ``set=Eyeglasses:1,Smiling:0`` (explicit probabilities) and/or ``flip=Male,Young``
   (the other side of the face's current zero-shot estimate, ``p0 >= 0.5``) and/or
   ``randomize=Male,Young`` with ``epsilon=1`` (stage II's randomised response: the face's current
   side kept with probability e^eps / (1 + e^eps), else the other; seeded by the run seed and the
   face key) and/or ``select=k|closeness|literal`` with ``qi=Male,Eyeglasses,...`` (stage II chooses
   the quasi-identifiers' values over the whole dataset: ``k`` the k-member recoding that reaches
   ``k`` (and ``l``/``t`` on ``sensitive``) with few flips, ``closeness`` / ``literal`` Algorithm 1
   with ``t`` in its two readings, then line 11 (randomised response at ``epsilon``); S is the run's
   faces or ``reference=TABLE``; each face's values come from ``source``, zero-shot by default);
   with ``select`` the method is dataset-level: pass 1 estimates every face's attributes, the
   plan stores each face's chosen values, pass 2 renders them;
2. the directions: for each target attribute the InterFaceGAN boundary fitted on the fake bank
   (:mod:`.boundaries`; fitted once, cached beside the bank), made conditional on the attributes of
   ``condition`` and the other targets, or the user's file (``direction_files=Smiling:smile.pt``);
3. the linear edit ``w = e4e(x) + sum_a strength (t_a - p0_a) n_a`` on every W+ layer;
4. a short optimisation of the ``trainable_layers`` through the shared W+ loop with the loss of
   :mod:`.objective` (targets, the others kept, FaRL tokens, ``identity=none|falco|cfa``; none by
   default, as the paper's StarGAN objective).

The output is the generated face at the generator's resolution, pasted back like FALCO's. Nothing is
random but the bank (drawn from the run seed) and, for ``identity=cfa``, the new identity's direction
(seeded by the run seed and the face key), so a face's result does not depend on its batch.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from anonymize.attributes.ppas import (
    Requirements,
    Selection,
    SelectionError,
    k_member_recoding,
    keep_probability,
    population_shares,
    randomized_response,
    select_attributes_closeness,
    select_attributes_literal,
)
from anonymize.attributes.io import read_attribute_table
from anonymize.attributes.measure import codes_of
from anonymize.attributes.privacy import equivalence_classes
from anonymize.attributes.sources import create_source
from anonymize.attributes.table import CELEBA_ATTRIBUTES, AttributeTable
from anonymize.attributes.zero_shot import ZeroShotPrompts, parse_attribute_names
from anonymize.methods.latent.columns import ID_COS_AFTER, OPTIMISATION
from anonymize.methods.attributes_edit.boundaries import (
    CLASSIFIERS,
    DEFAULT_FRACTION,
    DirectionError,
    conditional_direction,
    load_direction_file,
    load_or_fit_boundaries,
)
from anonymize.methods.attributes_edit.objective import IDENTITY_MODES, AttributeEditLoss, EditWeights, IdentityTargets
from anonymize.errors import AnonymizeError
from anonymize.methods.base import AnonymizedFace, FaceCrop, Method, MethodContext, MethodError
from anonymize.methods.cfa.objective import CfaWeights
from anonymize.methods.cfa.sphere import direction_seed, random_direction, target_on_sphere
from anonymize.methods.latent.bank import FakeBank
from anonymize.methods.latent.optimize import LoopResult, optimise_codes, real_targets
from anonymize.methods.latent.params import LatentParams
from anonymize.methods.latent.stack import open_latent_stack
from anonymize.models.images import CanonicalImages
from anonymize.models.registry import load_farl_text_model

# stage II over the dataset: none, k-member recoding, Algorithm 1 read for its aim (S_E over the other QIs), read literally
SELECTIONS = ("", "k", "closeness", "literal")
ALGORITHM_1 = ("closeness", "literal")  # the selections that end with Algorithm 1's line 11, Perturbation(A', epsilon)
# where stage II reads each face's current values: stage I's sources (anonymize.attributes.sources)
SURVEY_SOURCES = ("zero-shot", "labels", "probe", "estimators", "landmarks")

# InterFaceGAN's conditioned attributes (gender, age, eyeglasses, smile): an edit leaves them alone by default.
DEFAULT_CONDITIONS = "Male,Young,Eyeglasses,Smiling"


def parse_set(text: str) -> dict[str, float]:
    """``"Eyeglasses:1,Smiling:0"`` -> {name: target probability in [0, 1]}."""
    targets: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition(":")
        try:
            probability = float(value) if sep else math.nan
        except ValueError:
            probability = math.nan
        if not 0 <= probability <= 1:
            raise ValueError(f"set: {item!r} is not Attribute:probability with a probability in [0, 1]")
        parse_attribute_names(name, "set")
        targets[name.strip()] = probability
    return targets


def parse_direction_files(text: str) -> dict[str, Path]:
    """``"Smiling:/d/smile.pt,Young:age.npy"`` -> {name: path}."""
    files: dict[str, Path] = {}
    for item in (part.strip() for part in text.split(",")):
        if item:
            name, sep, path = item.partition(":")
            if not sep or not path:
                raise ValueError(f"direction_files: {item!r} is not Attribute:path")
            parse_attribute_names(name, "direction_files")
            files[name.strip()] = Path(path).expanduser()
    return files


@dataclass
class EditResult:
    inversion: torch.Tensor  # [B, num_ws, w_dim] e4e(x)
    initial: torch.Tensor  # the same after the linear edit along the directions
    loop: LoopResult  # the optimisation from ``initial``
    start: torch.Tensor  # [B, A] the real faces' zero-shot probabilities
    goals: torch.Tensor  # [B, A] the targets (= start where not a target)
    is_target: torch.Tensor  # [B, A] bool
    id_cos: torch.Tensor  # [B] ArcFace cosine of the written face to the original


class AttributeEditMethod(Method):
    name = "attributes"
    summary = 'Edits StyleGAN2 codes toward target attributes with a new identity (AnonymousNet).'
    weights_needed = ("e4e_ffhq_encode", "arcface_ir_se50", "farl_ep64", "stylegan2_ffhq1024_genforce")
    metric_columns = {
        "attr_edit_targets": pa.string(),  # JSON attribute -> target probability (set, or flip's side)
        "attr_edit_start": pa.string(),  # JSON attribute -> the original face's zero-shot probability
        "attr_edit_achieved": pa.string(),  # JSON attribute -> the written face's zero-shot probability
        "attr_edit_keep_drift": pa.float32(),  # mean |change| of the non-target attributes' probabilities
        "attr_edit_identity": pa.string(),  # the identity loss ("falco", "cfa", "none")
        **ID_COS_AFTER,
        **OPTIMISATION,
    }
    crop_size = 256
    replaces_aligned_image = True
    default_region = "crop"

    @dataclass(frozen=True)
    class Params(LatentParams):
        set: str = field(default="", metadata={"help": "explicit targets, e.g. \"Eyeglasses:1,Smiling:0\""})
        flip: str = field(default="", metadata={"help": "attributes to turn to the other side of the face's estimate, e.g. \"Male,Young\""})
        randomize: str = field(default="", metadata={"help": "attributes whose target is the face's side after randomised response, e.g. \"Male,Young\""})
        epsilon: float = field(default=1.0, metadata={"help": "randomize, and select=closeness|literal (Algorithm 1's line 11): "
                                                              "each value kept with probability e^eps / (1 + e^eps)"})
        select: str = field(default="", metadata={"help": "stage II over the dataset: \"k\" (k-member recoding), \"closeness\" (Algorithm 1, "
                                                          "S_E over the other QIs) or \"literal\" (Algorithm 1 read literally); \"\" none"})
        perturb: bool = field(default=True, metadata={"help": "select=closeness|literal: apply Algorithm 1's line 11 (randomised response at epsilon)"})
        reference: str = field(default="", metadata={"help": "select: an attribute table (`anonymize attributes`) whose distributions are S "
                                                             "(default: the run's own faces)"})
        source: str = field(default="zero-shot", metadata={"help": "select: where stage II reads each face's values: zero-shot, labels, "
                                                                   "probe, estimators or landmarks (stage I's sources)"})
        labels: str = field(default="", metadata={"help": "source=labels: the labels file (list_attr_celeba.txt, CSV or Parquet)"})
        qi: str = field(default="", metadata={"help": "select: the quasi-identifier attributes whose values stage II chooses, e.g. \"Male,Eyeglasses\""})
        sensitive: str = field(default="", metadata={"help": "select=k: attributes that must stay l-diverse / t-close in every class"})
        k: int = field(default=5, metadata={"help": "select=k: the smallest class over the quasi-identifiers"})
        l: int = field(default=0, metadata={"help": "select=k: distinct-l on the sensitive attributes (0: not required)"})
        t: float = field(default=0.0, metadata={"help": "select=k: t-closeness on the sensitive attributes (0: not required); "
                                                        "select=closeness|literal: Algorithm 1's t"})
        identity: str = field(default="none", metadata={"help": "identity loss: \"none\" (the paper's StarGAN objective has none), "
                                                                "\"falco\" (|cos - m|), \"cfa\" (new identity at `angle`)"})
        margin: float = field(default=0.0, metadata={"help": "identity=falco: m, the target ArcFace cosine to the original (--margin)"})
        direction_files: str = field(default="", metadata={"help": "user directions instead of bank boundaries, e.g. \"Smiling:smile.pt\""})
        condition: str = field(default=DEFAULT_CONDITIONS, metadata={"help": "boundaries made orthogonal to these attributes' (and the other targets')"})
        strength: float = field(default=3.0, metadata={"help": "the linear step: strength * (target - current probability) along the unit normal"})
        fraction: float = field(default=DEFAULT_FRACTION, metadata={"help": "top/bottom share of the bank each boundary is fitted on"})
        classifier: str = field(default="svm", metadata={"help": "\"svm\" (linear SVM) or \"logreg\""})
        lambda_target: float = 1.0
        lambda_keep: float = 1.0
        lambda_tokens: float = 0.01
        lambda_id: float = 10.0
        angle: float = field(default=70.0, metadata={"help": "identity=cfa: degrees from the original identity to the new one"})
        steps: int = field(default=20, metadata={"help": "(a shared option, with this method's default)"})
        trainable_layers: tuple[int, ...] = (2, 3, 4, 5, 6, 7)  # W+ layers optimised after the linear edit

        def validate(self) -> None:
            targets, flips = parse_set(self.set), parse_attribute_names(self.flip, "flip") if self.flip.strip() else ()
            randomized = parse_attribute_names(self.randomize, "randomize") if self.randomize.strip() else ()
            selected = self.selected()
            if not targets and not flips and not randomized and not selected:
                raise ValueError("no target attribute: give -p set=Eyeglasses:1 and/or -p flip=Smiling and/or -p randomize=Male "
                                 "and/or -p select=k -p qi=Male,Eyeglasses")
            again = sorted(set(selected) & (set(targets) | set(flips) | set(randomized)))
            if again:
                raise ValueError(f"{', '.join(again)}: in qi and in set, flip or randomize")
            both = sorted(set(targets) & set(flips))
            if both:
                raise ValueError(f"{', '.join(both)}: both in set and flip")
            twice = sorted(set(randomized) & (set(targets) | set(flips)))
            if twice:
                raise ValueError(f"{', '.join(twice)}: in randomize and in set or flip")
            keep_probability(self.epsilon)  # a clear error for a negative or infinite epsilon
            parse_direction_files(self.direction_files)
            if self.condition.strip():
                parse_attribute_names(self.condition, "condition")
            if self.identity not in IDENTITY_MODES:
                raise ValueError(f"identity must be one of {', '.join(IDENTITY_MODES)}, got {self.identity!r}")
            if self.classifier not in CLASSIFIERS:
                raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}")
            if not 0 < self.fraction <= 0.5:
                raise ValueError(f"fraction must be in (0, 0.5], got {self.fraction}")
            if min(self.lambda_target, self.lambda_keep, self.lambda_tokens, self.lambda_id) < 0:
                raise ValueError("the lambdas must be >= 0")
            if not 0 < self.angle <= 180:
                raise ValueError(f"angle must be in (0, 180] degrees, got {self.angle}")
            if not 0 <= self.margin <= 1:
                raise ValueError(f"margin={self.margin:g}: expected 0 <= m <= 1")
            if self.margin and self.identity != "falco":
                raise ValueError(f"margin is the target of identity=falco (got identity={self.identity}): add -p identity=falco")
            if self.source not in SURVEY_SOURCES:
                raise ValueError(f"source must be one of {', '.join(SURVEY_SOURCES)}, got {self.source!r}")
            if (self.source != "zero-shot" or self.reference) and not selected:
                raise ValueError("source and reference are stage II's: give -p select=closeness|literal|k -p qi=...")
            if self.source == "labels" and not self.labels:
                raise ValueError("source=labels needs the labels file: -p labels=list_attr_celeba.txt")
            if self.labels and self.source != "labels":
                raise ValueError(f"labels is the file of source=labels (got source={self.source})")
            for name, path in (("reference", self.reference), ("labels", self.labels)):
                if path and not Path(path).expanduser().is_file():
                    raise ValueError(f"{name}={path}: no such file")
            super().validate()

        def selected(self) -> tuple[str, ...]:
            """The quasi-identifiers stage II chooses (``select``), checked; () without ``select``."""
            if self.select not in SELECTIONS:
                raise ValueError(f"select must be one of {', '.join(s or repr(s) for s in SELECTIONS)}, got {self.select!r}")
            if not self.select:
                if self.qi.strip():
                    raise ValueError("qi needs -p select=closeness, -p select=literal or -p select=k")
                return ()
            if not self.qi.strip():
                raise ValueError(f"select={self.select} needs the quasi-identifiers: -p qi=Male,Eyeglasses,...")
            if self.k < 1 or self.l < 0 or not 0 <= self.t <= 1:
                raise ValueError("k must be >= 1, l >= 0 and t in [0, 1]")
            if self.select in ALGORITHM_1 and self.t <= 0:
                raise ValueError(f"select={self.select} needs Algorithm 1's t: -p t=0.3")
            if self.sensitive.strip():
                parse_attribute_names(self.sensitive, "sensitive")
            return parse_attribute_names(self.qi, "qi")

    def __init__(self, context: MethodContext, options: dict[str, str] | None = None) -> None:
        super().__init__(context, options)
        params = self.params
        self.targets = parse_set(params.set)
        self.flips = parse_attribute_names(params.flip, "flip") if params.flip.strip() else ()
        self.randomized = parse_attribute_names(params.randomize, "randomize") if params.randomize.strip() else ()
        self.selected = params.selected()
        self.sensitive = parse_attribute_names(params.sensitive, "sensitive") if params.sensitive.strip() else ()
        self.edited = (*self.targets, *self.flips, *self.randomized, *self.selected)
        self.dataset_level = bool(self.selected)  # stage II needs every face's attributes first
        self.surveyed: dict[str, np.ndarray] = {}  # face key -> its probabilities [A] (pass 1; stage II's columns from `source`)
        self.chosen: dict[str, np.ndarray] | None = None  # face key -> the qi values stage II chose (the plan)
        self.files = parse_direction_files(params.direction_files)
        self.loss_recognisers = () if params.identity == "none" else ("arcface-ir-se50",)
        stack = self.stack = open_latent_stack(context, params, self.name, "attribute edits (FALCO's weights)",
                                               {"trainable_layers": params.trainable_layers})
        self.device, self.artefacts, self.sha256, self.models = stack.device, stack.artefacts, stack.sha256, stack.models
        try:  # stage II's own inputs, checked before any face: the reference S and stage I's source
            self.reference = self._reference() if params.reference else None
            self.survey_source = None if params.source == "zero-shot" or not self.selected else create_source(
                params.source, context.weights, str(self.device),
                {"labels": params.labels} if params.source == "labels" else None)
        except (AnonymizeError, ValueError, KeyError, OSError) as exc:
            raise MethodError(f"method 'attributes': {' '.join(str(exc.args[0] if exc.args else exc).split())}") from None
        generator = self.models.networks.generator
        try:
            self.user_directions = {name: load_direction_file(path, generator.num_ws, generator.w_dim)
                                    for name, path in self.files.items()}
        except DirectionError as exc:
            raise MethodError(f"method 'attributes': {exc}") from None
        self.prompts = ZeroShotPrompts.build(load_farl_text_model(context.weights, self.device), CELEBA_ATTRIBUTES)
        self.weights = EditWeights(params.lambda_target, params.lambda_keep, params.lambda_tokens, params.lambda_id,
                                   CfaWeights(lambda_ang=params.lambda_id, lambda_attr=0.0))
        self.bank_key = stack.bank_key
        self.directions: dict[str, np.ndarray] | None = None  # name -> [num_ws, w_dim], on the first batch
        self.bank: FakeBank | None = None

    # -- what the manifest records ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        bank_needed = any(name not in self.files for name in self.edited)
        return {**super().describe(), **({"bank": self.bank_key.as_dict()} if bank_needed else {})}

    def weights_used(self) -> dict[str, str]:
        return dict(self.sha256)

    def default_batch_size(self) -> int:
        return self.stack.batch_size()

    # -- the directions --------------------------------------------------------------------------------
    def ensure_directions(self) -> dict[str, np.ndarray]:
        """Each edited attribute's direction [num_ws, w_dim]: the user's file, or its conditional bank boundary."""
        if self.directions is not None:
            return self.directions
        generator = self.models.networks.generator
        directions = dict(self.user_directions)
        fitted = [name for name in self.edited if name not in directions]
        if fitted:
            conditions = parse_attribute_names(self.params.condition, "condition") if self.params.condition.strip() else ()
            names = tuple(dict.fromkeys((*fitted, *self.edited, *conditions)))
            normals = dict(zip(names, self.bank_boundaries(names)))
            for name in fitted:
                others = [normals[other] for other in dict.fromkeys((*self.edited, *conditions)) if other != name]
                try:
                    normal = conditional_direction(normals[name], np.stack(others) if others else np.zeros((0, generator.w_dim)))
                except DirectionError as exc:
                    raise MethodError(f"method 'attributes': {name}: {exc}") from None
                directions[name] = np.repeat(normal[None], generator.num_ws, axis=0)
        self.directions = directions
        return directions

    def bank_boundaries(self, names: Sequence[str]) -> np.ndarray:
        """Unit normals [len(names), w_dim] fitted on the bank's W codes and zero-shot labels (cached)."""
        networks = self.models.networks
        if self.bank is None:
            self.bank = self.stack.load_bank()
        prompts = ZeroShotPrompts(tuple(names), torch.stack([self.prompts.embeddings[CELEBA_ATTRIBUTES.index(n)] for n in names]),
                                  self.prompts.logit_scale)
        with torch.no_grad():
            scores = prompts.logits(torch.from_numpy(self.bank.features).to(self.device)).cpu().numpy()
        try:
            normals, _ = load_or_fit_boundaries(self.bank.path.with_name(self.bank_key.filename), self.bank_key.farl_sha256,
                                                self.bank.ws, scores, names, self.params.fraction, self.params.classifier)
        except DirectionError as exc:
            raise MethodError(f"method 'attributes': the fake bank ({self.bank.path.name}): {exc}; raise bank_size") from None
        return normals

    # -- the method ------------------------------------------------------------------------------------
    def goals(self, start: torch.Tensor, keys: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Per face [B, A]: the target probability of every attribute, and which attributes are targets.

        ``keys``: the faces' keys, which seed the randomised response (so a face's draw does not depend on its batch).
        """
        goals, is_target = start.clone(), torch.zeros_like(start, dtype=torch.bool)
        for name, value in self.targets.items():
            column = CELEBA_ATTRIBUTES.index(name)
            goals[:, column], is_target[:, column] = value, True
        for name in self.flips:
            column = CELEBA_ATTRIBUTES.index(name)
            goals[:, column], is_target[:, column] = (start[:, column] < 0.5).float(), True
        if self.randomized:
            columns = [CELEBA_ATTRIBUTES.index(name) for name in self.randomized]
            sides = (start[:, columns] >= 0.5).cpu().numpy().astype(np.int8)
            for row in range(start.shape[0]):
                key = keys[row] if row < len(keys) else str(row)
                drawn = randomized_response(sides[row], self.params.epsilon, [self.context.seed, zlib.crc32(key.encode())]).codes
                goals[row, columns] = torch.from_numpy(drawn.astype(np.float32)).to(goals.device)
            is_target[:, columns] = True
        if self.selected:
            columns = [CELEBA_ATTRIBUTES.index(name) for name in self.selected]
            chosen = self.chosen_values(keys)
            goals[:, columns] = torch.from_numpy(chosen.astype(np.float32)).to(goals.device)
            is_target[:, columns] = True
        return goals, is_target

    # -- stage II over the dataset (select=...) --------------------------------------------------------
    def survey(self, faces: Sequence[FaceCrop]) -> None:
        """Pass 1: every face's zero-shot attribute probabilities; stage II's columns from ``source`` when it is another."""
        real = CanonicalImages.from_uint8(np.stack([face.image for face in faces]), self.device)
        with torch.no_grad():
            probabilities = self.prompts.probabilities(self.models.networks.farl(real).cls.float()).cpu().numpy()
        if self.survey_source is not None:
            try:
                table = self.survey_source.estimate(faces)
            except (AnonymizeError, ValueError) as exc:
                raise MethodError(f"method 'attributes': source={self.params.source}: {exc}") from None
            for name in (*self.selected, *self.sensitive):  # NaN where the source says nothing: plan() refuses it
                column = CELEBA_ATTRIBUTES.index(name)
                probabilities[:, column] = table.probabilities[:, table.names.index(name)] if name in table.names else np.nan
        self.surveyed.update((face.key, row) for face, row in zip(faces, probabilities))

    def _reference(self) -> AttributeTable:
        """The reference table whose distributions are S; it must hold the stage II attributes."""
        path = Path(self.params.reference).expanduser()
        table = read_attribute_table(path)
        names = (*self.selected, *self.sensitive)
        missing = [name for name in names if name not in table.names or np.isnan(table.select((name,)).probabilities).all()]
        if missing:
            raise ValueError(f"reference={path}: no values of {', '.join(missing)} (source {table.source})")
        return table

    def plan(self) -> dict[str, Any]:
        """Stage II on every face (stored faces and new ones), keeping what a stored plan chose."""
        stored = self.stored_plan()
        keys = [str(key) for key in stored[0]["keys"]] if stored else []
        probabilities = [row for row in stored[0]["probabilities"]] if stored else []
        chosen = {key: row for key, row in zip(keys, stored[0]["chosen"])} if stored else {}
        new = [key for key in self.surveyed if key not in chosen]
        keys += new
        probabilities += [self.surveyed[key] for key in new]
        if not keys:
            self.chosen = {}
            return {"faces": 0}
        columns = [CELEBA_ATTRIBUTES.index(name) for name in self.selected]
        everything = np.stack(probabilities)
        stage_two = [*columns, *(CELEBA_ATTRIBUTES.index(name) for name in self.sensitive)]
        unknown = np.argwhere(np.isnan(everything[:, stage_two]))
        if unknown.size:  # never a silent 0: a face stage II cannot read stops the plan
            row, column = unknown[0]
            raise MethodError(f"method 'attributes': source={self.params.source} gives no {CELEBA_ATTRIBUTES[stage_two[column]]} "
                              f"for {keys[row]} ({len(unknown)} value(s) missing); choose qi/sensitive it estimates")
        codes = (everything[:, columns] >= 0.5).astype(np.int8)
        try:
            selection = self._select(codes, everything, keys)
        except SelectionError as exc:
            raise MethodError(f"method 'attributes': select={self.params.select}: {exc}") from None
        for row, key in enumerate(keys):
            chosen.setdefault(key, selection.codes[row])  # a face already written keeps its values
        self.chosen = chosen
        if self.context.plan is not None:
            self.context.plan.write_plan({"keys": np.asarray(keys), "probabilities": everything.astype(np.float32),
                                               "chosen": np.stack([chosen[key] for key in keys]).astype(np.int8)},
                       {"select": self.params.select, "qi": list(self.selected), "source": self.params.source,
                        "reference": self.params.reference or None})
        released = np.stack([chosen[key] for key in keys])
        return {"faces": len(keys), "values changed": int((released != codes).sum()),
                "smallest class": int(equivalence_classes(released).sizes.min())}

    def _select(self, codes: np.ndarray, probabilities: np.ndarray, keys: Sequence[str]) -> Selection:
        """Stage II's values for every face; Algorithm 1 ends with line 11, randomised response per face (seeded by its key)."""
        params = self.params
        population = None if self.reference is None else population_shares(codes_of(self.reference, self.selected))
        if params.select in ALGORITHM_1:
            if params.select == "literal":
                selection = select_attributes_literal(codes, params.t, self.selected, population)
            else:
                selection = select_attributes_closeness(codes, params.t, population)
            if not params.perturb:
                return selection
            perturbed = np.stack([randomized_response(row, params.epsilon, [self.context.seed, zlib.crc32(key.encode())]).codes
                                  for row, key in zip(selection.codes, keys)])
            return Selection(perturbed, perturbed != codes)
        sensitive = reference = None
        if self.sensitive:
            columns = [CELEBA_ATTRIBUTES.index(name) for name in self.sensitive]
            sensitive = (probabilities[:, columns] >= 0.5).astype(np.int8)
            reference = None if self.reference is None else codes_of(self.reference, self.sensitive)
        requirements = Requirements(params.k, params.l or None, params.t or None)
        return k_member_recoding(codes, requirements, sensitive, reference)

    def chosen_values(self, keys: Sequence[str]) -> np.ndarray:
        """[B, len(qi)] the values stage II chose for these faces (read from the stored plan by a copy that did not plan)."""
        if self.chosen is None:
            stored = self.stored_plan()
            self.chosen = {str(key): row for key, row in zip(stored[0]["keys"], stored[0]["chosen"])} if stored else {}
        missing = [key for key in keys if key not in self.chosen]
        if missing:
            raise MethodError(f"method 'attributes': {missing[0]} is not in the stage II plan; re-run with --overwrite")
        return np.stack([self.chosen[key] for key in keys])

    def edit(self, faces: Sequence[FaceCrop]) -> EditResult:
        """Targets, linear edit and optimisation of a batch (what :meth:`anonymize` writes and records)."""
        directions = self.ensure_directions()
        networks = self.models.networks
        real = CanonicalImages.from_uint8(np.stack([face.image for face in faces]), self.device)
        originals = real_targets(real, networks, self.params.bf16)
        with torch.no_grad():
            inversion = self.models.encoder(real).float()
            start = self.prompts.probabilities(networks.farl(real).cls.float())
        goals, is_target = self.goals(start, [face.key for face in faces])
        initial = inversion.clone()
        for name in self.edited:
            column = CELEBA_ATTRIBUTES.index(name)
            step = self.params.strength * (goals[:, column] - start[:, column])  # [B]
            initial = initial + step[:, None, None] * torch.from_numpy(directions[name]).to(self.device)
        identity = self.identity_targets(faces, originals.identity, inversion)
        loss = AttributeEditLoss(networks, self.prompts, goals, is_target, start, originals.tokens, identity, self.weights)
        result = optimise_codes(initial, self.params.trainable_layers, networks.generator, loss, self.params)
        with torch.no_grad():
            id_cos = torch.nn.functional.cosine_similarity(networks.arcface(result.images).float(), originals.identity, dim=1)
        return EditResult(inversion, initial, result, start, goals, is_target, id_cos)

    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        if not faces:
            return []
        edit = self.edit(faces)
        crops = edit.loop.images.to_uint8()
        achieved = edit.loop.end["probabilities"]
        outputs = []
        for i in range(len(faces)):
            def named(values: torch.Tensor) -> str:
                return json.dumps({name: round(float(values[CELEBA_ATTRIBUTES.index(name)]), 4) for name in self.edited})

            metrics = {
                "attr_edit_targets": named(edit.goals[i]),
                "attr_edit_start": named(edit.start[i]),
                "attr_edit_achieved": named(achieved[i]),
                "attr_edit_keep_drift": float((achieved[i] - edit.start[i]).abs()[~edit.is_target[i]].mean()),
                "attr_edit_identity": self.params.identity,
                "id_cos_after": float(edit.id_cos[i]),
                "steps": self.params.steps,
                "seed": self.context.seed,
            }
            outputs.append(AnonymizedFace(crops[i], metrics))
        return outputs

    def identity_targets(self, faces: Sequence[FaceCrop], anchors: torch.Tensor, inversion: torch.Tensor) -> IdentityTargets:
        mode = self.params.identity
        if mode != "cfa":
            return IdentityTargets(mode, anchors, self.params.margin)
        rows = anchors.cpu().double().numpy()
        new = [target_on_sphere(e, random_direction(e, direction_seed(self.context.seed, face.key, 0, 0)), self.params.angle)
               for e, face in zip(rows, faces)]
        cos_alpha = torch.full((len(faces),), math.cos(math.radians(self.params.angle)), device=self.device)
        return IdentityTargets(mode, anchors, targets=torch.tensor(np.stack(new), dtype=torch.float32, device=self.device),
                               cos_alpha=cos_alpha, inversion=inversion)

