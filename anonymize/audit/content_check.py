"""Outputs that are copies of an original, found by content, whatever the manifest says.

The pairing (:mod:`anonymize.audit.pairing`) trusts the manifest: an output whose row names the wrong
source is compared with that source only, so an original photo released under another name (its row
edited, or a bug in a run) would pass every per-pair check. This check pairs nothing: every released
image is compared with every original, on three independent measures:

* the whole image: a 64-bit perceptual hash (:func:`perceptual_hash`, the low frequencies of the
  image's DCT at 32 x 32, each bit "above the median"), which survives resizing, re-encoding and small
  colour changes; an output within :data:`IMAGE_DISTANCE` bits of an original is a copy of it;
* each face: the same hash of each face the audit detector found in the output, on its FFHQ-aligned crop
  (from its landmarks; else its box with a margin), against every original's confirmed faces
  (:data:`FACE_DISTANCE` bits);
* the judges: each output face's descriptor from every recogniser the audit runs (dlib, and faceres,
  mobileface, FaceNet when present) against every original face's descriptor; a distance under
  :data:`NEAR_IDENTICAL_FRACTION` of the recogniser's same-person threshold is what a re-encoded copy of
  that very photo gives, far below what another photo of the same person gives.

A match with the output's own source is no finding (the per-pair checks judge it), and neither is a
match with an original that is itself a near copy of that source (a dataset holding the same photo
twice): only an output strictly closer to another original than to its own source is reported, with
both names. Limits: faces are compared only where the audit detected them, so an original the release
left out (no output pairs with it) and an image ``--sample`` left out are compared by their whole-image
hash only.
Everything is computed from the pixels and descriptors the audit already has; only originals and
outputs the per-pair step never decoded (not released, not sampled, unreadable pairs) are decoded once
more for their whole-image hash. Comparisons are vectorised over all hashes at once (XOR and bit
count in blocks; one matrix product per block of descriptors): 3000 outputs against 3000 originals,
with two recognisers, take about a second once hashed.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from anonymize.audit.faces import match_boxes
from anonymize.audit.summary import ContentCopies
from anonymize.faces.align import align_face

HASH_SIZE = 32  # the image is reduced to HASH_SIZE x HASH_SIZE before the DCT
HASH_LOW = 8  # the HASH_LOW x HASH_LOW lowest frequencies give the 64 bits
IMAGE_DISTANCE = 8  # bits of 64: a resized, re-encoded copy of a photo stays within this of it
# bits by which an output must be closer to another original than to its own source: a blurred output of one of two
# burst shots (a blur moves the hash up to 12 bits) must not come out "closer" to the other by a bit or two
IMAGE_MARGIN = 4
FACE_DISTANCE = 6  # bits of 64 for face crops (faces resemble each other more than whole photos do)
NEAR_IDENTICAL_FRACTION = 0.25  # of a recogniser's same-person threshold: a copy of the photo, not another photo
FACE_MARGIN = 0.1  # each side of a face box, as a share of its size, taken into the crop
MIN_FACE_SIDE = 16  # pixels: smaller face crops carry too little for a hash
ALIGNED_SIZE = 64  # side of the aligned face crop that is hashed
BLOCK = 2048  # rows compared at once (memory: BLOCK x originals)


def perceptual_hash(image: np.ndarray) -> np.uint64:
    """64-bit DCT hash of an RGB or gray uint8 image: bit i set when low frequency i is above their median."""
    gray = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray.astype(np.float32), (HASH_SIZE, HASH_SIZE), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:HASH_LOW, :HASH_LOW].flatten()
    bits = low > np.median(low[1:])  # the DC term (brightness) left out of the median
    return np.packbits(bits).view(">u8")[0].astype(np.uint64)


def face_crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray | None:
    """The face box with :data:`FACE_MARGIN` around it, clipped to the image (None when too small to hash)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    dx, dy = (x1 - x0) * FACE_MARGIN, (y1 - y0) * FACE_MARGIN
    height, width = image.shape[:2]
    left, top = max(int(round(x0 - dx)), 0), max(int(round(y0 - dy)), 0)
    right, bottom = min(int(round(x1 + dx)), width), min(int(round(y1 + dy)), height)
    if right - left < MIN_FACE_SIDE or bottom - top < MIN_FACE_SIDE:
        return None
    return image[top:bottom, left:right]


def face_hash(image: np.ndarray, box: Sequence[float], landmarks: np.ndarray | None = None) -> np.uint64 | None:
    """The hash of one face: of its FFHQ-aligned crop when it has landmarks (a detection that moves by a few pixels then
    moves the crop with it), else of its box with a margin; None when the face is too small to hash."""
    if landmarks is not None and np.asarray(landmarks).shape in ((5, 2), (68, 2)):
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        if min(x1 - x0, y1 - y0) < MIN_FACE_SIDE:
            return None
        try:
            return perceptual_hash(align_face(image, np.asarray(landmarks, dtype=np.float64), ALIGNED_SIZE).crop)
        except (ValueError, cv2.error):
            pass
    crop = face_crop(image, box)
    return None if crop is None else perceptual_hash(crop)


def face_hashes(image: np.ndarray, faces: Iterable[object]) -> list[np.uint64 | None]:
    """One hash per face (anything with ``box`` and ``landmarks``, or a bare box)."""
    return [face_hash(image, getattr(face, "box", face), getattr(face, "landmarks", None)) for face in faces]


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between every hash of ``a`` (N) and every hash of ``b`` (M): N x M."""
    return np.bitwise_count(np.bitwise_xor(a[:, None], b[None, :])).astype(np.int16)


# ---- what the audit gathers --------------------------------------------------------------------------


@dataclass
class Seen:
    """One image's content: its whole-image hash, its faces' hashes and, per recogniser, its faces' descriptors."""

    image: np.uint64
    faces: list[np.uint64 | None] = field(default_factory=list)
    descriptors: dict[str, np.ndarray] = field(default_factory=dict)  # recogniser -> F x D


@dataclass(frozen=True)
class ContentCopy:
    """An output that is a copy of an original other than the source the manifest pairs it with."""

    output_path: str
    original_path: str
    paired_source: str | None  # what the manifest (or the relative path) pairs the output with
    evidence: tuple[str, ...]  # e.g. ("image hash 0/64", "face hash 2/64", "dlib 0.03 < 0.15")

    def sentence(self) -> str:
        if self.paired_source is None:  # nothing to be closer to: the match names the original it shows
            return f"{self.output_path} matches original {self.original_path} (paired with no original; {', '.join(self.evidence)})"
        return f"{self.output_path} is a copy of original {self.original_path} (paired with {self.paired_source}; {', '.join(self.evidence)})"


class ContentIndex:
    """Hashes and descriptors of originals and outputs, filled from the audit's worker threads, matched once at the end."""

    def __init__(self, thresholds: dict[str, float] | None = None) -> None:
        self.thresholds = dict(thresholds or {})  # recogniser -> same-person distance
        self.originals: dict[str, Seen] = {}
        self.outputs: dict[str, Seen] = {}
        self._lock = threading.Lock()

    def add_original(self, rel: str, image: np.ndarray, faces: Sequence[object] = (),
                     descriptors: dict[str, np.ndarray] | None = None) -> None:
        """An original's whole image, its confirmed faces (with ``box`` and ``landmarks``) and their descriptors
        (recogniser -> F x D)."""
        with self._lock:
            if rel in self.originals and self.originals[rel].faces:
                return
        seen = Seen(perceptual_hash(image), face_hashes(image, faces), _stacked(descriptors))
        with self._lock:
            if rel not in self.originals or not self.originals[rel].faces:
                self.originals[rel] = seen

    def add_output(self, rel: str, image: np.ndarray, face_image: np.ndarray | None = None, faces: Sequence[object] = (),
                   descriptors: dict[str, np.ndarray] | None = None) -> None:
        """An output's whole image; the faces the audit found in it (their boxes in ``face_image``, the output as audited)
        and the descriptors of its faces (recogniser -> F x D)."""
        seen = Seen(perceptual_hash(image), face_hashes(image if face_image is None else face_image, faces), _stacked(descriptors))
        with self._lock:
            self.outputs[rel] = seen

    def complete(self, originals: dict[str, Path], outputs: dict[str, Path], decode, workers: int = 1) -> list[str]:
        """Hash the whole image of every original and output the audit did not decode (``decode(path, rel)`` -> RGB), on
        ``workers`` threads; returns one line per file that could not be read (those are compared by nothing)."""
        todo = [(kind, rel, path, store) for kind, files, store in (("original", originals, self.originals), ("output", outputs, self.outputs))
                for rel, path in files.items() if rel not in store]

        def hash_one(item: tuple[str, str, Path, dict[str, Seen]]) -> str | None:
            kind, rel, path, store = item
            try:
                image = decode(path, rel)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is reported by the per-pair step too
                return f"{kind} {rel}: {exc}"
            seen = Seen(perceptual_hash(image))
            with self._lock:
                store.setdefault(rel, seen)
            return None

        if workers > 1 and len(todo) > 1:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(hash_one, todo))
        else:
            results = [hash_one(item) for item in todo]
        return [line for line in results if line is not None]

    def copies(self, paired: dict[str, str | None]) -> list[ContentCopy]:
        """Every output (``paired``: output -> its manifest source, or None) closer to an original other than its source
        than to that source, within the measure's limit, that original not being a near copy of the source; sorted by
        output then original."""
        if not self.outputs or not self.originals:
            return []
        original_names, output_names = sorted(self.originals), sorted(self.outputs)
        index_of = {name: i for i, name in enumerate(original_names)}
        source = np.array([index_of.get(paired.get(name) or "", -1) for name in output_names])
        evidence: dict[tuple[int, int], list[str]] = {}

        def add(measure: str, probes: np.ndarray, probe_owner: np.ndarray, gallery: np.ndarray, owner: np.ndarray,
                limit: float, label, margin: float = 0.0) -> None:
            for probe, face, value in _matches(probes, probe_owner, gallery, owner, source, limit, measure, margin):
                evidence.setdefault((int(probe_owner[probe]), int(owner[face])), []).append(label(value))

        images = np.arange(len(original_names))
        add("hash", _hashes(self.outputs[name].image for name in output_names), np.arange(len(output_names)),
            _hashes(self.originals[name].image for name in original_names), images, IMAGE_DISTANCE,
            lambda bits: f"image hash {bits:.0f}/64", IMAGE_MARGIN)
        gallery = [(index_of[name], h) for name in original_names for h in self.originals[name].faces if h is not None]
        probes = [(i, h) for i, name in enumerate(output_names) for h in self.outputs[name].faces if h is not None]
        if gallery and probes:
            add("hash", _hashes(h for _, h in probes), np.array([i for i, _ in probes]), _hashes(h for _, h in gallery),
                np.array([i for i, _ in gallery]), FACE_DISTANCE, lambda bits: f"face hash {bits:.0f}/64")
        for name, threshold in self.thresholds.items():
            limit = NEAR_IDENTICAL_FRACTION * threshold
            described, owner = _descriptors(self.originals, original_names, name)
            probed, probe_owner = _descriptors(self.outputs, output_names, name)
            if described is not None and probed is not None and described.shape[1] == probed.shape[1]:
                add("euclidean", probed, probe_owner, described, owner, limit,
                    lambda distance, name=name, limit=limit: f"{name} distance {distance:.3f} < {limit:.3f}")
        return [ContentCopy(output_names[out], original_names[orig], paired.get(output_names[out]), tuple(dict.fromkeys(found)))
                for (out, orig), found in sorted(evidence.items())]


@dataclass(frozen=True)
class _Placed:
    """A face's box and landmarks in another image's coordinates."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray | None


def _rescaled(faces: Sequence[object], scale_x: float, scale_y: float) -> list[_Placed]:
    placed = []
    for face in faces:
        x0, y0, x1, y1 = (float(v) for v in face.box[:4])  # type: ignore[attr-defined]
        landmarks = getattr(face, "landmarks", None)
        if landmarks is not None:
            landmarks = np.asarray(landmarks, dtype=np.float64) * np.array([scale_x, scale_y])
        placed.append(_Placed((x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y), landmarks))
    return placed


def observe_pair(index: ContentIndex, source_rel: str, output_rel: str, original: np.ndarray, output: np.ndarray,
                 audited: np.ndarray, faces: Sequence[object], found: Sequence[object],
                 described: dict[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]], recognisers: Sequence[object]) -> None:
    """Add one measured pair: the original (``faces``, the audit's faces in it, possible ones left out) and the output
    (``output`` as decoded; ``audited``, the output at the original's size, where the audit detector ``found`` faces).
    Each recogniser's output descriptors are those the pair step took at the original's boxes; a face found in the
    output where the original has none is described here, on the output as decoded (a clean release has none: nothing
    more to compute)."""
    confirmed = [i for i, face in enumerate(faces) if not getattr(face, "possible", False)]
    index.add_original(source_rel, original, [faces[i] for i in confirmed],
                       {name: [pair[0][i] for i in confirmed] for name, pair in described.items()})
    boxes = [face.box for face in faces]  # type: ignore[attr-defined]
    overlaps = match_boxes([face.box for face in found], boxes)  # type: ignore[attr-defined]
    # the faces where the output has them: the audited copy may be the output stretched to another original's size
    placed = _rescaled(found, output.shape[1] / audited.shape[1], output.shape[0] / audited.shape[0])
    elsewhere = [face.box for face, overlap in zip(placed, overlaps) if overlap is None]
    descriptors: dict[str, list[np.ndarray]] = {name: [pair[1][i] for i in confirmed] for name, pair in described.items()}
    if elsewhere:
        for recogniser in recognisers:
            descriptors.setdefault(recogniser.name, []).extend(recogniser.describe_pair(output, output, elsewhere)[1])  # type: ignore[attr-defined]
    index.add_output(output_rel, output, output, placed, descriptors)


def _hashes(values: Iterable[np.uint64]) -> np.ndarray:
    return np.array(list(values), dtype=np.uint64)


def _distances(a: np.ndarray, b: np.ndarray, measure: str) -> np.ndarray:
    """Every row of ``a`` against every row of ``b``: bits that differ (hashes) or Euclidean distance (descriptors)."""
    if measure == "hash":
        return hamming(a, b).astype(np.float32)
    squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def _matches(probes: np.ndarray, probe_owner: np.ndarray, gallery: np.ndarray, owner: np.ndarray, source: np.ndarray,
             limit: float, measure: str, margin: float = 0.0) -> list[tuple[int, int, float]]:
    """(probe, gallery item, distance) for each probe within ``limit`` of a gallery item whose image is not the probe's
    source, closer to it by more than ``margin`` than to any item of its source, that image not being a near copy of
    the source (some item of each within ``limit`` of the other). Block by block: memory stays BLOCK x gallery."""
    twins = set()
    for start in range(0, len(gallery), BLOCK):
        near = _distances(gallery[start:start + BLOCK], gallery, measure) <= limit
        for i, j in zip(*np.nonzero(near)):
            twins.add((int(owner[start + i]), int(owner[j])))
    found = []
    for start in range(0, len(probes), BLOCK):
        distances = _distances(probes[start:start + BLOCK], gallery, measure)
        sources = source[probe_owner[start:start + BLOCK]]
        own = owner[None, :] == sources[:, None]  # the probe's source's own items
        own_best = np.where(own, distances, np.inf).min(axis=1)
        candidates = (distances <= limit) & ~own & (distances + margin < own_best[:, None])
        for i, j in zip(*np.nonzero(candidates)):
            src = int(sources[i])
            if src >= 0 and (src, int(owner[j])) in twins:
                continue
            found.append((start + int(i), int(j), float(distances[i, j])))
    return found


def _stacked(descriptors: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    return {name: np.asarray(values, dtype=np.float32).reshape(len(values), -1)
            for name, values in (descriptors or {}).items() if len(values)}


def _descriptors(store: dict[str, Seen], names: list[str], recogniser: str) -> tuple[np.ndarray | None, np.ndarray]:
    """Every face descriptor of ``recogniser`` in ``names`` order, and the index (in ``names``) of the image of each."""
    blocks, owner = [], []
    for index, name in enumerate(names):
        values = store[name].descriptors.get(recogniser)
        if values is not None and len(values):
            blocks.append(values)
            owner += [index] * len(values)
    if not blocks:
        return None, np.zeros(0, dtype=np.int64)
    return np.concatenate(blocks), np.array(owner)




# ---- the audit's finding -------------------------------------------------------------------------------

SHOWN_COPIES = 200  # copies listed in the summary
NAMED_IN_VERDICT = 3  # copies named in the verdict's sentence


def content_copies(index: ContentIndex, originals: dict[str, Path], outputs: dict[str, Path],
                   paired: dict[str, str | None], decode, workers: int = 1) -> ContentCopies:
    """Complete the index (files the pair step did not decode, on ``workers`` threads), match, and the summary's record."""
    unread = index.complete(originals, outputs, decode, workers)
    found = index.copies(paired)
    measures = ["image hash", "face hash", *index.thresholds]
    return ContentCopies(len(index.outputs), len(index.originals), measures,
                         [{"output_path": copy.output_path, "original_path": copy.original_path,
                           "paired_source": copy.paired_source, "evidence": list(copy.evidence)} for copy in found[:SHOWN_COPIES]],
                         len(found), unread[:SHOWN_COPIES])


def copies_crossed(record: ContentCopies | None) -> list[str]:
    """The verdict's sentence for copies found (always a failure: an original released under another name)."""
    if record is None or not record.count:
        return []
    named = "; ".join(ContentCopy(item["output_path"], item["original_path"], item["paired_source"], tuple(item["evidence"])).sentence()
                      for item in record.copies[:NAMED_IN_VERDICT])
    more = f"; and {record.count - NAMED_IN_VERDICT} more (see content_copies)" if record.count > NAMED_IN_VERDICT else ""
    return [f"{record.count} output(s) are copies of an original other than their paired source, found by content: {named}{more}"]
