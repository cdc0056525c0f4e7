"""``anonymize attributes privacy``: k / l / t of an attribute table, before and after stage II.

A plain function; :mod:`anonymize.cli.attributes` registers it in the ``attributes`` group.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from anonymize.attributes.table import AttributeTable
from anonymize.cli.console import fail, print_json, shown, stdout


def _names(value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def _read(path: Path, as_json: bool) -> AttributeTable:
    from anonymize.attributes.io import read_attribute_table

    try:
        return read_attribute_table(path)
    except (OSError, ValueError, KeyError) as exc:
        fail(f"{path}: {' '.join(str(exc).split())}" if str(path) not in str(exc) else " ".join(str(exc).split()), as_json=as_json)


def attribute_privacy(
    table_path: Path = typer.Argument(..., metavar="TABLE.parquet", help="An attribute table (`anonymize attributes`)."),
    qi: str = typer.Option(..., "--qi", help="Quasi-identifier attributes, comma-separated (e.g. Male,Eyeglasses,Young)."),
    sensitive: Optional[str] = typer.Option(None, "--sensitive", help="Sensitive attributes, comma-separated (e.g. Smiling)."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="Dataset mode: recode the quasi-identifiers until every class has k faces."),
    l: Optional[int] = typer.Option(None, "--l", min=1, help="With --k: merge classes until each holds l distinct sensitive values."),
    t: Optional[float] = typer.Option(None, "--t", help="With --k: merge classes until each lies within t (EMD) of the whole set; "
                                                        "alone: Algorithm 1 with this t (see --reading)."),
    reading: str = typer.Option("closeness", "--reading", help="Algorithm 1's S_E: \"closeness\" (the attribute's distribution in "
                                "the face's class over the other quasi-identifiers; the default) or \"literal\" (a point mass "
                                "at the face's value: erases or keeps whole attributes, against the paper's aim)."),
    epsilon: Optional[float] = typer.Option(None, "--epsilon", help="Randomised response: keep each value with probability e^eps/(1+e^eps)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the randomised response."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Attribute table whose distributions t is measured against "
                                                                       "(default: the table itself)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the released table (selected values as 0/1) here."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON on stdout."),
) -> None:
    """Print k / l / t of TABLE over the quasi-identifiers, before and after each requested step."""
    from anonymize.attributes.measure import privacy_steps

    if not table_path.is_file():
        fail(f"{table_path}: no attribute table here", as_json=as_json)
    table = _read(table_path, as_json)
    reference_table = _read(reference, as_json) if reference is not None else None
    quasi_identifiers, sensitive_names = _names(qi), _names(sensitive)
    try:
        steps, released = privacy_steps(table, quasi_identifiers, sensitive_names, k, l, t, epsilon, seed, reference_table,
                                        reading)
    except (ValueError, KeyError) as exc:  # SelectionError is a ValueError; KeyError: an attribute not in a table
        fail(f"{table_path}: {exc.args[0] if exc.args else exc}", as_json=as_json)
    if output is not None:
        from anonymize.attributes.io import write_attribute_table

        values = table.probabilities.copy()
        columns = [table.names.index(name) for name in quasi_identifiers]
        values[:, columns] = np.where(released >= 0, released, np.nan)
        write_attribute_table(output, AttributeTable(table.keys, table.names, values, table.source, table.heuristic))
    summary = {"table": str(table_path), "source": table.source, "heuristic": table.heuristic, "faces": len(table.keys),
               "reference": str(reference) if reference is not None else None, "steps": steps,
               "output": str(output) if output is not None else None}
    if as_json:
        print_json(summary)
        return
    _print(summary)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _print(summary: dict) -> None:
    heuristic = " (heuristic estimates)" if summary["heuristic"] else ""
    steps = summary["steps"]
    grid = Table(title=f"{shown(summary['table'])}: {summary['faces']} faces, source {shown(summary['source'])}{heuristic}")
    grid.add_column("figure", style="bold")
    for step in steps:
        grid.add_column(step["step"], justify="right")
    first = steps[0]
    rows = [("k", "k"), ("classes", "classes"), ("unique share", "unique_share")]
    if first["requested_k"] is not None:
        rows.append((f"share in classes < {first['requested_k']}", "share_below_k"))
    if first["sensitive"]:
        rows += [("distinct-l", "distinct_l"), ("entropy-l", "entropy_l")]
    for label, key in rows:
        grid.add_row(label, *(_fmt(step[key]) for step in steps))
    for name in first["t"]:
        grid.add_row(f"t {shown(name)}", *(_fmt(step["t"][name]) for step in steps))
    grid.add_row("values flipped", *(_fmt(step.get("flips")) for step in steps))
    for name in first["marginals"]:
        grid.add_row(f"share {shown(name)}", *(_fmt(step["marginals"][name]) for step in steps))
    for name in first["qi_t"]:  # each QI as a sensitive attribute of the classes over the other QIs
        grid.add_row(f"t {shown(name)} | other QIs", *(_fmt(step["qi_t"][name]) for step in steps))
        grid.add_row(f"mean |S_E - S| {shown(name)}", *(_fmt(step["qi_distance"][name]) for step in steps))
    stdout.print(grid)
    stdout.print(f"quasi-identifiers: {shown(', '.join(first['quasi_identifiers']))}; "
                 f"sensitive: {shown(', '.join(first['sensitive'])) or 'none'}", soft_wrap=True)
