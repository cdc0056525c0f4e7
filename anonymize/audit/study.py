"""A blind human study kit: do people still recognise the anonymized faces?

What Li et al.'s two papers measure with volunteers (25 volunteers, 200 pairs, half the same person):
each volunteer sees pairs of faces and says whether they show the same person. The parts paper
(ACM MM 2021, Table 5) reports 0.88 of answers right on pairs with an anonymized face against 0.98 on
real-real pairs, the human baseline; the camouflage paper (ICPR 2020, Table II) reports 0.8575 on
real-generated pairs and no human baseline (its 97.05% for "original real images" is InsightFace's
verification accuracy, a machine's).

Anonymized pairs: an original on the left, an anonymized face on the right; half the same person (an
original and its own anonymized output), half not (an original and the anonymized output of somebody
else: another identity when the audit knows identities, else another photo). Control pairs (real-real,
the baseline the anonymized accuracy is read against): two originals, half two different photos of one
identity, half two identities; they need identities. Both kinds are shuffled together with a seed, so
a volunteer cannot tell them apart; the key says which is which, and :mod:`.study_score` scores a
volunteers' answer sheet against it.

The kit is two files beside the report: ``study.html`` (what volunteers see: numbered pairs, no
file name, no answer, thumbnails named by pair number only) and ``study-answer-key.csv`` (what the
curator keeps: the answer and the faces behind each pair). The report itself must not be shown to
volunteers: it shows originals next to their own outputs.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anonymize.audit.report_folder import OwnedFolder, ReportFolders
from anonymize.io.manifest import readable
from anonymize.io.write import atomic_write_bytes

STUDY_PAGE = "study.html"
ANSWER_KEY = "study-answer-key.csv"
STUDY_DIR = "study-pairs"
SAME, DIFFERENT = "same", "different"
ANONYMIZED, CONTROL = "anonymized", "control"  # what the right-hand face of a pair is: an output, or an original
PHOTOS_PER_PERSON = 20  # same-person control pairs are drawn among a person's first 20 photos (in seeded order)
KEY_COLUMNS = ("pair", "kind", "answer", "left_original", "right_face", "left_identity", "right_identity")


@dataclass(frozen=True)
class StudyPair:
    number: int  # 1-based, the order volunteers see
    answer: str  # same | different
    original: Mapping[str, Any]  # the audit row of the face shown on the left (its original)
    anonymized: Mapping[str, Any]  # the audit row of the face shown on the right: its output, or (control) its original
    kind: str = ANONYMIZED  # anonymized | control

    @property
    def right_side(self) -> str:
        """Which image of the right-hand row is shown: ``"anonymized"`` (its output) or ``"original"``."""
        return "original" if self.kind == CONTROL else "anonymized"


def _person(row: Mapping[str, Any]) -> str:
    """The identity when known, else the source image (another photo may still be the same person)."""
    return str(row.get("identity") or row["source_path"])


def _study_faces(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [row for row in rows if row.get("face_index") is not None and row.get("box") is not None
            and row.get("face_status") != "possible face" and not row.get("error")]


def control_pairs(rows: Sequence[Mapping[str, Any]], count: int, seed: int = 0) -> list[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """Up to ``count`` real-real pairs (answer, left, right): half two photos of one identity, half two identities.

    Without identities there is no real same-person pair (another photo may or may not be the person) and
    no control: an empty list. Each same-person pair is two different photos, each pair drawn once."""
    faces = [row for row in _study_faces(rows) if row.get("identity")]
    rng = np.random.default_rng([seed, 1])
    order = [faces[i] for i in rng.permutation(len(faces))]
    by_person: dict[str, list[Mapping[str, Any]]] = {}
    for row in order:
        by_person.setdefault(str(row["identity"]), []).append(row)
    same_pool = [(a, b) for photos in by_person.values() for i, a in enumerate(photos[:PHOTOS_PER_PERSON])
                 for b in photos[i + 1:PHOTOS_PER_PERSON] if a["source_path"] != b["source_path"]]
    half = count // 2
    same = [same_pool[i] for i in rng.permutation(len(same_pool))[:half]]
    people, different, seen = list(by_person), [], set()
    for _ in range(20 * (count - half) if len(people) >= 2 else 0):  # drawn, not enumerated: people^2 pairs can be many
        if len(different) == count - half:
            break
        p, q = rng.choice(len(people), 2, replace=False)
        a, b = (by_person[people[i]][int(rng.integers(len(by_person[people[i]])))] for i in (p, q))
        if (_face_name(a), _face_name(b)) not in seen:
            seen.update({(_face_name(a), _face_name(b)), (_face_name(b), _face_name(a))})
            different.append((a, b))
    return [(SAME, a, b) for a, b in same] + [(DIFFERENT, a, b) for a, b in different]


def study_pairs(rows: Sequence[Mapping[str, Any]], count: int, seed: int = 0, controls: int = 0) -> list[StudyPair]:
    """Up to ``count`` anonymized pairs, half same person and half different, and up to ``controls`` real-real
    control pairs (:func:`control_pairs`), shuffled together (see module doc)."""
    faces = _study_faces(rows)
    rng = np.random.default_rng(seed)
    order = [faces[i] for i in rng.permutation(len(faces))]
    half = min(count // 2, len(order))
    others_exist = len({_person(row) for row in order}) >= 2
    different = half if others_exist else 0
    same = half if others_exist else min(count, len(order))  # nobody else to show: same-person pairs only
    pairs: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = [(SAME, row, row) for row in order[:same]]
    for index in range(different):
        original = order[(same + index) % len(order)]
        candidates = [row for row in order if _person(row) != _person(original)]
        pairs.append((DIFFERENT, original, candidates[int(rng.integers(len(candidates)))]))
    kinds = [(answer, left, right, ANONYMIZED) for answer, left, right in pairs]
    kinds += [(answer, left, right, CONTROL) for answer, left, right in control_pairs(rows, controls, seed)] if controls else []
    shuffled = [kinds[i] for i in rng.permutation(len(kinds))]
    return [StudyPair(number + 1, answer, left, right, kind) for number, (answer, left, right, kind) in enumerate(shuffled)]


def _face_name(row: Mapping[str, Any]) -> str:
    return f"{row['source_path']}#{row['face_index']}"


FORMULA_STARTS = ("=", "+", "-", "@")  # what a spreadsheet reads as the start of a formula (OWASP: CSV injection)


def _cell(text: str) -> str:
    """A text cell of the answer key: file names that are not UTF-8 as ``\\xNN``, and a cell a spreadsheet would
    run as a formula (a file or folder named ``=HYPERLINK(...)``) prefixed with ``'``, so that it shows as text."""
    text = readable(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def answer_key_csv(pairs: Sequence[StudyPair]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(KEY_COLUMNS)  # right_face: the face whose output (anonymized) or original (control) is on the right
    for pair in pairs:
        texts = [_face_name(pair.original), _face_name(pair.anonymized),
                 str(pair.original.get("identity") or ""), str(pair.anonymized.get("identity") or "")]
        writer.writerow([pair.number, pair.kind, pair.answer, *(_cell(text) for text in texts)])
    return buffer.getvalue().encode("utf-8")


def study_page(pairs: Sequence[StudyPair], images: Sequence[tuple[str, str] | None]) -> str:
    """What volunteers see: numbered pairs and a yes / no choice each, nothing else."""
    items = []
    for pair, shown in zip(pairs, images):
        if shown is None:
            continue
        left, right = (html.escape(src) for src in shown)
        name = f"pair-{pair.number}"
        items.append(
            f'<div class="pair"><div class="number">{pair.number}</div><img src="{left}" alt="face A of pair {pair.number}">'
            f'<img src="{right}" alt="face B of pair {pair.number}"><div class="ask">Same person?'
            f'<label><input type="radio" name="{name}" value="yes"> yes</label>'
            f'<label><input type="radio" name="{name}" value="no"> no</label></div></div>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Face pairs</title><style>
body {{ font-family: system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1f2328; }}
main {{ max-width: 900px; margin: 0 auto; padding: 24px; }}
.pair {{ display: flex; align-items: center; gap: 16px; background: #fff; border-radius: 10px; padding: 10px; margin: 10px 0; }}
.pair img {{ width: 160px; height: 160px; object-fit: contain; background: #222; border-radius: 6px; }}
.number {{ font-size: 24px; font-weight: 700; width: 40px; text-align: right; }}
.ask label {{ display: block; margin: 6px 0; }}
</style></head><body><main>
<h1>Face pairs</h1>
<p>Each row shows two faces. Answer for each pair whether they show the <b>same person</b>. Go by the face; take your
first impression and do not go back. Write down or hand in your answers by pair number.</p>
{''.join(items)}
</main></body></html>
"""


def write_study(report_dir: Path, pairs: Sequence[StudyPair],
                crop: Callable[[Mapping[str, Any], str], bytes | None], folder: OwnedFolder | None = None) -> tuple[Path, Path]:
    """Write the page, its thumbnails (``crop(row, "original" | "anonymized")`` -> JPEG) and the answer key.

    The thumbnails go into ``folder`` (default: ``<report_dir>/study-pairs`` claimed here): the audit's own
    folder, opened without following links, where only what an earlier audit wrote is removed
    (:mod:`anonymize.audit.report_folder`)."""
    if folder is None:
        with ReportFolders(report_dir).claim(STUDY_DIR) as claimed:
            return write_study(report_dir, pairs, crop, claimed)
    images: list[tuple[str, str] | None] = []
    for pair in pairs:
        left, right = crop(pair.original, "original"), crop(pair.anonymized, pair.right_side)
        if left is None or right is None:
            images.append(None)
            continue
        images.append((folder.write(f"{pair.number:03d}-a.jpg", left), folder.write(f"{pair.number:03d}-b.jpg", right)))
    shown = [pair for pair, image in zip(pairs, images) if image is not None]
    page = report_dir / STUDY_PAGE
    atomic_write_bytes(page, study_page(pairs, images).encode("utf-8"))
    key = report_dir / ANSWER_KEY
    atomic_write_bytes(key, answer_key_csv(shown))
    return page, key
