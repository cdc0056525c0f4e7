"""The privacy and utility figures of an attribute table: what the CLI prints and the audit reports.

* :func:`measure_table`: k / l / t (:mod:`anonymize.attributes.privacy`) over named quasi-identifiers
  and sensitive attributes of a table, at the 0.5 threshold of :meth:`AttributeTable.bits`;
* :func:`attribute_agreement`: per attribute, the share of faces whose value is the same in two
  tables of the same faces (AnonymousNet's and FALCO's attribute preservation);
* :func:`unique_vector_share`: the share of faces whose whole attribute vector no other face has.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anonymize.attributes.privacy import PrivacyReport, equivalence_classes, privacy_report, share_below_k
from anonymize.attributes.table import AttributeTable

READINGS = ("closeness", "literal")  # Algorithm 1's S_{E_i}: over the other quasi-identifiers (default), or a point mass


def codes_of(table: AttributeTable, names: Sequence[str]) -> np.ndarray:
    """[faces, len(names)] int8 codes (1, 0, -1 unknown) of the named attributes."""
    return table.select(tuple(names)).bits() if names else np.zeros((len(table.keys), 0), np.int8)


def measure_table(table: AttributeTable, quasi_identifiers: Sequence[str], sensitive: Sequence[str] = (),
                  requested_k: int | None = None, reference: AttributeTable | None = None,
                  qi_codes: np.ndarray | None = None) -> PrivacyReport:
    """k / l / t of ``table`` (``qi_codes``: recoded quasi-identifier values to measure instead of the table's)."""
    if not quasi_identifiers:
        raise ValueError("name at least one quasi-identifier attribute")
    overlap = set(quasi_identifiers) & set(sensitive)
    if overlap:
        raise ValueError(f"attributes both quasi-identifier and sensitive: {', '.join(sorted(overlap))}")
    codes = codes_of(table, quasi_identifiers) if qi_codes is None else qi_codes
    sensitive_codes = codes_of(table, sensitive) if sensitive else None
    reference_codes = codes_of(reference, sensitive) if reference is not None and sensitive else None
    return privacy_report(codes, sensitive_codes, tuple(quasi_identifiers), tuple(sensitive), requested_k, reference_codes)


def attribute_agreement(original: AttributeTable, output: AttributeTable) -> dict[str, float | None]:
    """Per attribute both tables hold: the share of faces, known in both, with the same value (None: none known in both)."""
    if len(original.keys) != len(output.keys):
        raise ValueError(f"attribute agreement: {len(original.keys)} original faces but {len(output.keys)} outputs")
    names = [name for name in original.names if name in output.names]
    before, after = codes_of(original, names), codes_of(output, names)
    known = (before >= 0) & (after >= 0)
    agreement: dict[str, float | None] = {}
    for column, name in enumerate(names):
        count = int(known[:, column].sum())
        agreement[name] = float((before[known[:, column], column] == after[known[:, column], column]).mean()) if count else None
    return agreement


def source_accuracy(labels: AttributeTable, estimates: AttributeTable) -> dict[str, dict[str, float | int | None]]:
    """Per attribute both tables hold: a source's accuracy against labels of the same faces (stage I's figure).

    ``accuracy``: the share of faces, known in both, whose 0.5-thresholded estimate equals the label;
    ``faces``: how many that is; ``majority``: the accuracy of always answering the labels' majority
    value, the floor an estimator must beat to say anything (CelebA's attributes are unbalanced).
    """
    agreement = attribute_agreement(labels, estimates)
    result: dict[str, dict[str, float | int | None]] = {}
    for name, accuracy in agreement.items():
        truth, guess = codes_of(labels, [name])[:, 0], codes_of(estimates, [name])[:, 0]
        known = (truth >= 0) & (guess >= 0)
        share = float(truth[known].mean()) if known.any() else None
        result[name] = {"accuracy": accuracy, "faces": int(known.sum()),
                        "majority": None if share is None else max(share, 1.0 - share)}
    return result


def unique_vector_share(table: AttributeTable, names: Sequence[str] | None = None) -> float:
    """The share of faces whose attribute vector (over ``names``, default all) no other face shares."""
    codes = codes_of(table, list(names) if names is not None else list(table.names))
    return share_below_k(equivalence_classes(codes), 2)


def privacy_steps(table: AttributeTable, quasi_identifiers: Sequence[str], sensitive: Sequence[str] = (),
                  k: int | None = None, l: int | None = None, t: float | None = None, epsilon: float | None = None,
                  seed: int = 0, reference: AttributeTable | None = None,
                  reading: str = "closeness") -> tuple[list[dict[str, object]], np.ndarray]:
    """k / l / t before and after each requested stage II step, and the released quasi-identifier codes.

    Steps, in order: with ``k``, the dataset mode (l and t as its requirements); with ``t`` and no
    ``k``, Algorithm 1 (``reading`` "closeness": S_E over the other quasi-identifiers, the default;
    "literal": the point-mass reading); with ``epsilon``, randomised response (Algorithm 1's line 11)
    on what the previous step released. Only quasi-identifier values change; the sensitive ones are
    what the classes must not reveal. Each step also gives the QIs' marginals (share of 1).
    """
    from anonymize.attributes.ppas import (
        Requirements, closeness_over_others, k_member_recoding, population_shares, randomized_response,
        select_attributes_closeness, select_attributes_literal,
    )

    if reading not in READINGS:
        raise ValueError(f"reading must be one of {', '.join(READINGS)}, got {reading!r}")

    if l is not None and k is None:
        raise ValueError("l is a requirement of the dataset mode: give k too")
    codes = codes_of(table, quasi_identifiers)
    sensitive_codes = codes_of(table, sensitive) if sensitive else None
    reference_sensitive = codes_of(reference, sensitive) if reference is not None and sensitive else None

    def step(name: str, released: np.ndarray, **extra: object) -> dict[str, object]:
        report = measure_table(table, quasi_identifiers, sensitive, k, reference, qi_codes=released)
        shares = population_shares(released) if released.size else np.zeros(0)
        marginals = {qi: None if np.isnan(share) else float(share) for qi, share in zip(quasi_identifiers, shares)}
        largest, mean = closeness_over_others(released, target)
        return {"step": name, **extra, **report.as_dict(), "marginals": marginals,
                "qi_t": {qi: None if np.isnan(value) else float(value) for qi, value in zip(quasi_identifiers, largest)},
                "qi_distance": {qi: None if np.isnan(value) else float(value) for qi, value in zip(quasi_identifiers, mean)}}

    # S: the reference's shares of the quasi-identifiers, else the table's own (what Algorithm 1 aims at)
    target = population_shares(codes_of(reference if reference is not None else table, quasi_identifiers))
    steps = [step("before", codes)]
    values = codes.size or 1
    if k is not None:
        recoded = k_member_recoding(codes, Requirements(k, l, t), sensitive_codes, reference_sensitive)
        codes = recoded.codes
        steps.append(step("k-member", codes, flips=recoded.flips, flip_share=recoded.flips / values,
                          strategy=recoded.strategy, merges=recoded.merges))
    elif t is not None:
        population = target if reference is not None else None
        if reading == "literal":
            selected = select_attributes_literal(codes, t, quasi_identifiers, population)
        else:
            selected = select_attributes_closeness(codes, t, population)
        codes = selected.codes
        steps.append(step(f"algorithm-1 {reading}", codes, flips=selected.flips, flip_share=selected.flips / values,
                          population={qi: None if np.isnan(share) else float(share) for qi, share in zip(quasi_identifiers, target)}))
    if epsilon is not None:
        responded = randomized_response(codes, epsilon, seed)
        codes = responded.codes
        steps.append(step("randomized-response", codes, flips=responded.flips, flip_share=responded.flips / values,
                          epsilon=epsilon, seed=seed))
    return steps, codes
