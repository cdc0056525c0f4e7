"""The audit as one static HTML page: opens from the file system, loads nothing from anywhere.

``index.html`` holds the verdict, the summary figures, the identity check, a histogram of identity
distances drawn as inline SVG, and side-by-side crops of the worst cases (the faces that stay most
similar to their original, and the missed faces). The crops are small JPEG files in
``audit-thumbs/`` next to the page, written without metadata. They show ORIGINAL faces: the
report belongs with the originals and must never be published with the anonymized data (the audit
refuses to write it inside the anonymized folder, and never writes through a link below the report
folder: see :mod:`anonymize.audit.report_folder`).
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from anonymize.audit.format import face_count, format_value, judge_rates, number, percent
from anonymize.audit.report_folder import OwnedFolder, ReportFolders
from anonymize.audit.study import ANSWER_KEY, STUDY_DIR, STUDY_PAGE, study_pairs, write_study
from anonymize.audit.summary import AuditSummary
from anonymize.io.decode import ImageDecodeError, decode_image
from anonymize.io.manifest import readable
from anonymize.io.write import atomic_write_bytes

if TYPE_CHECKING:
    from anonymize.audit.config import AuditConfig, AuditResult

REPORT_NAME = "index.html"
THUMBS_DIR = "audit-thumbs"
THUMB_SIDE = 160
WHOLE_SIDE = 480  # whole-image thumbnails of missed and possible faces: the longer side, in pixels
BOX_COLOUR = (230, 30, 30)
CROP_MARGIN = 0.3
HISTOGRAM_BIN = 0.05
DEFAULT_STUDY_PAIRS = 200  # for the human goal, when --study-pairs is not given: the papers' 200 pairs
SERIES_COLOURS = ("#2b8a3e", "#1c7ed6", "#862e9c", "#495057")
POSSIBLE_COLOUR = "#e8590c"  # the possible faces' series, in the colour of their tag

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 0; background: #f4f5f7; color: #1f2328; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { margin: 0 0 4px; font-size: 28px; } h2 { margin: 32px 0 12px; font-size: 20px; }
.muted { color: #59636e; font-size: 14px; }
.verdict { border-radius: 10px; padding: 16px 20px; margin: 16px 0; color: #fff; }
.verdict.pass { background: #2b8a3e; } .verdict.fail { background: #c92a2a; }
.verdict strong { font-size: 22px; } .verdict ul { margin: 8px 0 0; padding-left: 20px; }
.warning { background: #fff3bf; border: 1px solid #f0c000; border-radius: 8px; padding: 10px 14px; margin: 12px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
.card { background: #fff; border-radius: 10px; padding: 14px 16px; border-left: 6px solid #1c7ed6; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card.bad { border-left-color: #c92a2a; } .card.good { border-left-color: #2b8a3e; }
.card .value { font-size: 30px; font-weight: 700; margin: 4px 0; } .card .label { font-size: 14px; font-weight: 600; }
.card .note { font-size: 12px; color: #59636e; }
table { border-collapse: collapse; background: #fff; border-radius: 8px; overflow: hidden; width: 100%; }
td, th { padding: 6px 10px; border-bottom: 1px solid #e6e8eb; text-align: left; font-size: 14px; vertical-align: top; }
th { background: #eef0f3; }
.chart { background: #fff; border-radius: 10px; padding: 12px; }
.cases { display: grid; grid-template-columns: repeat(auto-fill, minmax(350px, 1fr)); gap: 12px; }
.case { background: #fff; border-radius: 10px; padding: 10px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.case .pair { display: flex; gap: 8px; justify-content: center; flex-wrap: wrap; }
.case img.whole { width: auto; height: auto; max-width: 100%; object-fit: contain; }
.case figure { margin: 0; text-align: center; font-size: 12px; color: #59636e; }
.case img { width: 160px; height: 160px; object-fit: contain; background: #222; border-radius: 6px; display: block; }
.case .caption { font-size: 13px; margin-top: 6px; word-break: break-all; }
.tag { display: inline-block; border-radius: 4px; padding: 1px 6px; font-size: 12px; color: #fff; margin-right: 4px; }
.tag.red { background: #c92a2a; } .tag.orange { background: #e8590c; } .tag.grey { background: #868e96; }
"""


# ---- HTML pieces (the figures' text comes from anonymize.audit.format) ------------------------------


def _e(value: object) -> str:
    return html.escape(str(value))


def _card(label: str, value: str, note: str = "", state: str = "") -> str:
    return (f'<div class="card {state}"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>'
            f'<div class="note">{_e(note)}</div></div>')


# ---- histogram ----------------------------------------------------------------------------------


def histogram_svg(series: Mapping[str, Sequence[float]], threshold: float, width: int = 1100, height: int = 360) -> str:
    """Overlaid histograms (share per bin) as an inline SVG, with the threshold marked."""
    present = {name: np.asarray(values, float) for name, values in series.items() if len(values)}
    if not present:
        return '<p class="muted">No identity distances to show.</p>'
    top = max(1.2, max(float(values.max()) for values in present.values()) + HISTOGRAM_BIN)
    edges = np.arange(0.0, top + HISTOGRAM_BIN, HISTOGRAM_BIN)
    shares = {name: np.histogram(np.clip(values, 0, edges[-1]), bins=edges)[0] / len(values) for name, values in present.items()}
    peak = max(float(share.max()) for share in shares.values()) or 1.0
    left, right, lower = 56, 16, 44
    upper = 16 + 20 * len(present)  # room for the legend above the plot
    plot_w, plot_h = width - left - right, height - upper - lower

    def x(value: float) -> float:
        return left + value / edges[-1] * plot_w

    def y(share: float) -> float:
        return upper + plot_h - share / peak * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="Histogram of identity distances">',
             f'<rect x="{left}" y="{upper}" width="{plot_w}" height="{plot_h}" fill="#fafbfc" stroke="#d0d7de"/>']
    for step in np.linspace(0, peak, 5)[1:]:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(step):.1f}" y2="{y(step):.1f}" stroke="#e6e8eb"/>')
        parts.append(f'<text x="{left - 6}" y="{y(step) + 4:.1f}" font-size="12" text-anchor="end" fill="#59636e">{step:.0%}</text>')
    for tick in np.arange(0.0, edges[-1] + 1e-9, 0.2):
        parts.append(f'<text x="{x(tick):.1f}" y="{upper + plot_h + 18}" font-size="12" text-anchor="middle" fill="#59636e">{tick:.1f}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" font-size="13" text-anchor="middle" fill="#1f2328">'
                 f'dlib identity distance (lower = more similar)</text>')
    for index, (name, share) in enumerate(shares.items()):
        colour = POSSIBLE_COLOUR if name == POSSIBLE_SERIES else SERIES_COLOURS[index % len(SERIES_COLOURS)]
        points = [f"{x(edges[0]):.1f},{y(0):.1f}"]
        for bin_index, value in enumerate(share):
            points += [f"{x(edges[bin_index]):.1f},{y(value):.1f}", f"{x(edges[bin_index + 1]):.1f},{y(value):.1f}"]
        points.append(f"{x(edges[-1]):.1f},{y(0):.1f}")
        parts.append(f'<polygon points="{" ".join(points)}" fill="{colour}" fill-opacity="0.22" stroke="{colour}" stroke-width="2"/>')
        legend_y = 14 + index * 20
        parts.append(f'<rect x="{left}" y="{legend_y - 11}" width="14" height="14" fill="{colour}" fill-opacity="0.6"/>')
        parts.append(f'<text x="{left + 20}" y="{legend_y + 1}" font-size="13" fill="#1f2328">'
                     f'{_e(name)} (n = {len(present[name])})</text>')
    parts.append(f'<line x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="{upper}" y2="{upper + plot_h}" '
                 f'stroke="#c92a2a" stroke-width="2" stroke-dasharray="6 4"/>')
    parts.append(f'<text x="{x(threshold) + 6:.1f}" y="{upper + 14}" font-size="12" fill="#c92a2a">same-person threshold {threshold:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---- thumbnails ---------------------------------------------------------------------------------


class _Thumbnails:
    """Writes side-by-side face crops, decoding each image once."""

    def __init__(self, config: AuditConfig, folder: OwnedFolder) -> None:
        self.original_dir, self.anonymized_dir = Path(config.original_dir), Path(config.anonymized_dir)
        self.folder = folder
        self.count = 0
        self._images: dict[Path, np.ndarray | None] = {}

    def _load(self, path: Path) -> np.ndarray | None:
        if path not in self._images:
            try:
                self._images[path] = decode_image(path).rgb
            except ImageDecodeError:
                self._images[path] = None
        return self._images[path]

    def pair(self, row: Mapping[str, Any]) -> tuple[str, str] | None:
        original = self._load(self.original_dir / row["source_path"])
        output = self._load(self.anonymized_dir / row["output_path"])
        if original is None or output is None or row["box"] is None:
            return None
        if output.shape != original.shape:
            output = cv2.resize(output, (original.shape[1], original.shape[0]), interpolation=cv2.INTER_AREA)
        self.count += 1
        names = (f"{self.count:03d}-original.jpg", f"{self.count:03d}-anonymized.jpg")
        left, right = (self.folder.write(name, _crop_jpeg(pixels, row["box"])) for name, pixels in zip(names, (original, output)))
        return left, right

    def face_jpeg(self, row: Mapping[str, Any], which: str) -> bytes | None:
        """The crop around a face's box in its original (``which="original"``) or in its output."""
        original = self._load(self.original_dir / row["source_path"])
        if original is None or row["box"] is None:
            return None
        if which == "original":
            return _crop_jpeg(original, row["box"])
        output = self._load(self.anonymized_dir / row["output_path"])
        if output is None:
            return None
        if output.shape != original.shape:
            output = cv2.resize(output, (original.shape[1], original.shape[0]), interpolation=cv2.INTER_AREA)
        return _crop_jpeg(output, row["box"])

    def whole(self, row: Mapping[str, Any]) -> str | None:
        """The whole original with this face's box drawn, so a miss can be found in its photo."""
        original = self._load(self.original_dir / row["source_path"])
        if original is None or row["box"] is None:
            return None
        self.count += 1
        return self.folder.write(f"{self.count:03d}-whole.jpg", whole_with_box_jpeg(original, row["box"]))


def whole_with_box_jpeg(rgb: np.ndarray, box: Sequence[float], side: int = WHOLE_SIDE) -> bytes:
    """The image shrunk to ``side`` pixels (longer side) with the box drawn in red."""
    scale = min(1.0, side / max(rgb.shape[:2]))
    small = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else rgb.copy()
    x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
    thickness = max(2, round(max(small.shape[:2]) / 200))
    cv2.rectangle(small, (x0, y0), (x1, y1), BOX_COLOUR, thickness)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(small)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _crop_jpeg(rgb: np.ndarray, box: Sequence[float]) -> bytes:
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = box
    grow_x, grow_y = (x1 - x0) * CROP_MARGIN, (y1 - y0) * CROP_MARGIN
    left, top = max(int(x0 - grow_x), 0), max(int(y0 - grow_y), 0)
    right, bottom = min(int(np.ceil(x1 + grow_x)), width), min(int(np.ceil(y1 + grow_y)), height)
    crop = rgb[top:max(bottom, top + 1), left:max(right, left + 1)]
    scale = THUMB_SIDE / max(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _case(row: Mapping[str, Any], images: tuple[str, str] | None, whole: str | None = None, human: bool = False) -> str:
    """One face's crops and badges; for the human goal a machine match is the utility, badged grey, not red."""
    tags = []
    possible = row.get("face_status") == "possible face"
    if possible:
        tags.append('<span class="tag orange">possible face</span>')
    if row["reidentified"]:
        tags.append('<span class="tag grey">matched by machine</span>' if human else '<span class="tag red">re-identified</span>')
    if row["missed"]:  # a possible face is not counted as missed (nor gated): it was only left unchanged
        tags.append('<span class="tag grey">left unchanged</span>' if possible else '<span class="tag red">missed</span>')
    if row["rank1_hit"]:
        tags.append(f'<span class="tag {"grey" if human else "orange"}">rank-1 hit</span>')
    if not row["detected_in_output"]:
        tags.append('<span class="tag grey">not detected in output</span>')
    if images is None:
        pictures = '<p class="muted">(image could not be read)</p>'
    else:
        pictures = "".join(f'<figure><img src="{_e(src)}" alt="{label}"><figcaption>{label}</figcaption></figure>'
                           for src, label in zip(images, ("original", "anonymized")))
    if whole is not None:
        pictures += f'<figure><img class="whole" src="{_e(whole)}" alt="whole photo"><figcaption>whole original, face boxed</figcaption></figure>'
    found = f' &middot; found by {_e(row["confirmed_by"] or "one detector only")}' if row.get("face_status") else ""
    return (f'<div class="case"><div class="pair">{pictures}</div><div class="caption">{"".join(tags)}'
            f'<b>{_e(row["source_path"])}</b> face {row["face_index"]} &middot; distance {number(row["identity_distance"], 3)}'
            f' &middot; region change {number(row["region_change"], 1)}{found}</div></div>')


# ---- the page -----------------------------------------------------------------------------------


def _verdict(summary: AuditSummary) -> str:
    if summary.passed:
        return '<div class="verdict pass"><strong>PASS</strong> &mdash; no threshold crossed.</div>'
    items = "".join(f"<li>{_e(text)}</li>" for text in summary.crossed)
    return f'<div class="verdict fail"><strong>FAIL</strong> &mdash; thresholds crossed:<ul>{items}</ul></div>'


def _identity_cards(summary: AuditSummary) -> list[str]:
    """The cards of the gated identity figures, in the audit's goal's terms.

    Machine goal: the worst judge's re-identification rate (red above its max) and the missed faces.
    Human goal: the judge's match rate is the utility (red below its min, never for being high) and the
    faces that still look like their original stand where missed faces stand."""
    thresholds, reid = summary.thresholds, summary.reid
    human = summary.human_goal
    if summary.privacy_goal == "human" and human is not None:
        change = human.visual_change
        rate = human.match_rate
        return [
            _card("Match rate (utility)", percent(rate),
                  f"{human.matched or 0} of {face_count(human.faces)} still matched to their original by "
                  f"{human.judge or 'no judge'} (meant to stay linkable by machines); min {thresholds.min_match_rate:.0%}",
                  "bad" if rate is None or rate < thresholds.min_match_rate else "good"),
            _card("Rank-1 among originals", percent(human.rank1_rate),
                  "machine linkability (utility here, not a leak)"),
            _card("Still look like the original", str(change.too_similar),
                  f"face box above PSNR {change.max_psnr_db:g} dB or SSIM {change.max_ssim:g}; max {thresholds.max_missed_faces}",
                  "bad" if change.too_similar > thresholds.max_missed_faces else "good"),
        ]
    verification = reid.verification_rate
    verified_note = f"{_still_match(reid.reidentified)} their original (dlib, distance under {summary.distance_threshold:g})"
    judges = summary.judges
    if judges.worst:
        worst = judges.per_judge[judges.worst]
        verification = worst.verification_rate
        verified_note = (f"{_still_match(worst.matched or 0)} their original for judge {judges.worst} "
                         f"(worst of: {judge_rates(judges)})")
    rank1_limit = thresholds.max_rank1_rate
    missed = summary.missed_faces.count
    return [
        _card("Re-identification rate (gated)", percent(verification), f"{verified_note}; max {thresholds.max_reid_rate:.1%}",
              "bad" if verification is not None and verification > thresholds.max_reid_rate else "good"),
        _card("Rank-1 identification", percent(reid.rank1_rate),
              f"{face_count(reid.rank1_hits)}; chance level {percent(reid.rank1_chance)}"
              + (f"; max {rank1_limit:.1%}" if rank1_limit is not None else ""),
              "bad" if rank1_limit is not None and (reid.rank1_rate or 0) > rank1_limit else ""),
        _card("Missed faces", str(missed), f"region left unchanged; max {thresholds.max_missed_faces}",
              "bad" if missed > thresholds.max_missed_faces else "good"),
    ]


def _still_match(count: int) -> str:
    return f"{count} face still matches" if count == 1 else f"{count} faces still match"


def _cards(summary: AuditSummary) -> str:
    thresholds, quality = summary.thresholds, summary.quality
    detection = summary.detection.rate
    leaks, unaudited = summary.metadata.leaks, summary.unaudited.count
    cards = [
        _card("Faces audited", str(summary.faces), f"in {summary.outputs} released images; possible faces apart"),
        *_identity_cards(summary),
        _card("Still detected in output", percent(detection),
              f"{face_count(summary.detection.detected)}, detector {summary.detector}; min {thresholds.min_detection_rate:.0%}",
              "bad" if detection is not None and detection < thresholds.min_detection_rate else ""),
        _card("Possible faces", str(summary.possible_faces.count),
              f"one detector only, not confirmed, not counted; {summary.possible_faces.unchanged} left unchanged"),
        _card("Metadata leaks", str(leaks), f"files with metadata beyond ICC; max {thresholds.max_metadata_leaks}",
              "bad" if leaks > thresholds.max_metadata_leaks else "good"),
        _card("Not audited", str(unaudited), "unreadable or without original", "bad" if unaudited else "good"),
        _card("PSNR outside faces", number(quality.psnr_outside_db, 1, " dB"), f"mean over {quality.images_measured} images"),
        _card("SSIM outside faces", number(quality.ssim_outside, 4), "1.0 = background untouched"),
        _card("FID", number(quality.fid, 2), quality.fid_status if quality.fid is not None else "unavailable (see the papers' figures)"),
    ]
    return '<div class="cards">' + "".join(cards) + "</div>"


def _identity_check(summary: AuditSummary) -> str:
    check = summary.identity_check
    if not check.available:
        return f'<p class="muted">Not available: {_e(check.reason)}.</p>'
    verdict = "separates" if check.separated else "does NOT separate"
    rows = [
        ("identities / faces", f"{check.identities} / {check.faces}"),
        ("same-person pairs: mean distance", f"{check.mean_same:.3f} ({check.same_pairs} pairs)"),
        ("different-person pairs: mean distance", f"{check.mean_different:.3f} ({check.different_pairs} pairs)"),
        ("ROC AUC (different farther than same)", f"{check.roc_auc:.3f}"),
        (f"same-person pairs below {check.threshold:g}", percent(check.same_below_threshold)),
        (f"different-person pairs at or above {check.threshold:g}", percent(check.different_above_threshold)),
    ]
    table = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in rows)
    return f'<p>The recogniser <b>{verdict}</b> the identities of the originals.</p><table id="identity-check">{table}</table>'


_FETCH = re.compile(r"anonymize weights fetch ([^`\s]+)")
_NO_WEIGHTS = re.compile(r"^unavailable \(no (.+?) weights")


def instrument_statuses(summary: AuditSummary) -> set[str]:
    """The statuses that say an instrument could not run (weights absent or unusable, a package missing),
    as opposed to a protocol that needs what the data lacks (identity labels)."""
    statuses = {item.status for item in summary.instruments_unavailable.values()}
    quality = summary.quality
    statuses |= {status for status in (quality.fid_status, quality.farl_frechet_proxy_status) if status.startswith("unavailable (")}
    return statuses


def unavailable_line(summary: AuditSummary) -> str:
    """Every figure whose instrument could not run, in one sentence: which figures, what is missing and the
    command that installs it (never --trust-unverified: a release gate measures with verified weights)."""
    statuses = instrument_statuses(summary)
    groups: dict[str, list[str]] = {}
    for figure in summary.figures:
        if figure.value is None and figure.status in statuses:
            groups.setdefault(figure.status, []).append(figure.label)
    if not groups:
        return ""
    missing, fetch = [], []
    for status, labels in groups.items():
        names = _FETCH.findall(status)
        fetch += [name for name in names if name not in fetch]
        no_weights = _NO_WEIGHTS.match(status)
        what = (names[0] if names else no_weights.group(1)) + " weights" if names or no_weights else \
            status.removeprefix("unavailable (").removesuffix(")").replace(" --trust-unverified", "")
        first = labels[0].split(" ")[0] if len(labels) > 1 and all(label.split(" ")[0] == labels[0].split(" ")[0] for label in labels) \
            else ", ".join(labels)
        missing.append(f"{what} ({first})")
    count = sum(len(labels) for labels in groups.values())
    how = f"; `anonymize weights fetch {' '.join(fetch)}` installs them" if fetch else ""
    return f"{count} figures unavailable, their instruments are not installed: missing {'; '.join(missing)}{how}."


def _paper_rows(summary: AuditSummary) -> list[tuple[object, ...]]:
    """The measured (or protocol-limited) figures; those whose instrument could not run are in :func:`unavailable_line`."""
    statuses = instrument_statuses(summary)
    return [(figure.label, format_value(figure) if figure.value is not None else figure.status, figure.instrument,
             figure.threshold, figure.protocol) for figure in summary.figures
            if figure.value is not None or figure.status not in statuses]


def _cell(value: object) -> str:
    """A table cell as a reader reads it: never Python's None, True or False."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(_cell(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _attribute_privacy(summary: AuditSummary) -> str:
    """k / l / t of the release (output estimates) beside the originals', preservation and unique vectors."""
    figures = summary.attributes
    if not figures.available:
        return f'<p class="muted">Not measured: {_e(figures.reason if figures.reason is not None else "")}.</p>'
    heuristic = " (rule-of-thumb estimates, never a ground truth)" if figures.heuristic else ""
    head = (f'<p class="muted">Attributes estimated by the {_e(figures.source)} source{_e(heuristic)} on the same aligned crop '
            f'of {figures.faces} original and output faces; the release\'s figures come from the outputs.</p>')
    release, originals = figures.release, figures.originals
    if release is None or originals is None:
        table = f'<p class="muted">No k / l / t: {_e(figures.release_reason if figures.release_reason is not None else "")}.</p>'
    else:
        rows: list[tuple[object, ...]] = [
            ("quasi-identifiers", ", ".join(release.quasi_identifiers), ""),
            ("sensitive", ", ".join(release.sensitive) or "none", ""),
            ("k (smallest class)", release.k, originals.k),
            ("classes", release.classes, originals.classes),
            (f"faces in classes smaller than {release.requested_k}", percent(release.share_below_k), percent(originals.share_below_k)),
            ("distinct-l", release.distinct_l, originals.distinct_l),
            ("entropy-l", number(release.entropy_l), number(originals.entropy_l)),
        ]
        rows += [(f"t ({name})", number(value, 3), number(originals.t.get(name), 3)) for name, value in release.t.items()]
        table = _table(("figure", "release", "originals"), rows, "")
    preservation = figures.preservation
    per_attribute = preservation.per_attribute if preservation is not None else {}
    kept = [(name, percent(value)) for name, value in per_attribute.items()]
    return (head + table + f'<p>Faces whose whole attribute vector is unique: {percent(figures.unique_share)} of the release '
            f'({percent(figures.unique_share_originals)} of the originals). Attributes preserved (original and output agree): '
            f'{percent(preservation.mean if preservation is not None else None)} on average.</p>'
            + _table(("attribute", "agreement"), kept, "No attribute estimated."))


def _human_goal(summary: AuditSummary) -> str:
    """The human goal's figures: machine matching reported as the utility it is, and the visual change."""
    roles = summary.recogniser_roles
    white_box = ", ".join(roles.white_box) or "none recorded by the run"
    head = (f'<p>Privacy goal: <b>{_e(summary.privacy_goal)}</b> ({_e(summary.privacy_goal_source)}). '
            f'Recognisers in the method&#39;s loss (white-box): {_e(white_box)}; judge: <b>{_e(roles.judge or "none")}</b> '
            f'({_e(roles.judge_reason)}).</p>')
    human = summary.human_goal
    if human is None:
        return head
    change = human.visual_change
    tar = "; ".join(f"FAR {far}: {percent(item.tar)}" + ("" if item.resolved else " (too few pairs to resolve)")
                    for far, item in human.tar_at_far.items())
    rows = [
        ("match rate (original, output) pairs", f"{percent(human.match_rate)} ({human.matched or 0} of {human.faces})",
         f"{human.judge_instrument}, distance < {human.judge_threshold:g}" if human.judge_instrument and human.judge_threshold is not None
         else "no judge"),
        ("TAR at FAR (threshold on different-person pairs of the originals)", human.tar_note or tar or "n/a", human.judge or "no judge"),
        ("rank-1 against a gallery of the originals", percent(human.rank1_rate), f"mean rank {number(human.mean_rank)}"),
        ("face-box PSNR / SSIM to the original", f"{number(change.psnr_face_db, 1, ' dB')} / {number(change.ssim_face, 3)}",
         f"ceiling {change.max_psnr_db:g} dB / {change.max_ssim:g}: {change.too_similar} face(s) above it"),
    ]
    return head + ('<p class="muted">These outputs are meant to stay linkable by machines: a high match rate is the '
                   'utility here, not a leak. A face that stays above the PSNR or SSIM ceiling still shows viewers '
                   'the original.</p>') + _table(("figure", "value", "how"), rows, "")


def _rank1_text(summary: AuditSummary) -> str:
    """The rank-1 sentence, read for the audit's goal: for the human goal, identity that machines still find is the utility."""
    if summary.privacy_goal == "human":
        return ("Machine linkability, the utility of a human-goal release (not a leak): " + summary.reid.rank1_meaning
                .replace("so the recogniser cannot tell whose face an anonymized one was", "so machines can no longer link the faces")
                .replace("so the anonymized images still carry identity (hair, skin, face shape, pose or background)",
                         "so machines still link the faces to their originals"))
    return summary.reid.rank1_meaning


def _study_section(pairs: int, skipped: bool, controls: int = 0) -> str:
    if skipped:
        return '<p class="muted">No study kit: not requested (--study-pairs), or fewer than two faces.</p>'
    control = (f'{controls} of them real-real control pairs (two originals), ' if controls else
               'no real-real control pair (they need identities: --identity-from), ')
    return (f'<p>{pairs} pairs, half the same person, half not, {control}shuffled: '
            f'<a href="{STUDY_PAGE}">{STUDY_PAGE}</a> is what volunteers see (no answers, no file names); '
            f'<code>{ANSWER_KEY}</code> holds the answers: keep it from them, and never show them this report. '
            'Score their answers with <code>anonymize audit study-score ANSWERS.csv</code>. Li et al.&#39;s volunteers '
            'got 0.88 of anonymized pairs right against 0.98 of real ones (parts paper) and 0.8575 of real-generated pairs '
            '(camouflage paper, no human baseline: its 97.05% on real images is a recogniser&#39;s).</p>')


AFTER_SERIES = "after: anonymized vs its own original"
POSSIBLE_SERIES = "after: possible faces (not counted)"


def histogram_series(before: Mapping[str, Sequence[float]], faces: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """The histogram's series: the "after" one counts the faces the cards count (confirmed faces with a distance),
    and possible faces, which no card counts, get their own series (and colour) instead of swelling it."""
    series = {f"before: {name}": list(values) for name, values in before.items()}
    confirmed = [row for row in faces if row.get("face_status") != "possible face"]
    possible = [row for row in faces if row.get("face_status") == "possible face"]
    series[AFTER_SERIES] = [row["identity_distance"] for row in confirmed if row["identity_distance"] is not None]
    unconfirmed = [row["identity_distance"] for row in possible if row["identity_distance"] is not None]
    if unconfirmed:
        series[POSSIBLE_SERIES] = unconfirmed
    return series


def render_report(result: AuditResult, config: AuditConfig, thumbnails: _Thumbnails | None, study: int = 0, controls: int = 0) -> str:
    """The page's HTML; thumbnails are written through ``thumbnails`` (None: no pictures)."""
    summary = result.summary
    faces = [row for row in result.rows if row["face_index"] is not None]
    closest = sorted((row for row in faces if row["identity_distance"] is not None and row.get("face_status") != "possible face"),
                     key=lambda row: row["identity_distance"])[:config.worst_cases]
    confirmed = [row for row in faces if row.get("face_status") != "possible face"]
    missed = [row for row in confirmed if row["missed"]][:config.worst_cases]
    possible = [row for row in faces if row.get("face_status") == "possible face"][:config.worst_cases]

    def cases(rows: list[dict[str, Any]], empty: str, whole: bool = False) -> str:
        if not rows:
            return f'<p class="muted">{_e(empty)}</p>'
        return '<div class="cases">' + "".join(
            _case(row, thumbnails.pair(row) if thumbnails else None, thumbnails.whole(row) if thumbnails and whole else None,
                  summary.privacy_goal == "human")
            for row in rows) + "</div>"

    series = histogram_series(result.before_distances, faces)
    warnings = "".join(f'<div class="warning">{_e(text)}</div>' for text in summary.warnings)
    leaks = list(summary.metadata.files.items())
    unaudited = list(summary.unaudited.files.items())
    settings = [
        ("original folder", summary.original_dir), ("anonymized folder", summary.anonymized_dir),
        ("pairing", f"{summary.pairing} {summary.manifest_path or ''}".strip()),
        ("detector", f"{summary.detector} ({summary.detector_reason})"), ("aligned input", "yes" if summary.aligned else "no"),
        ("identity labels", summary.identity_labels or "none"), ("not released (no output)", summary.not_released),
        ("anonymize version", summary.anonymize_version), ("created", summary.created_at),
    ]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Anonymization audit</title><style>{_STYLE}</style></head>
<body><main>
<h1>Anonymization audit</h1>
<p class="muted">{_e(summary.anonymized_dir)} against {_e(summary.original_dir)} &middot; {_e(summary.created_at)}</p>
<div class="warning">This report shows crops of the <b>original</b> faces. Keep it with the originals; never publish it with the anonymized data.</div>
{_verdict(summary)}{warnings}
<h2>Summary</h2>{_cards(summary)}
<h2>Privacy goal and recognisers</h2>{_human_goal(summary)}
<h2>Human study kit</h2>{_study_section(study, study == 0, controls)}
<h2>Identity distances</h2>
<div class="chart">{histogram_svg(series, summary.distance_threshold)}</div>
<p class="muted">Before: distances between original faces, the scale on which the recogniser tells people apart. After: each anonymized face against its own original. Faces left of the threshold still match.</p>
<h2>Identity check of the recogniser</h2>{_identity_check(summary)}
<h2>Highest remaining similarity</h2>{cases(closest, "No face was audited.")}
<h2>Rank-1 identification</h2><p id="rank1-meaning">{_e(_rank1_text(summary))}</p>
<h2>Missed faces</h2>{cases(missed, "No missed face: every face found in the originals was changed.", whole=True)}
<h2>Possible faces</h2><p class="muted">Found by one detector only and not confirmed by another on a close-up: perhaps a face, perhaps a pattern. Not counted in re-identification or in the missed-face gate; check them by eye.</p>
{cases(possible, "No possible face: every face was confirmed by two detectors.", whole=True)}
<h2>Attribute privacy (k / l / t)</h2>{_attribute_privacy(summary)}
<h2>Metadata leaks</h2>{_table(("file", "metadata found"), leaks, "No leak: no output carries metadata beyond its ICC profile.")}
<h2>Not audited</h2>{_table(("file", "why"), unaudited, "Every released image was audited.")}
<h2>Figures in the papers' units</h2><p class="muted">Each figure with the instrument, threshold and protocol it was measured with; set it beside a published number only where all three match.</p>
<p class="muted" id="unavailable">{_e(unavailable_line(summary))}</p>
{_table(("figure", "value", "instrument", "threshold", "protocol"), _paper_rows(summary), "No figure was measured.")}
<h2>Settings</h2>{_table(("setting", "value"), settings, "")}
</main></body></html>
"""


def wanted_study_pairs(config: AuditConfig, privacy_goal: str) -> int:
    """How many study pairs the report asks for: ``--study-pairs``, else 200 for the human goal, else none."""
    return config.study_pairs if config.study_pairs is not None else (DEFAULT_STUDY_PAIRS if privacy_goal == "human" else 0)


def check_report_folders(config: AuditConfig, report_dir: Path, privacy_goal: str) -> None:
    """Before any work: refuse a link, or a folder the audit did not make, where the report's folders go."""
    folders = [THUMBS_DIR, STUDY_DIR] if wanted_study_pairs(config, privacy_goal) else [THUMBS_DIR]
    ReportFolders(report_dir).check(folders)


def write_report(result: AuditResult, config: AuditConfig, report_dir: Path) -> Path:
    """Write ``index.html`` and its thumbnails into ``report_dir``; returns the page's path.

    The thumbnails and the study kit go into the audit's own folders (:mod:`anonymize.audit.report_folder`):
    never through a link, and an earlier audit's crops are removed, nothing else."""
    report_dir = Path(report_dir)
    folders = ReportFolders(report_dir)
    with folders.claim(THUMBS_DIR) as thumbs:  # stale crops of an earlier audit must not linger
        thumbnails = _Thumbnails(config, thumbs)
        wanted = wanted_study_pairs(config, result.summary.privacy_goal)
        pairs = study_pairs(result.rows, wanted, config.study_seed, config.study_control_pairs) if wanted else []
        if len(pairs) >= 2:
            with folders.claim(STUDY_DIR) as study:
                write_study(report_dir, pairs, thumbnails.face_jpeg, study)
        page = render_report(result, config, thumbnails, len(pairs) if len(pairs) >= 2 else 0,
                             sum(pair.kind == "control" for pair in pairs) if len(pairs) >= 2 else 0)
    path = report_dir / REPORT_NAME
    atomic_write_bytes(path, readable(page).encode("utf-8"))  # file names that are not UTF-8 shown as \xNN
    return path
