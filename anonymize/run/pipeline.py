"""The run: walk -> decode -> detect/align -> method -> paste back -> finishing steps -> write -> manifest.

This module orchestrates and owns the run's guarantees; the work is done by the stages
(:mod:`anonymize.run.prepare`, :mod:`anonymize.run.method_calls`, :mod:`anonymize.run.finish`),
composed by an executor: the local one (:mod:`anonymize.run.local`, serial or a pool of threads)
or Ray (:mod:`anonymize.run.ray_cluster`). Images are gathered until a batch of faces is full
(:mod:`anonymize.run.batching`), the method anonymizes the whole batch at once (one GPU batch),
then every image of the batch is pasted, written atomically and its manifest rows flushed as one
Parquet part, so a crash loses at most the batches in flight. A failing image becomes an error row
and the run goes on; every file the walk meets and does not process gets a row too.

The output folder is locked for the whole run and marked as anonymize's before the first output
is written (:mod:`anonymize.run.folder`). Rows are merged keyed by (source path, face index),
newest run wins, so a batch recorded twice (a retried Ray task) is kept once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from anonymize import IMPORTED_AT, __version__
from anonymize.adversarial.settings import AdversarialSettings
from anonymize.errors import RunError
from anonymize.faces.choose import DetectorChoice, choose_detector
from anonymize.faces.detect import Detector
from anonymize.io.manifest import (MANIFEST_NAME, STATUS_ERROR, STATUS_NO_FACE, STATUS_SKIPPED, INPUTS_KEY, ManifestWriter,
                                   UnreadablePart, input_key, new_run_id, readable)
from anonymize.io.decode import too_many_bytes
from anonymize.io.store import StoreError, StorePath
from anonymize.io.walk import ImageFile, WalkEntry, walk_tree
from anonymize.io.write import atomic_write_bytes, output_path_for
from anonymize.methods import Method, method_class
from anonymize.models.device import resolve_device
from anonymize.run.assemble import assemble_stages, finishing_steps, method_build, run_schema, with_chosen_detector
from anonymize.run.batching import BatchRule
from anonymize.run.config import RunConfig, recorded_arguments
from anonymize.run.finish import Finished
from anonymize.run.folder import OutputFolder, check_paths
from anonymize.run.local import available_cores, method_needs_every_core, run_local
from anonymize.run.prepare import PreviousRows, build_detector
from anonymize.run.progress import Progress, RunSummary
from anonymize.run.stages import Stages, StageTimes
from anonymize.run.survey import MethodParticipant, Participant, StepParticipant, first_pass
from anonymize.steps import FinishingStep
from anonymize.weights import WeightsError, WeightsStore

__all__ = ["Pipeline", "run"]


def with_method_steps(config: RunConfig) -> RunConfig:
    """A method made of a finishing step (``--method adversarial``) gets that step's defaults when not given."""
    if "adversarial" in method_class(config.method.name).finishing_steps and config.finishing.adversarial is None:
        return replace(config, finishing=replace(config.finishing, adversarial=AdversarialSettings()))
    return config


class Pipeline:
    """One run over one input tree; build it, then call :meth:`run`."""

    def __init__(self, config: RunConfig, progress: Progress | None = None) -> None:
        self.config = with_method_steps(config)
        self.requested = self.config  # before --detector auto is resolved: the manifest's "arguments"
        self.progress = progress or Progress()
        self.run_id = new_run_id()
        self.weights = WeightsStore(self.config.execution.weights_dir)
        self.device = resolve_device(self.config.execution.device)
        self.folder = OutputFolder(self.config.output.output_dir, self.config.output.manifest_path, self.progress.warning)
        self.detector_choice: DetectorChoice | None = None

    # -- set-up -----------------------------------------------------------------------------------------
    def _walk(self) -> tuple[list[ImageFile], list[WalkEntry]]:
        """The images to process and every other entry the walk met (each gets its own row)."""
        inputs = self.config.inputs
        walked = list(walk_tree(inputs.input_dir, exclude=self.config.output.output_dir))
        entries = [too_large_error(entry, inputs.max_bytes) for entry in walked]
        images = [ImageFile(entry.path, entry.relpath) for entry in entries if entry.kind == "image"]
        if not images and not any(entry.kind == "image" for entry in walked):  # images refused for their size: error rows
            raise RunError(f"{inputs.input_dir}: no image found (looked for jpg, jpeg, png, webp, bmp, tif, tiff)")
        others = [entry for entry in entries if entry.kind != "image"]
        return (images[: inputs.limit] if inputs.limit else images), others

    def settings(self, method: Method | None) -> dict[str, Any]:
        """What decides the output pixels: a resumed run must have the same, or --overwrite."""
        config = self.config
        # The options the user chose (not what the method derives from the dataset, e.g. FALCO's bank size).
        options = {**asdict(method.params), "seed": config.method.seed} if method is not None else {}
        detection, region = config.detection, config.region
        return {
            "method": config.method.name,
            "method_options": json.loads(json.dumps(options, sort_keys=True, default=str)),
            "aligned": detection.aligned,
            "aligned_lenient": detection.aligned_lenient,
            # the detector that runs (--detector auto resolved), so a resume never mixes two detectors' outputs
            "detector": None if detection.aligned else detection.detector,
            "det_threshold": detection.threshold,
            "recall_first": detection.recall_first,
            "augment": detection.searches_augmented,
            "min_face": detection.min_face,
            "region": region.kind,
            "region_scale": region.scale,
            "feather": region.feather,
            "jpeg_quality": config.output.jpeg_quality,
            "strip_icc": config.output.strip_icc,  # a resume never mixes outputs with and without a profile
            "on_no_face": config.output.on_no_face,
            "identity_from": config.method.identity_from,
            "adversarial": asdict(config.finishing.adversarial) if config.finishing.adversarial else None,
        }

    def _build_detector(self) -> Detector | None:
        detection = self.config.detection
        if not detection.aligned:
            self.detector_choice = choose_detector(detection.detector, self.weights, self.progress.download)
            self.progress.note(f"detector {self.detector_choice.reason}")
            self.config = with_chosen_detector(self.config, self.detector_choice.name, self.detector_choice.augment)
        detector = build_detector(self.config.detection, self.weights, self.device)
        if detection.aligned and detector is None:
            self.progress.warning("--aligned: no detector could be built, so an image with more than one face cannot be "
                                  "caught; only the centre face of each image is anonymized")
        return detector

    def _check_adversarial_weights(self) -> None:
        """The adversarial step's recognisers must be here before anything is written (one line if not)."""
        settings = self.config.finishing.adversarial
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

    @staticmethod
    def privacy_note(method: Method | type[Method]) -> str | None:
        """One line for the run summary when the output is not anonymized for everyone (its privacy goal),
        so nobody ships a people-recognisable output as anonymized; read from the class's declarations."""
        if method.privacy_goal == "human":
            return (f"privacy goal: people. {method.name} keeps every face matchable by face recognition "
                    "(by design): not anonymized against machines")
        if "adversarial" in method.finishing_steps:
            return ("privacy goal: machines only. The adversarial perturbation leaves every face recognisable to people: "
                    "not anonymized for viewers")
        return method.privacy_caveat() if isinstance(method, Method) else None

    def loss_recognisers(self, method: Method) -> list[str]:
        """Recognisers inside the run's loss: the method's, plus the adversarial step's ensemble."""
        names = list(method.loss_recognisers)
        if self.config.finishing.adversarial is not None:
            names += [name for name in self.config.finishing.adversarial.ensemble if name not in names]
        return names

    def _metadata(self, method: Method, detector: Detector | None, method_params: str,
                  settings: dict[str, Any]) -> dict[str, str]:
        weights = {**(detector.weights_used() if detector else {}), **method.weights_used()}
        return {
            "anonymize_version": __version__,
            "run_id": self.run_id,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "arguments": json.dumps(recorded_arguments(self.requested), sort_keys=True, default=str),
            "seed": str(self.config.method.seed),
            "device": self.device,
            "weights_sha256": json.dumps(weights, sort_keys=True),
            "method_params": method_params,
            "settings": json.dumps(settings, sort_keys=True),
            "detector": json.dumps({**self.detector_choice.as_dict(), "detector": detector.name}
                                   if detector and self.detector_choice else {"used": None}),
            INPUTS_KEY: json.dumps([input_key(self.config.inputs.input_dir)]),  # a resume sweeps gone sources only within one input
            "privacy_goal": method.privacy_goal,
            "loss_recognisers": json.dumps(self.loss_recognisers(method)),
        }

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        config = self.config
        check_paths(config.inputs.input_dir, config.output.output_dir, config.output.manifest_path)
        if config.execution.executor == "ray":
            from anonymize.run.ray_cluster import require_ray

            require_ray()
        started = time.perf_counter()
        files, others = self._walk()
        if not config.output.dry_run:
            self.folder.check(config.output.overwrite)
        if config.execution.deterministic:
            from anonymize.models.determinism import use_deterministic_algorithms

            use_deterministic_algorithms()
        build = method_build(config, self.device, expected_faces=len(files))
        method = build.build()
        self._check_adversarial_weights()
        method_params = json.dumps(method.describe(), sort_keys=True, default=str)
        detector = self._build_detector()  # before the settings check: it compares the detector that runs
        settings = self.settings(method)  # after the detector is chosen: a resume compares the one that runs
        if not (config.output.overwrite or config.output.dry_run):
            self.folder.check_same_settings(settings)
        if not config.output.dry_run:
            self.folder.take(settings, config.output.overwrite, input_dir=config.inputs.input_dir)
        try:
            steps = finishing_steps(self.config, self.device)
            stages = assemble_stages(self.config, self.run_id, method, build, detector, steps, method_params)
            return self._run_locked(files, others, stages, steps, method_params, settings, started)
        finally:
            self.folder.release()

    def _run_locked(self, files: list[ImageFile], others: list[WalkEntry], stages: Stages, steps: list[FinishingStep],
                    method_params: str, settings: dict[str, Any], started: float) -> RunSummary:
        config = self.config
        method, detector = stages.method(), stages.preparer.detector()
        previous = {} if config.output.dry_run else self.folder.previous_rows()
        if not config.output.dry_run:  # outputs whose sources are gone (--overwrite: already swept, in take)
            self.folder.sweep_gone_sources(config.inputs.input_dir)
        summary = RunSummary(self.run_id, output_dir=str(config.output.output_dir), dry_run=config.output.dry_run,
                             detector=detector.name if detector is not None else None, privacy_note=self.privacy_note(method))
        writer = None if config.output.dry_run else ManifestWriter(config.output.output_dir, self.run_id,
                                                                    self._metadata(method, detector, method_params, settings),
                                                                    self.folder.manifest_path, schema=run_schema(method, steps))
        summary.removed_outputs = self.folder.sweep.removed
        if writer is not None:
            writer.drop_sources = set(self.folder.sweep.sources)
        times = StageTimes()
        rule = BatchRule(config.method.batch_size or method.default_batch_size())
        # Before the first image: imports (package import to this run's start) and set-up (walk, models, lock).
        summary.stages.update({"imports_s": round(started - IMPORTED_AT, 3), "setup_s": round(time.perf_counter() - started, 3)})
        self._first_pass(stages, steps, files, previous, rule)
        self.progress.start(len(files), phase="detecting" if config.output.dry_run else "anonymizing")
        try:
            self._append(writer, [self._other_row(stages, entry, summary) for entry in others])
            if config.execution.executor == "ray":
                from anonymize.run.ray_cluster import run_on_ray

                # Each shard writes its own manifest part; the driver only counts.
                run_on_ray(stages, files, previous, rule, partial(self._record, None, summary), times, writer, config.execution)
            else:
                run_local(stages, files, previous, rule, self.workers(), partial(self._record, writer, summary), times)
        finally:
            if writer is not None:
                try:
                    summary.manifest_path = str(writer.finalise())
                except UnreadablePart as exc:
                    raise RunError(
                        f"{self.folder.manifest_path}: {exc.strerror}; nothing was merged and no part deleted: the images "
                        f"written are kept and the next run merges it"
                    ) from None
                except OSError as exc:
                    raise RunError(
                        f"{self.folder.manifest_path}: cannot write the manifest ({exc.strerror or exc}); the images written so far "
                        f"are kept and a new run resumes from them"
                    ) from None
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.stages.update(times.as_dict(summary.seconds))
        for line in summary.repeated_causes():
            self.progress.warning(line)
        return summary

    def _first_pass(self, stages: Stages, steps: list[FinishingStep], files: list[ImageFile],
                    previous: dict[str, PreviousRows], rule: BatchRule) -> None:
        """The one pass before any output: a dataset-level method and the steps that plan see every face
        not written yet, then each plans once (stored in the output folder, where every worker and a
        resumed run read it back). Always on this machine's pool, with --executor ray too."""
        method = stages.method()
        participants: list[Participant] = []
        if method.dataset_level:
            participants.append(MethodParticipant(method, rule))
            self.progress.note(f"{method.name} is dataset-level: pass 1 of 2 surveys every face before any is written")
        for step in steps:
            if step.needs_survey():
                participants.append(StepParticipant(step, rule))
                self.progress.note(f"{step.name}: pass 1 of 2 surveys every face before any is written")
            elif step.surveys:
                self.progress.note(f"{step.name}: reusing the plan stored by the earlier run")
        if not participants:
            return
        self.progress.start(len(files), phase="surveying")
        first_pass(stages.preparer, files, previous, participants, self.workers(), method_needs_every_core(stages),
                   lambda faces: self.progress.advance(faces))
        for participant in participants:
            try:
                line = participant.plan()
            except OSError as exc:
                raise RunError(f"{self.config.output.output_dir}: cannot store the {participant.name} plan "
                               f"({exc.strerror or exc})") from None
            self.progress.note(line)
            for warning in participant.warnings():
                self.progress.warning(warning)

    def workers(self) -> int:
        """--workers: the local pool's threads (None: the cores available; 0 or 1: serial)."""
        workers = self.config.execution.workers
        return available_cores() if workers is None else workers

    def _record(self, writer: ManifestWriter | None, summary: RunSummary, finished: list[Finished]) -> bool:
        """The record stage: one batch's rows as one manifest part, the counts, the progress; True: stop."""
        self._append(writer, [row for item in finished for row in item.rows])
        stop = False
        for item in finished:
            summary.redone_outputs += item.output_changed
            if item.status == "resumed":
                summary.resumed += 1
            elif item.status == STATUS_ERROR:
                source = readable(str(item.rows[0]["source_path"])) if item.rows else None
                if summary.count_error(item.error or "", source):  # a repeated cause: counted, printed once at the end
                    self.progress.message(item.error or "")
                stop = stop or self.config.output.on_error == "fail"
            else:
                if item.warning:
                    summary.warnings += 1
                    self.progress.warning(item.warning)
                summary.images += 1
                summary.faces += item.faces
                summary.no_face_images += item.status == STATUS_NO_FACE
            if item.rows:
                self.progress.file_done(item.rows[0]["source_path"], item.status, item.faces, item.error)
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
                f"{self.config.output.output_dir}: cannot write the manifest part ({exc.strerror or exc}); the run stopped, "
                f"a new run resumes from what was written"
            ) from None

    def _other_row(self, stages: Stages, entry: WalkEntry, summary: RunSummary) -> dict[str, Any]:
        """The row of an entry that is not an image: skipped (with why), copied (--copy-other), or an error."""
        shown = readable(str(entry.relpath))
        file = ImageFile(entry.path, entry.relpath)
        message = f"{shown}: {entry.reason}" if entry.kind == "error" else None
        output, note = None, entry.reason
        out = self.config.output.output_dir
        copy = message is None and entry.kind == "other" and self.config.inputs.copy_other and not self.config.output.dry_run
        if copy and self._is_a_manifest_place(entry):  # the input's own manifest.parquet
            copy, note = False, f"{entry.reason}; not copied (--copy-other): its place in the output is the run's manifest"
        if copy:
            try:
                atomic_write_bytes(output_path_for(out, entry.relpath), entry.path.read_bytes(), root=out)
                output, note = str(entry.relpath), f"{entry.reason}; copied unchanged (--copy-other)"
            except (OSError, ValueError) as exc:
                message = f"{shown}: copying failed ({getattr(exc, 'strerror', None) or exc})"
            except MemoryError:
                message = f"{shown}: copying failed (not enough memory to read it)"
        rows = stages.finisher.rows
        if message is not None:
            summary.count_error(message)
            self.progress.warning(message)
            return rows.row(file, None, None, STATUS_ERROR, None, 0.0, error=message)
        summary.skipped += 1
        return rows.row(file, None, None, STATUS_SKIPPED, output, 0.0, method=None, method_params=None, note=note)

    def _is_a_manifest_place(self, entry: WalkEntry) -> bool:
        """Whether ``--copy-other`` would write ``entry`` over the run's manifest or ``<out>/manifest.parquet``
        (where a resume and the audit read it): a ``manifest.parquet`` of the input's is one of its side files."""
        out = self.config.output.output_dir
        try:
            target = output_path_for(out, entry.relpath)
        except ValueError:
            return False
        places = {out / MANIFEST_NAME, self.folder.manifest_path}
        if target in places:
            return True
        if isinstance(target, Path):
            return any(isinstance(place, Path) and place.resolve() == target.resolve() for place in places)
        return False


def too_large_error(entry: WalkEntry, max_bytes: int) -> WalkEntry:
    """``entry`` as an error when it is a file (image or side file) of more than ``max_bytes`` bytes: its size is
    read from the file system, the file never is (a sparse 40 GB ``.jpg`` ends neither the run nor its resumes)."""
    if entry.kind not in ("image", "other"):
        return entry
    try:
        size = entry.path.info().size if isinstance(entry.path, StorePath) else os.stat(entry.path).st_size
    except (OSError, StoreError):
        return entry  # unreadable: the decoder (or the copy) says why
    cause = too_many_bytes(size or 0, max_bytes)
    return entry if cause is None else WalkEntry(entry.path, entry.relpath, "error", cause)


def run(config: RunConfig, progress: Progress | None = None) -> RunSummary:
    """Anonymize ``config.inputs.input_dir`` into ``config.output.output_dir``; see :class:`RunConfig`."""
    return Pipeline(config, progress).run()
