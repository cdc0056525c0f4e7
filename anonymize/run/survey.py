"""The run's one first pass: every participant that must see the dataset before anything is written.

A dataset-level method (k-Same, CFA's screen, camouflage's references) surveys the aligned crops; a
finishing step that plans (``-p adversarial=uap``) surveys the original images and their face boxes.
Both are fed from one walk of the images not finished earlier, in walk order and in batches
formed by the run's :class:`~anonymize.run.batching.BatchRule`; images are dropped once every
participant has seen them (flat memory). Images that fail here are left to the second pass, which
records their error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from anonymize.io.walk import ImageFile
from anonymize.methods import FaceCrop, Method
from anonymize.run.batching import BatchRule
from anonymize.run.local import prepare_window, prepared_in_order, torch_threads_per_worker, worker_pool
from anonymize.run.prepare import Prepared, Preparer, PreviousRows
from anonymize.steps import FinishingStep


class Participant:
    """Buffers what one participant surveys and hands it over a batch at a time."""

    name: str

    def add(self, item: Prepared) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def plan(self) -> str:
        """Decide from everything surveyed and store the plan; one line for the run's log."""
        raise NotImplementedError

    def warnings(self) -> list[str]:
        """What the plan found that the run must print as warnings (after :meth:`plan`)."""
        return []


class MethodParticipant(Participant):
    """The method surveys aligned crops, ``rule.faces`` at a time (an image's faces stay together)."""

    def __init__(self, method: Method, rule: BatchRule) -> None:
        self.name, self.method, self.rule = method.name, method, BatchRule(rule.faces, images=None)
        self.crops: list[FaceCrop] = []
        self.surveyed = 0

    def add(self, item: Prepared) -> None:
        self.crops.extend(item.method_crops())
        if self.rule.full(len(self.crops), 0):
            self.flush()

    def flush(self) -> None:
        if self.crops:
            self.method.survey(self.crops)
            self.surveyed, self.crops = self.surveyed + len(self.crops), []

    def plan(self) -> str:
        shown = ", ".join(f"{key} {value}" for key, value in self.method.plan().items())
        return f"{self.name} plan: {self.surveyed} faces surveyed{', ' + shown if shown else ''}"

    def warnings(self) -> list[str]:
        return self.method.plan_warnings()


class StepParticipant(Participant):
    """A finishing step surveys the original images with their face boxes, a batch of images at a time."""

    def __init__(self, step: FinishingStep, rule: BatchRule) -> None:
        self.name, self.step, self.rule = step.name, step, rule
        self.images: list[tuple[Any, list[list[float]]]] = []
        self.faces = 0

    def add(self, item: Prepared) -> None:
        if item.needs_method:
            self.images.append((item.image.rgb, [list(face.box) for face in item.faces]))  # type: ignore[union-attr]
            self.faces += len(item.faces)
        if self.rule.full(self.faces, len(self.images)):
            self.flush()

    def flush(self) -> None:
        if self.images:
            self.step.survey(self.images)
        self.images, self.faces = [], 0

    def plan(self) -> str:
        return f"{self.name} plan: " + ", ".join(f"{key} {value}" for key, value in self.step.plan().items())


def first_pass(preparer: Preparer, files: Iterable[ImageFile], previous: dict[str, PreviousRows],
               participants: list[Participant], workers: int, method_needs_every_core: bool,
               advance: Callable[[int], None]) -> None:
    """Show every participant the images not finished earlier; ``advance`` hears each image's face count."""
    with torch_threads_per_worker(workers, method_needs_every_core):
        pool = worker_pool(workers)
        try:
            for item in prepared_in_order(pool, preparer, files, previous, prepare_window(workers)):
                for participant in participants:
                    participant.add(item)
                advance(len(item.faces))
            for participant in participants:
                participant.flush()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
