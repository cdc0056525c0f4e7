"""Attribute sources (AnonymousNet's stage I): labels files, the FaRL probe, landmark rules, and `anonymize attributes`."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import anonymize.cli.attributes  # noqa: F401  (attaches `attributes` to the app)
from anonymize.attributes import CELEBA_ATTRIBUTES, AttributeTable
from anonymize.attributes.io import concat_attribute_tables, estimate_attributes, read_attribute_table, write_attribute_table
from anonymize.attributes.labels import LabelsError, LabelsSource
from anonymize.attributes.landmarks import (RULES, brow_arch, eye_aspect_ratio, lip_thickness, mouth_opening, nose_width,
                                             rule_probabilities, smile)
from anonymize.attributes.probe import ProbeError, ProbeSource, farl_features, load_heads
from anonymize.cli import app
from tests.helpers import copy_celeba_ids

SMILING, OPEN = CELEBA_ATTRIBUTES.index("Smiling"), CELEBA_ATTRIBUTES.index("Mouth_Slightly_Open")


def cli(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def labels_for(path: Path, *keys: str, **options: str) -> AttributeTable:
    return LabelsSource(options={"labels": str(path), **options}).table(keys)


# -- labels ------------------------------------------------------------------------------------------------

def test_celeba_list_attr_format_reads_plus_minus_one_rows(tmp_path):
    rows = [("000001.jpg", [1 if i % 3 == 0 else -1 for i in range(40)]), ("000002.jpg", [-1] * 39 + [1])]
    text = f"{len(rows)}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n"
    text += "".join(name + "  " + " ".join(f"{v:2d}" for v in values) + "\n" for name, values in rows)
    (tmp_path / "list_attr_celeba.txt").write_text(text)
    table = labels_for(tmp_path / "list_attr_celeba.txt", "celeba/000002.jpg#0", "000001.jpg#0")
    assert table.source == "labels" and not table.heuristic and table.names == CELEBA_ATTRIBUTES
    assert table.bits()[1].tolist() == [1 if i % 3 == 0 else 0 for i in range(40)]  # matched by relative path
    assert table.bits()[0].tolist() == [0] * 39 + [1]  # matched by file name (the row names no folder)


def test_csv_and_parquet_take_any_subset_of_attributes_and_three_value_spellings(tmp_path):
    (tmp_path / "labels.csv").write_text("image_id,Smiling,Male,Young\na/x.jpg,1,0,true\nb/x.jpg,-1,1,\n")
    table = labels_for(tmp_path / "labels.csv", "b/x.jpg#0", "a/x.jpg#0")
    assert table.select(["Smiling", "Male", "Young"]).bits().tolist() == [[0, 1, -1], [1, 0, 1]]
    assert np.isnan(table.select(["Bald"]).probabilities).all()  # a column the file does not have: unknown
    pq.write_table(pa.table({"file": ["p.png"], "Eyeglasses": [True], "Bangs": [-1]}), tmp_path / "labels.parquet")
    table = labels_for(tmp_path / "labels.parquet", "deep/p.png#0")
    assert table.select(["Eyeglasses", "Bangs"]).bits().tolist() == [[1, 0]]


def test_face_keys_rows_label_each_face_of_a_group_photo(tmp_path):
    (tmp_path / "labels.csv").write_text("key,Smiling\ng.jpg#0,1\ng.jpg#1,0\n")
    assert labels_for(tmp_path / "labels.csv", "g.jpg#0", "g.jpg#1").select(["Smiling"]).bits().ravel().tolist() == [1, 0]
    (tmp_path / "image.csv").write_text("file,Smiling\ng.jpg,1\n")
    with pytest.raises(LabelsError, match="g.jpg has 2 faces but one row"):
        labels_for(tmp_path / "image.csv", "g.jpg#0", "g.jpg#1")


def test_a_file_name_row_claimed_by_two_images_in_different_batches_is_ambiguous(tmp_path):
    (tmp_path / "labels.csv").write_text("file,Smiling\nx.jpg,1\n")
    source = LabelsSource(options={"labels": str(tmp_path / "labels.csv")})
    assert source.table(["a/x.jpg#0"]).select(["Smiling"]).bits().tolist() == [[1]]
    with pytest.raises(LabelsError, match="would label both a/x.jpg and b/x.jpg"):
        source.table(["b/x.jpg#0"])  # the next batch of the same walk


@pytest.mark.parametrize("content, keys, message", [
    ("filename,Smiling\na/x.jpg,1\nb/x.jpg,0\n", ("c/x.jpg#0",), "file name x.jpg is ambiguous for c/x.jpg"),
    ("filename,Smiling\nx.jpg,1\n", ("a/x.jpg#0", "b/x.jpg#0"), "its one row would label both a/x.jpg and b/x.jpg"),
    ("filename,Smiling\na.jpg,1\n", ("b.jpg#0",), "unknown file: no row for b.jpg#0"),
    ("name,Smiling\na.jpg,1\n", ("a.jpg#0",), "missing file-name column"),
    ("file,Smiling,Smiley\na.jpg,1,1\n", ("a.jpg#0",), "unknown attribute column.s. Smiley"),
    ("file\na.jpg\n", ("a.jpg#0",), "missing attribute columns"),
    ("file,Smiling\na.jpg,maybe\n", ("a.jpg#0",), "bad value 'maybe' for Smiling of a.jpg"),
    ("file,Smiling\na.jpg,1\na.jpg,0\n", ("a.jpg#0",), "a.jpg is labelled twice"),
])
def test_labels_errors_are_one_line_naming_the_file_and_the_cause(tmp_path, content, keys, message):
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(LabelsError, match=message) as error:
        labels_for(path, *keys)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_celeba_format_checks_its_row_count_and_missing_nan_leaves_unlabelled_faces_unknown(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("3\nSmiling Male\na.jpg 1 -1\nb.jpg -1 1\n")
    with pytest.raises(LabelsError, match="announces 3 rows, the file holds 2"):
        labels_for(path, "a.jpg#0")
    path.write_text("2\nSmiling Male\na.jpg 1 -1\nb.jpg -1 1\n")
    table = labels_for(path, "a.jpg#0", "z.jpg#0", missing="nan")
    assert table.select(["Smiling", "Male"]).bits().tolist() == [[1, 0], [-1, -1]]


# -- table files -------------------------------------------------------------------------------------------

def test_batches_of_one_source_concatenate_in_order():
    first = AttributeTable(("a#0",), ("Smiling",), np.array([[0.5]]), "probe")
    second = AttributeTable(("b#0", "b#1"), ("Smiling",), np.array([[1.0], [np.nan]]), "probe")
    joined = concat_attribute_tables([first, second], "probe", False)
    assert joined.keys == ("a#0", "b#0", "b#1") and joined.bits().ravel().tolist() == [1, 1, -1]
    assert concat_attribute_tables([], "landmarks", True).names == CELEBA_ATTRIBUTES
    with pytest.raises(ValueError, match="share their source"):
        concat_attribute_tables([first, AttributeTable((), ("Smiling",), np.zeros((0, 1)), "labels")], "probe", False)


def test_attribute_tables_round_trip_through_parquet_with_their_source(tmp_path):
    values = np.array([[0.25, np.nan], [1.0, 0.0]], np.float32)
    table = AttributeTable(("a/b.jpg#0", "a/b.jpg#1"), ("Smiling", "Male"), values, "landmarks", heuristic=True)
    write_attribute_table(tmp_path / "t.parquet", table)
    rows = pq.read_table(tmp_path / "t.parquet").to_pylist()
    assert rows[1] == {"key": "a/b.jpg#1", "source_path": "a/b.jpg", "face_index": 1, "source": "landmarks",
                       "heuristic": True, "Smiling": 1.0, "Male": 0.0}
    back = read_attribute_table(tmp_path / "t.parquet")
    assert (back.keys, back.names, back.source, back.heuristic) == (table.keys, table.names, "landmarks", True)
    np.testing.assert_array_equal(back.probabilities, values)
    empty = AttributeTable((), ("Smiling",), np.zeros((0, 1)), "probe")
    write_attribute_table(tmp_path / "e.parquet", empty)
    assert read_attribute_table(tmp_path / "e.parquet").source == "probe"


# -- landmark rules ----------------------------------------------------------------------------------------

def _face_points() -> np.ndarray:
    """68 points of a schematic face: eyes 40 px apart, a 40 px mouth whose inner lips are 4 px apart."""
    points = np.zeros((68, 2))
    for start, cx in ((36, 80.0), (42, 120.0)):  # eye corners 20 px apart, lids 5 px above and below
        points[start:start + 6] = [(cx - 10, 100), (cx - 4, 95), (cx + 4, 95), (cx + 10, 100), (cx + 4, 105), (cx - 4, 105)]
    for start, cx in ((17, 80.0), (22, 120.0)):  # brows 20 px long, middle 4 px above their ends
        points[start:start + 5] = [(cx - 10, 85), (cx - 5, 82), (cx, 81), (cx + 5, 82), (cx + 10, 85)]
    points[48:60] = [(80, 150), (87, 146), (94, 145), (100, 146), (106, 145), (113, 146), (120, 150),
                     (113, 156), (106, 157), (100, 157), (94, 157), (87, 156)]
    points[60:68] = [(82, 150), (94, 149), (100, 149), (106, 149), (118, 150), (106, 153), (100, 153), (94, 153)]
    points[31:36] = [(90, 130), (95, 131), (100, 132), (105, 131), (110, 130)]
    return points


def test_landmark_rules_follow_their_documented_formulas():
    points = _face_points()
    assert mouth_opening(points) == pytest.approx(4 / 40)  # gaps 61-67, 62-66, 63-65 all 4 px, over W = 40
    assert eye_aspect_ratio(points) == pytest.approx((10 + 10) / (2 * 20))
    assert brow_arch(points) == pytest.approx(4 / 20)  # highest point 81, ends at 85, brow 20 px long
    lift = ((146 + 157) / 2 - 150) / 40  # corners (48, 54) at y 150, lip centres (51, 57) at 146 and 157
    assert smile(points) == pytest.approx(40 / 40 + lift)  # W / IOD + lift
    assert lip_thickness(points) == pytest.approx((4 + 4 + 4 + 4) / 2 / 40)
    assert nose_width(points) == pytest.approx(20 / 40)
    probabilities = rule_probabilities(points)
    rule = next(rule for rule in RULES if rule.attribute == "Mouth_Slightly_Open")
    assert probabilities["Mouth_Slightly_Open"] == pytest.approx(1 / (1 + np.exp(-(0.1 - rule.threshold) / rule.scale)))
    narrow = next(rule for rule in RULES if rule.attribute == "Narrow_Eyes")
    assert probabilities["Narrow_Eyes"] == pytest.approx(1 / (1 + np.exp((0.5 - narrow.threshold) / narrow.scale)))


@pytest.fixture
def portraits(shared_dir, tmp_path) -> Path:
    """Five single-person portraits, checked by eye: obama_1 and biden_2 smile broadly with teeth showing;
    obama_2 speaks at a lectern (mouth open, not smiling); kit_harington_1 and rose_leslie_1 look on with
    closed, neutral mouths. Shrunk to 480 px so detection stays quick on a loaded CPU."""
    folder = tmp_path / "portraits"
    folder.mkdir()
    for name in ("obama_1", "biden_2", "obama_2", "kit_harington_1", "rose_leslie_1"):
        image = Image.open(shared_dir / "data" / "portraits" / f"{name}.jpg")
        image.thumbnail((480, 480))
        image.save(folder / f"{name}.jpg", quality=95)
    return folder


def test_attributes_cli_writes_landmark_estimates_keyed_like_the_run(tiny_env, portraits, tmp_path):
    before = sorted((path.name, path.stat().st_mtime_ns) for path in portraits.iterdir())
    out = tmp_path / "attributes.parquet"
    result = cli("attributes", portraits, "--source", "landmarks", "--detector", "dlib-hog", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["faces"] == 5 and summary["heuristic"] is True and set(summary["present"]) == {rule.attribute for rule in RULES}
    assert sorted((path.name, path.stat().st_mtime_ns) for path in portraits.iterdir()) == before  # input untouched
    rows = {row["key"]: row for row in pq.read_table(out).to_pylist()}
    assert set(rows) == {f"{path.name}#0" for path in portraits.iterdir()}
    assert all(row["source"] == "landmarks" and row["heuristic"] and row["Male"] is None for row in rows.values())
    p = {key.split(".")[0]: row for key, row in rows.items()}
    for smiling in ("obama_1", "biden_2"):
        for neutral in ("kit_harington_1", "rose_leslie_1"):
            assert p[smiling]["Smiling"] > p[neutral]["Smiling"] and p[smiling]["Smiling"] > 0.5 > p[neutral]["Smiling"]
    for talking in ("obama_2", "obama_1"):
        for neutral in ("kit_harington_1", "rose_leslie_1"):
            assert p[talking]["Mouth_Slightly_Open"] > 0.5 > p[neutral]["Mouth_Slightly_Open"]


def test_attributes_cli_refuses_to_write_into_its_input(tiny_env, portraits):
    result = cli("attributes", portraits, "--out", portraits / "a.parquet")
    assert result.exit_code == 2 and "inside the input folder" in result.output


# -- probe -------------------------------------------------------------------------------------------------

@pytest.fixture
def celeba_six(shared_dir, tmp_path) -> Path:
    """Three aligned photos of each of two identities; hand labels: identity 0's photos 'Smiling', identity 1's not,
    and 'Eyeglasses' for nobody (one class only: no head)."""
    folder = copy_celeba_ids(shared_dir, tmp_path / "celeba", per_identity=3)
    lines = ["image_id,Smiling,Eyeglasses"] + [f"{path.relative_to(folder).as_posix()},{1 if path.parent.name == '0' else -1},-1"
                                               for path in sorted(folder.rglob("*.jpg"))]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_probe_heads_fit_on_tiny_farl_save_as_plain_arrays_and_predict_what_sklearn_fitted(tiny_env, celeba_six, tmp_path):
    heads_path = tmp_path / "heads.npz"
    result = cli("attributes", "fit", celeba_six, "--labels", tmp_path / "labels.csv", "--aligned", "--out", heads_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["attributes"] == {"Smiling": {"positives": 3, "labelled": 6}}
    with zipfile.ZipFile(heads_path) as archive:  # every member a plain .npy array, none an object array
        for member in archive.namelist():
            header = archive.read(member)[:128]
            assert member.endswith(".npy") and b"'descr': '|O'" not in header
    heads = load_heads(heads_path)
    store = tiny_env.store()
    assert heads.names == ("Smiling",) and heads.farl_sha256 == store.sha256("farl_ep64")

    out = tmp_path / "probe.parquet"
    result = cli("attributes", celeba_six, "--source", "probe", "-p", f"heads={heads_path}", "--aligned", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    table = read_attribute_table(out)
    assert table.source == "probe" and not table.heuristic and np.isnan(np.delete(table.probabilities, SMILING, axis=1)).all()
    from anonymize.run.collect import FaceCollector
    from sklearn.linear_model import LogisticRegression

    batches = list(FaceCollector(celeba_six, store, aligned=True, workers=2).batches(faces_per_batch=4))
    assert [len(batch) for batch in batches] == [4, 2]  # in walk order, the last batch the rest
    faces = [face for batch in batches for face in batch]
    features = farl_features(faces, store)
    targets = [face.key.startswith("0/") for face in faces]
    expected = LogisticRegression(C=1.0, max_iter=1000).fit(features, targets).predict_proba(features)[:, 1]
    assert [face.key for face in faces] == list(table.keys)
    np.testing.assert_allclose(table.probabilities[:, SMILING], expected, atol=1e-4)
    again = estimate_attributes(faces, "probe", store, options={"heads": str(heads_path)})
    np.testing.assert_allclose(again.probabilities[:, SMILING], expected, atol=1e-4)


def test_attributes_cli_runs_the_zero_shot_source_on_the_tiny_farl(tiny_env, celeba_six, tmp_path):
    out = tmp_path / "zero-shot.parquet"
    result = cli("attributes", celeba_six, "--source", "zero-shot", "-p", "attributes=Smiling,Male", "--aligned", "--out", out)
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 6 and {row["source"] for row in rows} == {"zero-shot"} and not any(row["heuristic"] for row in rows)
    assert all(0 <= row["Smiling"] <= 1 and 0 <= row["Male"] <= 1 for row in rows)


def test_probe_refuses_heads_fitted_on_another_farl(tiny_env, tmp_path):
    from anonymize.attributes.probe import ProbeHeads, save_heads

    save_heads(tmp_path / "h.npz", ProbeHeads(("Smiling",), np.zeros((1, 4), np.float32), np.zeros(1, np.float32),
                                              "0" * 64, np.array([1]), np.array([2])))
    with pytest.raises(ProbeError, match="fitted on FaRL 000000000000"):
        ProbeSource(tiny_env.store(), options={"heads": str(tmp_path / "h.npz")})
    with pytest.raises(ProbeError, match="no attribute heads here"):
        ProbeSource(tiny_env.store(), options={"heads": str(tmp_path / "absent.npz")})
