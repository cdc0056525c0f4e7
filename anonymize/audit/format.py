"""The audit's figures as text for people: one formatter for the CLI table, the HTML report and ``audit compare``.

Every number a person reads goes through here, so the same figure reads the same in the terminal
and on the page (``n/a`` where it was not measured).
"""

from __future__ import annotations

import math

from anonymize.audit.summary import AttributeFigures, Judges, PaperFigure


def percent(value: float | None) -> str:
    """A share as ``12.3%``."""
    return "n/a" if value is None else f"{value:.1%}"


def number(value: float | None, digits: int = 2, unit: str = "") -> str:
    """A value with ``digits`` decimals and its unit (the report's cards and tables)."""
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def significant(value: float | None, unit: str) -> str:
    """A value to three significant digits (the CLI's one-line figures)."""
    return "n/a" if value is None else f"{value:.3g}{unit}"


def face_count(count: int) -> str:
    """``1 face``, ``3 faces``."""
    return f"{count} face" if count == 1 else f"{count} faces"


def format_value(figure: PaperFigure | None) -> str:
    """A paper figure in its own unit (a rate as a percentage, dB with one decimal, ...)."""
    if figure is None:
        return "n/a"
    value = figure.value
    if value is None:
        return "unavailable" if figure.status.startswith("unavailable") else "n/a"
    kind = figure.kind
    if kind == "rate":
        return f"{value:.1%}"
    if kind == "db":
        return f"{value:.1f}"
    if kind == "rank":
        return f"{value:.2f}"
    if kind == "distance":
        return f"{value:.2f}"
    if kind == "count":
        return f"{value:.0f}"
    return f"{value:.3f}"


def judge_rates(judges: Judges) -> str:
    """Every judge's verification rate, ``faceres 12.3%, mobileface 4.0%``."""
    return ", ".join(f"{name} {percent(item.verification_rate)}" for name, item in judges.per_judge.items())


def rank1_sentence(rate: float | None, chance: float | None, faces: int, identities: bool = False,
                   verified: int | None = None) -> str:
    """What the rank-1 rate means, in one plain sentence that agrees with the figures beside it.

    "About chance" is said only with the bound a blind guess reaches on this many faces (two binomial
    standard deviations), so a 75 % rate on four faces is not called "cannot tell"; and "even where no
    face passes the verification threshold" only when none does (``verified``: faces verified as their original)."""
    if rate is None or chance is None or not faces:
        return "Rank-1 identification was not measured: no face was compared."
    own = "their own original (or another photo of the same person)" if identities else "their own original"
    head = f"{rate:.1%} of the anonymized faces were closest to {own} among all {faces} originals, against {chance:.1%} for a blind guess"
    noise = 2.0 * math.sqrt(chance * (1.0 - chance) / faces)  # two binomial standard deviations
    if rate <= chance + noise:
        if chance + noise >= 1.0 or noise > 0.1:
            return (head + f": within what a blind guess reaches on {faces} faces (up to {min(chance + noise, 1.0):.1%}), "
                    "too few faces to tell rank-1 from chance.")
        return head + f": about chance (a blind guess reaches up to {chance + noise:.1%} on {faces} faces), so the recogniser cannot tell whose face an anonymized one was."
    carry = ("above chance, so the anonymized images still carry identity (hair, skin, face shape, pose or background)")
    if verified == 0:
        return head + ": " + carry + " even where no face passes the verification threshold."
    return head + ": " + carry + "."


def attribute_line(figures: AttributeFigures) -> str:
    """k / l / t of the release, preservation and unique vectors, in one line."""
    if not figures.available:
        return f"not measured ({figures.reason if figures.reason is not None else 'no attribute source'})"
    release = figures.release
    head = f"{figures.source}{' (heuristic)' if figures.heuristic else ''}: "
    if release is None:
        head += f"no k/l/t ({figures.release_reason}); "
    else:
        t = ", ".join(f"{name} {'n/a' if value is None else f'{value:.3f}'}" for name, value in release.t.items())
        head += (f"k {release.k} over {', '.join(release.quasi_identifiers)}, distinct-l {release.distinct_l}, "
                 f"t {t or 'n/a'}; ")
    preserved = figures.preservation.mean if figures.preservation is not None else None
    return head + f"unique vectors {percent(figures.unique_share)}; attributes preserved {percent(preserved)}"
