"""A blind human study kit: do people still recognise the anonymized faces?

What the camouflage papers measure with volunteers (Li et al. report 0.88 and 0.86 of answers
right on anonymized pairs against 0.98 and 0.97 on real ones): each volunteer sees pairs of faces,
an original on the left and an anonymized face on the right, and says whether they show the same
person. Half the pairs are the same person (an original and its own anonymized output), half are
not (an original and the anonymized output of somebody else: another identity when the audit knows
identities, else another photo). The pairs are shuffled with a seed.

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


@dataclass(frozen=True)
class StudyPair:
    number: int  # 1-based, the order volunteers see
    answer: str  # same | different
    original: Mapping[str, Any]  # the audit row of the face shown on the left (its original)
    anonymized: Mapping[str, Any]  # the audit row of the face whose output is shown on the right


def _person(row: Mapping[str, Any]) -> str:
    """The identity when known, else the source image (another photo may still be the same person)."""
    return str(row.get("identity") or row["source_path"])


def study_pairs(rows: Sequence[Mapping[str, Any]], count: int, seed: int = 0) -> list[StudyPair]:
    """Up to ``count`` pairs, half same person and half different, shuffled (see module doc)."""
    faces = [row for row in rows if row.get("face_index") is not None and row.get("box") is not None
             and row.get("face_status") != "possible face" and not row.get("error")]
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
    shuffled = [pairs[i] for i in rng.permutation(len(pairs))]
    return [StudyPair(number + 1, answer, left, right) for number, (answer, left, right) in enumerate(shuffled)]


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
    writer.writerow(["pair", "answer", "left_original", "right_anonymized_from", "left_identity", "right_identity"])
    for pair in pairs:
        texts = [_face_name(pair.original), _face_name(pair.anonymized),
                 str(pair.original.get("identity") or ""), str(pair.anonymized.get("identity") or "")]
        writer.writerow([pair.number, pair.answer, *(_cell(text) for text in texts)])
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
        left, right = crop(pair.original, "original"), crop(pair.anonymized, "anonymized")
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
