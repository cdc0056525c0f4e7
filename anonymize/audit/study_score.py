"""``anonymize audit study-score``: volunteers' answers to ``study.html`` scored against the answer key.

The figure the papers report is the share of right answers on pairs with an anonymized face, read
against the share on real-real control pairs (Li et al., ACM MM 2021, Table 5: 0.88 against 0.98). Both
come with a 95% Wilson interval (:func:`anonymize.audit.sampling.wilson_interval`), which counts every
answer as an independent trial: answers of one volunteer, or to one pair, are correlated, so with few
volunteers or pairs the true uncertainty is wider than the interval.

The answer sheet is a CSV with a header: ``pair`` (the number on the page) and ``answer`` (yes / no,
also same / different, y / n, 1 / 0; empty: not answered), and optionally ``volunteer`` (several
volunteers in one file). Anything else is refused with the file, the row and the cause.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anonymize.audit.sampling import wilson_interval
from anonymize.audit.study import ANONYMIZED, CONTROL, DIFFERENT, SAME
from anonymize.errors import AnonymizeError

YES = {"yes", "y", "same", "1", "true"}
NO = {"no", "n", "different", "0", "false"}


class StudyScoreError(AnonymizeError):
    """An answer sheet or key that cannot be scored: the message names the file, the row and the cause."""


@dataclass(frozen=True)
class KindScore:
    """Right answers of one kind of pair (anonymized or control), with their 95% Wilson interval."""

    right: int
    answered: int
    interval: tuple[float, float] | None

    @property
    def accuracy(self) -> float | None:
        return self.right / self.answered if self.answered else None


@dataclass(frozen=True)
class StudyScore:
    kinds: dict[str, KindScore]  # anonymized, control
    volunteers: int
    unanswered: int  # (volunteer, pair) cells of the key left empty or missing from the sheet
    left_out: list[str] = field(default_factory=list)  # why some pairs could not be scored


def read_key(path: Path) -> dict[int, tuple[str, str]]:
    """pair -> (kind, answer) from ``study-answer-key.csv`` (a key without ``kind``, older, is all anonymized)."""
    rows = _read_csv(path, required=("pair", "answer"))
    key: dict[int, tuple[str, str]] = {}
    for line, row in rows:
        number = _pair_number(row["pair"], path, line)
        answer, kind = row["answer"].strip(), (row.get("kind") or ANONYMIZED).strip()
        if answer not in (SAME, DIFFERENT) or kind not in (ANONYMIZED, CONTROL):
            raise StudyScoreError(f"{path}: line {line}: answer must be same/different and kind anonymized/control, "
                                  f"got {answer!r} / {kind!r}")
        key[number] = (kind, answer)
    if not key:
        raise StudyScoreError(f"{path}: the answer key lists no pair")
    return key


def read_answers(path: Path) -> dict[tuple[str, int], bool | None]:
    """(volunteer, pair) -> True (same person), False (not), None (not answered)."""
    rows = _read_csv(path, required=("pair", "answer"))
    answers: dict[tuple[str, int], bool | None] = {}
    for line, row in rows:
        number = _pair_number(row["pair"], path, line)
        volunteer = (row.get("volunteer") or "").strip()
        text = (row["answer"] or "").strip().lower()
        if text and text not in YES | NO:
            raise StudyScoreError(f"{path}: line {line}: answer {row['answer']!r} is neither yes nor no")
        if (volunteer, number) in answers:
            raise StudyScoreError(f"{path}: line {line}: pair {number} answered twice" + (f" by {volunteer}" if volunteer else ""))
        answers[(volunteer, number)] = None if not text else text in YES
    return answers


def score_answers(key: Mapping[int, tuple[str, str]], answers: Mapping[tuple[str, int], bool | None], answers_path: Path) -> StudyScore:
    """Right answers per kind of pair; a pair the key does not hold is an error (a sheet of another study)."""
    unknown = sorted({number for _, number in answers if number not in key})
    if unknown:
        raise StudyScoreError(f"{answers_path}: pair(s) {', '.join(map(str, unknown[:5]))} are not in the answer key "
                              "(answers of another study, or a mistyped number)")
    if not answers:
        raise StudyScoreError(f"{answers_path}: no answer in the sheet")
    volunteers = sorted({volunteer for volunteer, _ in answers})
    counts = {ANONYMIZED: [0, 0], CONTROL: [0, 0]}
    unanswered = 0
    for volunteer in volunteers:
        for number, (kind, truth) in key.items():
            said = answers.get((volunteer, number))
            if said is None:
                unanswered += 1
                continue
            counts[kind][1] += 1
            counts[kind][0] += int(said == (truth == SAME))
    kinds = {kind: KindScore(right, answered, wilson_interval(right, answered)) for kind, (right, answered) in counts.items()}
    left_out = [] if any(kind == CONTROL for kind, _ in key.values()) else [
        "the key has no control pair (a kit without identities, or an older one): no real-real baseline to read the accuracy against"]
    return StudyScore(kinds, len(volunteers), unanswered, left_out)


def score_files(answers_path: Path, key_path: Path) -> StudyScore:
    return score_answers(read_key(key_path), read_answers(answers_path), answers_path)


def _read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyScoreError(f"{path}: cannot read: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    missing = [name for name in required if name not in (reader.fieldnames or [])]
    if missing:
        raise StudyScoreError(f"{path}: no column {', '.join(missing)} in the header (need {', '.join(required)})")
    return [(index + 2, row) for index, row in enumerate(reader) if any((value or "").strip() for value in row.values())]


def _pair_number(text: str | None, path: Path, line: int) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        raise StudyScoreError(f"{path}: line {line}: pair {text!r} is not a number") from None
