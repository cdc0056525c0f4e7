"""`anonymize attributes privacy`: k / l / t of a stored attribute table before and after stage II."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import anonymize.cli.attributes  # noqa: F401  (attaches `attributes` and its `privacy` to the app)
from anonymize.attributes.io import read_attribute_table, write_attribute_table
from anonymize.attributes.table import AttributeTable
from anonymize.cli import app

NAMES = ("Male", "Eyeglasses", "Young", "Smiling")
# The six faces of tests/test_attribute_selection.py: QIs Male, Eyeglasses, Young; Smiling sensitive.
BITS = np.array([[1, 1, 0, 1], [1, 1, 0, 1], [1, 1, 1, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 1]])


def cli(*args: object):
    return CliRunner().invoke(app, ["attributes", "privacy", *map(str, args)], catch_exceptions=False)


@pytest.fixture
def table_path(tmp_path: Path) -> Path:
    values = np.where(BITS == 1, 0.9, 0.2).astype(np.float32)
    path = tmp_path / "attributes.parquet"
    write_attribute_table(path, AttributeTable(tuple(f"{i}.jpg#0" for i in range(6)), NAMES, values, "labels"))
    return path


def test_json_reports_k_l_t_before_and_after_the_dataset_mode_and_writes_the_release(table_path, tmp_path):
    released = tmp_path / "released.parquet"
    result = cli(table_path, "--qi", "Male,Eyeglasses,Young", "--sensitive", "Smiling", "--k", "2", "--l", "2",
                 "--output", released, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    before, after = summary["steps"]
    assert (before["k"], before["distinct_l"], after["k"], after["distinct_l"], after["flips"]) == (1, 1, 2, 2, 4)
    table = read_attribute_table(released)
    assert table.select(("Male", "Eyeglasses", "Young")).bits().tolist() == [
        [1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1], [1, 1, 1]]
    assert table.select(("Smiling",)).bits()[:, 0].tolist() == BITS[:, 3].tolist()  # sensitive values untouched


def test_the_table_view_and_the_errors_name_the_file_and_the_cause(table_path):
    shown = cli(table_path, "--qi", "Male,Eyeglasses", "--sensitive", "Smiling", "--epsilon", "1.0")
    assert shown.exit_code == 0 and "randomized-response" in shown.stdout and "distinct-l" in shown.stdout
    refused = cli(table_path, "--qi", "Male,Eyeglasses", "--t", "0.2", "--reading", "literal")
    assert refused.exit_code == 2 and "flips the majority value of" in refused.output and str(table_path.name) in refused.output
    unknown = cli(table_path, "--qi", "Beard")
    assert unknown.exit_code == 2 and "Beard" in unknown.output


def test_algorithm_one_by_default_keeps_each_marginal_within_t_and_prints_both_readings(table_path):
    """The default reading flips values only toward the population: marginals stay within t (here: unchanged)."""
    result = cli(table_path, "--qi", "Male,Eyeglasses,Young", "--sensitive", "Smiling", "--t", "0.2", "--json")
    assert result.exit_code == 0, result.output
    before, after = json.loads(result.stdout)["steps"]
    assert after["step"] == "algorithm-1 closeness"
    for name, share in after["marginals"].items():
        assert abs(share - after["population"][name]) <= 0.2 + 1e-9
        assert abs(share - before["marginals"][name]) <= 0.2 + 1e-9
    literal = cli(table_path, "--qi", "Male,Eyeglasses,Young", "--t", "0.5", "--reading", "literal")
    assert literal.exit_code == 0 and "algorithm-1 literal" in literal.stdout and "share Male" in literal.stdout
    bad = cli(table_path, "--qi", "Male", "--t", "0.2", "--reading", "point")
    assert bad.exit_code == 2 and "reading must be one of closeness, literal" in bad.output
