"""Where attribute values come from: one small class per source, registered by name.

A source turns aligned face crops (the pipeline's :class:`~anonymize.methods.FaceCrop`: the
crop, its landmarks, its key) into an :class:`AttributeTable`. Sources are imported lazily, so
the landmark heuristics never load a neural network.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from anonymize.attributes.table import AttributeTable
from anonymize.errors import AnonymizeError
from anonymize.faces.types import FaceCrop
from anonymize.weights import WeightsStore

# name -> "module:Class"; each module is one source.
SOURCES: dict[str, str] = {
    "zero-shot": "anonymize.attributes.zero_shot:ZeroShotSource",
    "labels": "anonymize.attributes.labels:LabelsSource",
    "probe": "anonymize.attributes.probe:ProbeSource",
    "landmarks": "anonymize.attributes.landmarks:LandmarkSource",
    "estimators": "anonymize.attributes.estimators:EstimatorSource",
}


class AttributeSource(Protocol):
    name: str
    heuristic: bool

    def estimate(self, faces: Sequence[FaceCrop]) -> AttributeTable:
        """One row per face, in order."""
        ...


class UnknownSource(AnonymizeError, ValueError):
    """An attribute source name that is not registered."""


class MergedSource:
    """Several sources as one (``"estimators+landmarks"``): each column from the first source that estimates it."""

    def __init__(self, parts: Sequence[AttributeSource]) -> None:
        self.parts = list(parts)
        self.name = "+".join(part.name for part in self.parts)
        self.heuristic = any(part.heuristic for part in self.parts)

    def estimate(self, faces: Sequence[FaceCrop]) -> AttributeTable:
        tables = [part.estimate(faces) for part in self.parts]
        names = tuple(dict.fromkeys(name for table in tables for name in table.names))
        values = np.full((len(faces), len(names)), np.nan, dtype=np.float32)
        for table in tables:
            for column, name in enumerate(table.names):
                target = values[:, names.index(name)]
                if np.isnan(target).all():
                    target[:] = table.probabilities[:, column]
        return AttributeTable(tuple(face.key for face in faces), names, values, self.name, self.heuristic)


def create_source(name: str, weights: WeightsStore, device: str = "cpu",
                  options: Mapping[str, str] | None = None) -> AttributeSource:
    """The named source, built with the run's weights and device; ``options``: source-specific settings.

    ``"a+b"`` merges sources (see :class:`MergedSource`); options then go to none of them."""
    if "+" in name:
        if options:
            raise ValueError(f"attribute source {name}: a merged source takes no -p options")
        return MergedSource([create_source(part.strip(), weights, device) for part in name.split("+")])
    try:
        target = SOURCES[name]
    except KeyError:
        raise UnknownSource(f"unknown attribute source {name!r}: choose one of {', '.join(SOURCES) or 'none'}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)(weights, device, dict(options or {}))
