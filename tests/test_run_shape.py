"""The run's shape: settings per concern, the one batching rule, storage handles, a manifest schema
assembled from what the method and the steps declare, and a method added as a plug-in."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anonymize.adversarial.settings import AdversarialSettings
from anonymize.faces.types import FaceCrop
from anonymize.io.manifest import CORE_COLUMNS, manifest_schema
from anonymize.io.storage import Storage, plan_storage, work_storage
from anonymize.methods import AnonymizedFace, Method, MethodError, registry
from anonymize.run import run, run_config
from anonymize.run.assemble import metric_columns
from anonymize.run.batching import BatchRule
from anonymize.run.config import FLAGS, recorded_arguments
from anonymize.steps.identity import IdentityMetricStep
from tests.helpers import cli, crops


def test_the_batch_rule_closes_on_faces_or_on_images_and_keeps_an_image_s_faces_together():
    """Faces per image 3, 0, 2, 1, 0, 4 with 4 faces a batch and at most 3 images: worked by hand."""
    faces = [3, 0, 2, 1, 0, 4]
    batches = list(BatchRule(4, images=3).group(range(6), faces.__getitem__))
    assert batches == [[0, 1, 2], [3, 4, 5]]  # 5 faces close the first; the second closes at its 3rd image
    assert list(BatchRule(4, images=None).group(range(6), faces.__getitem__)) == [[0, 1, 2], [3, 4, 5]]
    assert list(BatchRule(2, images=None).group(range(6), faces.__getitem__)) == [[0], [1, 2], [3, 4, 5]]
    assert list(BatchRule(100, images=2).group(range(5), lambda _: 0)) == [[0, 1], [2, 3], [4]]
    assert BatchRule(4).full(4, 1) and BatchRule(4, images=64).full(0, 64) and not BatchRule(4).full(3, 63)
    with pytest.raises(ValueError):
        BatchRule(0)


def test_run_config_takes_the_cli_s_flat_flags_and_gives_them_back():
    settings = AdversarialSettings(kind="fgsm")
    config = run_config(Path("in"), Path("out"), method="blur", method_options={"sigma": "0.1"}, aligned=True,
                        aligned_framing="ffhq", region="crop", workers=2, adversarial=settings, seed=7)
    assert config.method.name == "blur" and config.method.options == {"sigma": "0.1"} and config.method.seed == 7
    assert config.detection.aligned and config.detection.framing == "ffhq" and config.region.kind == "crop"
    assert config.execution.workers == 2 and config.finishing.adversarial == settings
    flags = config.flags()
    assert set(flags) == set(FLAGS) and flags["aligned_framing"] == "ffhq" and flags["workers"] == 2
    assert run_config(**flags) == config
    recorded = recorded_arguments(config)
    assert recorded["input_dir"] == "in" and recorded["adversarial"]["kind"] == "fgsm"
    json.dumps(recorded)  # JSON-ready: the manifest's "arguments"
    with pytest.raises(TypeError, match="unknown flag"):
        run_config(Path("in"), Path("out"), margin=0.2)  # margin is a method option now: -p margin=


def test_a_storage_handle_keeps_plans_and_side_files_inside_the_output(tmp_path):
    out = tmp_path / "out"
    plan = plan_storage(out, "ksame")
    assert plan is not None and plan.read_plan() is None
    plan.write_plan({"groups": np.arange(3)}, {"k": 2})
    arrays, info = plan.read_plan()
    assert np.array_equal(arrays["groups"], np.arange(3)) and info == {"k": 2}
    assert (out / ".anonymize" / "plan" / "ksame" / "plan.npz").is_file()
    work = work_storage(out)
    relative = work.child("latents").save_array("a.npy", np.ones((2, 3), np.float32))
    assert relative == ".anonymize/latents/a.npy" and np.array_equal(np.load(out / relative), np.ones((2, 3)))
    for name in ("spool-1.raw", "spool-2.raw", "keep.npy"):
        plan.write_bytes(name, b"x")
    plan.remove_matching("spool-", keep="spool-2.raw")
    assert sorted(path.name for path in (out / ".anonymize" / "plan" / "ksame").iterdir()) == ["keep.npy", "plan.npz", "spool-2.raw"]
    assert plan_storage(None, "ksame") is None and work_storage(None) is None  # dry runs get no handle
    (out / ".anonymize" / "plan" / "ksame" / "plan.npz").write_bytes(b"not an npz")
    assert plan.read_plan() is None  # unreadable: absent, never half-used


def test_a_planted_link_in_the_output_is_never_followed(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / ".anonymize").mkdir(parents=True)
    elsewhere.mkdir()
    (out / ".anonymize" / "plan").symlink_to(elsewhere)
    with pytest.raises(OSError):
        Storage(out, ".anonymize/plan/ksame").write_plan({"a": np.zeros(1)}, {})
    assert list(elsewhere.iterdir()) == []


def test_the_manifest_schema_is_the_core_plus_what_the_method_and_the_steps_declare():
    class Declares(Method):
        name = "declares"
        metric_columns = {"declared_cos": pa.float32()}

        def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
            return []

    columns = metric_columns(Declares, [IdentityMetricStep(None)])
    assert columns == {"declared_cos": pa.float32(), "identity_distance_dlib": pa.float32()}
    schema = manifest_schema(columns)
    assert schema.names[: len(CORE_COLUMNS)] == [name for name, _ in CORE_COLUMNS]
    assert schema.names[len(CORE_COLUMNS):] == ["declared_cos", "identity_distance_dlib", "extra_metrics", "note"]
    with pytest.raises(ValueError, match="clash"):
        manifest_schema({"status": pa.string()})
    Declares.metric_columns = {"identity_distance_dlib": pa.int32()}
    with pytest.raises(ValueError, match="declared as"):
        metric_columns(Declares, [IdentityMetricStep(None)])


class Invert(Method):
    """A method added as a plug-in: its own options, columns and needs, nothing else touched."""

    name = "invert"
    uses_torch = False
    metric_columns = {"invert_mean": pa.float32()}

    @dataclass(frozen=True)
    class Params:
        strength: float = 1.0

        def validate(self) -> None:
            if not 0 <= self.strength <= 1:
                raise ValueError(f"strength={self.strength:g}: expected 0..1")

    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        out = []
        for face in faces:
            image = face.image.astype(np.float32)
            crop = (image + self.params.strength * (255 - 2 * image)).clip(0, 255).astype(np.uint8)
            out.append(AnonymizedFace(crop, {"invert_mean": float(crop.mean()), "undeclared": 1}))
        return out


def test_a_plug_in_method_runs_from_the_cli_with_its_options_and_its_columns(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.METHODS, "invert", f"{__name__}:Invert")  # the one registry line
    source = crops(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    summary = run(run_config(source, out, method="invert", method_options={"strength": "0.5"}, aligned=True,
                             detector="dlib-hog", device="cpu"))
    assert summary.stages["imports_s"] >= 0 and 0 <= summary.stages["setup_s"] <= summary.seconds  # before the first image
    table = pq.read_table(out / "manifest.parquet")
    assert "invert_mean" in table.schema.names and "id_cos_after" not in table.schema.names
    rows = table.to_pylist()
    assert all(row["invert_mean"] is not None and json.loads(row["extra_metrics"]) == {"undeclared": 1} for row in rows)
    assert {json.loads(row["method_params"])["strength"] for row in rows} == {0.5}
    with pytest.raises(MethodError, match="strength=2: expected 0..1"):
        run(run_config(source, tmp_path / "o2", method="invert", method_options={"strength": "2"}, aligned=True, device="cpu"))
    with pytest.raises(MethodError, match="has no option 'margin'"):  # --margin is sugar for an option it lacks
        run(run_config(source, tmp_path / "o3", method="invert", method_options={"margin": "0.2"}, aligned=True, device="cpu"))


def test_margin_is_refused_by_a_method_without_that_option():
    result = cli("run", "nowhere", "--method", "blur", "--margin", "0.3")
    assert result.exit_code == 2 and "--margin only applies to --method falco or attributes" in " ".join(result.output.split())
