"""The one rule that groups images into method batches, used by every executor and every pass.

A batch closes once it holds ``faces`` faces for the method, or ``images`` images of any kind
(bounding memory when images have few faces); an image's faces always stay in one batch. The
local pool, the Ray planner, the survey pass and attribute collection all form batches with
this rule, so a run gives the same batches (and the same outputs) whichever executor runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

MAX_IMAGES_PER_BATCH = 64

Item = TypeVar("Item")


@dataclass(frozen=True)
class BatchRule:
    faces: int  # faces per batch (the method's batch size, or --batch-size)
    images: int | None = MAX_IMAGES_PER_BATCH  # None: no cap on images (passes that only collect crops)

    def __post_init__(self) -> None:
        if self.faces < 1:
            raise ValueError(f"faces per batch must be at least 1, got {self.faces}")

    def full(self, faces: int, images: int) -> bool:
        """Whether a batch holding ``faces`` faces over ``images`` images is closed."""
        return faces >= self.faces or (self.images is not None and images >= self.images)

    def group(self, items: Iterable[Item], faces_of: Callable[[Item], int]) -> Iterator[list[Item]]:
        """``items`` in order, as the batches this rule closes (the last one possibly partial)."""
        batch: list[Item] = []
        faces = 0
        for item in items:
            batch.append(item)
            faces += faces_of(item)
            if self.full(faces, len(batch)):
                yield batch
                batch, faces = [], 0
        if batch:
            yield batch
