"""The one interface of a finishing step: ``(image, faces, metrics) -> image``, with optional survey/plan."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import pyarrow as pa

from anonymize.faces.types import Face
from anonymize.methods.base import AnonymizedFace, MetricValue

Boxes = list[list[float]]
Model = TypeVar("Model")


@dataclass
class FinishingImage:
    """One image as the steps see it: the original pixels, its faces, what the method made of them, and
    how to paste a set of crops back or write a further rendering beside the main output."""

    original: np.ndarray  # H x W x 3 uint8, as decoded
    faces: Sequence[Face]
    anonymized: Sequence[AnonymizedFace]
    paste: Callable[[list[np.ndarray]], np.ndarray]  # crops (one per face) -> the pasted image
    write_beside: Callable[[str, np.ndarray], None]  # (label, image) -> written as <name>.<label>.<ext>

    @property
    def boxes(self) -> Boxes:
        return [list(face.box) for face in self.faces]


class FinishingStep:
    """Base class: subclasses set ``name`` and ``metric_columns`` and implement :meth:`apply`.

    Steps hold settings only; models load lazily (once per thread where they keep state), so a step
    can be pickled to another process and each process loads its own.
    """

    name: ClassVar[str]
    metric_columns: ClassVar[dict[str, pa.DataType]] = {}
    surveys: ClassVar[bool] = False  # True: the run shows it every original image in a first pass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_local", None)  # models never travel: each process loads its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def per_thread(self, name: str, build: Callable[[], Model]) -> Model:
        """This thread's ``name`` (a model that keeps per-call state), built on first use."""
        local = self.__dict__.setdefault("_local", threading.local())
        if not hasattr(local, name):
            setattr(local, name, build())
        return getattr(local, name)

    def apply(self, item: FinishingImage, image: np.ndarray, metrics: list[dict[str, MetricValue]]) -> np.ndarray:
        """The image after this step; per-face figures go into ``metrics`` (one dict per face)."""
        raise NotImplementedError

    def needs_survey(self) -> bool:
        """Whether this run's first pass must show it the dataset (False when an earlier plan stands)."""
        return self.surveys

    def survey(self, images: Sequence[tuple[np.ndarray, Boxes]]) -> None:
        """First pass: original images and their face boxes, in walk order."""

    def plan(self) -> dict[str, Any]:
        """After the first pass: decide and store; a few figures for the run's log."""
        return {}
