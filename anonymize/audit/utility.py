"""FALCO's utility protocol (Tables 3, 5, 6): train an attribute classifier on the anonymized training split,
test it on the real test split, and set its accuracy beside the same classifier trained on the real images.

A release keeps its usefulness for attribute tasks when a classifier that never saw a real training
image still labels real faces as well as one trained on them. Here:

* labels: the user's labels file (``--labels``: CelebA's ``list_attr_celeba.txt``, a CSV or Parquet,
  read by :mod:`anonymize.attributes.labels`; rows matched by relative path or file name), or
  pseudo-labels an attribute source estimates on the originals (``--labels-from estimators``, ...),
  as FALCO labels LFW with two classifiers trained on CelebA-HQ. An anonymized image inherits its
  original's labels (the claim under test);
* classifier: the project's ``probe`` heads (:mod:`anonymize.attributes.probe`): one scikit-learn
  ``LogisticRegression`` (L2, C = ``c``) per attribute on a frozen backbone's L2-normalised features,
  not the paper's MobileNetV2 trained end to end with a focal loss: a linear probe needs no GPU and no
  training schedule. Backbones (``backbone``): ``dlib`` (the default) is dlib's 128-d ResNet
  descriptor of the face, whose weights every install has: the face is the detected one nearest the
  original's centre (the centre half of the image when none is found), and its anonymized version is
  read in the same box (a release keeps the geometry). A recognition descriptor still carries sex, age,
  glasses and expression linearly, and it is in no loss of FALCO, CFA or the attribute edits (only the
  adversarial step's, which keeps attributes anyway). ``farl`` is FaRL ViT-B/16's CLS embedding of the
  whole image: closer to what an attribute model sees, but FaRL sits inside FALCO's attribute loss, so a
  FALCO release is measured with the features it was tuned to keep: read its figure as an upper bound;
* split: CelebA's ``list_eval_partition.txt`` when given (``--split``: 0 train, 2 test, 1 unused, as
  FALCO splits CelebA-HQ), else a seeded random split of the labelled images, ``test_share`` of them
  for testing (FALCO's 80-20 on LFW). An image is on one side only, its original and its anonymized
  version alike;
* figures per attribute: accuracy on the real test split of the heads trained on the real training
  images and of those trained on their anonymized versions, and the majority-class accuracy (always
  answering the training split's commoner class: the floor an accuracy must beat); "combined" is
  the mean over the attributes measured (FALCO Table 3). An attribute with one class only among the
  training labels has nothing to learn: listed, not measured. Unknown labels (NaN) leave that image
  out for that attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from anonymize.attributes.labels import LabelsSource
from anonymize.attributes.probe import FARL_ARTEFACT, ProbeHeads, farl_features, fit_heads
from anonymize.attributes.sources import create_source
from anonymize.attributes.table import AttributeTable
from anonymize.audit.outside import write_json_outside
from anonymize.audit.pairing import AuditError, pair_images
from anonymize.errors import AnonymizeError
from anonymize.faces.align import centred_face
from anonymize.faces.types import Face, FaceCrop
from anonymize.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from anonymize.models.checkpoint import CheckpointError
from anonymize.models.device import resolve_device
from anonymize.weights import WeightsError, WeightsStore

BACKBONES = {
    "dlib": "dlib ResNet 128-d descriptor (L2-normalised) of the face nearest the image's centre, the same box in both versions",
    "farl": "FaRL ViT-B/16 CLS embedding (farl_ep64, L2-normalised) of the whole image",
}
CLASSIFIER = "linear probe: one scikit-learn LogisticRegression (L2, C={c}) per attribute on the frozen {backbone}"
UTILITY_RESULT_NAME = "utility.json"
BATCH = 32


@dataclass(frozen=True)
class UtilityConfig:
    original_dir: Path
    anonymized_dir: Path
    labels: Path | None = None  # a labels file, or
    labels_from: str | None = None  # an attribute source estimating pseudo-labels on the originals
    split_file: Path | None = None  # CelebA's list_eval_partition.txt; None: seeded random split
    test_share: float = 0.2
    seed: int = 0
    c: float = 1.0
    backbone: str = "dlib"  # dlib | farl (BACKBONES)
    manifest_path: Path | None = None
    weights_dir: Path | None = None
    trust_unverified: bool = False
    device: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class AttributeUtility:
    train_images: int  # with a label for this attribute
    test_images: int
    test_positives: int
    majority: float | None  # accuracy of the training split's commoner class on the test split
    trained_on_real: float | None
    trained_on_anonymized: float | None
    status: str  # "measured", or why not


@dataclass(frozen=True)
class UtilityResult:
    classifier: str
    labels: str
    split: str
    train_images: int
    test_images: int
    unlabelled_images: int
    attributes: dict[str, AttributeUtility]
    combined_real: float | None  # mean over the measured attributes
    combined_anonymized: float | None


def utility_figures(real_train: np.ndarray, anonymized_train: np.ndarray, real_test: np.ndarray, train_labels: np.ndarray,
                    test_labels: np.ndarray, names: Sequence[str], c: float = 1.0) -> dict[str, AttributeUtility]:
    """Per attribute, test accuracy of heads fitted on the real and on the anonymized training features (see module doc).

    ``*_labels``: [images, attributes] in [0, 1] (present when >= 0.5), NaN unknown. Each classifier standardises its
    features with its own training set's mean and spread (part of the classifier: the real test images go through
    the same transform), so ``c`` means the same for every backbone whatever the scale of its features."""
    real_train, test_for_real = _standardised(real_train, real_test)
    anonymized_train, test_for_anonymized = _standardised(anonymized_train, real_test)
    heads_real = _heads(real_train, train_labels, names, c)
    heads_anonymized = _heads(anonymized_train, train_labels, names, c)
    figures = {}
    for column, name in enumerate(names):
        train, test = train_labels[:, column], test_labels[:, column]
        known_train, known_test = ~np.isnan(train), ~np.isnan(test)
        truth = test[known_test] >= 0.5
        positives = int((train[known_train] >= 0.5).sum())
        counts = (int(known_train.sum()), int(known_test.sum()), int(truth.sum()))
        if not known_test.any():
            figures[name] = AttributeUtility(*counts, None, None, None, "not measured (no test image has this label)")
            continue
        majority = float((truth == (positives * 2 >= counts[0])).mean()) if counts[0] else None
        if name not in heads_real.names:
            figures[name] = AttributeUtility(*counts, majority, None, None, "not measured (one class only in the training split)")
            continue
        accuracy = [float(((heads.probabilities(features[known_test])[:, heads.names.index(name)] >= 0.5) == truth).mean())
                    for heads, features in ((heads_real, test_for_real), (heads_anonymized, test_for_anonymized))]
        figures[name] = AttributeUtility(*counts, majority, accuracy[0], accuracy[1], "measured")
    return figures


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays centred and scaled by ``train``'s per-feature mean and spread (a constant feature stays 0)."""
    mean, spread = train.mean(axis=0), train.std(axis=0)
    spread = np.where(spread > 1e-8, spread, 1.0)
    return (train - mean) / spread, (test - mean) / spread


def _heads(features: np.ndarray, labels: np.ndarray, names: Sequence[str], c: float) -> ProbeHeads:
    table = AttributeTable(tuple(str(index) for index in range(len(features))), tuple(names), labels, "labels")
    try:
        return fit_heads(np.asarray(features, np.float64), table, "", c)
    except AnonymizeError:  # no attribute with both classes: every attribute reads "one class only"
        return ProbeHeads((), np.zeros((0, features.shape[1]), np.float32), np.zeros(0, np.float32), "",
                          np.zeros(0, np.int64), np.zeros(0, np.int64))


def random_split(count: int, test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: a seeded shuffle, round(test_share x count) of them (at least 1, leaving 1) for testing."""
    if count < 2:
        raise AuditError(f"the utility protocol needs at least 2 labelled images, got {count}")
    order = np.random.default_rng(seed).permutation(count)
    tests = min(max(int(round(test_share * count)), 1), count - 1)
    return np.sort(order[tests:]), np.sort(order[:tests])


def read_partition(path: Path, sources: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Train (0) and test (2) indices of ``sources`` from CelebA's ``list_eval_partition.txt`` (``<file name> <0|1|2>``)."""
    partition: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path}: cannot read the split file ({exc})") from None
    for number, line in enumerate(lines, 1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].lower() in ("image_id", "filename"):
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise AuditError(f"{path}:{number}: expected '<file name> <0|1|2>' (0 train, 1 validation, 2 test), got {line.strip()!r}")
        partition[fields[0]] = fields[1]
    found = [partition.get(source, partition.get(PurePosixPath(source).name)) for source in sources]
    missing = [source for source, value in zip(sources, found) if value is None]
    if missing:
        raise AuditError(f"{path}: no split for {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    train = np.array([index for index, value in enumerate(found) if value == "0"], int)
    test = np.array([index for index, value in enumerate(found) if value == "2"], int)
    if not len(train) or not len(test):
        raise AuditError(f"{path}: the split leaves {len(train)} training and {len(test)} test images among the labelled ones")
    return train, test


def run_utility(config: UtilityConfig, progress: Callable[[str], None] = lambda text: None) -> UtilityResult:
    """The protocol on two folders (see module doc); a missing input or weight stops it with one line."""
    if (config.labels is None) == (config.labels_from is None):
        raise AuditError("the utility protocol needs its labels: --labels FILE or --labels-from SOURCE (one of them)")
    pairing = pair_images(Path(config.original_dir), Path(config.anonymized_dir), config.manifest_path)
    output_of: dict[str, Path] = {}
    for pair in pairing.pairs:  # one anonymized image per original (the first render, in walk order)
        if pair.source_rel is not None:
            output_of.setdefault(pair.source_rel, pair.output_path)
    sources = sorted(output_of)
    if not sources:
        raise AuditError(f"{config.anonymized_dir}: no anonymized image has an original in {config.original_dir}")
    if config.backbone not in BACKBONES:
        raise AuditError(f"unknown utility backbone {config.backbone!r}: choose one of {', '.join(BACKBONES)}")
    weights = WeightsStore(config.weights_dir, trust_unverified=config.trust_unverified)
    device = resolve_device(config.device)
    try:
        if config.backbone == "farl":
            weights.require(FARL_ARTEFACT)
        table, described = _labels(config, sources, pairing.originals, weights, device)
    except (WeightsError, CheckpointError) as exc:
        raise AuditError(f"the utility classifier's backbone: {exc}") from None
    known = ~np.isnan(table.probabilities)
    table = table.select([name for column, name in enumerate(table.names) if known[:, column].any()])  # the attributes labelled
    if not table.names:
        raise AuditError(f"{table.source}: no original under {config.original_dir} has a label (rows are matched by relative path "
                         "or file name)")
    labelled = ~np.isnan(table.probabilities).all(axis=1)
    kept = [source for source, keep in zip(sources, labelled) if keep]
    values = table.probabilities[labelled]
    if config.split_file is not None:
        train, test = read_partition(config.split_file, kept)
        split = f"{config.split_file} (0 train, 2 test)"
    else:
        train, test = random_split(len(kept), config.test_share, config.seed)
        split = f"seeded random split (seed {config.seed}): {len(test)} of {len(kept)} labelled images for testing"
    progress(f"utility: {config.backbone} features of {len(kept) + len(train)} images")
    originals = [pairing.originals[source] for source in kept]
    try:
        if config.backbone == "farl":
            real = _features(originals, config, weights, device)
            anonymized = _features([output_of[kept[index]] for index in train], config, weights, device)
        else:
            real, anonymized = dlib_features(originals, [output_of[kept[index]] for index in train], train, config, weights)
    except (WeightsError, CheckpointError) as exc:
        raise AuditError(f"the utility classifier's backbone: {exc}") from None
    figures = utility_figures(real[train], anonymized, real[test], values[train], values[test], table.names, config.c)
    measured = [item for item in figures.values() if item.status == "measured"]
    return UtilityResult(CLASSIFIER.format(c=config.c, backbone=BACKBONES[config.backbone]), described, split, len(train), len(test), int((~labelled).sum()), figures,
                         float(np.mean([item.trained_on_real for item in measured])) if measured else None,
                         float(np.mean([item.trained_on_anonymized for item in measured])) if measured else None)


def _labels(config: UtilityConfig, sources: list[str], originals: dict[str, Path], weights: WeightsStore,
            device: str) -> tuple[AttributeTable, str]:
    """The labels of every original (NaN rows: unlabelled) and a sentence saying where they come from."""
    if config.labels is not None:
        table = LabelsSource(options={"labels": str(config.labels), "missing": "nan"}).table(sources)
        return table, f"labels file {config.labels}"
    source = create_source(str(config.labels_from), weights, device)
    tables = [source.estimate(crops) for crops in _batches([originals[item] for item in sources], sources, config)]
    values = np.concatenate([table.probabilities for table in tables])
    return (AttributeTable(tuple(sources), tables[0].names, values, source.name),
            f"pseudo-labels: attribute source {source.name} on the original images")


def _batches(paths: Sequence[Path], keys: Sequence[str], config: UtilityConfig) -> Iterator[list[FaceCrop]]:
    """Whole images as crops, BATCH at a time (the classifier, like FALCO's, sees the whole aligned image)."""
    for start in range(0, len(paths), BATCH):
        crops = []
        for path, key in zip(paths[start:start + BATCH], keys[start:start + BATCH]):
            try:
                crops.append(FaceCrop(decode_image(path, config.max_pixels).rgb, None, key))
            except ImageDecodeError as exc:
                raise AuditError(str(exc)) from None
        yield crops


def _features(paths: Sequence[Path], config: UtilityConfig, weights: WeightsStore, device: str) -> np.ndarray:
    keys = [str(path) for path in paths]
    parts = [farl_features(crops, weights, device) for crops in _batches(paths, keys, config)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 0))


def centre_face_box(rgb: np.ndarray, faces: Sequence[Face]) -> tuple[float, float, float, float]:
    """The box of the face nearest the image's centre, or the centre half of the image when no face was found."""
    face = centred_face(faces, rgb.shape)
    height, width = rgb.shape[:2]
    return (width / 4, height / 4, width * 3 / 4, height * 3 / 4) if face is None else tuple(face.box)


def dlib_features(originals: Sequence[Path], anonymized: Sequence[Path], train: Sequence[int], config: UtilityConfig,
                  weights: WeightsStore) -> tuple[np.ndarray, np.ndarray]:
    """dlib descriptors of every original's centre face, and of the anonymized training images in their original's box."""
    from anonymize.faces.detect import DetectorSettings, create_detector
    from anonymize.metrics.identity import DlibRecogniser

    detector = create_detector("dlib-hog", weights, DetectorSettings(recall_first=True))  # its weights come with dlib
    recogniser = DlibRecogniser(weights, backend="dlib")
    boxes, real = [], []
    for path in originals:
        rgb = _decoded(path, config)
        boxes.append(centre_face_box(rgb, detector.detect(rgb)))
        real.append(recogniser.descriptors(rgb, [boxes[-1]])[0])
    released = [recogniser.descriptors(_decoded(path, config), [boxes[index]])[0] for path, index in zip(anonymized, train)]
    return _unit_rows(real), _unit_rows(released)


def _unit_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    array = np.asarray(rows, np.float64).reshape(len(rows), -1)
    return array / np.linalg.norm(array, axis=1, keepdims=True).clip(1e-12)


def _decoded(path: Path, config: UtilityConfig) -> np.ndarray:
    try:
        return decode_image(path, config.max_pixels).rgb
    except ImageDecodeError as exc:
        raise AuditError(str(exc)) from None


def write_utility_result(result: UtilityResult, path: Path, config: UtilityConfig) -> Path:
    """The result as JSON, refused inside the original or anonymized folder (it would join the release)."""
    return write_json_outside(asdict(result), path, "utility result", config.original_dir, config.anonymized_dir)
