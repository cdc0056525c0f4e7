"""CFA-Net's Table 1 protocol: TPR at a fixed FAR on an LFW-style pairs file, 10 folds, mean +- std.

CFA-Net (after Gafni et al. 2019) takes LFW's 3,000 same-person pairs (10 folds x 300), anonymizes
the second face of each pair and reports FaceNet's (CASIA-WebFace, VGGFace2) TPR at FAR 0.001 as
mean +- std over the folds. Here:

* the pairs file is LFW's ``pairs.txt``: a header ``<folds> <n>`` (or one number, ``pairsDevTrain.txt``:
  one set), then per fold ``n`` same-person lines ``name n1 n2`` and ``n`` different-person lines
  ``name1 n1 name2 n2``; ``name n`` is the image ``name/name_000n.<any image suffix>``;
* same-person pairs: the first image from the originals, the second from the anonymized folder
  (paired through its manifest, else by relative path): the "after" scores; the same pairs with both
  images original give the recogniser's "before" TPR (CFA-Net: over 95 % before anonymization);
* different-person pairs are read from the originals: they set the recogniser's operating point, a
  property of the recogniser on real faces, as the paper anonymizes only the same-person pairs;
* fold k's threshold is set on the different-person pairs of the other folds (one fold: on its own),
  at the distance below which only FAR of them fall (:func:`anonymize.audit.protocols.tpr_at_far`:
  the k-th smallest, k = floor(FAR x pairs)); fold k's TPR is the share of its same-person pairs
  under that threshold, and its held-out FAR the share of its own different-person pairs under it;
* TPR is reported as the mean and the population standard deviation (numpy's ``std``, as LFW's
  evaluation scripts do) over the folds. A threshold set on fewer than 1 / FAR pairs is "not
  resolved": LFW's 2,700 training pairs per fold resolve FAR 0.001 on 2 pairs;
* the face of an image is the detected face nearest the image centre (LFW centres its person); an
  original where none is found leaves its pairs out, each listed with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from anonymize.audit.faces import source_faces
from anonymize.audit.instruments import Recogniser, open_recognisers
from anonymize.audit.judges import choose_judges
from anonymize.audit.outside import write_json_outside
from anonymize.audit.pairing import AuditError, pair_images, same_size
from anonymize.audit.protocols import tpr_at_far
from anonymize.faces.align import centred_face
from anonymize.faces.choose import choose_audit_detector
from anonymize.faces.detect import Detector, DetectorSettings, create_detector
from anonymize.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from anonymize.metrics.identity import SAME_PERSON_DISTANCE
from anonymize.models.device import resolve_device
from anonymize.weights import WeightsError, WeightsStore

DEFAULT_FAR = 0.001  # CFA-Net Table 1
_NUMBER = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class VerificationPair:
    """One line of a pairs file: two images (relative paths without suffix) and whether they show one person."""

    first: str
    second: str
    same: bool
    fold: int
    line: int


@dataclass(frozen=True)
class PairsFile:
    path: Path
    folds: int
    per_fold: int  # same-person pairs per fold (as many different-person ones)
    pairs: list[VerificationPair]


def _image(name: str, number: str) -> str:
    return f"{name}/{name}_{int(number):04d}"


def read_pairs(path: Path) -> PairsFile:
    """An LFW pairs file (see module doc); a malformed one raises :class:`AuditError` naming the file and line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path}: cannot read the pairs file ({exc})") from None
    numbered = [(index + 1, line.split()) for index, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise AuditError(f"{path}: empty pairs file (expected a header '<folds> <pairs per fold>')")
    header_line, header = numbered[0]
    if not 1 <= len(header) <= 2 or not all(_NUMBER.match(value) for value in header):
        raise AuditError(f"{path}:{header_line}: expected the header '<folds> <pairs per fold>' (or '<pairs>' for one set), "
                         f"got {' '.join(header)!r}")
    folds, per_fold = (1, int(header[0])) if len(header) == 1 else (int(header[0]), int(header[1]))
    body = numbered[1:]
    if folds < 1 or per_fold < 1 or len(body) != 2 * folds * per_fold:
        raise AuditError(f"{path}: the header promises {folds} fold(s) of {per_fold} same-person and {per_fold} "
                         f"different-person pairs ({2 * folds * per_fold} lines), the file has {len(body)} pair lines")
    pairs = []
    for position, (line, fields) in enumerate(body):
        fold = position // (2 * per_fold)
        if len(fields) == 3 and _NUMBER.match(fields[1]) and _NUMBER.match(fields[2]):
            pairs.append(VerificationPair(_image(fields[0], fields[1]), _image(fields[0], fields[2]), True, fold, line))
        elif len(fields) == 4 and _NUMBER.match(fields[1]) and _NUMBER.match(fields[3]):
            pairs.append(VerificationPair(_image(fields[0], fields[1]), _image(fields[2], fields[3]), False, fold, line))
        else:
            raise AuditError(f"{path}:{line}: expected 'name n1 n2' (same person) or 'name1 n1 name2 n2' (different people), "
                             f"got {' '.join(fields)!r}")
    for fold in range(folds):
        same = sum(pair.same for pair in pairs if pair.fold == fold)
        if same != per_fold:
            raise AuditError(f"{path}: fold {fold + 1} holds {same} same-person and {2 * per_fold - same} different-person "
                             f"pairs; the header promises {per_fold} of each")
    return PairsFile(Path(path), folds, per_fold, pairs)


# ---- the fold arithmetic --------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldFigure:
    fold: int  # 1-based
    threshold: float | None  # set on the other folds' different-person distances
    tpr: float | None  # share of this fold's same-person distances under it (None: no pair measured)
    held_out_far: float | None  # share of this fold's different-person distances under it
    same_pairs: int
    threshold_pairs: int  # different-person pairs the threshold was set on
    resolved: bool  # threshold_pairs x FAR >= 1


@dataclass(frozen=True)
class FoldedTpr:
    far: float
    mean: float | None
    std: float | None  # population standard deviation over the folds with a TPR
    resolved: bool  # every fold's threshold resolved
    folds: list[FoldFigure]


def folded_tpr(same: np.ndarray, same_folds: np.ndarray, different: np.ndarray, different_folds: np.ndarray,
               folds: int, far: float) -> FoldedTpr:
    """TPR at ``far`` per fold, each threshold set on the other folds' different-person distances (see module doc)."""
    same, different = np.asarray(same, np.float64), np.asarray(different, np.float64)
    same_folds, different_folds = np.asarray(same_folds, int), np.asarray(different_folds, int)
    figures = []
    for fold in range(folds):
        train = different[different_folds != fold] if folds > 1 else different
        held_out = different[different_folds == fold]
        genuine = same[same_folds == fold]
        measured = tpr_at_far(genuine, train, far)  # threshold and TPR None without pairs on either side
        threshold = measured.threshold
        figures.append(FoldFigure(
            fold + 1, threshold, measured.tpr,
            float((held_out < threshold).mean()) if len(held_out) and threshold is not None else None,
            int(len(genuine)), int(len(train)), len(train) * far >= 1.0))
    rates = [figure.tpr for figure in figures if figure.tpr is not None]
    return FoldedTpr(far, float(np.mean(rates)) if rates else None, float(np.std(rates)) if rates else None,
                     all(figure.resolved for figure in figures), figures)


# ---- the protocol on two folders ------------------------------------------------------------------


@dataclass(frozen=True)
class PairsConfig:
    """What the pairs protocol reads and measures with (the audit's detector and recogniser settings)."""

    original_dir: Path
    anonymized_dir: Path
    pairs_file: Path
    far: float = DEFAULT_FAR
    manifest_path: Path | None = None
    detector: str = "auto"
    det_threshold: float | None = None
    weights_dir: Path | None = None
    trust_unverified: bool = False
    device: str = "auto"
    aligned: bool | None = None  # None: as the run's manifest says
    recogniser_backend: str = "torch"
    distance_threshold: float = SAME_PERSON_DISTANCE
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class RecogniserPairs:
    instrument: str
    judge: bool  # not in the method's loss
    before: FoldedTpr  # same-person pairs, both images original
    after: FoldedTpr  # same-person pairs, the second image anonymized


@dataclass(frozen=True)
class PairsResult:
    pairs_file: str
    folds: int
    per_fold: int
    far: float
    detector: str
    same_pairs: int  # measured
    different_pairs: int  # measured
    left_out: list[str]  # pairs not measured, "file:line: why"
    recognisers: dict[str, RecogniserPairs]
    judges: list[str]
    judge_reason: str
    unavailable: dict[str, str]  # recognisers without their weights (FaceNet, CFA-Net's instrument, among them), and why
    protocol: str = field(default="CFA-Net Table 1: second image of each same-person pair anonymized; threshold per fold "
                                   "set at the FAR on the other folds' different-person pairs of the originals; TPR mean +- std")


def _central_box(faces: Sequence, shape: tuple[int, ...]) -> tuple[float, float, float, float] | None:
    """The face box whose centre is nearest the image centre (LFW centres the person the pair names), a confirmed
    face before a possible one."""
    face = centred_face([face for face in faces if not face.possible], shape) or centred_face(faces, shape)
    return None if face is None else face.box


def _index(paths: dict[str, Path]) -> dict[str, Path]:
    """Relative path without its suffix -> file (LFW names images without their suffix)."""
    return {str(PurePosixPath(rel).with_suffix("")): path for rel, path in paths.items()}


def run_pairs_protocol(config: PairsConfig, progress: Callable[[str], None] = lambda text: None) -> PairsResult:
    """CFA-Net's Table 1 on ``config.pairs_file`` for every recogniser here (see module doc)."""
    pairs_file = read_pairs(config.pairs_file)
    pairing = pair_images(Path(config.original_dir), Path(config.anonymized_dir), config.manifest_path)
    originals = _index(pairing.originals)
    outputs = _index({pair.source_rel: pair.output_path for pair in pairing.pairs if pair.source_rel})
    boxes_of = {str(PurePosixPath(pair.source_rel).with_suffix("")): pair.manifest_boxes for pair in pairing.pairs if pair.source_rel}
    for pair in pairs_file.pairs:  # every file the protocol needs, before any network runs
        for stem, where, role in ((pair.first, originals, "original"), (pair.second, originals, "original"),
                                  *(((pair.second, outputs, "anonymized output"),) if pair.same else ())):
            if stem not in where:
                folder = config.anonymized_dir if where is outputs else config.original_dir
                raise AuditError(f"{config.pairs_file}:{pair.line}: no {role} {stem}.* in {folder}")
    weights = WeightsStore(config.weights_dir, trust_unverified=config.trust_unverified)
    aligned = bool(pairing.run_arguments.get("aligned", False)) if config.aligned is None else config.aligned
    device = resolve_device(config.device)
    try:
        choice = choose_audit_detector(config.detector, weights, None)
        detector = create_detector(choice.name, weights, DetectorSettings(config.det_threshold, 0, device),
                                   **({"members": choice.members} if choice.members else {}))
        recognisers, absent = open_recognisers(weights, device, config.recogniser_backend, config.distance_threshold)
    except (WeightsError, ValueError) as exc:
        raise AuditError(str(exc)) from None
    anonymized_needed = {pair.second for pair in pairs_file.pairs if pair.same}
    stems = sorted({stem for pair in pairs_file.pairs for stem in (pair.first, pair.second)})
    described, missing = _describe(stems, anonymized_needed, originals, outputs, boxes_of, detector, recognisers, aligned, config,
                                   progress)
    left_out = [f"{config.pairs_file}:{pair.line}: {missing.get(pair.first) or missing.get(pair.second)}"
                for pair in pairs_file.pairs if pair.first in missing or pair.second in missing]
    measured = [pair for pair in pairs_file.pairs if pair.first not in missing and pair.second not in missing]
    same = [pair for pair in measured if pair.same]
    different = [pair for pair in measured if not pair.same]
    judges, judge_reason = choose_judges([recogniser.name for recogniser in recognisers], pairing.loss_recognisers)
    figures = {}
    for recogniser in recognisers:
        originals_of, anonymized_of = described[recogniser.name]

        def distances(chosen: list[VerificationPair], second: dict[str, np.ndarray]) -> np.ndarray:
            return np.array([float(np.linalg.norm(originals_of[pair.first] - second[pair.second])) for pair in chosen])

        same_folds, different_folds = [pair.fold for pair in same], [pair.fold for pair in different]
        impostor = distances(different, originals_of)
        figures[recogniser.name] = RecogniserPairs(
            recogniser.instrument, recogniser.name in judges,
            folded_tpr(distances(same, originals_of), same_folds, impostor, different_folds, pairs_file.folds, config.far),
            folded_tpr(distances(same, anonymized_of), same_folds, impostor, different_folds, pairs_file.folds, config.far))
    return PairsResult(str(config.pairs_file), pairs_file.folds, pairs_file.per_fold, config.far,
                       f"{detector.name} ({choice.reason})", len(same), len(different), left_out, figures, judges, judge_reason,
                       {item.name: item.status for item in absent})


def _describe(stems: list[str], anonymized_needed: set[str], originals: dict[str, Path], outputs: dict[str, Path],
              boxes_of: dict[str, tuple], detector: Detector, recognisers: list[Recogniser], aligned: bool,
              config: PairsConfig, progress: Callable[[str], None]
              ) -> tuple[dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]], dict[str, str]]:
    """Per recogniser, the original (and, where needed, anonymized) descriptor of each image's central face; the images
    without a face, with why. The box is found on the original and read at the same place in the output, as the audit does."""
    described: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {item.name: ({}, {}) for item in recognisers}
    missing: dict[str, str] = {}
    for number, stem in enumerate(stems):
        try:
            original = decode_image(originals[stem], config.max_pixels).rgb
            output = (same_size(decode_image(outputs[stem], config.max_pixels).rgb, original)[0]
                      if stem in anonymized_needed else original)
        except ImageDecodeError as exc:
            raise AuditError(str(exc)) from None
        box = _central_box(source_faces(original, detector, boxes_of.get(stem, ()), aligned), original.shape)
        if box is None:
            missing[stem] = f"{stem}: no face found in the original (pass --aligned for aligned crops)"
            continue
        for recogniser in recognisers:
            before, after = recogniser.describe_pair(original, output, [box])
            described[recogniser.name][0][stem] = np.asarray(before[0], np.float64)
            if stem in anonymized_needed:
                described[recogniser.name][1][stem] = np.asarray(after[0], np.float64)
        if (number + 1) % 100 == 0:
            progress(f"pairs protocol: {number + 1} of {len(stems)} images described")
    return described, missing


PAIRS_RESULT_NAME = "pairs-protocol.json"


def write_pairs_result(result: PairsResult, path: Path, config: PairsConfig) -> Path:
    """The result as JSON at ``path``, refused inside the original or anonymized folder (it would join the release)."""
    return write_json_outside(asdict(result), path, "pairs-protocol result", config.original_dir, config.anonymized_dir)
