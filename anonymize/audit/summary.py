"""The audit summary as typed records: what ``audit-summary.json`` holds, key for key.

The audit computes every figure first and builds one :class:`AuditSummary` at the end; nothing
changes it afterwards. ``to_json()`` gives the dict written to ``audit-summary.json`` (the keys and
their order are those the audit has always written) and ``from_json()`` reads one back exactly
(``AuditSummary.from_json(s.to_json()).to_json() == s.to_json()``), so code reads attributes
(``summary.reid.rank1_rate``) instead of string-key paths, and a summary read from disk is the same
object the audit built. Each record nests where the JSON nests. A key the JSON holds only sometimes
(a recogniser's protocols, the human goal, the written files) is a field that is None when absent and
is then left out of the JSON.

This module is a leaf (standard library only): the figures' computations import it, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self


def _plain(value: Any) -> Any:
    """A JSON value as a fresh copy (lists and dicts are never shared between a record and its JSON)."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _json(value: Any) -> Any:
    """A field's JSON: records by their ``to_json``, maps and lists of records item by item."""
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json(item) for item in value]
    return value


def _map_of(record: type[_Record]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Decoder of a ``{name: record}`` JSON object, in the JSON's order."""
    return lambda data: {key: record.from_json(item) for key, item in data.items()}


def _list_of(record: type[_Record]) -> Callable[[list[Any]], list[Any]]:
    return lambda data: [record.from_json(item) for item in data]


class _Record:
    """A record whose fields are its JSON keys, in the JSON's order.

    ``_OPTIONAL``: keys left out of the JSON when the field is None (and read as None when absent);
    ``_DECODE``: how a nested field's JSON becomes its record (every other field is a plain JSON value).
    """

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    _DECODE: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    def to_json(self) -> dict[str, Any]:
        """The record's JSON object, keys in field order (fresh containers: changing it never changes the record)."""
        return {item.name: _json(getattr(self, item.name)) for item in fields(self)  # type: ignore[arg-type]
                if not (item.name in self._OPTIONAL and getattr(self, item.name) is None)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The record of a JSON object this class wrote; a missing key that is not optional is a KeyError."""
        values = {}
        for item in fields(cls):  # type: ignore[arg-type]
            value = data.get(item.name) if item.name in cls._OPTIONAL else data[item.name]
            decode = cls._DECODE.get(item.name)
            values[item.name] = decode(value) if decode is not None and value is not None else _plain(value)
        return cls(**values)


# ---- settings recorded in the summary ---------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds(_Record):
    """The release gate's limits (recorded in the summary, so a verdict can be read with them)."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"max_possible_faces"})

    max_reid_rate: float = 0.05  # share of faces still verified as their original
    max_rank1_rate: float | None = None  # share re-identified rank-1 (off by default: chance is 1/N on small sets)
    min_detection_rate: float = 0.0  # share of faces still detected in the output (a utility measure; off by default)
    max_missed_faces: int = 0
    max_metadata_leaks: int = 0
    # The human goal (camouflage): machine matching is the utility, a visual-change floor the leak.
    min_match_rate: float = 0.9  # share of faces the judge must still match to their original
    max_face_psnr_db: float = 25.0  # a face box closer than this to its original still shows the original face
    max_face_ssim: float = 0.8  # ... as does one more similar than this
    # possible faces left unchanged and not ruled out by the face mesh (None in summaries written before this gate)
    max_possible_faces: int | None = 0


@dataclass(frozen=True)
class RunOrigin(_Record):
    """What made the anonymized folder, from its manifest (``anonymize audit compare`` labels runs with it)."""

    method: str | None
    options: dict[str, Any]
    region: Any

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunOrigin:
        """Lenient: a summary written by hand or by an older anonymize may hold only some of the keys."""
        return cls(data.get("method"), _plain(data.get("options") or {}), _plain(data.get("region")))


# ---- per released image -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MetadataLeaks(_Record):
    leaks: int
    files: dict[str, str]  # output path -> what it carries (the first 200)


@dataclass(frozen=True)
class ImageQuality(_Record):
    """Outside the faces (the background the method should leave alone) and over whole images."""

    psnr_outside_db: float | None
    ssim_outside: float | None
    images_measured: int
    fid: float | None
    fid_status: str
    farl_frechet_proxy: float | None
    farl_frechet_proxy_status: str


@dataclass(frozen=True)
class Unaudited(_Record):
    count: int
    files: dict[str, str]  # output path -> why it could not be audited (the first 200)


@dataclass(frozen=True)
class ContentCopies(_Record):
    """Outputs that are copies of an original other than the source they are paired with, found by content whatever
    the manifest says (:mod:`anonymize.audit.content_check`)."""

    outputs: int  # outputs compared with every original
    originals: int  # originals they were compared with (released or not)
    measures: list[str]  # what was compared: image hash, face hash, each recogniser
    copies: list[dict[str, Any]]  # output_path, original_path, paired_source, evidence (the first 200)
    count: int  # every copy found
    unread: list[str]  # files that could not be decoded for the comparison


# ---- per face ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection(_Record):
    detected: int
    rate: float | None


@dataclass(frozen=True)
class Reidentification(_Record):
    """dlib's verification and rank-1 figures over the confirmed faces."""

    reidentified: int
    verification_rate: float | None
    rank1_hits: int
    rank1_rate: float | None
    mean_distance: float | None
    median_distance: float | None
    min_distance: float | None
    rank1_chance: float | None
    rank1_meaning: str


@dataclass(frozen=True)
class FaceQuality(_Record):
    """Inside each face box (CFA-Net Table 3): how much of the face survived."""

    psnr_face_db: float | None
    ssim_face: float | None
    lpips_face: float | None
    ms_ssim_face: float | None = None  # AnonymousNet's Table 1; absent from summaries written before it

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"ms_ssim_face"})


@dataclass(frozen=True)
class MissedFaces(_Record):
    count: int
    faces: list[str]  # "<source>#<face>" (the first 100)


@dataclass(frozen=True)
class PossibleFaces(_Record):
    """Faces one detector found and no other confirmed; those left unchanged count against the gate unless the
    face mesh rules them out (anonymize.audit.mesh_check)."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"ruled_out", "counted", "mesh"})

    count: int
    unchanged: int
    faces: list[str]
    ruled_out: int | None = None  # unchanged ones where no face mesh fits (None: an audit before the check)
    counted: int | None = None  # unchanged and not ruled out: gated by max_possible_faces
    mesh: str | None = None  # the second model, or why it was not there


@dataclass(frozen=True)
class IdentityCheck(_Record):
    """How well the recogniser separates the originals' identities; ``reason`` alone when not available."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({
        "reason", "identities", "faces", "same_pairs", "different_pairs", "mean_same", "mean_different", "roc_auc",
        "same_below_threshold", "different_above_threshold", "threshold", "separated"})

    available: bool
    reason: str | None = None
    identities: int | None = None
    faces: int | None = None
    same_pairs: int | None = None
    different_pairs: int | None = None
    mean_same: float | None = None
    mean_different: float | None = None
    roc_auc: float | None = None
    same_below_threshold: float | None = None
    different_above_threshold: float | None = None
    threshold: float | None = None
    separated: bool | None = None


# ---- recognisers and the papers' protocols ----------------------------------------------------------


@dataclass(frozen=True)
class TprAtFar(_Record):
    far: float
    threshold: float | None  # None: no different-person pair
    tpr: float | None
    realised_far: float | None  # share of different-person pairs under the threshold
    resolved: bool  # at least 1 / FAR different-person pairs, so the FAR is actually reachable


@dataclass(frozen=True)
class ParrotResult(_Record):
    probes: int  # anonymized faces with at least one other anonymized face of the same person
    rank1_rate: float | None
    mean_rank: float | None
    chance: float | None


@dataclass(frozen=True)
class AuditSample(_Record):
    """``--sample N``: the images audited face by face and the figures' 95% Wilson intervals (anonymize.audit.sampling)."""

    images: int  # audited face by face
    released: int  # every released image (each checked for metadata and byte copies)
    seed: int
    intervals: dict[str, list[float]]  # figure -> [low, high], e.g. "re-identification (faceres)"
    gated_upper: float | None  # the worst judge's upper end (the machine goal's gate reads it)
    gated_judge: str | None


@dataclass(frozen=True)
class RecogniserFigures(_Record):
    """One recogniser's protocols; the rates only once a face was compared, the labelled protocols only with identities."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({
        "verification_rate", "rank1_rate", "mean_rank", "gallery", "different_person_pairs", "tpr_at_far", "parrot"})
    _DECODE: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"tpr_at_far": _map_of(TprAtFar), "parrot": ParrotResult.from_json}

    instrument: str
    threshold: float
    faces: int
    verification_rate: float | None = None
    rank1_rate: float | None = None
    mean_rank: float | None = None
    gallery: int | None = None
    different_person_pairs: int | None = None
    tpr_at_far: dict[str, TprAtFar] | None = None  # "0.001" -> its figures
    parrot: ParrotResult | None = None


@dataclass(frozen=True)
class JudgeFigures(_Record):
    verification_rate: float | None
    faces: int
    matched: int | None
    threshold: float | None
    instrument: str | None


@dataclass(frozen=True)
class Judges(_Record):
    """Every recogniser outside the method's loss, and the worst one (it gates)."""

    _DECODE: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"per_judge": _map_of(JudgeFigures)}

    names: list[str]
    reason: str
    white_box: list[str]
    per_judge: dict[str, JudgeFigures]
    worst: str | None


@dataclass(frozen=True)
class RecogniserRoles(_Record):
    white_box: list[str]
    judges: list[str]
    judge: str | None
    judge_reason: str


# ---- the human goal and look-alikes -----------------------------------------------------------------


@dataclass(frozen=True)
class TarAtFar(_Record):
    tar: float | None
    threshold: float | None
    resolved: bool


@dataclass(frozen=True)
class VisualChange(_Record):
    psnr_face_db: float | None
    ssim_face: float | None
    max_psnr_db: float
    max_ssim: float
    too_similar: int
    faces: list[str]


@dataclass(frozen=True)
class HumanGoal(_Record):
    """Machine matching as the utility (by the judge) and the visual change (see :mod:`anonymize.audit.human`)."""

    _DECODE: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"tar_at_far": _map_of(TarAtFar),
                                                             "visual_change": VisualChange.from_json}

    judge: str | None
    judge_instrument: str | None
    judge_threshold: float | None
    judge_reason: str
    white_box: list[str]
    faces: int
    match_rate: float | None
    matched: int | None
    tar_at_far: dict[str, TarAtFar]
    tar_note: str | None
    rank1_rate: float | None
    mean_rank: float | None
    gallery: int | None
    visual_change: VisualChange


@dataclass(frozen=True)
class LookAlike(_Record):
    count: int
    faces: list[str]
    max_psnr_db: float
    max_ssim: float


# ---- instruments ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnavailableInstrument(_Record):
    instrument: str
    status: str


@dataclass(frozen=True)
class DetectorDetection(_Record):
    detected: int
    faces: int
    rate: float | None


# ---- attribute privacy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseMeasures(_Record):
    """k / l / t of one attribute table (``PrivacyReport.as_dict()`` of :mod:`anonymize.attributes.privacy`)."""

    faces: int
    quasi_identifiers: list[str]
    sensitive: list[str]
    k: int
    classes: int
    class_sizes: dict[str, int]
    requested_k: int | None
    share_below_k: float | None
    unique_share: float
    distinct_l: int | None
    entropy_l: float | None
    t: dict[str, float | None]


@dataclass(frozen=True)
class Preservation(_Record):
    per_attribute: dict[str, float | None]
    mean: float | None


@dataclass(frozen=True)
class AttributeFigures(_Record):
    """The release's attribute privacy (see :mod:`anonymize.audit.attributes`); ``reason`` alone when not measured."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({
        "reason", "source", "heuristic", "faces", "estimated", "requested_k", "release", "originals", "release_reason",
        "preservation", "unique_share", "unique_share_originals"})
    _DECODE: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "release": ReleaseMeasures.from_json, "originals": ReleaseMeasures.from_json, "preservation": Preservation.from_json}

    available: bool
    reason: str | None = None
    source: str | None = None
    heuristic: bool | None = None
    faces: int | None = None
    estimated: list[str] | None = None
    requested_k: int | None = None
    release: ReleaseMeasures | None = None  # None: the source does not estimate every attribute named (release_reason)
    originals: ReleaseMeasures | None = None
    release_reason: str | None = None
    preservation: Preservation | None = None
    unique_share: float | None = None
    unique_share_originals: float | None = None

    @classmethod
    def unavailable(cls, reason: str) -> AttributeFigures:
        """Not measured, and why (not requested, no source, estimation failed)."""
        return cls(False, reason)

    def to_json(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self.reason}
        data = {"available": True, "source": self.source, "heuristic": self.heuristic, "faces": self.faces,
                "estimated": _plain(self.estimated), "requested_k": self.requested_k,
                "release": _json(self.release), "originals": _json(self.originals)}  # None: no k / l / t (release_reason)
        if self.release_reason is not None:
            data["release_reason"] = self.release_reason
        return {**data, "preservation": _json(self.preservation), "unique_share": self.unique_share,
                "unique_share_originals": self.unique_share_originals}


# ---- the papers' figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperFigure(_Record):
    """One number a paper's table could hold, with its instrument, threshold and protocol (:mod:`anonymize.audit.figures`)."""

    key: str
    label: str
    value: float | None
    kind: str  # rate | db | rank | distance | count | score
    instrument: str
    threshold: str
    protocol: str
    status: str  # "measured", "not measured" or "unavailable (<why>)"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PaperFigure:
        """Lenient about ``kind`` and ``status``, which figures written by hand may leave out."""
        return cls(data["key"], data["label"], data["value"], data.get("kind", "rate"), data["instrument"],
                   data["threshold"], data["protocol"], data.get("status", ""))


# ---- the summary ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditSummary(_Record):
    """Everything ``audit-summary.json`` holds (see the module doc); built once, at the end of the audit."""

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"human_goal", "parquet_path", "report_path", "sample", "content_copies"})
    _DECODE: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "run": RunOrigin.from_json, "thresholds": Thresholds.from_json, "metadata": MetadataLeaks.from_json,
        "quality": ImageQuality.from_json, "unaudited": Unaudited.from_json, "detection": Detection.from_json,
        "reid": Reidentification.from_json, "face_quality": FaceQuality.from_json, "missed_faces": MissedFaces.from_json,
        "possible_faces": PossibleFaces.from_json, "identity_check": IdentityCheck.from_json,
        "recognisers": _map_of(RecogniserFigures), "judges": Judges.from_json, "recogniser_roles": RecogniserRoles.from_json,
        "human_goal": HumanGoal.from_json, "look_alike": LookAlike.from_json,
        "instruments_unavailable": _map_of(UnavailableInstrument), "detection_by_detector": _map_of(DetectorDetection),
        "attributes": AttributeFigures.from_json, "figures": _list_of(PaperFigure), "sample": AuditSample.from_json,
        "content_copies": ContentCopies.from_json,
    }

    anonymize_version: str
    created_at: str
    original_dir: str
    anonymized_dir: str
    manifest_path: str | None
    pairing: str  # "manifest" | "relative path"
    run: RunOrigin
    detector: str
    detector_reason: str
    aligned: bool
    identity_labels: str | None
    distance_threshold: float
    unchanged_threshold: float
    thresholds: Thresholds
    not_released: int
    missing_outputs: list[str]
    # one value per released image
    outputs: int
    metadata: MetadataLeaks
    identical_copies: int
    size_mismatches: int
    quality: ImageQuality
    unaudited: Unaudited
    # the confirmed faces
    faces: int
    detection: Detection
    reid: Reidentification
    face_quality: FaceQuality
    missed_faces: MissedFaces
    possible_faces: PossibleFaces
    identity_check: IdentityCheck
    warnings: list[str]
    # every instrument and protocol
    recognisers: dict[str, RecogniserFigures]
    judges: Judges
    privacy_goal: str  # machine | human
    privacy_goal_source: str
    recogniser_roles: RecogniserRoles
    human_goal: HumanGoal | None  # only for the human goal
    look_alike: LookAlike
    instruments_unavailable: dict[str, UnavailableInstrument]
    detection_by_detector: dict[str, DetectorDetection]
    attributes: AttributeFigures
    figures: list[PaperFigure]
    # the verdict
    passed: bool
    crossed: list[str]  # one sentence per crossed threshold
    # the files written beside it (absent when the audit wrote none)
    parquet_path: str | None = None
    report_path: str | None = None
    sample: AuditSample | None = None  # --sample N: what was sampled and the intervals; None: every image audited
    content_copies: ContentCopies | None = None  # outputs that copy another original (None: summaries older than the check)

    def to_json(self, files: bool = True) -> dict[str, Any]:
        """The summary's JSON; ``files=False`` leaves out the written files' paths (the Parquet's metadata copy,
        written before them, never held them)."""
        data = super().to_json()
        if not files:
            data.pop("parquet_path", None)
            data.pop("report_path", None)
        if "content_copies" in data:  # a finding: it reads with the others, before the verdict
            copies = data.pop("content_copies")
            at = list(data).index("passed")
            items = list(data.items())
            data = dict([*items[:at], ("content_copies", copies), *items[at:]])
        return data
