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


def unique_vector_share(table: AttributeTable, names: Sequence[str] | None = None) -> float:
    """The share of faces whose attribute vector (over ``names``, default all) no other face shares."""
    codes = codes_of(table, list(names) if names is not None else list(table.names))
    return share_below_k(equivalence_classes(codes), 2)


def privacy_steps(table: AttributeTable, quasi_identifiers: Sequence[str], sensitive: Sequence[str] = (),
                  k: int | None = None, l: int | None = None, t: float | None = None, epsilon: float | None = None,
                  seed: int = 0, reference: AttributeTable | None = None) -> tuple[list[dict[str, object]], np.ndarray]:
    """k / l / t before and after each requested stage II step, and the released quasi-identifier codes.

    Steps, in order: with ``k``, the dataset mode (l and t as its requirements); with ``t`` and no
    ``k``, Algorithm 1 read literally; with ``epsilon``, randomised response on what the previous
    step released. Only quasi-identifier values change; the sensitive ones are what the classes
    must not reveal.
    """
    from anonymize.attributes.ppas import (
        Requirements, k_member_recoding, population_shares, randomized_response, select_attributes_literal,
    )

    if l is not None and k is None:
        raise ValueError("l is a requirement of the dataset mode: give k too")
    codes = codes_of(table, quasi_identifiers)
    sensitive_codes = codes_of(table, sensitive) if sensitive else None
    reference_sensitive = codes_of(reference, sensitive) if reference is not None and sensitive else None

    def step(name: str, released: np.ndarray, **extra: object) -> dict[str, object]:
        report = measure_table(table, quasi_identifiers, sensitive, k, reference, qi_codes=released)
        return {"step": name, **extra, **report.as_dict()}

    steps = [step("before", codes)]
    values = codes.size or 1
    if k is not None:
        recoded = k_member_recoding(codes, Requirements(k, l, t), sensitive_codes, reference_sensitive)
        codes = recoded.codes
        steps.append(step("k-member", codes, flips=recoded.flips, flip_share=recoded.flips / values,
                          strategy=recoded.strategy, merges=recoded.merges))
    elif t is not None:
        population = population_shares(codes_of(reference, quasi_identifiers)) if reference is not None else None
        selected = select_attributes_literal(codes, t, quasi_identifiers, population)
        codes = selected.codes
        steps.append(step("algorithm-1", codes, flips=selected.flips, flip_share=selected.flips / values))
    if epsilon is not None:
        responded = randomized_response(codes, epsilon, seed)
        codes = responded.codes
        steps.append(step("randomized-response", codes, flips=responded.flips, flip_share=responded.flips / values,
                          epsilon=epsilon, seed=seed))
    return steps, codes
