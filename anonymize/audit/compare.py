"""``anonymize audit compare``: several audited runs side by side, like the papers' Table 1.

Each argument is an audit (its folder or its ``audit-summary.json``) or an anonymized run folder
whose audit sits in the default ``<run>-audit/`` beside it. One row per run (method and options,
from the run's manifest), one column per figure of :mod:`anonymize.audit.figures`, and a legend
naming each column's instrument, threshold and protocol. A figure whose instrument could not run
reads "unavailable". The privacy-utility plot puts re-identification (dlib rank-1) against face
SSIM, one point per run, as an inline SVG: no plotting dependency.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anonymize.audit.format import format_value
from anonymize.audit.pairing import AuditError
from anonymize.audit.results import AUDIT_SUMMARY_NAME, default_audit_dir
from anonymize.audit.summary import PaperFigure, RunOrigin
from anonymize.io.write import atomic_write_bytes

# The columns printed by default: the ones the papers' tables hold (the HTML report shows every figure).
PAPER_COLUMNS = (
    "detection.dlib-hog", "detection.mtcnn", "detection.retinaface",
    "reid.dlib.verification", "reid.dlib.tpr@0.001", "reid.dlib.tpr@0.01", "reid.dlib.tpr@0.1",
    "reid.dlib.rank1", "reid.dlib.mean_rank", "reid.dlib.parrot_rank1",
    "reid.facenet-casia.tpr@0.001", "reid.facenet-vggface2.tpr@0.001",
    "reid.faceres.verification", "reid.faceres.tpr@0.001", "reid.faceres.rank1",
    "reid.mobileface.verification", "reid.mobileface.tpr@0.001", "reid.mobileface.rank1",
    "quality.ssim_face", "quality.psnr_face", "quality.lpips_face", "quality.fid", "quality.farl_proxy",
)  # fmt: skip
PLOT_X, PLOT_Y = "quality.ssim_face", "reid.dlib.rank1"
COMPARE_REPORT_NAME = "compare.html"


@dataclass
class ComparedRun:
    label: str  # method and options
    summary_path: Path
    figures: dict[str, PaperFigure]  # key -> figure

    def value(self, key: str) -> float | None:
        """The figure's value in this run (None: not measured, or no such column)."""
        figure = self.figures.get(key)
        return figure.value if figure is not None else None


@dataclass
class Comparison:
    runs: list[ComparedRun]
    columns: list[tuple[str, str]]  # (key, label), in the figures' order

    def figure(self, key: str) -> PaperFigure | None:
        """The first measured instance of a column's figure (for its legend), else any."""
        found = [run.figures[key] for run in self.runs if key in run.figures]
        measured = [figure for figure in found if figure.value is not None]
        return (measured or found or [None])[0]


def find_summary(path: Path) -> Path:
    """The audit summary behind a run or audit path; a one-line error when there is none."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / AUDIT_SUMMARY_NAME, default_audit_dir(path) / AUDIT_SUMMARY_NAME):
        if candidate.is_file():
            return candidate
    if not path.exists():
        raise AuditError(f"{path}: no such run or audit")
    raise AuditError(f"{path}: no audit found (neither {path / AUDIT_SUMMARY_NAME} nor {default_audit_dir(path) / AUDIT_SUMMARY_NAME}): "
                     "run `anonymize audit ORIGINAL_DIR RUN_DIR` first")


def run_label(run: RunOrigin, fallback: str) -> str:
    """The method and its options (``blur (sigma=0.12)``), or ``fallback`` when the run did not record them."""
    if not run.method:
        return fallback
    options = ", ".join(f"{key}={value}" for key, value in sorted(run.options.items()))
    return f"{run.method} ({options})" if options else str(run.method)


def load_comparison(paths: Sequence[Path]) -> Comparison:
    """Each audit's run and figures, read through the summary's records (an older summary may hold only these)."""
    runs, columns = [], {}
    for path in paths:
        summary_path = find_summary(path)
        try:
            data = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise AuditError(f"{summary_path}: not a readable audit summary ({exc})") from None
        written = data.get("figures")
        if not isinstance(written, list):
            raise AuditError(f"{summary_path}: written by an older anonymize (no 'figures'); audit the run again")
        figures = [PaperFigure.from_json(item) for item in written]
        for figure in figures:
            columns.setdefault(figure.key, figure.label)
        run = RunOrigin.from_json(data.get("run") or {})
        runs.append(ComparedRun(run_label(run, Path(path).name), summary_path, {figure.key: figure for figure in figures}))
    labels = [run.label for run in runs]
    for run in runs:  # two runs of one method with the same options: tell them apart by folder
        if labels.count(run.label) > 1:
            run.label = f"{run.label} [{Path(run.summary_path).parent.name}]"
    return Comparison(runs, list(columns.items()))


def selected_columns(comparison: Comparison, every: bool) -> list[tuple[str, str]]:
    if every:
        return comparison.columns
    present = dict(comparison.columns)
    return [(key, present[key]) for key in PAPER_COLUMNS if key in present]


def legend(comparison: Comparison, columns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(column label, "instrument; threshold; protocol") for each column."""
    lines = []
    for key, label in columns:
        figure = comparison.figure(key)
        if figure is not None:
            lines.append((label, f"{figure.instrument}; threshold: {figure.threshold}; protocol: {figure.protocol}"))
    return lines


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    columns = []
    for key, label in comparison.columns:
        figure = comparison.figure(key)
        columns.append({"key": key, "label": label, **{name: getattr(figure, name) if figure is not None else None
                                                       for name in ("instrument", "threshold", "protocol")}})
    return {"runs": [{"label": run.label, "summary": str(run.summary_path),
                      "figures": {key: figure.value for key, figure in run.figures.items()}} for run in comparison.runs],
            "columns": columns}


# ---- the HTML view --------------------------------------------------------------------------------


def privacy_utility_svg(comparison: Comparison, x_key: str = PLOT_X, y_key: str = PLOT_Y, width: int = 520, height: int = 360) -> str:
    """A scatter of re-identification (y) against utility (x), one labelled point per run; empty when not measured."""
    values = [(run.label, run.value(x_key), run.value(y_key)) for run in comparison.runs]
    points = [(label, float(x), float(y)) for label, x, y in values if x is not None and y is not None]
    if not points:
        return ""
    x_figure, y_figure = comparison.figure(x_key), comparison.figure(y_key)
    x_label, y_label = x_figure.label if x_figure else x_key, y_figure.label if y_figure else y_key
    left, right, top, bottom = 60, 20, 20, 50
    x_values, y_values = [x for _, x, _ in points], [y for _, _, y in points]
    x_low, x_high = min(0.0, min(x_values)), max(1.0, max(x_values))
    y_low, y_high = 0.0, max(1.0, max(y_values))

    def to_x(value: float) -> float:
        return left + (value - x_low) / (x_high - x_low) * (width - left - right)

    def to_y(value: float) -> float:
        return height - bottom - (value - y_low) / (y_high - y_low) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="privacy-utility plot">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#333"/>']
    for tick in range(0, 6):
        fraction = tick / 5
        x_tick, y_tick = x_low + fraction * (x_high - x_low), y_low + fraction * (y_high - y_low)
        parts.append(f'<text x="{to_x(x_tick):.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle">{x_tick:.2f}</text>')
        parts.append(f'<text x="{left - 6}" y="{to_y(y_tick) + 4:.1f}" font-size="11" text-anchor="end">{y_tick:.0%}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" font-size="12" text-anchor="middle">'
                 f'{html.escape(x_label)} (utility: higher is better)</text>')
    parts.append(f'<text x="14" y="{(top + height - bottom) / 2}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + height - bottom) / 2})">{html.escape(y_label)} '
                 f'(privacy: lower is better)</text>')
    for label, x, y in points:
        parts.append(f'<circle cx="{to_x(x):.1f}" cy="{to_y(y):.1f}" r="5" fill="#c0392b"><title>{html.escape(label)}: '
                     f'{x:.3f}, {y:.1%}</title></circle>')
        parts.append(f'<text x="{to_x(x) + 8:.1f}" y="{to_y(y) - 6:.1f}" font-size="11">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _status(figure: PaperFigure | None) -> str:
    return figure.status if figure is not None else ""


def comparison_html(comparison: Comparison) -> str:
    columns = comparison.columns
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = []
    for run in comparison.runs:
        cells = "".join(f'<td title="{html.escape(_status(run.figures.get(key)))}">'
                        f"{html.escape(format_value(run.figures.get(key)))}</td>" for key, _ in columns)
        body.append(f"<tr><th>{html.escape(run.label)}</th>{cells}</tr>")
    notes = "".join(f"<li><b>{html.escape(label)}</b>: {html.escape(text)}</li>" for label, text in legend(comparison, columns))
    plot = privacy_utility_svg(comparison)
    plot_section = f"<h2>Privacy and utility</h2>{plot}" if plot else "<p>No run has both figures of the plot.</p>"
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>anonymize audit compare</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:4px 6px;text-align:right}th:first-child{text-align:left}</style></head><body>"
            "<h1>Audits compared</h1>"
            f"<table><thead><tr><th>run</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"{plot_section}<h2>What each column measures</h2><ul>{notes}</ul></body></html>\n")


def write_comparison_report(comparison: Comparison, folder: Path) -> Path:
    path = Path(folder) / COMPARE_REPORT_NAME
    atomic_write_bytes(path, comparison_html(comparison).encode("utf-8"))
    return path
