"""Where attribute values come from: one small class per source, registered by name.

A source turns aligned face crops (the pipeline's :class:`~anonymize.methods.FaceCrop`: the
crop, its landmarks, its key) into an :class:`AttributeTable`. Sources are imported lazily, so
the landmark heuristics never load a neural network.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Protocol

from anonymize.attributes.table import AttributeTable
from anonymize.methods.base import FaceCrop
from anonymize.weights import WeightsStore

# name -> "module:Class"; each module is one source.
SOURCES: dict[str, str] = {
    "zero-shot": "anonymize.attributes.zero_shot:ZeroShotSource",
    "labels": "anonymize.attributes.labels:LabelsSource",
    "probe": "anonymize.attributes.probe:ProbeSource",
    "landmarks": "anonymize.attributes.landmarks:LandmarkSource",
}


class AttributeSource(Protocol):
    name: str
    heuristic: bool

    def estimate(self, faces: Sequence[FaceCrop]) -> AttributeTable:
        """One row per face, in order."""
        ...


class UnknownSource(ValueError):
    """An attribute source name that is not registered."""


def create_source(name: str, weights: WeightsStore, device: str = "cpu",
                  options: Mapping[str, str] | None = None) -> AttributeSource:
    """The named source, built with the run's weights and device; ``options``: source-specific settings."""
    try:
        target = SOURCES[name]
    except KeyError:
        raise UnknownSource(f"unknown attribute source {name!r}: choose one of {', '.join(SOURCES) or 'none'}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)(weights, device, dict(options or {}))
