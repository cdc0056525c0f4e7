"""The anonymize stage (the method's device): batches of crops -> anonymized crops, or why an image failed.

The method is built once per process from :class:`MethodBuild` (picklable settings; the models are
never shipped); a batch that fails is retried image by image so one bad face fails one image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anonymize.io.manifest import readable
from anonymize.io.storage import Storage
from anonymize.methods import FaceCrop, Method, MethodContext, create_method
from anonymize.run.config import MethodSpec
from anonymize.run.finish import MethodOutcome
from anonymize.weights import WeightsStore


@dataclass(frozen=True)
class MethodBuild:
    """Everything a process needs to build the run's method (the same one in every process)."""

    spec: MethodSpec
    weights_dir: Path | None
    device: str
    aligned_input: bool
    work: Storage | None  # the run's work folder (side outputs); None: a dry run
    plan: Storage | None  # where a dataset-level method keeps its plan; None in dry runs
    expected_faces: int | None = None  # a size hint before detection (FALCO's fake bank)

    def build(self) -> Method:
        context = MethodContext(weights=WeightsStore(self.weights_dir), device=self.device, seed=self.spec.seed,
                                batch_size=self.spec.batch_size, aligned_input=self.aligned_input,
                                work=self.work, expected_faces=self.expected_faces, plan=self.plan,
                                identity_from=self.spec.identity_from)
        return create_method(self.spec.name, context, self.spec.options)


_BUILD_LOCK = threading.Lock()


class MethodCaller:
    """Calls the method on batches of crops; one method per process, built on first use."""

    def __init__(self, build: MethodBuild, dry_run: bool, method: Method | None = None) -> None:
        self.build_settings = build
        self.dry_run = dry_run
        self._method = method  # the driver's own, already built

    def __getstate__(self) -> dict[str, Any]:
        return {"build_settings": self.build_settings, "dry_run": self.dry_run, "_method": None}

    def method(self) -> Method:
        if self._method is None:
            with _BUILD_LOCK:
                if self._method is None:
                    self._method = self.build_settings.build()
        return self._method

    def anonymize(self, crops: list[list[FaceCrop]]) -> list[MethodOutcome]:
        """Every image's crops at once; if that fails, image by image to isolate the culprit."""
        if self.dry_run:
            return [None for _ in crops]
        try:
            return _split(self._call([crop for image in crops for crop in image]), [len(image) for image in crops])
        except Exception:  # noqa: BLE001 - fall through to the image-by-image retry
            pass
        outcome: list[MethodOutcome] = []
        for image in crops:
            try:
                outcome.append(self._call(image))
            except Exception as exc:  # noqa: BLE001
                name = image[0].key.rpartition("#")[0]  # "<relative path>#<face index>"
                outcome.append(f"{readable(name)}: {self.build_settings.spec.name} failed ({type(exc).__name__}: {exc})")
        return outcome

    def _call(self, crops: list[FaceCrop]) -> list[Any]:
        method = self.method()
        size = self.build_settings.spec.batch_size or method.default_batch_size()
        results: list[Any] = []
        for start in range(0, len(crops), size):
            chunk = crops[start:start + size]
            out = method.anonymize(chunk)
            if len(out) != len(chunk):
                raise RuntimeError(f"method returned {len(out)} faces for {len(chunk)}")
            results.extend(out)
        return results


def _split(results: list[Any], counts: list[int]) -> list[MethodOutcome]:
    out: list[MethodOutcome] = []
    start = 0
    for count in counts:
        out.append(results[start:start + count])
        start += count
    return out
