"""The run: walk -> decode -> detect/align -> method -> paste back -> write -> manifest.

This module sets a run up and owns its guarantees; the work itself is the stage functions of
:mod:`anonymize.stages` (prepare, anonymize, finish, record), composed by an executor: the local
one (:mod:`anonymize.executors.local`, serial or a pool of workers) or Ray
(:mod:`anonymize.executors.ray_cluster`). Images are gathered until a batch of faces is full, the
method anonymizes the whole batch at once (one GPU batch), then every image of the batch is
pasted, written atomically and its manifest rows flushed as one Parquet part, so a crash loses
at most the batches in flight. A failing image becomes an error row and the run goes on; every
file the walk meets and does not process gets a row too (skipped or error, with the cause).

The output folder is locked for the whole run and marked as anonymize's before the first output
is written (:mod:`anonymize.io.outdir`); nothing is written through a symbolic link in it. Rows
are merged keyed by (source path, face index), newest run wins, so a batch recorded twice (a
retried Ray task) is kept once.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Literal

from anonymize import __version__
from anonymize.adversarial import AdversarialSettings
from anonymize.adversarial.settings import ADVERSARIAL_METHOD
from anonymize.executors.base import StageTimes
from anonymize.executors.local import available_cores, run_local, run_survey
from anonymize.faces.choose import DetectorChoice, choose_detector
from anonymize.faces.detect import Detector
from anonymize.faces.paste import RegionKind
from anonymize.io.manifest import (
    MANIFEST_NAME,
    STATUS_ERROR,
    STATUS_NO_FACE,
    STATUS_SKIPPED,
    WORK_DIR_NAME,
    ManifestWriter,
    new_run_id,
    read_manifest,
    readable,
    recover_previous_rows,
)
from anonymize.io.outdir import OutputFolderBusy, OutputLock, StoreLock, acquire_lock, probe_lock, read_marker, remove_stale_temporaries, write_marker
from anonymize.io.store import Location, StorePath, bucket_missing, is_within, uses_store
from anonymize.io.walk import ImageFile, WalkEntry, walk_tree
from anonymize.io.write import atomic_write_bytes, output_path_for
from anonymize.errors import RunError  # noqa: F401 - part of this module's interface
from anonymize.methods import Method
from anonymize.models.device import resolve_device
from anonymize.methods.base import IdentityFrom
from anonymize.stages import (PLANS_DIR_NAME, MAX_IMAGES_PER_BATCH, Finished, RunFacts, Stages, adversarial_plan_dir, build_detector,
                              build_method)
from anonymize.weights import WeightsError, WeightsStore

OnNoFace = Literal["copy", "skip", "fail"]
OnError = Literal["skip", "fail"]
Executor = Literal["local", "ray"]
__all__ = ["MAX_IMAGES_PER_BATCH", "Pipeline", "Progress", "RunConfig", "RunError", "RunSummary", "StopRun",
           "check_paths", "default_output_dir", "resolve_device", "run"]


class StopRun(Exception):
    """--on-error fail met an error: the run stops after flushing what is done."""


@dataclass(frozen=True)
class RunConfig:
    input_dir: Location  # a local Path, or a StorePath for a URI (s3://, gs://, file://; anonymize.io.store)
    output_dir: Location
    method: str = "falco"
    method_options: dict[str, str] = field(default_factory=dict)
    margin: float = 0.0
    detector: str = "auto"  # resolved by anonymize.faces.choose; the manifest records the one used
    weights_dir: Path | None = None
    aligned: bool = False
    aligned_framing: Literal["auto", "ffhq"] = "auto"  # ffhq: every input is an FFHQ-framed square, used whole
    min_face: int = 0
    det_threshold: float | None = None
    recall_first: bool = False  # lower detection thresholds (detect.RECALL_FIRST_THRESHOLDS)
    on_no_face: OnNoFace = "copy"
    on_error: OnError = "skip"
    resume: bool = True
    overwrite: bool = False
    batch_size: int | None = None
    device: str = "auto"
    seed: int = 0
    limit: int | None = None
    dry_run: bool = False
    jpeg_quality: int = 95
    region: RegionKind | None = None  # None: the method's default_region
    region_scale: float = 1.0
    feather: float = 0.04
    identity_metric: bool = False
    manifest_path: Location | None = None
    max_pixels: int = 178_956_970
    copy_other: bool = False  # copy files that are not images (labels, CSV) unchanged into the output
    deterministic: bool = False  # bit-stable CUDA runs: deterministic algorithms, no TF32, fixed cuDNN choices
    workers: int | None = None  # local executor: prepare/finish threads (None: the cores available; 0 or 1: serial)
    executor: Executor = "local"
    ray_address: str | None = None  # --executor ray: the cluster to join (None: a local Ray)
    identity_from: IdentityFrom = "cluster"  # dataset-level methods: who is the same person (folder: one per folder)
    adversarial: AdversarialSettings | None = None  # stage IV on the final image (-p adversarial=); --method adversarial: PGD


@dataclass
class RunSummary:
    run_id: str
    images: int = 0  # images processed by this run
    faces: int = 0
    no_face_images: int = 0
    errors: int = 0
    skipped: int = 0  # files met and not processed (not images, hidden, links already walked)
    resumed: int = 0  # images skipped because an earlier run finished them
    seconds: float = 0.0
    output_dir: str = ""
    manifest_path: str | None = None
    dry_run: bool = False
    detector: str | None = None  # the detector that ran (--detector auto resolved)
    error_messages: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per image in each stage, method busy share
    privacy_note: str | None = None  # what the output does not protect against, when a person or a machine still recognises it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress:
    """What the pipeline reports as it goes; the CLI draws it, tests ignore it."""

    def start(self, total: int, phase: str = "anonymizing") -> None: ...

    def advance(self, faces: int) -> None: ...

    def message(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def note(self, text: str) -> None:
        """One informational line (which detector runs and why)."""

    def download(self, label: str, done: int, total: int | None) -> None:
        """Progress of a weights download started by the run (``--detector auto``)."""


def check_paths(input_dir: Location, output_dir: Location, manifest_path: Location | None = None) -> None:
    """Refuse any layout in which writing the output (or the manifest) could touch the input."""
    if uses_store(input_dir, output_dir, manifest_path):
        try:
            _check_store_paths(input_dir, output_dir, manifest_path)
        except OSError as exc:  # the store itself failed (unreachable, no credentials): one line
            raise RunError(str(exc)) from None
        return
    if not input_dir.exists():
        raise RunError(f"{input_dir}: input folder does not exist")
    if not input_dir.is_dir():
        raise RunError(f"{input_dir}: input is not a folder")
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source:
        raise RunError(f"{output_dir}: the output folder must differ from the input folder")
    if source in target.parents:
        raise RunError(f"{output_dir}: the output folder is inside the input folder {input_dir}; choose a folder outside it")
    if target in source.parents:
        raise RunError(f"{output_dir}: the output folder contains the input folder {input_dir}; choose a folder beside it")
    if manifest_path is not None:
        manifest = manifest_path.resolve()
        if manifest == source or source in manifest.parents:
            raise RunError(f"{manifest_path}: the manifest path is inside the input folder {input_dir}; choose a path outside it")
        if manifest.is_dir():
            raise RunError(f"{manifest_path}: the manifest path is a folder; give a file path such as {manifest_path / MANIFEST_NAME}")


def _check_store_paths(input_dir: Location, output_dir: Location, manifest_path: Location | None) -> None:
    """:func:`check_paths` when a location is a URI: the same refusals, comparing normalised store,
    endpoint, bucket and path components (a ``file://`` URI and a local path of one folder are equal)."""
    for where, role in ((input_dir, "input"), (output_dir, "output")):
        bucket = bucket_missing(where) if isinstance(where, StorePath) else None
        if bucket is not None:
            raise RunError(f"{where}: the {role} bucket {bucket!r} does not exist (or these credentials cannot see it)")
    if not input_dir.exists():
        raise RunError(f"{input_dir}: input folder does not exist")
    if not input_dir.is_dir():
        raise RunError(f"{input_dir}: input is not a folder")
    if is_within(output_dir, input_dir):
        inside = is_within(input_dir, output_dir)
        raise RunError(f"{output_dir}: the output folder must differ from the input folder" if inside else
                       f"{output_dir}: the output folder is inside the input folder {input_dir}; choose a folder outside it")
    if is_within(input_dir, output_dir):
        raise RunError(f"{output_dir}: the output folder contains the input folder {input_dir}; choose a folder beside it")
    if manifest_path is not None:
        if is_within(manifest_path, input_dir):
            raise RunError(f"{manifest_path}: the manifest path is inside the input folder {input_dir}; choose a path outside it")
        if manifest_path.is_dir():
            raise RunError(f"{manifest_path}: the manifest path is a folder; give a file path such as {manifest_path / MANIFEST_NAME}")


def default_output_dir(input_dir: Location) -> Location:
    if isinstance(input_dir, StorePath):
        try:
            return input_dir.with_root_suffix("-anonymized")
        except ValueError as exc:
            raise RunError(str(exc)) from None
    resolved = input_dir.resolve()
    return resolved.parent / f"{resolved.name}-anonymized"


class Pipeline:
    """One run over one input tree; build it, then call :meth:`run`."""

    def __init__(self, config: RunConfig, progress: Progress | None = None) -> None:
        if config.method == ADVERSARIAL_METHOD and config.adversarial is None:
            config = replace(config, adversarial=AdversarialSettings())  # the method is the identity crop + PGD
        self.config = config
        self.progress = progress or Progress()
        self.run_id = new_run_id()
        self.weights = WeightsStore(config.weights_dir)
        self.device = resolve_device(config.device)
        self.manifest_path = config.manifest_path or config.output_dir / MANIFEST_NAME
        # Built at the start of run(), once the input is known to hold images.
        self.method: Method | None = None
        self.method_params = "{}"  # the method's describe() as JSON, for every manifest row
        self.detector_choice: DetectorChoice | None = None
        self.lock: OutputLock | StoreLock | None = None  # held from before the first write to the end of the run
        self.expected_faces: int | None = None  # the method's size hint (the number of images)

    # -- set-up -----------------------------------------------------------------------------------------
    def _walk(self) -> tuple[list[ImageFile], list[WalkEntry]]:
        """The images to process and every other entry the walk met (each gets its own row)."""
        entries = list(walk_tree(self.config.input_dir, exclude=self.config.output_dir))
        images = [ImageFile(entry.path, entry.relpath) for entry in entries if entry.kind == "image"]
        if not images:
            raise RunError(f"{self.config.input_dir}: no image found (looked for jpg, jpeg, png, webp, bmp, tif, tiff)")
        others = [entry for entry in entries if entry.kind != "image"]
        return (images[: self.config.limit] if self.config.limit else images), others

    def _check_output_dir(self) -> None:
        out = self.config.output_dir
        if self.config.dry_run or not out.exists():
            return
        if not out.is_dir():
            raise RunError(f"{out}: output path exists and is not a folder")
        ours = self.manifest_path.exists() or (out / WORK_DIR_NAME).exists()
        if not ours and any(out.iterdir()) and not self.config.overwrite:
            raise RunError(f"{out}: output folder is not empty and holds no anonymize manifest; pass --overwrite to write into it")
        try:
            probe_lock(out)
        except OutputFolderBusy as exc:
            raise RunError(str(exc)) from None

    def settings(self) -> dict[str, Any]:
        """What decides the output pixels: a resumed run must have the same, or --overwrite."""
        config = self.config
        method = self.method
        # The options the user chose (not what the method derives from the dataset, e.g. FALCO's bank size).
        options = {**asdict(method.params), "margin": config.margin, "seed": config.seed} if method is not None else {}
        return {
            "method": config.method,
            "method_options": json.loads(json.dumps(options, sort_keys=True, default=str)),
            "aligned": config.aligned,
            # the detector that runs (--detector auto resolved), so a resume never mixes two detectors' outputs
            "detector": None if config.aligned else (self.detector_choice.name if self.detector_choice else config.detector),
            "det_threshold": config.det_threshold,
            "recall_first": config.recall_first,
            "min_face": config.min_face,
            "region": config.region,
            "region_scale": config.region_scale,
            "feather": config.feather,
            "jpeg_quality": config.jpeg_quality,
            "on_no_face": config.on_no_face,
            "identity_from": config.identity_from,
            "adversarial": asdict(config.adversarial) if config.adversarial else None,
        }

    def _earlier_settings(self) -> dict[str, Any] | None:
        """The settings of the runs already in the output folder (None: no earlier run)."""
        marker = read_marker(self.config.output_dir)
        if marker is not None and isinstance(marker.get("settings"), dict):
            return marker["settings"]
        if not self.manifest_path.is_file():
            return None
        try:
            metadata = read_manifest(self.manifest_path)[1]
            if "settings" in metadata:
                return json.loads(metadata["settings"])
            # A manifest from before settings were recorded: compare what it holds.
            return {"method": json.loads(metadata["arguments"])["method"]}
        except Exception:  # noqa: BLE001 - unreadable: nothing to compare, the resume check will redo images
            return None

    def _check_same_settings(self) -> None:
        if self.config.overwrite or self.config.dry_run or not self.config.output_dir.is_dir():
            return
        earlier = self._earlier_settings()
        if earlier is None:
            return
        ours = self.settings()
        changed = [f"{key} {earlier[key]} -> {ours.get(key)}" for key in sorted(earlier) if earlier[key] != ours.get(key)]
        if changed:
            raise RunError(
                f"{self.config.output_dir}: the earlier run into this folder used other settings ({'; '.join(changed)}); "
                f"pass --overwrite to redo every image with the new ones, or choose another --out"
            )

    def _take_output_folder(self) -> None:
        """Lock the output folder, forget earlier runs if asked, mark the folder: all before the first output."""
        out = self.config.output_dir
        stale: list[str] = []

        def took_over(message: str) -> None:
            stale.append(message)
            self.progress.warning(message)

        try:
            self.lock = acquire_lock(out, on_stale=took_over)
            if stale:  # the previous run was killed: its temporary files are garbage
                remove_stale_temporaries(out)
        except OutputFolderBusy as exc:
            raise RunError(str(exc)) from None
        except OSError as exc:
            raise RunError(f"{out}: cannot write into the output folder ({exc.strerror or exc})") from None
        try:
            if self.config.overwrite:
                self._forget_previous_runs()
            write_marker(out, self.settings())  # also proves the folder writable before any image is done
        except OSError as exc:
            self._release()
            raise RunError(f"{out}: cannot write into the output folder ({exc.strerror or exc})") from None

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _build_method(self, expected_faces: int) -> Method:
        self.expected_faces = expected_faces
        return build_method(self.config, self.device, expected_faces)

    def _build_detector(self) -> Detector | None:
        if self.config.aligned:  # the landmark detector of --aligned input, if any (see stages.build_detector)
            return build_detector(self.facts())
        choice = self.detector_choice = choose_detector(self.config.detector, self.weights, self.progress.download)
        self.progress.note(f"detector {choice.reason}")
        return build_detector(self.facts())  # with the chosen detector's name, as every worker builds it

    def _metadata(self, method: Method | None, detector: Detector | None) -> dict[str, str]:
        weights = {**(detector.weights_used() if detector else {}), **(method.weights_used() if method else {})}
        arguments = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(self.config).items()}
        return {
            "anonymize_version": __version__,
            "run_id": self.run_id,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "arguments": json.dumps(arguments, sort_keys=True, default=str),
            "seed": str(self.config.seed),
            "device": self.device,
            "weights_sha256": json.dumps(weights, sort_keys=True),
            "method_params": self.method_params,
            "settings": json.dumps(self.settings(), sort_keys=True),
            "detector": json.dumps({**self.detector_choice.as_dict(), "detector": detector.name} if detector and self.detector_choice else {"used": None}),
            "privacy_goal": method.privacy_goal if method else "machine",
            "loss_recognisers": json.dumps(self.loss_recognisers(method)),
        }

    def _check_adversarial_weights(self) -> None:
        """The adversarial step's recognisers must be here before anything is written (one line if not)."""
        settings = self.config.adversarial
        if settings is None:
            return
        from anonymize.weights.human import graph_model_files

        for name in settings.ensemble:
            if name == "dlib":
                continue
            try:
                graph_model_files(self.weights, name)
            except WeightsError as exc:
                kept = ",".join(member for member in settings.ensemble if member != name) or "dlib"
                raise RunError(f"-p adv_ensemble={','.join(settings.ensemble)}: {exc}; or attack without it: -p adv_ensemble={kept}") from None

    def privacy_note(self, method: Method) -> str | None:
        """One line for the run summary when the output is not anonymized for everyone (its privacy goal)."""
        if method.privacy_goal == "human":
            return (f"privacy goal: people. {method.name} keeps every face matchable by face recognition "
                    "(by design): not anonymized against machines")
        if self.config.adversarial is not None and method.name == ADVERSARIAL_METHOD:
            return ("privacy goal: machines only. The adversarial perturbation leaves every face recognisable to people: "
                    "not anonymized for viewers")
        return None

    def loss_recognisers(self, method: object) -> list[str]:
        """Recognisers inside the run's loss: the method's, plus the adversarial step's ensemble."""
        names = list(getattr(method, "loss_recognisers", ()) or ())
        if self.config.adversarial is not None:
            names += [name for name in self.config.adversarial.ensemble if name not in names]
        return names

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        config = self.config
        check_paths(config.input_dir, config.output_dir, config.manifest_path)
        if config.executor == "ray":
            from anonymize.executors.ray_cluster import require_ray

            require_ray()
        started = time.perf_counter()
        files, others = self._walk()
        self._check_output_dir()
        if config.deterministic:
            from anonymize.models.determinism import use_deterministic_algorithms

            use_deterministic_algorithms()
        method = self.method = self._build_method(expected_faces=len(files))
        self._check_adversarial_weights()
        if isinstance(config.output_dir, StorePath) and getattr(method.params, "save_latents", False):
            raise RunError(f"{config.output_dir}: --save-latents writes local files; give a local --out to save latents")
        self.method_params = json.dumps(method.describe(), sort_keys=True, default=str)
        detector = self._build_detector()  # before the settings check: it compares the detector that runs
        self._check_same_settings()
        if not config.dry_run:
            self._take_output_folder()
        try:
            return self._run_locked(files, others, method, detector, started)
        finally:
            self._release()

    def _run_locked(self, files: list[ImageFile], others: list[WalkEntry], method: Method, detector: Detector | None,
                    started: float) -> RunSummary:
        config = self.config
        try:
            previous = {} if config.dry_run else _rows_by_source(recover_previous_rows(config.output_dir, self.manifest_path))
        except OSError as exc:
            raise RunError(f"{self.manifest_path}: cannot merge the earlier manifest ({exc.strerror or exc})") from None
        summary = RunSummary(self.run_id, output_dir=str(config.output_dir), dry_run=config.dry_run,
                             detector=detector.name if detector is not None else None, privacy_note=self.privacy_note(method))
        writer = None if config.dry_run else ManifestWriter(config.output_dir, self.run_id, self._metadata(method, detector), self.manifest_path)
        stages = Stages(self.facts(), method, detector)
        times = StageTimes()
        faces_per_batch = config.batch_size or method.default_batch_size()
        if method.dataset_level:
            self._survey(stages, files, previous, faces_per_batch)
        if config.adversarial is not None and config.adversarial.kind == "uap" and not config.dry_run:
            self._plan_universal(stages, files, previous)
        self.progress.start(len(files))
        try:
            self._append(writer, [self._other_row(stages, entry, summary) for entry in others])
            if config.executor == "ray":
                from anonymize.executors.ray_cluster import run_on_ray

                # Each shard writes its own manifest part; the driver only counts.
                run_on_ray(stages, files, previous, faces_per_batch, partial(self._record, None, summary), times, writer,
                           config.ray_address)
            else:
                run_local(stages, files, previous, faces_per_batch, self.workers(), partial(self._record, writer, summary), times)
        finally:
            if writer is not None:
                try:
                    summary.manifest_path = str(writer.finalise())
                except OSError as exc:
                    raise RunError(
                        f"{self.manifest_path}: cannot write the manifest ({exc.strerror or exc}); the images written so far "
                        f"are kept and a new run resumes from them"
                    ) from None
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.stages = times.as_dict(summary.seconds)
        return summary

    def _survey(self, stages: Stages, files: list[ImageFile], previous: dict[str, list[dict[str, Any]]],
                faces_per_batch: int) -> None:
        """Pass 1 of a dataset-level method: it sees every face not written yet, then plans once.

        Always on this machine's pool (with --executor ray too): the plan is stored in the output
        folder, where every Ray actor's copy of the method reads it before its first batch.
        """
        method = self.method
        assert method is not None
        self.progress.note(f"{method.name} is dataset-level: pass 1 of 2 surveys every face before any is written")
        self.progress.start(len(files), phase="surveying")
        surveyed = run_survey(stages, files, previous, faces_per_batch, self.workers(), lambda faces: self.progress.advance(faces))
        try:
            figures = method.plan()
        except OSError as exc:
            raise RunError(f"{self.config.output_dir}: cannot store the {method.name} plan ({exc.strerror or exc})") from None
        shown = ", ".join(f"{key} {value}" for key, value in figures.items())
        self.progress.note(f"{method.name} plan: {surveyed} faces surveyed{', ' + shown if shown else ''}")

    def _plan_universal(self, stages: Stages, files: list[ImageFile], previous: dict[str, list[dict[str, Any]]]) -> None:
        """Pass 1 of ``-p adversarial=uap``: one perturbation over the original faces of the run (kept when
        an earlier run into this folder stored one with the same settings: what was written stays valid)."""
        from anonymize.adversarial.attack import EnsembleAttack
        from anonymize.adversarial.members import Geometry, open_members
        from anonymize.adversarial.plan import plan_universal, read_universal

        settings = self.config.adversarial
        assert settings is not None
        plan_dir = adversarial_plan_dir(self.config)
        if read_universal(plan_dir, settings) is not None:
            self.progress.note("adversarial=uap: reusing the universal perturbation stored by the earlier run")
            return
        self.progress.note("adversarial=uap: pass 1 computes one universal perturbation over the run's faces")
        self.progress.start(len(files), phase="universal perturbation")

        def faces() -> Any:
            for file in files:
                item = stages.prepare(file, previous.get(str(file.relpath)))
                self.progress.advance(len(item.faces))
                if item.needs_method:
                    yield item.image.rgb, [face.box for face in item.faces]  # type: ignore[union-attr]

        attack = EnsembleAttack(open_members(settings.ensemble, self.weights, self.device), Geometry(self.weights), settings,
                                self.config.jpeg_quality)
        try:
            universal = plan_universal(attack, faces(), settings, plan_dir, self.config.output_dir, self.config.seed,
                                       aligned=self.config.aligned)
        except OSError as exc:
            raise RunError(f"{self.config.output_dir}: cannot store the universal perturbation ({exc.strerror or exc})") from None
        self.progress.note(f"adversarial=uap: {universal.fooling_rate:.0%} of the surveyed faces fooled for every recogniser of the ensemble "
                           f"after {universal.passes} passes")

    def facts(self) -> RunFacts:
        """What the stages of this run need besides the models (shipped to every worker)."""
        method = self.method
        # --detector auto resolved once, here: every worker builds the detector this run chose.
        config = replace(self.config, detector=self.detector_choice.name) if self.detector_choice else self.config
        return RunFacts(config, self.run_id, self.method_params, self.device,
                        method.crop_size if method else 256, bool(method and method.replaces_aligned_image),
                        self.expected_faces, method.default_region if method else "ellipse")

    def workers(self) -> int:
        """--workers: the local pool's threads (None: the cores available; 0 or 1: serial)."""
        return available_cores() if self.config.workers is None else self.config.workers

    def _record(self, writer: ManifestWriter | None, summary: RunSummary, finished: list[Finished]) -> bool:
        """The record stage: one batch's rows as one manifest part, the counts, the progress; True: stop."""
        self._append(writer, [row for item in finished for row in item.rows])
        stop = False
        for item in finished:
            if item.status == "resumed":
                summary.resumed += 1
            elif item.status == STATUS_ERROR:
                _count_error(summary, item.error or "")
                self.progress.message(item.error or "")
                stop = stop or self.config.on_error == "fail"
            else:
                summary.images += 1
                summary.faces += item.faces
                summary.no_face_images += item.status == STATUS_NO_FACE
            self.progress.advance(item.faces)
        return stop

    def _append(self, writer: ManifestWriter | None, rows: list[dict[str, Any]]) -> None:
        """Flush rows as a manifest part; a part that cannot be written stops the run (one line)."""
        if writer is None or not rows:
            return
        try:
            writer.append(rows)
        except OSError as exc:
            raise RunError(
                f"{self.config.output_dir}: cannot write the manifest part ({exc.strerror or exc}); the run stopped, "
                f"a new run resumes from what was written"
            ) from None

    def _forget_previous_runs(self) -> None:
        """--overwrite: drop the manifest and the parts (never following links); outputs are rewritten in place."""
        if self.manifest_path.is_symlink() or self.manifest_path.exists():
            self.manifest_path.unlink()
        for name in ("parts", PLANS_DIR_NAME):  # a dataset-level method plans again from scratch
            folder = self.config.output_dir / WORK_DIR_NAME / name
            if folder.is_symlink():
                folder.unlink()
            elif isinstance(folder, StorePath):
                folder.remove_tree()
            elif folder.exists():
                shutil.rmtree(folder)

    def _other_row(self, stages: Stages, entry: WalkEntry, summary: RunSummary) -> dict[str, Any]:
        """The row of an entry that is not an image: skipped (with why), copied (--copy-other), or an error."""
        shown = readable(str(entry.relpath))
        file = ImageFile(entry.path, entry.relpath)
        message = f"{shown}: {entry.reason}" if entry.kind == "error" else None
        output, note = None, entry.reason
        if message is None and entry.kind == "other" and self.config.copy_other and not self.config.dry_run:
            try:
                atomic_write_bytes(output_path_for(self.config.output_dir, entry.relpath), entry.path.read_bytes(),
                                   root=self.config.output_dir)
                output, note = str(entry.relpath), f"{entry.reason}; copied unchanged (--copy-other)"
            except (OSError, ValueError) as exc:
                message = f"{shown}: copying failed ({getattr(exc, 'strerror', None) or exc})"
        if message is not None:
            _count_error(summary, message)
            self.progress.warning(message)
            return stages.row(file, None, None, STATUS_ERROR, None, 0.0, error=message)
        summary.skipped += 1
        return stages.row(file, None, None, STATUS_SKIPPED, output, 0.0, method=None, method_params=None, note=note)


def _count_error(summary: RunSummary, message: str) -> None:
    """One more error in the summary; the first 50 messages are kept for it."""
    summary.errors += 1
    if len(summary.error_messages) < 50:
        summary.error_messages.append(message)


def _rows_by_source(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] != STATUS_SKIPPED:
            grouped.setdefault(row["source_path"], []).append(row)
    return grouped


def run(config: RunConfig, progress: Progress | None = None) -> RunSummary:
    """Anonymize ``config.input_dir`` into ``config.output_dir``; see :class:`RunConfig`."""
    return Pipeline(config, progress).run()

