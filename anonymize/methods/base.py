"""The one interface every anonymization method implements.

A method sees aligned square face crops (FFHQ-style, at the size it asks for) in batches and
returns anonymized crops plus per-face metrics; the pipeline owns everything else (decode,
detection, alignment, paste-back, writing, the manifest). Adding a method is one module with a
:class:`Method` subclass plus one line in :mod:`anonymize.methods.registry`.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from anonymize.errors import AnonymizeError
from anonymize.faces.types import FaceCrop
from anonymize.io.storage import Plan, Storage
from anonymize.weights import WeightsStore

MetricValue = float | int | str | None
IdentityFrom = Literal["cluster", "folder"]


class MethodError(AnonymizeError):
    """A method that cannot run as configured (bad option, missing weights): the run stops before writing."""


@dataclass
class AnonymizedFace:
    crop: np.ndarray  # square uint8 RGB, any size (pasted back at its own resolution)
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    # Further renderings of the same face (CFA's angle sweep and variants), by label: the pipeline
    # writes each beside the main output (anonymize.io.write.render_relpath), other faces kept as in it.
    renders: dict[str, np.ndarray] = field(default_factory=dict)
    # Where the method changed the crop (float32 in [0, 1], the crop's size), when it knows better than a
    # fixed region (k-Same's shape-free face follows the face outline): the paste-back then uses it
    # instead of the method's default region; an explicit --region still wins.
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class MethodContext:
    """What the run gives every method: where models come from, where to compute, how to seed."""

    weights: WeightsStore
    device: str = "cpu"
    seed: int = 0
    batch_size: int | None = None  # None: the method chooses
    aligned_input: bool = False
    work: Storage | None = None  # the run's work folder, for side outputs such as saved latents; None in dry runs
    expected_faces: int | None = None  # a size hint before detection (e.g. for FALCO's fake bank)
    plan: Storage | None = None  # where a dataset-level method keeps its plan (in the output); None in dry runs
    identity_from: IdentityFrom = "cluster"  # how faces are grouped into people (see anonymize.methods.persons)


class Method(ABC):
    """Base class of all methods; subclasses declare ``name`` and a frozen ``Params`` dataclass."""

    name: ClassVar[str]
    crop_size: ClassVar[int] = 256
    # With FFHQ-framed input (--aligned on FFHQ or CelebA-HQ, or --aligned ffhq), True replaces the
    # whole image by the output crop (FALCO, as in the paper); False pastes the face region back.
    replaces_aligned_image: ClassVar[bool] = False
    # The region pasted back unless --region says otherwise: "ellipse" (face ellipse united with the
    # detected box down to the chin) suits filters of the original face; generative methods, whose
    # output is a whole new head, take "crop" (see anonymize.faces.paste).
    default_region: ClassVar[str] = "ellipse"
    # A dataset-level method (k-Same, CFA's leakage screen and per-person targets) must see every face
    # before it writes one: the pipeline first shows all faces to survey(), then calls plan() once,
    # then runs as usual. A copy of the method that did not plan (a Ray actor, a resumed run) reads
    # the plan from ``context.plan`` before its first anonymize().
    dataset_level: ClassVar[bool] = False
    # Whom the output must fool: "machine" (face recognition must not match it to its original: every
    # method so far) or "human" (a viewer must not recognise it while recognisers still match it, e.g.
    # camouflage). Recorded in the manifest; the audit reads it to choose its gates.
    privacy_goal: ClassVar[str] = "machine"
    # Recognisers inside the method's loss (white-box for it): the audit names them and judges with another.
    loss_recognisers: ClassVar[tuple[str, ...]] = ()
    # The manifest columns the method fills (name -> Arrow type); the run's schema is assembled from them.
    metric_columns: ClassVar[dict[str, pa.DataType]] = {}
    # Whether anonymize() runs torch: a local run then leaves it every core instead of sharing them out.
    uses_torch: ClassVar[bool] = True
    # Finishing steps (anonymize.steps) the method is made of besides its crops, e.g. the adversarial step.
    finishing_steps: ClassVar[tuple[str, ...]] = ()
    # What it does, in one line (`anonymize methods`).
    summary: ClassVar[str] = ""
    # The weights.lock artefacts it loads with its default options: `anonymize methods` shows whether each
    # is present; the missing-weights message names the methods whose artefacts all ship with a package.
    weights_needed: ClassVar[tuple[str, ...]] = ()
    # Options under which it needs no download although its defaults do (e.g. parts: "-p backend=warp").
    no_download_with: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, context: MethodContext, options: Mapping[str, str] | None = None) -> None:
        self.context = context
        self.params = parse_params(self.Params, options or {}, self.name)

    def describe(self) -> dict[str, Any]:
        """Everything that determines the output, for the manifest's method-parameters column."""
        return {**dataclasses.asdict(self.params), "seed": self.context.seed}

    def weights_used(self) -> dict[str, str]:
        """Artefact name -> sha256 of every weight file the method loaded."""
        return {}

    def privacy_caveat(self) -> str | None:
        """One line for the run summary when these options leave identity in the output by design."""
        return None

    def default_batch_size(self) -> int:
        return 16

    def survey(self, faces: Sequence[FaceCrop]) -> None:
        """Pass 1 of a dataset-level method: a batch of the dataset's faces, seen before any is written."""
        raise NotImplementedError(f"method {self.name!r} is not dataset-level")

    def plan(self) -> dict[str, MetricValue]:
        """Between the passes: decide from every face surveyed and store the plan in ``context.plan``.

        Faces already in a plan stored by an earlier run keep their place in it (a resumed run must
        not change what was written); returns a few figures for the run's log (groups, clusters).
        """
        raise NotImplementedError(f"method {self.name!r} is not dataset-level")

    def plan_warnings(self) -> list[str]:
        """Lines the run prints as warnings, once, after :meth:`plan` (not per face): what the plan found that
        the user must know before trusting the output (CFA: faces whose start is already past the angle asked)."""
        return []

    def stored_plan(self) -> Plan | None:
        """The plan an earlier survey stored for this run (None: none, or a dry run)."""
        return self.context.plan.read_plan() if self.context.plan is not None else None

    @abstractmethod
    def anonymize(self, faces: Sequence[FaceCrop]) -> list[AnonymizedFace]:
        """Anonymize a batch of crops; the result has one entry per input, in order."""


def parse_params(params_type: type, options: Mapping[str, str], method_name: str) -> Any:
    """Turn ``--option key=value`` strings into the method's typed Params, with one-line errors."""
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    hints = typing.get_type_hints(params_type)
    values: dict[str, Any] = {}
    for key, raw in options.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise MethodError(f"method {method_name!r} has no option {key!r} (its options: {known})")
        kind = hints[name]
        try:
            values[name] = _convert(raw, kind)
        except ValueError as exc:
            raise MethodError(f"method {method_name!r}: option {key}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc
    params = params_type(**values)
    validate = getattr(params, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            raise MethodError(f"method {method_name!r}: {exc}") from exc
    return params


def _convert(raw: str, kind: Any) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind in (int, float, str):
        return kind(raw)
    if kind == tuple[int, ...]:
        return tuple(int(part) for part in raw.split(",") if part.strip())
    raise ValueError(f"unsupported option type {kind}")
