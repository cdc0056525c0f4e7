"""The release's attribute-based privacy (AnonymousNet) and attribute preservation, for every run.

For each audited face (possible faces apart) the audit cuts the same aligned crop out of the
original and out of the output: FFHQ-style from the audit detector's landmarks of the original
face, from CelebA's template for aligned input, else a square around the box. The output's crop
uses the original's placement (the run pastes each face back where it was), and both crops reach
the attribute source without landmarks, so the source measures each one itself: the output's
values are re-estimated on the output, never copied from the original.

From the two tables (:func:`attribute_figures`):

* ``release``: k / l / t over the quasi-identifiers and sensitive attributes of the OUTPUT
  estimates (what an attacker sees in the release), and the same for the originals beside it;
* ``preservation``: per attribute, the share of faces whose value agrees between original and
  output (the papers' utility measure), and their mean;
* ``unique_share``: the share of faces whose whole attribute vector (every attribute the source
  estimates) no other face in the release has (FALCO's attribute-level linkability).

The default source is ``auto``: ``estimators+landmarks`` when the human-models are installed
(gender, age and expression from classifiers no method here was tuned against, the face-shape
columns from dlib's 68 points), else ``landmarks`` alone (the one source that needs no labels or
extra weights). Landmark estimates are rules of thumb, and the summary says so (``heuristic``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from anonymize.attributes.measure import attribute_agreement, measure_table, unique_vector_share
from anonymize.attributes.sources import AttributeSource, create_source
from anonymize.attributes.table import AttributeTable
from anonymize.audit.summary import AttributeFigures, Preservation, ReleaseMeasures
from anonymize.faces.align import align_face, align_single_face, warp_to_crop, whole_image_as_face
from anonymize.faces.types import FaceCrop
from anonymize.weights import WeightsStore

ATTRIBUTE_CROP = 256  # the aligned crop size the attribute sources see (as `anonymize attributes` uses)
BOX_CROP_GROWTH = 1.6  # a face known only by its box: a square this many times the box's longer side
BATCH = 32  # faces estimated at once (crops are not kept beyond a batch)
DEFAULT_SOURCE = "auto"
# "auto": the classifiers outside every method's loss (Male, Young, Smiling) with the landmark rules for
# the face-shape columns, when the human-models are installed; else the landmark rules alone.
AUTO_SOURCES = ("estimators+landmarks", "landmarks")
# The landmarks source's face-shape attributes (stable across a person's photos: what links a face)
# and its expression attribute (what a class should not give away).
DEFAULT_QUASI_IDENTIFIERS = ("Arched_Eyebrows", "Big_Lips", "Big_Nose", "Narrow_Eyes")
DEFAULT_SENSITIVE = ("Smiling",)
DEFAULT_K = 5


def box_matrix(box: Sequence[float], size: int) -> np.ndarray:
    """Affine matrix of a square crop centred on the box, ``BOX_CROP_GROWTH`` times its longer side."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0, 1.0) * BOX_CROP_GROWTH
    scale = size / side
    return np.array([[scale, 0.0, size / 2 - scale * (x0 + x1) / 2], [0.0, scale, size / 2 - scale * (y0 + y1) / 2]])


def matching_crops(original: np.ndarray, output: np.ndarray, box: Sequence[float], landmarks: np.ndarray | None,
                   aligned: bool, key: str, size: int = ATTRIBUTE_CROP) -> tuple[FaceCrop, FaceCrop]:
    """The same aligned crop of the original and of the output (same size images), both without landmarks."""
    if aligned:
        placed = align_single_face(original, landmarks, size)
        matrix = placed.matrix
    elif landmarks is not None:
        matrix = align_face(original, landmarks, size).matrix
    else:
        matrix = box_matrix(box, size)
    if aligned and placed.whole_image:
        crops = placed.crop, whole_image_as_face(output, size).crop
    else:
        crops = warp_to_crop(original, matrix, size), warp_to_crop(output, matrix, size)
    return FaceCrop(crops[0], None, key), FaceCrop(crops[1], None, key)


@dataclass
class AttributeCollector:
    """Gathers matching crops and estimates them a batch at a time; the tables grow as it goes."""

    source: AttributeSource
    pending: list[tuple[FaceCrop, FaceCrop]] = field(default_factory=list)
    originals: list[AttributeTable] = field(default_factory=list)
    outputs: list[AttributeTable] = field(default_factory=list)

    def add(self, original: FaceCrop, output: FaceCrop) -> None:
        self.pending.append((original, output))
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        originals, outputs = [pair[0] for pair in self.pending], [pair[1] for pair in self.pending]
        self.pending = []
        self.originals.append(self.source.estimate(originals))
        self.outputs.append(self.source.estimate(outputs))

    def tables(self) -> tuple[AttributeTable, AttributeTable] | None:
        self.flush()
        if not self.originals:
            return None
        return concatenate(self.originals), concatenate(self.outputs)


def concatenate(tables: Sequence[AttributeTable]) -> AttributeTable:
    """One table from several batches of the same source and columns."""
    first = tables[0]
    keys = tuple(key for table in tables for key in table.keys)
    return AttributeTable(keys, first.names, np.concatenate([table.probabilities for table in tables]), first.source, first.heuristic)


def attribute_figures(original: AttributeTable, output: AttributeTable, quasi_identifiers: Sequence[str],
                      sensitive: Sequence[str], k: int = DEFAULT_K) -> AttributeFigures:
    """The summary's ``attributes`` entry (see the module doc); the release's figures come from ``output``."""
    estimated = [name for column, name in enumerate(output.names) if not np.isnan(output.probabilities[:, column]).all()]
    missing = [name for name in (*quasi_identifiers, *sensitive) if name not in estimated]
    release = originals = None
    release_reason = None
    if missing:  # the source says nothing about them: k / l / t over unknowns would be meaningless
        release_reason = f"the {output.source} source does not estimate {', '.join(missing)}"
    else:
        release = ReleaseMeasures.from_json(measure_table(output, quasi_identifiers, sensitive, k).as_dict())
        originals = ReleaseMeasures.from_json(measure_table(original, quasi_identifiers, sensitive, k).as_dict())
    preservation = attribute_agreement(original.select(estimated), output.select(estimated))
    measured = [value for value in preservation.values() if value is not None]
    return AttributeFigures(
        available=True, source=output.source, heuristic=output.heuristic, faces=len(output.keys), estimated=estimated,
        requested_k=k, release=release, originals=originals, release_reason=release_reason,
        preservation=Preservation(preservation, float(np.mean(measured)) if measured else None),
        unique_share=unique_vector_share(output, estimated), unique_share_originals=unique_vector_share(original, estimated),
    )


def open_collector(source: str, weights: WeightsStore, device: str,
                   options: Mapping[str, str] | None = None) -> AttributeCollector | AttributeFigures:
    """The collector of the named source (``auto``: see :data:`AUTO_SOURCES`), or the summary entry saying why it cannot run."""
    candidates = AUTO_SOURCES if source == "auto" and not options else (source,)
    reasons = []
    for candidate in candidates:
        try:
            return AttributeCollector(create_source(candidate, weights, device, options))
        except Exception as exc:  # noqa: BLE001 - a missing source or its weights must not stop the audit
            reasons.append(f"attribute source {candidate}: {' '.join(str(exc).split())}")
    return AttributeFigures.unavailable("; ".join(reasons))
