"""From a :class:`~anonymize.run.config.RunConfig` and what the driver resolved to the stage objects.

Each stage gets the settings it reads and nothing more; this is the one place that knows which.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import PurePosixPath

import pyarrow as pa

from anonymize.faces.detect import Detector
from anonymize.io.manifest import manifest_schema, readable
from anonymize.io.walk import ImageFile
from anonymize.io.storage import plan_storage, work_storage
from anonymize.methods import Method
from anonymize.run.config import RunConfig
from anonymize.run.finish import Finisher, PasteBack, RowMaker
from anonymize.run.method_calls import MethodBuild, MethodCaller
from anonymize.run.prepare import Prepared, Preparer, PreviousRows, ResumePolicy
from anonymize.run.stages import Stages
from anonymize.steps import FinishingStep
from anonymize.steps.adversarial import AdversarialStep
from anonymize.steps.identity import IdentityMetricStep
from anonymize.steps.renders import RendersStep

UAP_PLAN = "adversarial-uap"  # the adversarial step's plan folder (anonymize.io.storage.plan_storage)


class MemoryBoundPreparer(Preparer):
    """The preparer, with a MemoryError while one image is read, decoded or detected made that image's error row:
    the run goes on with the next image, and a resume does not stop on the same file."""

    def prepare(self, file: ImageFile, previous: PreviousRows | None = None) -> Prepared:
        started = time.perf_counter()
        try:
            return super().prepare(file, previous)
        except MemoryError:
            shown = readable(str(PurePosixPath(file.relpath)))
            return Prepared(file, error=f"{shown}: not enough memory to read and decode it (lower --max-bytes or "
                                        f"--max-pixels to refuse such files before reading them)",
                            seconds=time.perf_counter() - started)


def method_build(config: RunConfig, device: str, expected_faces: int | None) -> MethodBuild:
    out = None if config.output.dry_run else config.output.output_dir
    return MethodBuild(config.method, config.execution.weights_dir, device, config.detection.aligned,
                       work_storage(out), plan_storage(out, config.method.name), expected_faces)


def finishing_steps(config: RunConfig, device: str) -> list[FinishingStep]:
    """The run's steps in the order they apply: the perturbation, then what measures the final image."""
    steps: list[FinishingStep] = []
    out = None if config.output.dry_run else config.output.output_dir
    if config.finishing.adversarial is not None:
        steps.append(AdversarialStep(config.finishing.adversarial, config.execution.weights_dir, device,
                                     config.output.jpeg_quality, config.detection.aligned, config.method.seed,
                                     plan_storage(out, UAP_PLAN)))
    if config.finishing.identity_metric:
        steps.append(IdentityMetricStep(config.execution.weights_dir))
    steps.append(RendersStep())
    return steps


def metric_columns(method: type[Method] | Method, steps: list[FinishingStep]) -> dict[str, pa.DataType]:
    """The run's metric columns: the method's, then each step's (a name declared twice must agree on its type)."""
    columns: dict[str, pa.DataType] = {}
    for owner, declared in [(method.name, method.metric_columns), *((step.name, step.metric_columns) for step in steps)]:
        for name, kind in declared.items():
            if columns.setdefault(name, kind) != kind:
                raise ValueError(f"{owner}: metric column {name!r} declared as {kind}, elsewhere as {columns[name]}")
    return columns


def run_schema(method: Method, steps: list[FinishingStep]) -> pa.Schema:
    return manifest_schema(metric_columns(method, steps))


def assemble_stages(config: RunConfig, run_id: str, method: Method, build: MethodBuild, detector: Detector | None,
                    steps: list[FinishingStep], method_params: str) -> Stages:
    """The stages of this run; ``method`` and ``detector``: the driver's own, already built."""
    preparer = MemoryBoundPreparer(config.detection, ResumePolicy(config.output.resume, config.output.output_dir), method.crop_size,
                        config.inputs.max_pixels, config.execution.weights_dir, build.device, detector)
    paste = PasteBack.of(config.region, method.default_region, method.replaces_aligned_image)
    finisher = Finisher(config.output, paste, steps, RowMaker(run_id, config.method.name, method_params))
    return Stages(preparer, MethodCaller(build, config.output.dry_run, method), finisher)


def with_chosen_detector(config: RunConfig, detector: str, augment: bool = False) -> RunConfig:
    """--detector auto resolved once by the driver: every worker builds the detector it chose, searching as it chose."""
    return replace(config, detection=replace(config.detection, detector=detector, augment=augment or config.detection.augment))
