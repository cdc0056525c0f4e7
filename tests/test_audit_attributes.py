"""The audit's attribute figures: k / l / t of the release from the output estimates, preservation, unique vectors."""

from __future__ import annotations

import numpy as np
import pytest

from anonymize.attributes.table import AttributeTable
from anonymize.audit.attributes import attribute_figures, box_matrix, matching_crops

NAMES = ("Big_Nose", "Narrow_Eyes", "Smiling", "Wearing_Hat")


def table(bits: list[list[int]], source: str = "landmarks") -> AttributeTable:
    values = np.where(np.array(bits) == 1, 0.8, 0.1).astype(np.float32)
    values[:, 3] = np.nan  # the source says nothing about hats
    return AttributeTable(tuple(f"{i}.jpg#0" for i in range(len(bits))), NAMES, values, source, heuristic=True)


ORIGINAL = table([[1, 0, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
# The outputs: face 2 lost its narrow eyes and face 3 became smiling.
OUTPUT = table([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]])


def test_release_figures_come_from_the_output_estimates():
    figures = attribute_figures(ORIGINAL, OUTPUT, ("Big_Nose", "Narrow_Eyes"), ("Smiling",), k=2)
    assert figures.estimated == ["Big_Nose", "Narrow_Eyes", "Smiling"] and figures.heuristic
    release, originals = figures.release, figures.originals
    # Release classes over (Big_Nose, Narrow_Eyes): 10 = faces 0, 1 (Smiling 1, 0); 00 = faces 2, 3 (Smiling 1, 1).
    assert (release.k, release.classes, release.distinct_l) == (2, 2, 1)
    assert release.t == {"Smiling": pytest.approx(0.25)}  # whole release 3/4 smiling; class 10: 1/2, class 00: 1
    # Originals: 10 (two faces), 01 and 00 alone: k 1, half the faces in classes below 2.
    assert (originals.k, originals.share_below_k) == (1, pytest.approx(0.5))
    assert figures.preservation.per_attribute == {"Big_Nose": 1.0, "Narrow_Eyes": 0.75, "Smiling": 0.75}
    assert figures.preservation.mean == pytest.approx(2.5 / 3)
    # Whole vectors over the estimated attributes: the release's 101, 100, 001, 001 -> faces 0 and 1 unique.
    assert figures.unique_share == pytest.approx(0.5) and figures.unique_share_originals == pytest.approx(1.0)
    written = figures.to_json()  # the summary's entry, key for key as the audit always wrote it
    assert list(written) == ["available", "source", "heuristic", "faces", "estimated", "requested_k", "release", "originals",
                             "preservation", "unique_share", "unique_share_originals"]
    assert type(figures).from_json(written) == figures


def test_attributes_the_source_does_not_estimate_give_no_k():
    figures = attribute_figures(ORIGINAL, OUTPUT, ("Big_Nose", "Wearing_Hat"), ("Smiling",))
    assert figures.release is None and "does not estimate Wearing_Hat" in figures.release_reason
    assert figures.preservation.mean is not None
    written = figures.to_json()  # release and originals stay in the JSON, as null, with the reason after them
    assert list(written)[6:10] == ["release", "originals", "release_reason", "preservation"] and written["release"] is None
    assert type(figures).from_json(written).to_json() == written


def test_matching_crops_cut_the_same_place_from_original_and_output():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    output = original.copy()
    output[40:80, 60:100] = 0  # the face was replaced
    before, after = matching_crops(original, output, (60, 40, 100, 80), None, False, "a.jpg#0", size=64)
    assert before.key == after.key == "a.jpg#0" and before.landmarks is None and after.landmarks is None
    assert before.image.shape == after.image.shape == (64, 64, 3)
    centre = slice(24, 40)
    assert after.image[centre, centre].max() == 0 and before.image[centre, centre].max() > 0
    # Outside the box the two crops are the same pixels.
    assert np.array_equal(before.image[:4], after.image[:4])
    # The box's centre lands on the crop's centre, at 1.6 times the box's side.
    matrix = box_matrix((60, 40, 100, 80), 64)
    assert matrix @ np.array([80, 60, 1]) == pytest.approx([32, 32]) and matrix[0, 0] == pytest.approx(64 / 64)


def test_the_papers_figures_list_k_unique_vectors_and_preservation():
    from anonymize.audit.figures import paper_figures
    from anonymize.audit.format import format_value
    from anonymize.audit.summary import AttributeFigures

    figures = {item.key: item for item in paper_figures(
        attributes=attribute_figures(ORIGINAL, OUTPUT, ("Big_Nose", "Narrow_Eyes"), ("Smiling",), k=2))}
    assert format_value(figures["attributes.k"]) == "2" and "Big_Nose, Narrow_Eyes" in figures["attributes.k"].protocol
    assert figures["attributes.unique"].value == pytest.approx(0.5) and figures["attributes.preserved"].value == pytest.approx(2.5 / 3)
    assert "landmarks (heuristic)" in figures["attributes.k"].instrument
    missing = {item.key: item for item in paper_figures(attributes=AttributeFigures.unavailable("not requested"))}
    assert missing["attributes.k"].value is None and missing["attributes.k"].status == "unavailable (not requested)"
