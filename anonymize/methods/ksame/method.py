"""k-Same (Newton, Sweeney and Malin 2005) as a dataset-level pipeline method.

Pass 1 (``survey``): every face's identity embedding is computed and what its space averages (the
aligned crop and its 68 landmarks, or its e4e W+ code) is spooled to a file in the plan folder. ``plan``: the faces are
grouped (:mod:`.grouping`: k to 2k-1 faces of distinct people), each group's face is computed once
(:mod:`.spaces`) and the plan (keys, groups, group faces) is stored in the output folder. Pass 2
(``anonymize``): every face gets its group's face, pasted back into its own photo.

Resume: faces in the stored plan keep their group and its face, written or not. Faces new since
then are grouped only among themselves (a group some of whose members are written never changes);
when they cannot make a group of k distinct people, their images get an error row saying so and
that ``--overwrite`` regroups everything. A face is never put in a weaker group (two photos of one
person, fewer than k people): it gets an error row, and the run exits non-zero (``anonymize run``).
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from anonymize.methods.base import AnonymizedFace, FaceCrop, MetricValue, Method, MethodContext, MethodError
from anonymize.methods.ksame.embedders import EMBEDDERS, Embedder
from anonymize.methods.ksame.grouping import k_same_groups
from anonymize.faces.landmarks import LandmarkFinder
from anonymize.methods.ksame.shapefree import MATCHES, SHAPES, group_shapes, member_output, shapefree_faces
from anonymize.methods.ksame.spaces import SPACES, LatentSpace, Spool, eigen_faces, pixel_faces, write_rows
from anonymize.methods.persons import person_ids
from anonymize.models.registry import artefact_of

FACES_PREFIX = "group-faces-"
DLIB_ARTEFACTS = ("dlib_shape_predictor_5", "dlib_face_recognition_resnet")  # what DlibRecogniser loads
LANDMARKS_68 = "dlib_shape_predictor_68"  # the shape-free space's landmarks
NO_SHAPES = np.zeros((0, 68, 2), np.float32)
SPOOL_PREFIX = "survey-"


class FaceNotGrouped(Exception):
    """A face that is in no k-Same group: its image gets an error row, the run goes on."""


@dataclass
class StoredPlan:
    keys: np.ndarray  # str, every face planned so far
    groups: np.ndarray  # int64 per key, -1: no group
    reasons: np.ndarray  # str per key: why it has no group ("" when it has one)
    sizes: np.ndarray  # int64 per group
    faces: np.ndarray  # uint8 per group: the face every member gets (a memory map once stored)
    faces_file: str | None = None
    shapes: np.ndarray = field(default_factory=lambda: NO_SHAPES)  # float32 68 x 2 per key (shape-free space only)
    group_shapes: np.ndarray = field(default_factory=lambda: NO_SHAPES)  # float32 68 x 2 per group (idem)

    def index(self) -> dict[str, int]:
        return {str(key): i for i, key in enumerate(self.keys.tolist())}


def _without(plan: StoredPlan, keys: set[str]) -> StoredPlan:
    keep = np.asarray([str(key) not in keys for key in plan.keys.tolist()], dtype=bool)
    if keep.all():
        return plan
    shapes = plan.shapes[keep] if len(plan.shapes) == len(keep) else plan.shapes
    return StoredPlan(plan.keys[keep], plan.groups[keep], plan.reasons[keep], plan.sizes, plan.faces, plan.faces_file,
                      shapes, plan.group_shapes)


def _empty_plan() -> StoredPlan:
    return StoredPlan(np.zeros(0, dtype=str), np.zeros(0, np.int64), np.zeros(0, dtype=str), np.zeros(0, np.int64),
                      np.zeros((0,), np.uint8))


class KSameMethod(Method):
    name = "ksame"
    summary = 'Replaces each face by the average of k similar faces (k-Same, dataset-level).'
    weights_needed = (*DLIB_ARTEFACTS, LANDMARKS_68)
    metric_columns = {
        "ksame_group": pa.int64(),  # the face's group (every member gets the same face)
        "ksame_group_size": pa.int32(),  # members in that group (k to 2k-1)
        "ksame_space": pa.string(),  # shapefree, pixel, eigen or latent
    }
    dataset_level = True
    # The paper replaces the whole normalised face image; pasting only the face ellipse would keep each
    # photo's own hair, ears and jaw line, which re-identify (README: audit rank-1 0.313 vs 0.187 on celeba-ids).
    # The shape-free space brings its own mask (the face outline), which the paste-back uses instead.
    default_region = "crop"

    @dataclass(frozen=True)
    class Params:
        k: int = field(default=5, metadata={"help": 'every face is replaced by the average of a group of k to 2k-1 faces of distinct people'})
        space: str = field(default="shapefree", metadata={"help": "shapefree (textures averaged in the group's mean shape) | pixel | eigen | latent (e4e W+ codes decoded by StyleGAN2; FALCO's weights)"})
        shape: str = field(default="group", metadata={"help": "shapefree: the face's shape in each output, the group's mean (keeps 1/k) or the member's own (target)"})
        region_scale: float = field(default=1.15, metadata={"help": "shapefree: the face region (68-landmark outline plus forehead) scaled about its centre; larger replaces more of the head (README: privacy against looks)"})
        match: str = field(default="photo", metadata={"help": "shapefree: give the face each member's skin colour and level of detail (photo) or keep it as averaged (none)"})
        embedder: str = field(default="dlib", metadata={"help": "identity embeddings that group the faces: dlib | arcface (FALCO's weights)"})
        components: int = field(default=100, metadata={"help": 'eigen: PCA components (at most the number of faces)'})
        # --identity-from cluster: faces closer than this are one person (0: the embedder's own, dlib 0.6 Euclidean,
        # ArcFace 0.6 cosine); larger is safer for k-Same (a group then avoids more look-alikes)
        person_distance: float = 0.0

        def validate(self) -> None:
            if self.k < 1:
                raise ValueError(f"k must be at least 1, got {self.k}")
            if self.space not in SPACES:
                raise ValueError(f"space must be one of {', '.join(SPACES)}, got {self.space!r}")
            if self.shape not in SHAPES:
                raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
            if self.match not in MATCHES:
                raise ValueError(f"match must be one of {', '.join(MATCHES)}, got {self.match!r}")
            if self.embedder not in EMBEDDERS:
                raise ValueError(f"embedder must be one of {', '.join(EMBEDDERS)}, got {self.embedder!r}")
            if self.components < 1:
                raise ValueError(f"components must be at least 1, got {self.components}")
            if not 0.5 <= self.region_scale <= 2.0:
                raise ValueError(f"region_scale must be between 0.5 and 2, got {self.region_scale}")
            if self.person_distance < 0:
                raise ValueError(f"person_distance must be at least 0, got {self.person_distance}")

    def __init__(self, context: MethodContext, options: dict[str, str] | None = None) -> None:
        super().__init__(context, options)
        needed = [artefact_of("arcface")] if self.params.embedder == "arcface" else []
        needed += [artefact_of("e4e")] if self.params.space == "latent" else []
        if needed:
            context.weights.require_all(needed, purpose=f"k-Same ({self.params.space} space, {self.params.embedder} embedder)",
                                        alternative="no download needed: -p space=pixel -p embedder=dlib")
        recogniser = list(DLIB_ARTEFACTS) if self.params.embedder == "dlib" else []
        self.sha256 = {name: context.weights.sha256(name) or "" for name in [*recogniser, *needed]}
        self._embedder: Embedder | None = None
        self._latent: LatentSpace | None = LatentSpace(context.weights, context.device) if self.params.space == "latent" else None
        self._shapefree = self.params.space == "shapefree"
        if self._shapefree:
            context.weights.require_all([LANDMARKS_68], purpose="k-Same's shape-free space (68 landmarks)")
            self.sha256[LANDMARKS_68] = context.weights.sha256(LANDMARKS_68) or ""
        self._finder: LandmarkFinder | None = None
        self._plan: StoredPlan | None = None
        self._plan_index: dict[str, int] = {}
        self._lock = threading.Lock()
        # survey state
        self._stored: StoredPlan | None = None
        self._new_keys: list[str] = []
        self._embeddings: list[np.ndarray] = []
        self._spool: Spool | None = None
        self._shape_spool: Spool | None = None
        self._spool_dir: tempfile.TemporaryDirectory | None = None

    def weights_used(self) -> dict[str, str]:
        return dict(self.sha256)

    def default_batch_size(self) -> int:
        return 32

    def privacy_caveat(self) -> str | None:
        if not self._shapefree:
            return None
        return (f"k-Same's 1/k bound covers the replaced face (outline x{self.params.region_scale:g}); each photo keeps its "
                "own hair, ears and head shape, which recognisers use (README: rank-1 27-41% on celeba-ids, chance 20%); "
                "-p region_scale=2 or -p space=pixel replace the head")

    # -- pass 1 ---------------------------------------------------------------------------------------
    def survey(self, faces: Sequence[FaceCrop]) -> None:
        if self._spool is None:
            self._start_survey()
        assert self._spool is not None and self._stored is not None
        planned = self._stored_index
        fresh = [face for face in faces if face.key not in planned]  # an image killed before it was written
        if not fresh:
            return
        crops = [face.image for face in fresh]
        self._embeddings.append(self._embed(crops))
        self._spool.append(self._latent.codes(crops) if self._latent is not None else np.stack(crops))
        if self._shape_spool is not None:
            self._shape_spool.append(np.stack([self._landmarks(face) for face in fresh]))
        self._new_keys.extend(face.key for face in fresh)

    def _landmarks(self, face: FaceCrop) -> np.ndarray:
        """The face's 68 landmarks in crop pixels (the detector's when it gave 68, else found on the crop)."""
        if self._finder is None:
            self._finder = LandmarkFinder(self.context.weights)
        return self._finder(face.image, face.landmarks).astype(np.float32)

    def _start_survey(self) -> None:
        self._stored = self._read_stored() or _empty_plan()
        # faces with a group keep it; a face left without one was never written, so it may join new faces
        self._stored_index = {key: i for key, i in self._stored.index().items() if self._stored.groups[i] >= 0}
        storage = self.context.plan
        folder = storage.local_folder() if storage is not None else None
        if folder is None:  # a dry run, or an output in an object store: spool to a local temporary folder
            self._spool_dir = tempfile.TemporaryDirectory(prefix="anonymize-ksame-")
            folder = Path(self._spool_dir.name)
        else:
            storage.remove_matching(SPOOL_PREFIX)  # from a run that was killed while surveying
        name = f"{SPOOL_PREFIX}{uuid.uuid4().hex[:8]}"
        self._spool = Spool(folder / f"{name}.raw", np.float32 if self._latent is not None else np.uint8)
        if self._shapefree:
            self._shape_spool = Spool(folder / f"{name}-shapes.raw", np.float32)

    def _embed(self, crops: list[np.ndarray]) -> np.ndarray:
        if self._embedder is None:
            self._embedder = Embedder(self.params.embedder, self.context.weights, self.context.device)
        return self._embedder(crops)

    # -- between the passes ---------------------------------------------------------------------------
    def plan(self) -> dict[str, MetricValue]:
        if self._spool is None:
            self._start_survey()
        assert self._spool is not None and self._stored is not None
        stored, k = self._stored, self.params.k
        try:
            stored = _without(stored, set(self._new_keys))  # faces left without a group earlier, surveyed again
            rows = self._spool.rows()
            shapes = self._shape_spool.rows() if self._shape_spool is not None else NO_SHAPES
            keys = self._new_keys
            embeddings = np.concatenate(self._embeddings) if self._embeddings else np.zeros((0, 1), np.float32)
            assert self._embedder is not None or not keys
            persons = (person_ids(keys, embeddings, self.context.identity_from,
                                  self.params.person_distance or self._embedder.same_person_distance,
                                  self._embedder.metric) if keys else np.zeros(0, np.int64))
            grouping = k_same_groups(embeddings, persons, k) if keys else None
            groups = grouping.groups if grouping is not None else []
            first_group = len(stored.sizes)
            face_groups = np.full(len(keys), -1, np.int64)
            for offset, members in enumerate(groups):
                face_groups[members] = first_group + offset
            reasons = [""] * len(keys)
            for face, why in (grouping.unplaced.items() if grouping is not None else []):
                reasons[face] = self._unplaced_reason(why, resumed=len(stored.sizes) > 0)
            plan = StoredPlan(
                keys=np.asarray([*stored.keys.tolist(), *keys], dtype=str),
                groups=np.concatenate([stored.groups, face_groups]),
                reasons=np.asarray([*stored.reasons.tolist(), *reasons], dtype=str),
                sizes=np.concatenate([stored.sizes, np.asarray([len(g) for g in groups], np.int64)]),
                faces=stored.faces,
                faces_file=stored.faces_file,
            )
            if self._shapefree:
                shapes = np.asarray(shapes, np.float32).reshape(-1, 68, 2)
                plan.shapes = np.concatenate([stored.shapes, shapes])
                plan.group_shapes = np.concatenate([stored.group_shapes, group_shapes(shapes, groups)])
            if keys:
                plan = self._store(plan, self._group_faces(rows, shapes, groups))
        finally:
            self._spool.remove()
            if self._shape_spool is not None:
                self._shape_spool.remove()
            if self._spool_dir is not None:
                self._spool_dir.cleanup()
        self._use(plan)
        sizes = plan.sizes
        return {"groups": int(len(sizes)), "group sizes": f"{sizes.min()}-{sizes.max()}" if len(sizes) else "-",
                "faces without a group": int((plan.groups < 0).sum())}

    def _unplaced_reason(self, why: str, resumed: bool) -> str:
        if not resumed:
            return f"no k-Same group: {why}"
        return (f"{why}, among the faces new since the stored plan (groups already written never change, so new faces "
                f"are grouped only among themselves); rerun with --overwrite to regroup every face")

    def _group_faces(self, rows: np.ndarray, shapes: np.ndarray, groups: list[list[int]]):  # noqa: ANN202 - uint8 faces
        if self._shapefree:
            return shapefree_faces(rows, shapes, groups)
        if self._latent is not None:
            return self._latent.faces(rows, groups)
        if self.params.space == "eigen":
            return eigen_faces(rows, groups, self.params.components)
        return pixel_faces(rows, groups)

    def _store(self, plan: StoredPlan, new_faces: Any) -> StoredPlan:
        """Write the group faces (earlier ones first) and then the plan that names their file; drop the old file."""
        new_count = len(plan.sizes) - (len(plan.faces) if len(plan.faces) else 0)
        storage = self.context.plan
        if storage is None:  # a dry run: the plan lives in memory only
            faces = [*plan.faces, *new_faces]
            plan.faces = np.stack(faces) if faces else plan.faces
            return plan
        name = f"{FACES_PREFIX}{uuid.uuid4().hex[:8]}.npy"
        earlier = plan.faces if len(plan.faces) else None
        storage.write_with(name, lambda path: write_rows(path, new_faces, new_count, earlier))
        arrays = {"keys": plan.keys, "groups": plan.groups, "reasons": plan.reasons, "sizes": plan.sizes,
                  "shapes": plan.shapes, "group_shapes": plan.group_shapes}
        info = {"k": self.params.k, "space": self.params.space, "embedder": self.params.embedder,
                "identity_from": self.context.identity_from, "faces_file": name}
        storage.write_plan(arrays, info)
        storage.remove_matching(FACES_PREFIX, keep=name)  # the replaced plan's faces, and any left by a killed run
        return self._read_stored() or plan

    def _read_stored(self) -> StoredPlan | None:
        stored = self.stored_plan()
        if stored is None:
            return None
        arrays, info = stored
        assert self.context.plan is not None
        if (info.get("k"), info.get("space")) != (self.params.k, self.params.space):
            raise MethodError(f"{self.context.plan}: the stored k-Same plan has k={info.get('k')} space={info.get('space')}, "
                              f"not k={self.params.k} space={self.params.space}; pass --overwrite to plan again")
        try:
            faces = self.context.plan.load_array(str(info["faces_file"]))
        except (OSError, ValueError, KeyError):
            return None  # a plan whose faces are gone is no plan: everything not written is planned again
        shapes = arrays["shapes"] if "shapes" in arrays else NO_SHAPES
        group_shapes_ = arrays["group_shapes"] if "group_shapes" in arrays else NO_SHAPES
        return StoredPlan(arrays["keys"], arrays["groups"], arrays["reasons"], arrays["sizes"], faces, str(info["faces_file"]),
                          shapes, group_shapes_)

    def _use(self, plan: StoredPlan) -> None:
        self._plan, self._plan_index = plan, plan.index()

    # -- pass 2 ---------------------------------------------------------------------------------------
    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        with self._lock:
            if self._plan is None:  # a copy that did not plan (a Ray actor, a resumed run with nothing new)
                stored = self._read_stored()
                if stored is None:
                    raise MethodError(f"method 'ksame': no k-Same plan in {self.context.plan}")
                self._use(stored)
        plan = self._plan
        assert plan is not None
        results = []
        for face in faces:
            at = self._plan_index.get(face.key)
            face_label = f"face #{face.key.rpartition('#')[2]}"
            if at is None:
                raise FaceNotGrouped(f"{face_label} was not in the survey of pass 1, so it has no k-Same group; "
                                     f"rerun with --overwrite to regroup every face")
            group = int(plan.groups[at])
            if group < 0:
                raise FaceNotGrouped(f"{face_label}: {plan.reasons[at]}")
            metrics: dict[str, MetricValue] = {"ksame_group": group, "ksame_group_size": int(plan.sizes[group]),
                                               "ksame_space": self.params.space}
            if not self._shapefree:
                results.append(AnonymizedFace(np.array(plan.faces[group]), metrics))
                continue
            output = member_output(plan.faces[group], plan.group_shapes[group], np.asarray(face.image), plan.shapes[at],
                                   self.params.shape, self.params.match, self.params.region_scale)
            results.append(AnonymizedFace(output.crop, metrics, mask=output.mask))
        return results
