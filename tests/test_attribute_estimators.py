"""The `estimators` attribute source: real classifiers outside every method's loss, read as their authors read them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from anonymize.attributes.estimators import EstimatorSource, faceres_age, network_input, young_probability
from anonymize.attributes.sources import create_source
from anonymize.cli import _register_commands, app
from anonymize.models.registry import contract_of


def test_decoding_follows_the_authors_on_hand_made_outputs() -> None:
    bins = np.zeros((1, 100), np.float32)
    bins[0, 24], bins[0, 29], bins[0, 60] = 0.5, 0.3, 0.2  # bins 24 and 29 are 25 and 30 years
    assert faceres_age(bins)[0] == pytest.approx(1 + (24 * 0.5 + 29 * 0.3) / 0.8)  # the two likeliest bins, renormalised
    assert young_probability(np.array([35.0]))[0] == pytest.approx(0.5)
    assert young_probability(np.array([20.0]))[0] > 0.95 > 0.05 > young_probability(np.array([50.0]))[0]
    pixels = np.array([[[[255, 255, 255], [0, 0, 0]]]], np.uint8)  # one white and one black pixel
    assert network_input(pixels, contract_of("gender"))[..., 0].tolist() == [[[1.0, -1.0]]]
    assert network_input(pixels, contract_of("gear")).max() == 1.0
    red = np.array([[[[255, 0, 0]]]], np.uint8)
    assert network_input(red, contract_of("faceres"))[0, 0, 0].tolist() == pytest.approx([-103.939, -116.779, 255 - 123.68])


@pytest.fixture(scope="module")
def a_man_and_a_woman(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("estimators") / "faces"
    folder.mkdir()
    for identity, name in (("0", "man"), ("3", "woman")):  # celeba-ids: folder 3 is a woman, 0 a man (by inspection)
        for index, photo in enumerate(sorted((shared_dir / "data" / "celeba-ids" / identity).glob("*.jpg"))[:2]):
            shutil.copy(photo, folder / f"{name}_{index}.jpg")
    return folder


def test_the_cli_writes_male_young_and_smiling_from_the_estimators(human_weights, a_man_and_a_woman: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANONYMIZE_HOME", str(human_weights.weights_dir))
    monkeypatch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(human_weights.lock_path))
    out = tmp_path / "attributes.parquet"
    _register_commands()
    result = CliRunner().invoke(app, ["attributes", str(a_man_and_a_woman), "--source", "estimators", "--aligned",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["heuristic"] is False and set(summary["present"]) == {"Male", "Young", "Smiling"}
    rows = {row["key"].split(".")[0]: row for row in pq.read_table(out).to_pylist()}
    for index in (0, 1):
        assert rows[f"man_{index}"]["Male"] > 0.5 > rows[f"woman_{index}"]["Male"]
        assert rows[f"man_{index}"]["Big_Nose"] is None  # the estimators say nothing about face shape


def test_a_merged_source_takes_each_column_from_the_first_that_estimates_it(human_weights, a_man_and_a_woman: Path) -> None:
    from anonymize.faces.align import align_single_face
    from anonymize.io.decode import decode_image
    from anonymize.faces.types import FaceCrop

    store = human_weights.store()
    faces = [FaceCrop(align_single_face(decode_image(path).rgb, None, 256).crop, None, path.name)
             for path in sorted(a_man_and_a_woman.glob("*.jpg"))]
    merged = create_source("estimators+landmarks", store).estimate(faces)
    estimators = EstimatorSource(store).estimate(faces)
    landmarks = create_source("landmarks", store).estimate(faces)
    assert merged.source == "estimators+landmarks" and merged.heuristic
    for name in ("Male", "Smiling"):
        np.testing.assert_array_equal(merged.select([name]).probabilities, estimators.select([name]).probabilities)
    np.testing.assert_array_equal(merged.select(["Big_Nose"]).probabilities, landmarks.select(["Big_Nose"]).probabilities)


def test_a_missing_model_is_one_line_naming_how_to_install(tiny_weights) -> None:
    with pytest.raises(Exception) as exc:
        EstimatorSource(tiny_weights.store())
    assert "\n" not in str(exc.value) and "human" in str(exc.value)


def test_evaluate_gives_a_source_s_accuracy_per_attribute_against_labels(human_weights, a_man_and_a_woman: Path,
                                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimators call both men male and both women not (test above): against labels that call woman_1 a man,
    Male is right on 3 of 4 faces, as is always answering the labels' majority (3 of 4 labelled male)."""
    monkeypatch.setenv("ANONYMIZE_HOME", str(human_weights.weights_dir))
    monkeypatch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(human_weights.lock_path))
    labels = tmp_path / "labels.csv"
    labels.write_text("file,Male,Eyeglasses\nman_0.jpg,1,-1\nman_1.jpg,1,-1\nwoman_0.jpg,-1,-1\nwoman_1.jpg,1,-1\n")
    _register_commands()
    result = CliRunner().invoke(app, ["attributes", "evaluate", str(a_man_and_a_woman), "--labels", str(labels),
                                      "--source", "estimators", "--aligned", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["faces"] == 4 and set(summary["attributes"]) == {"Male"}  # Eyeglasses: the estimators say nothing
    assert summary["attributes"]["Male"] == {"accuracy": 0.75, "faces": 4, "majority": 0.75}
    missing = CliRunner().invoke(app, ["attributes", "evaluate", str(a_man_and_a_woman), "--labels", str(tmp_path / "none.csv"),
                                       "--source", "estimators", "--aligned"])
    assert missing.exit_code != 0 and "none.csv" in missing.output
