"""The run's three stages, bundled for the executors: prepare (CPU), anonymize (the method's device), finish (CPU).

Every executor (serial, the local worker pool, Ray) composes these same calls; none keeps anything
between calls except model caches, so any stage of any image can run in any thread, process or
node, and a stage run twice (a retried Ray task) gives the same result. The bundle pickles to its
settings: each process builds its own detector, method and steps' models once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from anonymize.io.walk import ImageFile
from anonymize.methods import FaceCrop, Method
from anonymize.run.finish import Finished, Finisher, MethodOutcome
from anonymize.run.method_calls import MethodCaller
from anonymize.run.prepare import Prepared, Preparer, PreviousRows

# record(finished images of one batch) -> True when the run must stop (--on-error fail met an error).
Record = Callable[[list[Finished]], bool]


@dataclass
class Stages:
    preparer: Preparer
    caller: MethodCaller
    finisher: Finisher

    def prepare(self, file: ImageFile, previous: PreviousRows | None = None) -> Prepared:
        return self.preparer.prepare(file, previous)

    def anonymize(self, batch: list[Prepared]) -> list[MethodOutcome]:
        """The method on every face of the batch at once (image by image if that fails)."""
        return self.caller.anonymize([item.crops() for item in batch])

    def anonymize_crops(self, crops: list[list[FaceCrop]]) -> list[MethodOutcome]:
        """:meth:`anonymize` on the crops alone (what a Ray method actor receives: no decoded images)."""
        return self.caller.anonymize(crops)

    def finish(self, item: Prepared, outcome: MethodOutcome, method_seconds: float = 0.0) -> Finished:
        return self.finisher.finish(item, outcome, method_seconds)

    def method(self) -> Method:
        return self.caller.method()

    @property
    def device(self) -> str:
        """Where this process runs the method."""
        return self.caller.build_settings.device


@dataclass
class StageTimes:
    """Seconds spent in each stage (summed over images) and in the method's device calls."""

    prepare: float = 0.0
    anonymize: float = 0.0  # wall time of method calls: the device was busy this long
    finish: float = 0.0
    images: int = 0

    def as_dict(self, wall: float) -> dict[str, float]:
        per_image = max(self.images, 1)
        return {
            "prepare_s_per_image": round(self.prepare / per_image, 4),
            "anonymize_s_per_image": round(self.anonymize / per_image, 4),
            "finish_s_per_image": round(self.finish / per_image, 4),
            "method_busy_share": round(self.anonymize / wall, 3) if wall > 0 else 0.0,
        }


