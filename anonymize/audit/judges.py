"""Who judges a release: every recogniser the audit ran that is not inside the method's loss.

A method that optimises against a recogniser (white-box for it) can fool that one alone: the
adversarial step brings dlib's match rate to a few percent while recognisers it never saw still match
every face. So the verdict reads every judge and gates on the worst case: for the machine goal the
highest share of faces still verified as their original, for the human goal (camouflage, parts) the
lowest share still matched. The sentence that fails a release names the judge that failed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from anonymize.audit.summary import JudgeFigures, Judges, RecogniserFigures

INSTALL_JUDGES = "install the independent recognisers: `anonymize weights fetch human_models`"


def choose_judges(available: Sequence[str], in_loss: Sequence[str]) -> tuple[list[str], str]:
    """The available recognisers not in the method's loss, in the audit's order, and why."""
    white_box = set(in_loss)
    judges = [name for name in available if name not in white_box]
    if not judges:
        return [], f"every available recogniser ({', '.join(available)}) is in the method's loss: nothing can judge it"
    if in_loss:
        return judges, f"not in the method's loss (white-box for the method: {', '.join(in_loss)})"
    return judges, "the method's loss holds no recogniser the run recorded"


def judge_figures(recognisers: Mapping[str, RecogniserFigures], judges: Sequence[str], goal: str,
                  reason: str, in_loss: Sequence[str]) -> Judges:
    """Each judge's verification rate and the worst one for ``goal`` (machine: highest; human: lowest)."""
    per_judge: dict[str, JudgeFigures] = {}
    for name in judges:
        entry = recognisers.get(name)
        rate = entry.verification_rate if entry is not None else None
        faces = int(entry.faces) if entry is not None else 0
        per_judge[name] = JudgeFigures(rate, faces, None if rate is None else int(round(rate * faces)),
                                       entry.threshold if entry is not None else None,
                                       entry.instrument if entry is not None else None)
    rates = {name: figures.verification_rate for name, figures in per_judge.items() if figures.verification_rate is not None}
    pick = min if goal == "human" else max
    worst = pick(rates, key=lambda name: rates[name]) if rates else None
    return Judges(list(judges), reason, list(in_loss), per_judge, worst)


def crossed_reidentification(judges: Judges, max_rate: float) -> list[str]:
    """The machine goal's identity gate over every judge; one sentence naming the worst one."""
    if not judges.names:
        return [f"no independent judge: {judges.reason}; {INSTALL_JUDGES}"]
    worst = judges.worst
    if worst is None:
        return []  # no face was compared: nothing re-identified
    figures = judges.per_judge[worst]
    if figures.verification_rate is None or figures.verification_rate <= max_rate:
        return []
    others = ", ".join(f"{name} {item.verification_rate:.1%}" for name, item in judges.per_judge.items()
                       if name != worst and item.verification_rate is not None)
    return [f"re-identification rate {figures.verification_rate:.1%} > max {max_rate:.1%} by judge {worst} "
            f"({figures.matched} of {figures.faces} faces still match their original"
            + (f"; other judges: {others}" if others else "") + ")"]
