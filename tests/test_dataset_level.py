"""Dataset-level methods: every face is surveyed before any is written, the plan lives in the output.

The method here is defined by the test (registered for the test only): it records what the pipeline
shows it, so the two-pass contract k-Same and CFA rely on is pinned independently of them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from anonymize.io.storage import plan_storage
from anonymize.methods import AnonymizedFace, FaceCrop, Method, registry
from anonymize.methods.persons import cluster_people, folder_of, person_ids
from anonymize.run import run, run_config
from tests.helpers import PORTRAITS_WITH_ONE_FACE, cli

EVENTS: list[tuple[str, object]] = []


class SurveyRecorder(Method):
    """Inverts each face; records the survey, the plan and the calls in EVENTS."""

    name = "survey-recorder"
    dataset_level = True

    def __init__(self, context, options=None) -> None:
        super().__init__(context, options)
        self.surveyed: list[str] = []
        self.planned: set[str] | None = None

    def survey(self, faces: Sequence[FaceCrop]) -> None:
        EVENTS.append(("survey", [face.key for face in faces]))
        self.surveyed.extend(face.key for face in faces)

    def plan(self) -> dict[str, int]:
        stored = self.stored_plan()
        earlier = [str(key) for key in stored[0]["keys"]] if stored else []
        keys = earlier + [key for key in self.surveyed if key not in earlier]
        if self.context.plan is not None:
            self.context.plan.write_plan({"keys": np.asarray(keys)}, {"faces": len(keys)})
        self.planned = set(keys)
        EVENTS.append(("plan", sorted(keys)))
        return {"faces": len(keys)}

    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        if self.planned is None:  # a copy that did not plan reads the stored plan
            stored = self.stored_plan()
            self.planned = {str(key) for key in stored[0]["keys"]} if stored else set()
        EVENTS.append(("anonymize", [face.key for face in faces]))
        return [AnonymizedFace(255 - face.image, {"in_plan": face.key in self.planned}) for face in faces]


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setitem(registry.METHODS, SurveyRecorder.name, f"{__name__}:SurveyRecorder")
    EVENTS.clear()
    return EVENTS


@pytest.fixture
def four_portraits(shared_dir: Path, tmp_path: Path) -> Path:
    source = tmp_path / "four"
    for index, name in enumerate(PORTRAITS_WITH_ONE_FACE):
        (source / f"person{index % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_dir / "data" / "portraits" / name, source / f"person{index % 2}" / name)
    return source


def config(source: Path, out: Path, **overrides) -> RunConfig:
    return run_config(source, out, **{"method": SurveyRecorder.name, "detector": "dlib-hog", "workers": 2, **overrides})


def test_every_face_is_surveyed_and_planned_before_the_first_is_anonymized(recorder, four_portraits, tmp_path):
    out = tmp_path / "out"
    summary = run(config(four_portraits, out))
    assert summary.faces == 4 and summary.errors == 0
    kinds = [kind for kind, _ in recorder]
    first_anonymize = kinds.index("anonymize")
    assert kinds.count("plan") == 1 and kinds.index("plan") < first_anonymize
    assert "survey" not in kinds[first_anonymize:]
    surveyed = sorted(key for kind, keys in recorder if kind == "survey" for key in keys)
    anonymized = sorted(key for kind, keys in recorder if kind == "anonymize" for key in keys)
    assert surveyed == anonymized and len(surveyed) == 4
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert all(json.loads(row["extra_metrics"])["in_plan"] for row in rows if row["status"] == "done")
    assert plan_storage(out, SurveyRecorder.name).read_plan()[1] == {"faces": 4}


def test_a_resumed_run_surveys_only_what_is_left_and_keeps_the_stored_plan(recorder, four_portraits, tmp_path):
    out = tmp_path / "out"
    run(config(four_portraits, out, limit=2))
    first_plan = next(keys for kind, keys in recorder if kind == "plan")
    recorder.clear()
    summary = run(config(four_portraits, out))
    assert summary.resumed == 2 and summary.images == 2
    surveyed = [key for kind, keys in recorder if kind == "survey" for key in keys]
    assert len(surveyed) == 2 and not set(surveyed) & set(first_plan)
    final_plan = next(keys for kind, keys in recorder if kind == "plan")
    assert set(first_plan) < set(final_plan) and len(final_plan) == 4


def test_overwrite_forgets_the_stored_plan(recorder, four_portraits, tmp_path):
    out = tmp_path / "out"
    run(config(four_portraits, out, limit=2))
    recorder.clear()
    run(config(four_portraits, out, limit=1, overwrite=True))
    assert len(next(keys for kind, keys in recorder if kind == "plan")) == 1


def test_identity_from_is_refused_for_a_method_that_is_not_dataset_level(tmp_path):
    result = cli("run", str(tmp_path), "--out", str(tmp_path / "o"), "--method", "blur", "--identity-from", "folder")
    assert result.exit_code == 2
    assert "--identity-from only applies to dataset-level methods" in result.output


def test_a_person_is_a_folder_or_a_cluster_of_close_embeddings():
    assert folder_of("a/b/c.jpg#0") == "a/b" and folder_of("c.jpg#1") == ""
    keys = ["x/1.jpg#0", "y/2.jpg#0", "x/3.jpg#1"]
    assert person_ids(keys, np.zeros((3, 2)), "folder", 0.5).tolist() == [0, 1, 0]
    # two tight pairs 90 degrees apart: cosine distance 0.005 within a pair, about 1 across
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assert cluster_people(embeddings, max_distance=0.3).tolist() == [0, 1, 0, 1]
    assert cluster_people(embeddings, max_distance=0.001).tolist() == [0, 1, 2, 3]
