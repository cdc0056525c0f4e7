"""The run: walk -> decode -> detect/align -> method -> paste back -> write -> manifest.

Data flows one way. Images are gathered until a batch of faces is full, the method anonymizes
the whole batch at once (one GPU batch), then every image of the batch is pasted, written
atomically and its manifest rows flushed as one Parquet part, so a crash loses at most one batch.
A failing image becomes an error row and the run goes on; every file the walk meets and does
not process gets a row too (skipped or error, with the cause).

The output folder is locked for the whole run and marked as anonymize's before the first output
is written (:mod:`anonymize.io.outdir`); nothing is written through a symbolic link in it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from anonymize import __version__
from anonymize.faces.align import AlignedFace, align_aligned_input, align_face
from anonymize.faces.choose import DetectorChoice, choose_detector
from anonymize.faces.detect import Detector, DetectorSettings, create_detector
from anonymize.faces.paste import Region, RegionKind, paste_face, replace_whole
from anonymize.faces.types import Face
from anonymize.io.decode import DecodedImage, ImageDecodeError, decode_image, sha256_file
from anonymize.io.manifest import (
    FINISHED_STATUSES,
    MANIFEST_NAME,
    STATUS_DONE,
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
from anonymize.io.outdir import OutputFolderBusy, OutputLock, acquire_lock, probe_lock, read_marker, remove_stale_temporaries, write_marker
from anonymize.io.walk import ImageFile, WalkEntry, walk_tree
from anonymize.io.write import atomic_write_bytes, is_regular_file_in, output_path_for, write_image
from anonymize.methods import FaceCrop, Method, MethodContext, create_method
from anonymize.weights import WeightsStore

OnNoFace = Literal["copy", "skip", "fail"]
OnError = Literal["skip", "fail"]
MAX_IMAGES_PER_BATCH = 64  # bounds memory when images have few faces


class RunError(Exception):
    """A run that cannot start (bad paths, bad options): one line, nothing written."""


class StopRun(Exception):
    """--on-error fail met an error: the run stops after flushing what is done."""


@dataclass(frozen=True)
class RunConfig:
    input_dir: Path
    output_dir: Path
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
    manifest_path: Path | None = None
    max_pixels: int = 178_956_970
    copy_other: bool = False  # copy files that are not images (labels, CSV) unchanged into the output
    deterministic: bool = False  # bit-stable CUDA runs: deterministic algorithms, no TF32, fixed cuDNN choices


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress:
    """What the pipeline reports as it goes; the CLI draws it, tests ignore it."""

    def start(self, total: int) -> None: ...

    def advance(self, faces: int) -> None: ...

    def message(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def note(self, text: str) -> None:
        """One informational line (which detector runs and why)."""

    def download(self, label: str, done: int, total: int | None) -> None:
        """Progress of a weights download started by the run (``--detector auto``)."""


@dataclass
class _Pending:
    """One decoded image waiting for its faces to be anonymized."""

    file: ImageFile
    sha256: str
    image: DecodedImage
    faces: list[Face]
    aligned: list[AlignedFace]
    seconds: float  # time spent on this image so far (hash, decode, detect, align)


def resolve_device(device: str) -> str:
    if device != "auto":
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise RunError("--device cuda: no CUDA device is available (use --device cpu or auto)")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_paths(input_dir: Path, output_dir: Path, manifest_path: Path | None = None) -> None:
    """Refuse any layout in which writing the output (or the manifest) could touch the input."""
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


def default_output_dir(input_dir: Path) -> Path:
    resolved = input_dir.resolve()
    return resolved.parent / f"{resolved.name}-anonymized"


class Pipeline:
    """One run over one input tree; build it, then call :meth:`run`."""

    def __init__(self, config: RunConfig, progress: Progress | None = None) -> None:
        self.config = config
        self.progress = progress or Progress()
        self.run_id = new_run_id()
        self.weights = WeightsStore(config.weights_dir)
        self.device = resolve_device(config.device)
        self.manifest_path = config.manifest_path or config.output_dir / MANIFEST_NAME
        # Built at the start of run(), once the input is known to hold images.
        self.method: Method | None = None
        self.method_params = "{}"  # the method's describe() as JSON, for every manifest row
        self.recognizer = None
        self.detector_choice: DetectorChoice | None = None
        self.region = Region()  # what is pasted back; the method's default kind unless --region is given
        self.lock: OutputLock | None = None  # held from before the first write to the end of the run

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
        context = MethodContext(
            weights=self.weights,
            device=self.device,
            seed=self.config.seed,
            margin=self.config.margin,
            batch_size=self.config.batch_size,
            aligned_input=self.config.aligned,
            output_dir=None if self.config.dry_run else self.config.output_dir,
            expected_faces=expected_faces,
        )
        return create_method(self.config.method, context, self.config.method_options)

    def _build_detector(self) -> Detector | None:
        if self.config.aligned:
            if self.config.aligned_framing == "ffhq":
                return None
            settings = DetectorSettings(self.config.det_threshold, self.config.min_face, self.device)
            return _landmark_detector(self.config.detector, self.weights, settings)
        choice = self.detector_choice = choose_detector(self.config.detector, self.weights, self.progress.download)
        self.progress.note(f"detector {choice.reason}")
        settings = DetectorSettings(self.config.det_threshold, self.config.min_face, self.device, self.config.recall_first)
        return create_detector(choice.name, self.weights, settings)

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
        }

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        config = self.config
        check_paths(config.input_dir, config.output_dir, config.manifest_path)
        started = time.perf_counter()
        files, others = self._walk()
        self._check_output_dir()
        if config.deterministic:
            from anonymize.models.determinism import use_deterministic_algorithms

            use_deterministic_algorithms()
        method = self.method = self._build_method(expected_faces=len(files))
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
        if config.identity_metric:
            from anonymize.metrics.identity import DlibRecognizer

            self.recognizer = DlibRecognizer(self.weights)
        self.region = Region(config.region or method.default_region, config.region_scale, config.feather)  # type: ignore[arg-type]
        summary = RunSummary(self.run_id, output_dir=str(config.output_dir), dry_run=config.dry_run,
                             detector=detector.name if detector is not None else None)
        writer = None if config.dry_run else ManifestWriter(config.output_dir, self.run_id, self._metadata(method, detector), self.manifest_path)
        batch_faces = config.batch_size or method.default_batch_size()
        self.progress.start(len(files))
        pending: list[_Pending] = []
        try:
            self._append(writer, [self._other_row(entry, summary) for entry in others])
            for file in files:
                item = self._prepare(file, detector, previous, summary, writer)
                if item is None:
                    continue
                pending.append(item)
                if sum(len(p.faces) for p in pending) >= batch_faces or len(pending) >= MAX_IMAGES_PER_BATCH:
                    self._flush(pending, summary, writer)
                    pending = []
            self._flush(pending, summary, writer)
        except StopRun:
            pass
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
        return summary

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
        parts = self.config.output_dir / WORK_DIR_NAME / "parts"
        if parts.is_symlink():
            parts.unlink()
        elif parts.exists():
            shutil.rmtree(parts)

    def _other_row(self, entry: WalkEntry, summary: RunSummary) -> dict[str, Any]:
        """The row of an entry that is not an image: skipped (with why), copied (--copy-other), or an error."""
        shown = readable(str(entry.relpath))
        file = ImageFile(entry.path, entry.relpath)
        if entry.kind == "error":
            summary.errors += 1
            message = f"{shown}: {entry.reason}"
            if len(summary.error_messages) < 50:
                summary.error_messages.append(message)
            self.progress.warning(message)
            return self._row(file, None, None, STATUS_ERROR, None, 0.0, error=message)
        summary.skipped += 1
        output, note = None, entry.reason
        if entry.kind == "other" and self.config.copy_other and not self.config.dry_run:
            try:
                atomic_write_bytes(output_path_for(self.config.output_dir, entry.relpath), entry.path.read_bytes(),
                                   root=self.config.output_dir)
                output, note = str(entry.relpath), f"{entry.reason}; copied unchanged (--copy-other)"
            except (OSError, ValueError) as exc:
                summary.skipped -= 1
                summary.errors += 1
                message = f"{shown}: copying failed ({getattr(exc, 'strerror', None) or exc})"
                self.progress.warning(message)
                return self._row(file, None, None, STATUS_ERROR, None, 0.0, error=message)
        return self._row(file, None, None, STATUS_SKIPPED, output, 0.0, method=None, method_params=None, note=note)

    def _prepare(self, file: ImageFile, detector: Detector | None, previous: dict[str, list[dict[str, Any]]],
                 summary: RunSummary, writer: ManifestWriter | None) -> _Pending | None:
        """Hash, decode, detect and align one image; None when it needs no method call."""
        started = time.perf_counter()
        relpath = str(file.relpath)
        shown = readable(relpath)
        try:
            digest = sha256_file(file.path)
        except OSError as exc:
            self._record_error(file, None, None, f"{shown}: cannot read ({exc.strerror or exc})", time.perf_counter() - started, summary, writer)
            return None
        if self.config.resume and self._already_done(relpath, digest, previous):
            summary.resumed += 1
            self.progress.advance(0)
            return None
        try:
            image = decode_image(file.path, self.config.max_pixels, display_name=shown)
            if self.config.aligned:
                face, single = align_aligned_input(image.rgb, detector, self.method.crop_size, self.config.aligned_framing)
                faces, aligned = [face], [single]
            else:
                faces = detector.detect(image.rgb)
                aligned = [align_face(image.rgb, face.landmarks, self.method.crop_size) for face in faces]
        except ImageDecodeError as exc:
            self._record_error(file, digest, None, str(exc), time.perf_counter() - started, summary, writer)
            return None
        except Exception as exc:  # noqa: BLE001 - any failure of one image must not stop the run
            self._record_error(file, digest, None, f"{shown}: detection failed ({type(exc).__name__}: {exc})", time.perf_counter() - started, summary, writer)
            return None
        previous.pop(relpath, None)
        if faces:
            return _Pending(file, digest, image, faces, aligned, time.perf_counter() - started)
        self._finish_without_face(file, digest, image, started, summary, writer)
        return None

    def _already_done(self, relpath: str, digest: str, previous: dict[str, list[dict[str, Any]]]) -> bool:
        rows = previous.get(relpath)
        if not rows or any(row["status"] not in FINISHED_STATUSES or row["source_sha256"] != digest for row in rows):
            return False
        outputs = {row["output_path"] for row in rows if row["output_path"]}
        return all(is_regular_file_in(self.config.output_dir, output_path_for(self.config.output_dir, PurePosixPath(output)))
                   for output in outputs)

    def _finish_without_face(self, file: ImageFile, digest: str, image: DecodedImage, started: float,
                             summary: RunSummary, writer: ManifestWriter | None) -> None:
        shown = readable(str(file.relpath))
        if self.config.on_no_face == "fail":
            self._record_error(file, digest, image, f"{shown}: no face detected (--on-no-face fail)", time.perf_counter() - started, summary, writer)
            return
        output = None
        if self.config.on_no_face == "copy" and not self.config.dry_run:
            try:
                output = self._write(file, image, image.rgb)
            except Exception as exc:  # noqa: BLE001 - a write that fails is this image's error, not the run's
                self._record_error(file, digest, image, _write_failure(shown, exc), time.perf_counter() - started, summary, writer)
                return
        summary.images += 1
        summary.no_face_images += 1
        self.progress.advance(0)
        self._append(writer, [self._row(file, digest, image, STATUS_NO_FACE, output, time.perf_counter() - started)])

    def _flush(self, pending: list[_Pending], summary: RunSummary, writer: ManifestWriter | None) -> None:
        if not pending:
            return
        rows: list[dict[str, Any]] = []
        failed: list[tuple[_Pending, str]] = []
        if self.config.dry_run:
            for item in pending:
                rows.extend(self._face_rows(item, None, [{} for _ in item.faces], item.seconds))
                self._count_done(item, summary)
        else:
            method_started = time.perf_counter()
            results = self._anonymize_batch(pending)
            # Each face is charged an equal share of the batch's method time.
            share = (time.perf_counter() - method_started) / sum(len(item.faces) for item in pending)
            for item, outcome in zip(pending, results):
                if isinstance(outcome, str):
                    failed.append((item, outcome))
                    continue
                write_started = time.perf_counter()
                try:
                    metrics = [dict(face.metrics) for face in outcome]
                    composite = self._composite(item, [face.crop for face in outcome])
                    if self.recognizer is not None:
                        self._add_identity_distance(item, composite, metrics)
                    output = self._write(item.file, item.image, composite)
                except Exception as exc:  # noqa: BLE001
                    failed.append((item, _write_failure(readable(str(item.file.relpath)), exc)))
                    continue
                seconds = item.seconds + share * len(item.faces) + time.perf_counter() - write_started
                rows.extend(self._face_rows(item, output, metrics, seconds / len(item.faces)))
                self._count_done(item, summary)
        self._append(writer, rows)
        for item, message in failed:
            self._record_error(item.file, item.sha256, item.image, message, item.seconds, summary, writer)

    def _count_done(self, item: _Pending, summary: RunSummary) -> None:
        summary.images += 1
        summary.faces += len(item.faces)
        self.progress.advance(len(item.faces))

    def _anonymize_batch(self, pending: list[_Pending]) -> list[list[Any] | str]:
        """Anonymize all faces of the batch at once; if that fails, retry image by image to isolate the culprit."""
        try:
            return _split(self._call_method([crop for item in pending for crop in self._crops(item)]), pending)
        except Exception:  # noqa: BLE001 - fall through to the image-by-image retry
            pass
        outcome: list[list[Any] | str] = []
        for item in pending:
            try:
                outcome.append(self._call_method(self._crops(item)))
            except Exception as exc:  # noqa: BLE001
                outcome.append(f"{readable(str(item.file.relpath))}: {self.config.method} failed ({type(exc).__name__}: {exc})")
        return outcome

    def _call_method(self, crops: list[FaceCrop]) -> list[Any]:
        size = self.config.batch_size or self.method.default_batch_size()
        results: list[Any] = []
        for start in range(0, len(crops), size):
            chunk = crops[start:start + size]
            out = self.method.anonymize(chunk)
            if len(out) != len(chunk):
                raise RuntimeError(f"method returned {len(out)} faces for {len(chunk)}")
            results.extend(out)
        return results

    def _crops(self, item: _Pending) -> list[FaceCrop]:
        return [FaceCrop(aligned.crop, aligned.landmarks, f"{item.file.relpath}#{index}") for index, aligned in enumerate(item.aligned)]

    def _composite(self, item: _Pending, crops: Sequence[np.ndarray]) -> np.ndarray:
        result = item.image.rgb
        for face, aligned, crop in zip(item.faces, item.aligned, crops):
            if aligned.whole_image and self.method.replaces_aligned_image:
                return replace_whole(result, crop)
            box = face.box if len(face.landmarks) else None  # no box to cover when nothing was detected
            result = paste_face(result, crop, aligned, self.region, box)
        return result

    def _add_identity_distance(self, item: _Pending, composite: np.ndarray, metrics: list[dict[str, Any]]) -> None:
        from anonymize.metrics.identity import distance

        boxes = [face.box for face in item.faces]
        before = self.recognizer.descriptors(item.image.rgb, boxes)
        after = self.recognizer.descriptors(composite, boxes)
        for face_metrics, value in zip(metrics, distance(before, after)):
            face_metrics["identity_distance_dlib"] = float(value)

    def _write(self, file: ImageFile, image: DecodedImage, rgb: np.ndarray) -> str:
        out = self.config.output_dir
        write_image(image, rgb, output_path_for(out, file.relpath), self.config.jpeg_quality, root=out)
        return str(file.relpath)

    # -- manifest rows ----------------------------------------------------------------------------------
    def _row(self, file: ImageFile, digest: str | None, image: DecodedImage | None, status: str,
             output: str | None, seconds: float, **extra: Any) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "source_path": str(file.relpath),
            "output_path": output,
            "source_sha256": digest,
            "width": int(image.rgb.shape[1]) if image is not None else None,
            "height": int(image.rgb.shape[0]) if image is not None else None,
            "method": self.config.method,
            "method_params": self.method_params,
            "status": status,
            "seconds": round(seconds, 4),
            "note": image.note if image is not None else None,
            **extra,
        }

    def _face_rows(self, item: _Pending, output: str | None, metrics: list[dict[str, Any]],
                   seconds: float) -> list[dict[str, Any]]:
        return [
            self._row(item.file, item.sha256, item.image, STATUS_DONE, output, seconds, face_index=index,
                      box=[float(v) for v in face.box], det_score=float(face.score),
                      landmarks=[float(v) for v in np.asarray(face.landmarks).reshape(-1)], **face_metrics)
            for index, (face, face_metrics) in enumerate(zip(item.faces, metrics))
        ]

    def _record_error(self, file: ImageFile, digest: str | None, image: DecodedImage | None, message: str,
                      seconds: float, summary: RunSummary, writer: ManifestWriter | None) -> None:
        summary.errors += 1
        if len(summary.error_messages) < 50:
            summary.error_messages.append(message)
        self.progress.message(message)
        self.progress.advance(0)
        self._append(writer, [self._row(file, digest, image, STATUS_ERROR, None, seconds, error=message)])
        if self.config.on_error == "fail":
            raise StopRun(message)


def _write_failure(shown: str, exc: Exception) -> str:
    """One line for an output that could not be written (disk full, name too long, a link in the way)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{shown}: writing the output failed ({exc.strerror})"
    return f"{shown}: writing the output failed ({type(exc).__name__}: {exc})"


def _landmark_detector(name: str, weights: WeightsStore, settings: DetectorSettings) -> Detector | None:
    """For --aligned input: the run's detector finds the landmarks of the one face (auto and ensemble:
    RetinaFace, never downloaded here); if it cannot be built (missing weights), dlib's HOG (weights in
    an installed package); else None (CelebA template)."""
    first = "retinaface" if name in ("auto", "ensemble") else name
    for candidate in dict.fromkeys([first, "dlib-hog"]):
        try:
            return create_detector(candidate, weights, settings)
        except Exception:  # noqa: BLE001 - landmarks are optional here: the template stands in
            continue
    return None


def _split(results: list[Any], pending: list[_Pending]) -> list[list[Any] | str]:
    out, start = [], 0
    for item in pending:
        out.append(results[start:start + len(item.faces)])
        start += len(item.faces)
    return out


def _rows_by_source(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] != STATUS_SKIPPED:
            grouped.setdefault(row["source_path"], []).append(row)
    return grouped


def run(config: RunConfig, progress: Progress | None = None) -> RunSummary:
    """Anonymize ``config.input_dir`` into ``config.output_dir``; see :class:`RunConfig`."""
    return Pipeline(config, progress).run()

