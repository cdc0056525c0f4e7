"""What every executor shares: the record callback and the per-stage clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from anonymize.stages import Finished

# record(finished images of one batch) -> True when the run must stop (--on-error fail met an error).
Record = Callable[[list[Finished]], bool]


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
