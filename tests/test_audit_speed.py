"""Issue 23, the audit's speed: each detector network once per output, and the originals' findings kept by content
hash; neither may change a figure. Real photos and RetinaFace come from ../shared (skipped where absent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from anonymize.audit import AuditConfig, run_audit
from anonymize.audit.faces import confirm_faces, source_faces
from anonymize.audit.instruments import open_output_detectors
from anonymize.audit.originals_cache import OriginalsCache, detector_fingerprint
from anonymize.audit.output_detection import OutputDetection, derivable_from
from anonymize.faces.detect import DetectorSettings, create_detector
from anonymize.faces.dlib_detectors import DlibDetector
from anonymize.faces.types import Face
from anonymize.io.decode import decode_image
from anonymize.run import run, run_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PORTRAITS = SHARED / "data" / "portraits"


def require_portraits() -> None:
    if not PORTRAITS.is_dir():
        pytest.skip(f"{PORTRAITS} is absent: these tests need the real photos")


def same_faces(a: list[Face], b: list[Face]) -> bool:
    return [(f.box, f.score, f.found_by) for f in a] == [(f.box, f.score, f.found_by) for f in b] and all(
        np.array_equal(x.landmarks, y.landmarks) and x.landmarks.dtype == y.landmarks.dtype for x, y in zip(a, b))


# ---- one pass of each detector on an output ----------------------------------------------------------


def test_each_output_detector_read_from_the_ensemble_equals_running_it(tiny_weights):
    require_portraits()
    store = tiny_weights.store()
    if store.status("retinaface_mobilenet0.25") != "present":
        pytest.skip("RetinaFace weights are not in ../shared")
    ensemble = create_detector("ensemble", store, DetectorSettings(recall_first=True), members=("retinaface", "mtcnn", "dlib-hog"))
    output_detectors, _ = open_output_detectors(store, "cpu")
    shared = OutputDetection(ensemble, output_detectors)
    assert set(shared.derived) == {"retinaface", "mtcnn", "dlib-hog"}  # no network runs twice
    for name in ("multi_obama_and_biden.jpg", "partial_obama_1.jpg"):
        rgb = decode_image(PORTRAITS / name).rgb
        rgb = cv2.GaussianBlur(rgb, (0, 0), 2.0)  # an anonymized-looking output: weaker faces, lower scores
        found = shared.detect(rgb)
        assert same_faces(found.audit, ensemble.detect(rgb))
        for detector_name, detector in output_detectors.items():
            assert same_faces(found.by_detector[detector_name], detector.detect(rgb)), (name, detector_name)


class Fake:
    """A detector that returns fixed faces, counting its calls."""

    def __init__(self, name: str, threshold: float, faces: list[Face], min_face: int = 0) -> None:
        self.name, self.threshold, self.min_face, self.faces, self.calls = name, threshold, min_face, faces, 0

    def detect(self, rgb: np.ndarray) -> list[Face]:
        self.calls += 1
        return [face for face in self.faces if face.score >= self.threshold]

    def weights_used(self) -> dict[str, str]:
        return {self.name: "sha"}


def test_a_detector_runs_on_its_own_when_the_ensemble_member_cannot_stand_for_it():
    faces = [Face((0.0, 0.0, 10.0, 10.0), 0.95, np.zeros((5, 2), np.float32))]
    assert derivable_from(Fake("retinaface", 0.5, faces), Fake("retinaface", 0.9, faces))
    assert not derivable_from(Fake("retinaface", 0.95, faces), Fake("retinaface", 0.9, faces))  # a user's higher threshold
    assert not derivable_from(Fake("retinaface", 0.5, faces, min_face=20), Fake("retinaface", 0.9, faces))
    assert not derivable_from(Fake("dlib-cnn", 0.3, faces), Fake("dlib-cnn", 0.5, faces))  # not known to suppress greedily
    single, output = Fake("mtcnn", 0.95, faces), Fake("mtcnn", 0.85, faces)
    found = OutputDetection(single, {"mtcnn": output}).detect(np.zeros((4, 4, 3), np.uint8))
    assert output.calls == 1 and single.calls == 1 and found.audit == faces and found.by_detector["mtcnn"] == faces


# ---- the originals' findings, by content hash ----------------------------------------------------------


class FakeEnsemble:
    def __init__(self, members: list[Fake]) -> None:
        self.members, self.name, self.min_face = members, "ensemble(" + "+".join(m.name for m in members) + ")", 0

    def detect(self, rgb: np.ndarray) -> list[Face]:
        found = [Face(face.box, face.score, face.landmarks, (member.name,)) for member in self.members for face in member.detect(rgb)]
        return found[:1]

    def weights_used(self) -> dict[str, str]:
        return {}


def test_a_cached_original_gives_the_same_faces_without_detecting_again(tmp_path):
    landmarks = np.array([[3.1, 3.3], [6.7, 3.2], [5.0, 5.123456789], [3.5, 7.0], [6.5, 7.0]], np.float32)
    first = Fake("retinaface", 0.5, [Face((1.0, 1.0, 9.0, 9.0), 0.7123456789, landmarks)])
    second = Fake("mtcnn", 0.5, [])  # the close-up finds nothing: a possible face
    detector = FakeEnsemble([first, second])
    rgb = np.zeros((40, 40, 3), np.uint8)
    cache = OriginalsCache(tmp_path, detector_fingerprint(detector, 10**8))

    def faces(sha: str) -> list:
        findings = cache.findings(sha)
        found = confirm_faces(rgb, source_faces(rgb, detector, [(20.0, 20.0, 30.0, 30.0)], False, findings.detect(detector, rgb)),
                              detector, findings.close_up_check())
        findings.save()
        return found

    cold = faces("a" * 64)
    calls = (first.calls, second.calls)
    warm = faces("a" * 64)
    assert (first.calls, second.calls) == calls and cache.hits == 1  # neither the detection nor the close-ups ran again
    assert warm == cold and all(np.array_equal(a.landmarks, b.landmarks) for a, b in zip(warm, cold) if a.landmarks is not None)
    assert [face.possible for face in warm] == [True, True] and warm[0].landmarks.dtype == np.float32
    faces("b" * 64)  # other bytes: detected afresh
    assert first.calls > calls[0] and cache.misses == 2
    other = FakeEnsemble([Fake("retinaface", 0.6, first.faces), second])  # another threshold: another fingerprint
    assert detector_fingerprint(other, 10**8) != cache.fingerprint != detector_fingerprint(detector, 10**6)
    (next(tmp_path.glob("a*.json"))).write_text("{not json")  # a damaged entry is a miss, then rewritten
    assert faces("a" * 64) == cold and cache.misses == 3


def test_a_re_audit_reads_the_originals_from_the_cache_and_changes_no_figure(tmp_path, monkeypatch):
    require_portraits()
    originals = tmp_path / "originals"
    originals.mkdir()
    for name in ("biden_2.jpg", "multi_two_people.jpg", "obama_1.jpg"):
        shutil.copy(PORTRAITS / name, originals / name)
    weights = tmp_path / "weights"
    weights.mkdir()
    out = tmp_path / "blurred"
    run(run_config(originals, out, method="blur", detector="dlib-hog", device="cpu", weights_dir=weights))
    calls = []
    detect = DlibDetector.detect
    monkeypatch.setattr(DlibDetector, "detect", lambda self, rgb: calls.append(rgb.shape) or detect(self, rgb))

    def audit(report: Path, **overrides) -> tuple[dict, list]:
        calls.clear()
        run_audit(AuditConfig(originals, out, detector="dlib-hog", weights_dir=weights, device="cpu", report_dir=None,
                              parquet_path=report / "audit.parquet", fid=False, farl_proxy=False, lpips=False, **overrides))
        summary = json.loads((report / "audit-summary.json").read_text())
        summary.pop("created_at")
        summary.pop("parquet_path")
        return summary, pq.read_table(report / "audit.parquet").to_pylist()

    cold = audit(tmp_path / "audit")
    cold_calls = len(calls)
    assert len(list((tmp_path / "audit" / "cache" / "originals").glob("*.json"))) == 3
    warm = audit(tmp_path / "audit")
    assert warm == cold and len(calls) == cold_calls - 3  # the three originals were not detected again
    uncached = audit(tmp_path / "uncached", originals_cache=False)
    assert uncached == cold and not (tmp_path / "uncached" / "cache").exists()


# ---- --sample: a seeded subset audited face by face, every file checked, the gate on the upper bound ----------


def test_wilson_interval_matches_the_hand_computed_bounds():
    from anonymize.audit.sampling import wilson_interval

    # 3 of 23: p = 0.1304, z^2/n = 0.16702; centre (0.1304 + 0.08351) / 1.16702 = 0.18330,
    # half 1.96 * sqrt(0.1304 * 0.8696 / 23 + 3.8415 / 2116) / 1.16702 = 0.13795
    low, high = wilson_interval(3, 23)
    assert low == pytest.approx(0.04535, abs=2e-4) and high == pytest.approx(0.32125, abs=2e-4)
    # 0 of n: the upper end is z^2 / (n + z^2): 75 faces bound the rate by 4.87%, 20 only by 16.1%
    assert wilson_interval(0, 75) == pytest.approx((0.0, 3.8415 / 78.8415), abs=1e-4)
    assert wilson_interval(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_the_sample_is_drawn_by_seed_from_sorted_paths_whatever_their_order():
    from anonymize.audit.sampling import sample_indices

    paths = [f"img{index:03d}.jpg" for index in range(50)]
    chosen = sample_indices(paths, 10, seed=3)
    assert len(chosen) == 10 and chosen == sample_indices(paths, 10, seed=3) != sample_indices(paths, 10, seed=4)
    reversed_paths = paths[::-1]
    assert {reversed_paths[i] for i in sample_indices(reversed_paths, 10, seed=3)} == {paths[i] for i in chosen}
    assert sample_indices(paths, None, 0) == sample_indices(paths, 80, 0) == set(range(50))


def test_a_sampled_audit_checks_every_file_but_the_faces_of_the_sample_and_gates_on_the_upper_bound(tmp_path):
    require_portraits()
    originals = tmp_path / "originals"
    originals.mkdir()
    names = ("biden_1.jpg", "obama_1.jpg", "rose_leslie_1.jpg", "kit_harington_2.jpg", "biden_2.jpg", "obama_2.jpg")
    for name in names:
        shutil.copy(PORTRAITS / name, originals / name)
    weights = tmp_path / "weights"
    weights.mkdir()
    out = tmp_path / "pixelated"
    run(run_config(originals, out, method="pixelate", detector="dlib-hog", device="cpu", weights_dir=weights))
    (out / "obama_2.jpg").write_bytes((originals / "obama_2.jpg").read_bytes())  # a leak the file check must see

    result = run_audit(AuditConfig(originals, out, detector="dlib-hog", weights_dir=weights, device="cpu", write_files=False,
                                   fid=False, farl_proxy=False, lpips=False, attribute_source=None, sample=2, sample_seed=1))
    sampled = {row["output_path"] for row in result.rows if row["sampled"]}
    assert len(sampled) == 2 and {row["output_path"] for row in result.rows} == set(names)
    assert all(row["face_index"] is None for row in result.rows if not row["sampled"])
    sample = result.summary.sample
    assert (sample.images, sample.released, sample.seed) == (2, 6, 1)
    assert result.summary.identical_copies == 1  # checked on every file, sampled or not
    judge = sample.gated_judge
    faces = result.summary.judges.per_judge[judge].faces
    assert faces >= 2 and sample.gated_upper == pytest.approx(wilson_interval_upper(result.summary.judges.per_judge[judge].matched, faces))
    # a handful of faces cannot prove a rate under 5%: the gate says so and names the bound
    assert not result.passed and any("95% upper bound on a sample of 2 of 6 images" in line for line in result.summary.crossed)
    again = run_audit(AuditConfig(originals, out, detector="dlib-hog", weights_dir=weights, device="cpu", write_files=False,
                                  fid=False, farl_proxy=False, lpips=False, attribute_source=None, sample=2, sample_seed=1))
    assert {row["output_path"] for row in again.rows if row["sampled"]} == sampled
    full = run_audit(AuditConfig(originals, out, detector="dlib-hog", weights_dir=weights, device="cpu", write_files=False,
                                 fid=False, farl_proxy=False, lpips=False, attribute_source=None))
    assert full.summary.sample is None and all(row["sampled"] for row in full.rows)


def wilson_interval_upper(successes: int, trials: int) -> float:
    from anonymize.audit.sampling import wilson_interval

    return wilson_interval(successes, trials)[1]


def test_the_output_detectors_borrow_the_ensemble_members_networks(tiny_weights):
    store = tiny_weights.store()
    members = [create_detector("dlib-hog", store, DetectorSettings(recall_first=True))]
    detectors, _ = open_output_detectors(store, "cpu", members)
    borrowed = detectors["dlib-hog"]
    assert borrowed is not members[0] and borrowed._hog is members[0]._hog
    assert borrowed.threshold == 0.0 and members[0].threshold == -0.3


def test_an_audit_on_worker_threads_gives_the_rows_and_figures_of_a_serial_one(tmp_path):
    """Pairs are measured on threads and folded in walk order: nothing but the wall time may change."""
    require_portraits()
    originals = tmp_path / "originals"
    originals.mkdir()
    for name in ("biden_2.jpg", "multi_two_people.jpg", "obama_1.jpg", "partial_obama_1.jpg"):
        shutil.copy(PORTRAITS / name, originals / name)
    weights = tmp_path / "weights"
    weights.mkdir()
    out = tmp_path / "blurred"
    run(run_config(originals, out, method="blur", detector="dlib-hog", device="cpu", weights_dir=weights))

    def audit(workers: int) -> tuple[dict, list]:
        result = run_audit(AuditConfig(originals, out, detector="auto", weights_dir=weights, device="cpu", write_files=False,
                                       fid=False, farl_proxy=False, lpips=False, attribute_source=None, workers=workers))
        summary = result.summary.to_json()
        summary.pop("created_at")
        return summary, result.rows

    serial, threaded = audit(1), audit(2)
    assert threaded[0] == serial[0]
    assert [{key: value for key, value in row.items()} for row in threaded[1]] == serial[1]
