"""What a run is asked to do, one small frozen setting per concern, and what it reports back.

Each stage receives the settings it uses and nothing else: the preparer reads
:class:`Detection` and :class:`Inputs`, the finisher :class:`OutputPolicy` and :class:`PasteRegion`,
the method :class:`MethodSpec`, the executors :class:`Execution`. :func:`run_config` builds a
:class:`RunConfig` from the CLI's flat flags and :meth:`RunConfig.flags` gives them back (the
manifest records them under ``arguments``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from anonymize.adversarial.settings import AdversarialSettings
from anonymize.faces.paste import RegionKind
from anonymize.io.store import Location
from anonymize.methods.base import IdentityFrom

OnNoFace = Literal["copy", "skip", "fail"]
OnError = Literal["skip", "fail"]
Executor = Literal["local", "ray"]
Framing = Literal["auto", "ffhq"]
DEFAULT_MAX_PIXELS = 178_956_970  # a 13000 x 13000 photo needs about 3 GB decoded
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB: larger files are error rows from their size, never read (anonymize.io.decode)


@dataclass(frozen=True)
class Inputs:
    """Which files the walk gives the run."""

    input_dir: Location  # a local Path, or a StorePath for a URI (s3://, gs://, file://; anonymize.io.store)
    limit: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are error rows, not memory exhaustion
    copy_other: bool = False  # copy files that are not images (labels, CSV) unchanged into the output
    max_bytes: int = DEFAULT_MAX_BYTES  # larger files (images and side files) are error rows, never read


@dataclass(frozen=True)
class Detection:
    """How faces are found and framed; ``detector`` is resolved once (auto -> the one chosen) by the pipeline."""

    detector: str = "auto"
    aligned: bool = False  # one centred face per image (CelebA, FFHQ crops); a detector still counts the faces
    aligned_lenient: bool = False  # --aligned and more than one face: warn and anonymize the others (default: error row)
    framing: Framing = "auto"  # ffhq: every input is an FFHQ-framed square, used whole
    min_face: int = 0
    threshold: float | None = None
    recall_first: bool = False  # lower detection thresholds (faces.detect.RECALL_FIRST_THRESHOLDS)
    augment: bool = False  # the padded frame and the mirror searched too (auto's chain; --recall-first always)
    heads: str = "auto"  # on | off | auto (on with --recall-first when the pose model is here): anonymize.faces.heads

    @property
    def searches_augmented(self) -> bool:
        """Whether each detector also searches the padded frame and the mirror: auto's chain, and --recall-first."""
        return self.augment or self.recall_first


@dataclass(frozen=True)
class PasteRegion:
    """What is pasted back; ``kind`` None: the method's default region."""

    kind: RegionKind | None = None
    scale: float = 1.0
    feather: float = 0.04


@dataclass(frozen=True)
class MethodSpec:
    """The method, its own options (``-p``), and what every method is run with."""

    name: str = "falco"
    options: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    batch_size: int | None = None  # faces per method call; None: the method's default
    identity_from: IdentityFrom = "cluster"  # dataset-level methods: who is the same person


@dataclass(frozen=True)
class Finishing:
    """The finishing steps on the pasted image (anonymize.steps), besides the method."""

    adversarial: AdversarialSettings | None = None  # -p adversarial=; --method adversarial: PGD
    identity_metric: bool = False  # dlib distance original vs output per face


@dataclass(frozen=True)
class OutputPolicy:
    """Where and how outputs are written, and what a failure or an earlier run means."""

    output_dir: Location
    manifest_path: Location | None = None  # None: <out>/manifest.parquet
    on_no_face: OnNoFace = "copy"
    on_error: OnError = "skip"
    resume: bool = True
    overwrite: bool = False
    dry_run: bool = False
    jpeg_quality: int = 95
    strip_icc: bool = False  # --strip-icc: outputs carry no ICC profile at all (default: its colour data only)


@dataclass(frozen=True)
class Execution:
    """Where the work runs."""

    device: str = "auto"
    workers: int | None = None  # local executor threads (None: the cores available; 0 or 1: serial)
    executor: Executor = "local"
    ray_address: str | None = None  # --executor ray: the cluster to join (None: a local Ray)
    deterministic: bool = False  # bit-stable CUDA runs: deterministic algorithms, no TF32, fixed cuDNN choices
    weights_dir: Path | None = None


@dataclass(frozen=True)
class RunConfig:
    inputs: Inputs
    output: OutputPolicy
    method: MethodSpec = field(default_factory=MethodSpec)
    detection: Detection = field(default_factory=Detection)
    region: PasteRegion = field(default_factory=PasteRegion)
    finishing: Finishing = field(default_factory=Finishing)
    execution: Execution = field(default_factory=Execution)

    def flags(self) -> dict[str, Any]:
        """The flat flags this configuration was built from (the inverse of :func:`run_config`)."""
        return {flag: getattr(getattr(self, section), name) for flag, (section, name) in FLAGS.items()}

    def with_method_option(self, key: str, value: str) -> RunConfig:
        return replace(self, method=replace(self.method, options={**self.method.options, key: value}))


# flat flag -> (section of RunConfig, field of that section); the manifest's "arguments" keep these names
FLAGS: dict[str, tuple[str, str]] = {
    "input_dir": ("inputs", "input_dir"),
    "output_dir": ("output", "output_dir"),
    "method": ("method", "name"),
    "method_options": ("method", "options"),
    "detector": ("detection", "detector"),
    "weights_dir": ("execution", "weights_dir"),
    "aligned": ("detection", "aligned"),
    "aligned_framing": ("detection", "framing"),
    "aligned_lenient": ("detection", "aligned_lenient"),
    "min_face": ("detection", "min_face"),
    "det_threshold": ("detection", "threshold"),
    "recall_first": ("detection", "recall_first"),
    "heads": ("detection", "heads"),
    "on_no_face": ("output", "on_no_face"),
    "on_error": ("output", "on_error"),
    "resume": ("output", "resume"),
    "overwrite": ("output", "overwrite"),
    "batch_size": ("method", "batch_size"),
    "device": ("execution", "device"),
    "seed": ("method", "seed"),
    "limit": ("inputs", "limit"),
    "dry_run": ("output", "dry_run"),
    "jpeg_quality": ("output", "jpeg_quality"),
    "strip_icc": ("output", "strip_icc"),
    "region": ("region", "kind"),
    "region_scale": ("region", "scale"),
    "feather": ("region", "feather"),
    "identity_metric": ("finishing", "identity_metric"),
    "manifest_path": ("output", "manifest_path"),
    "max_pixels": ("inputs", "max_pixels"),
    "copy_other": ("inputs", "copy_other"),
    "max_bytes": ("inputs", "max_bytes"),
    "deterministic": ("execution", "deterministic"),
    "workers": ("execution", "workers"),
    "executor": ("execution", "executor"),
    "ray_address": ("execution", "ray_address"),
    "identity_from": ("method", "identity_from"),
    "adversarial": ("finishing", "adversarial"),
}
_SECTION_TYPES = {"inputs": Inputs, "output": OutputPolicy, "method": MethodSpec, "detection": Detection,
                  "region": PasteRegion, "finishing": Finishing, "execution": Execution}


def run_config(input_dir: Location, output_dir: Location, **flags: Any) -> RunConfig:
    """A :class:`RunConfig` from the CLI's flat flags (``method="blur", aligned=True, ...``)."""
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise TypeError(f"run_config: unknown flag(s) {', '.join(unknown)}")
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTION_TYPES}
    for flag, value in {"input_dir": input_dir, "output_dir": output_dir, **flags}.items():
        section, name = FLAGS[flag]
        sections[section][name] = value
    return RunConfig(**{section: _SECTION_TYPES[section](**values) for section, values in sections.items()})


def recorded_arguments(config: RunConfig) -> dict[str, Any]:
    """The flags as JSON-ready values (paths as text, settings as dicts): the manifest's ``arguments``."""
    out: dict[str, Any] = {}
    for flag, value in config.flags().items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, AdversarialSettings):
            value = asdict(value)
        out[flag] = value
    return out
