"""The finish stage (CPU): paste back, finishing steps, encode, write atomically -> :class:`Finished` (rows).

It reads the run's :class:`~anonymize.run.config.OutputPolicy` and :class:`PasteRegion`, the
method's paste-back choices and the run's finishing steps (:mod:`anonymize.steps`). A write that
fails is that image's error row; the run goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from anonymize.faces.paste import Region, paste_face, replace_whole
from anonymize.io.decode import DecodedImage
from anonymize.io.manifest import STATUS_DONE, STATUS_ERROR, STATUS_NO_FACE, readable
from anonymize.io.walk import ImageFile
from anonymize.io.write import output_path_for, render_relpath, write_image
from anonymize.methods.base import AnonymizedFace
from anonymize.run.config import OutputPolicy, PasteRegion
from anonymize.run.prepare import Prepared, file_sha256
from anonymize.steps import FinishingImage, FinishingStep

# What the method gives an image: its anonymized faces (in face order), or why it failed (None: a dry run).
MethodOutcome = list[AnonymizedFace] | str | None


@dataclass
class Finished:
    """One image after finish: its manifest rows and what it adds to the run's counts."""

    rows: list[dict[str, Any]]
    status: str  # "resumed", STATUS_DONE, STATUS_NO_FACE or STATUS_ERROR
    faces: int = 0
    error: str | None = None
    seconds: float = 0.0  # time spent in finish
    warning: str | None = None  # written, but the run must say something about it (--aligned-lenient)
    output_changed: bool = False  # redone because the earlier output's bytes no longer matched its row's hash


@dataclass(frozen=True)
class RowMaker:
    """The manifest row of a file: the run's and method's fields, then what is known of the file."""

    run_id: str
    method: str
    method_params: str  # the method's describe() as JSON

    def row(self, file: ImageFile, digest: str | None, image: DecodedImage | None, status: str,
            output: str | None, seconds: float, **extra: Any) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "source_path": str(file.relpath),
            "output_path": output,
            "output_sha256": None,  # set by the finisher for the outputs it writes
            "source_sha256": digest,
            "width": int(image.rgb.shape[1]) if image is not None else None,
            "height": int(image.rgb.shape[0]) if image is not None else None,
            "method": self.method,
            "method_params": self.method_params,
            "status": status,
            "seconds": round(seconds, 4),
            "note": image.note if image is not None else None,
            **extra,
        }


@dataclass(frozen=True)
class PasteBack:
    """How crops go back into their image: the region, and whether the method replaces FFHQ-framed input whole."""

    region: Region
    replaces_aligned_image: bool
    method_masks: bool = True  # a face's own mask (AnonymizedFace.mask) replaces the region; False under --region

    @classmethod
    def of(cls, region: PasteRegion, method_region: str, replaces_aligned_image: bool) -> PasteBack:
        """--region, else the method's default kind (or the mask a method gives with a face)."""
        return cls(Region(region.kind or method_region, region.scale, region.feather),  # type: ignore[arg-type]
                   replaces_aligned_image, method_masks=region.kind is None)

    def paste(self, item: Prepared, crops: list[np.ndarray], masks: list[np.ndarray | None] | None = None) -> np.ndarray:
        result = item.image.rgb  # type: ignore[union-attr]
        masks = masks if masks is not None and self.method_masks else [None] * len(crops)
        for face, aligned, crop, mask in zip(item.faces, item.aligned, crops, masks):
            if aligned.whole_image and self.replaces_aligned_image:
                result = replace_whole(result, crop)  # then any other face (--aligned-lenient) on top
                continue
            box = face.box if len(face.landmarks) else None  # no box to cover when nothing was detected
            result = paste_face(result, crop, aligned, self.region, box, mask)
        return result


class Finisher:
    """Paste back, run the finishing steps, write; one :class:`Finished` per image."""

    def __init__(self, output: OutputPolicy, paste: PasteBack, steps: list[FinishingStep], rows: RowMaker) -> None:
        self.output = output
        self.paste_back = paste
        self.steps = steps
        self.rows = rows

    def finish(self, item: Prepared, outcome: MethodOutcome, method_seconds: float = 0.0) -> Finished:
        """Paste back, encode and write one image (or record why not) -> its rows."""
        finished = self._finish(item, outcome, method_seconds)
        finished.output_changed = item.output_changed
        return finished

    def _finish(self, item: Prepared, outcome: MethodOutcome, method_seconds: float) -> Finished:
        started = time.perf_counter()
        shown = readable(str(item.file.relpath))
        if item.resumed:
            return Finished([], "resumed")
        if item.error is not None:
            return self._error(item, item.error, item.seconds)
        if not item.faces:
            return self._finish_without_face(item, started)
        if isinstance(outcome, str):
            return self._error(item, outcome, item.seconds + method_seconds)
        if self.output.dry_run or outcome is None:
            rows = self._face_rows(item, None, [{} for _ in item.faces], item.seconds / len(item.faces))
            return Finished(rows, STATUS_DONE, faces=len(item.faces), warning=item.warning)
        try:
            metrics = [dict(face.metrics) for face in outcome]
            masks = [face.mask for face in outcome]
            image = self.paste_back.paste(item, [face.crop for face in outcome], masks)
            finishing = FinishingImage(item.image.rgb, item.faces, outcome,  # type: ignore[union-attr]
                                       lambda crops: self.paste_back.paste(item, crops, masks),
                                       lambda label, rgb: self._write_render(item, label, rgb))
            for step in self.steps:
                image = step.apply(finishing, image, metrics)
            output, output_sha256 = self._write(item, image)
        except Exception as exc:  # noqa: BLE001 - a write that fails is this image's error, not the run's
            return self._error(item, _write_failure(shown, exc), item.seconds + method_seconds)
        finish_seconds = time.perf_counter() - started
        seconds = item.seconds + method_seconds + finish_seconds
        rows = self._face_rows(item, output, metrics, seconds / len(item.faces))
        for row in rows:
            row["output_sha256"] = output_sha256
        return Finished(rows, STATUS_DONE, faces=len(item.faces), seconds=finish_seconds, warning=item.warning)

    def _finish_without_face(self, item: Prepared, started: float) -> Finished:
        shown = readable(str(item.file.relpath))
        if self.output.on_no_face == "fail":
            return self._error(item, f"{shown}: no face detected (--on-no-face fail)", item.seconds)
        output, output_sha256 = None, None
        if self.output.on_no_face == "copy" and not self.output.dry_run:
            try:
                output, output_sha256 = self._write(item, item.image.rgb)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001
                return self._error(item, _write_failure(shown, exc), item.seconds + time.perf_counter() - started)
        finish_seconds = time.perf_counter() - started
        row = self.rows.row(item.file, item.sha256, item.image, STATUS_NO_FACE, output, item.seconds + finish_seconds)
        row["output_sha256"] = output_sha256
        return Finished([row], STATUS_NO_FACE, seconds=finish_seconds)

    def _error(self, item: Prepared, message: str, seconds: float) -> Finished:
        return Finished([self.rows.row(item.file, item.sha256, item.image, STATUS_ERROR, None, seconds, error=message)],
                        STATUS_ERROR, error=message)

    def _write(self, item: Prepared, rgb: np.ndarray) -> tuple[str, str]:
        """Write the output -> its relative path and the sha256 of the bytes now at its place (read back,
        so the row records exactly what a resume will find if nothing touches it)."""
        out = self.output.output_dir
        dest = output_path_for(out, item.file.relpath)
        write_image(item.image, rgb, dest, self.output.jpeg_quality, root=out,
                    strip_icc=self.output.strip_icc)
        digest = file_sha256(dest)
        if digest is None:
            raise OSError(f"{readable(str(item.file.relpath))}: the output just written cannot be read back")
        return str(item.file.relpath), digest

    def _write_render(self, item: Prepared, label: str, rgb: np.ndarray) -> None:
        out = self.output.output_dir
        relpath = render_relpath(item.file.relpath, label)
        write_image(item.image, rgb, output_path_for(out, relpath), self.output.jpeg_quality, root=out,
                    strip_icc=self.output.strip_icc)  # type: ignore[arg-type]

    def _face_rows(self, item: Prepared, output: str | None, metrics: list[dict[str, Any]],
                   seconds: float) -> list[dict[str, Any]]:
        return [
            self.rows.row(item.file, item.sha256, item.image, STATUS_DONE, output, seconds, face_index=index,
                          box=[float(v) for v in face.box], det_score=float(face.score),
                          landmarks=[float(v) for v in np.asarray(face.landmarks).reshape(-1)], **face_metrics)
            for index, (face, face_metrics) in enumerate(zip(item.faces, metrics))
        ]


def _write_failure(shown: str, exc: Exception) -> str:
    """One line for an output that could not be written (disk full, name too long, a link in the way)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{shown}: writing the output failed ({exc.strerror})"
    return f"{shown}: writing the output failed ({type(exc).__name__}: {exc})"
