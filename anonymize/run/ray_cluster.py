"""The Ray executor: the same stages, spread over a Ray cluster (``--executor ray``).

- prepare: CPU tasks, one per shard of consecutive images (hash, resume check, decode, detect,
  align); each returns three objects: the face count of every image (all the driver fetches),
  the aligned crops (all the method needs) and the prepared images (what finish needs);
- anonymize: method actors that hold the models once per GPU (``num_gpus=1`` when the cluster has
  GPUs, else one actor on the CPU); the driver deals each shard's crops to the actor with the
  fewest faces queued, so GPUs are balanced by faces, not files;
- finish: CPU tasks that paste, write atomically and write the shard's own manifest part.

The driver walks, locks and marks the output folder, and at the end merges every part with the
same idempotent merge as a local run (rows keyed by source path and face index, newest wins).
Ray retries a task or restarts an actor whose worker or node died; a retried finish rewrites the
same outputs atomically and writes its part again, and the merge keeps each row once. Inputs and
outputs must be paths every node sees (a shared file system) or URIs (``s3://``, ``gs://``: each
worker opens the store from the URI itself, with its own credentials), and every node needs the weights
(the same ``ANONYMIZE_HOME``; the driver's ``ANONYMIZE_*`` variables are passed to the workers).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from anonymize.errors import RunError
from anonymize.io.manifest import ManifestWriter
from anonymize.io.walk import ImageFile
from anonymize.faces.types import FaceCrop
from anonymize.run.batching import BatchRule
from anonymize.run.config import Execution
from anonymize.run.finish import Finished, MethodOutcome
from anonymize.run.method_calls import MethodCaller
from anonymize.run.prepare import Prepared
from anonymize.run.stages import Record, Stages, StageTimes

INSTALL_HINT = "--executor ray needs Ray, which is not installed: pip install 'anonymize[ray]'"
RETRIES = 3  # attempts Ray makes again for a task (or actor) whose worker or node died
IMAGES_PER_SHARD = 16


def require_ray() -> None:
    """Fail with one line (how to install it) when Ray is missing."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise RunError(INSTALL_HINT) from None


# -- what runs on the workers ---------------------------------------------------------------------------
def prepare_shard(stages: Stages, shard: list[tuple[ImageFile, list[dict[str, Any]] | None]]
                  ) -> tuple[list[int], list[FaceCrop], list[Prepared]]:
    """Prepare a shard -> (faces per image, 0 when the method is not needed; the crops; the images)."""
    items = [stages.prepare(file, previous) for file, previous in shard]
    faces = [len(item.faces) if item.needs_method else 0 for item in items]
    crops = [crop for item in items for crop in item.method_crops()]
    return faces, crops, items


def finish_shard(stages: Stages, items: list[Prepared], writer: ManifestWriter | None,
                 where: list[tuple[int, int]], *batches: tuple[list[MethodOutcome], float, int]
                 ) -> tuple[list[Finished], dict[str, float]]:
    """Finish every image of the shard, then write the shard's manifest part (a new one per attempt).

    ``where[k]``: the batch (index into ``batches``) and the position in it of the k-th image that
    needed the method; a batch is (outcome per image, seconds, faces).
    """
    located = iter(where)
    finished = []
    method_total = 0.0  # this shard's share of its batches' device time
    for item in items:
        outcome, method_seconds = None, 0.0
        if item.needs_method:
            batch, position = next(located)
            outcomes, seconds, faces = batches[batch]
            outcome, method_seconds = outcomes[position], seconds * len(item.faces) / max(1, faces)
        method_total += method_seconds
        finished.append(stages.finish(item, outcome, method_seconds))
    if writer is not None:
        rows = [row for item in finished for row in item.rows]
        # A fresh tag per attempt: a retried shard never overwrites a part, the merge keeps each row once.
        writer.shard(uuid.uuid4().hex[:12]).append(rows)
    times = {"prepare": sum(item.seconds for item in items), "finish": sum(item.seconds for item in finished),
             "anonymize": method_total}
    for item in finished:
        item.rows = []  # written already: the driver only counts
    return finished, times


class MethodActor:
    """Holds the method's models once (on its GPU when it has one) and anonymizes batches of crops."""

    def __init__(self, caller: MethodCaller, deterministic: bool, cpu_threads: int) -> None:
        import torch

        build = caller.build_settings
        device = "cuda" if build.device != "cpu" and torch.cuda.is_available() else "cpu"
        if device == "cpu":  # Ray gives a zero-CPU actor one thread; compute as a local run would (same sums)
            torch.set_num_threads(cpu_threads)
        if deterministic:  # --deterministic holds in every process that runs the method
            from anonymize.models.determinism import use_deterministic_algorithms

            use_deterministic_algorithms()
        self.caller = MethodCaller(replace(build, device=device), caller.dry_run)

    def anonymize(self, images: list[tuple[int, int, int]], *shard_crops: list[FaceCrop]
                  ) -> tuple[list[MethodOutcome], float, int]:
        """``images[k]``: (shard argument, first crop, number of faces) of the batch's k-th image."""
        started = time.perf_counter()
        crops = [shard_crops[shard][first:first + count] for shard, first, count in images]
        outcomes = self.caller.anonymize(crops)
        return outcomes, time.perf_counter() - started, sum(count for _, _, count in images)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# -- the driver -----------------------------------------------------------------------------------------
def _worker_env() -> dict[str, Any]:
    """Pass the driver's ANONYMIZE_* variables (weights folder, lock) to every task and actor."""
    env = {key: value for key, value in os.environ.items() if key.startswith("ANONYMIZE_")}
    return {"runtime_env": {"env_vars": env}} if env else {}


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or start a local Ray); True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    return True


def run_on_ray(stages: Stages, files: Sequence[ImageFile], previous: dict[str, list[dict[str, Any]]], rule: BatchRule,
               record: Record, times: StageTimes, writer: ManifestWriter | None, execution: Execution) -> None:
    """Prepare -> anonymize -> finish every shard on the cluster; ``record`` counts what each shard finished."""
    import ray

    started_here = connect(execution.ray_address)
    try:
        _run(ray, stages, files, previous, record, times, writer, rule, execution)
    finally:
        if started_here:
            ray.shutdown()


@dataclass
class _Shard:
    refs: tuple[Any, Any, Any]  # faces, crops, prepared images (object refs)
    where: list[tuple[int, int]] = field(default_factory=list)  # (batch number, position) per image for the method
    batches: list[int] = field(default_factory=list)  # batch numbers it needs, in first-use order


@dataclass
class _Batch:
    """The method batch being filled: images in walk order, as the local executor forms them."""

    number: int
    images: list[tuple[int, int, int]] = field(default_factory=list)  # (shard argument, first crop, faces)
    shards: list[int] = field(default_factory=list)  # shard ids, in argument order
    faces: int = 0
    size: int = 0  # images of any kind: the 64-image cap counts them all, as in a local run


def _run(ray: Any, stages: Stages, files: Sequence[ImageFile], previous: dict[str, list[dict[str, Any]]],
         record: Record, times: StageTimes, writer: ManifestWriter | None, rule: BatchRule, execution: Execution) -> None:
    env = _worker_env()
    gpus = int(ray.cluster_resources().get("GPU", 0)) if execution.device != "cpu" else 0
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    prepare = ray.remote(prepare_shard).options(num_cpus=1, num_returns=3, max_retries=RETRIES, **env)
    finish = ray.remote(finish_shard).options(num_cpus=1, max_retries=RETRIES, **env)
    # On CPU the method shares the cores with the tasks (num_cpus=0), as it does in a local run.
    actor_class = ray.remote(MethodActor).options(num_gpus=1 if gpus else 0, num_cpus=0, max_restarts=RETRIES,
                                                  max_task_retries=RETRIES, **env)
    actors = [actor_class.remote(stages.caller, execution.deterministic, _torch_threads()) for _ in range(max(1, gpus))]
    queued = [0] * len(actors)  # faces dealt to each actor and not yet finished

    size = max(1, min(IMAGES_PER_SHARD, len(files) // (4 * cpus) or 1))
    shard_inputs = iter([(file, previous.get(str(file.relpath))) for file in files[start:start + size]]
                        for start in range(0, len(files), size))
    window = 2 * cpus + len(actors)  # shards in flight: memory stays flat in dataset size
    shards: dict[int, _Shard] = {}  # submitted, not yet finished
    to_plan: list[int] = []  # prepared-or-preparing shards whose images are not yet in a batch, in walk order
    waiting: list[int] = []  # planned shards whose last batch is still open
    batch_refs: dict[int, tuple[Any, int, int]] = {}  # batch number -> (result ref, actor, faces)
    finishing: dict[Any, int] = {}
    state = {"stop": False, "next": 0}
    batch = _Batch(0)

    def top_up() -> None:
        while not state["stop"] and len(shards) < window:
            shard_input = next(shard_inputs, None)
            if shard_input is None:
                return
            number = state["next"]
            state["next"] += 1
            shards[number] = _Shard(tuple(prepare.remote(stages, shard_input)))
            to_plan.append(number)

    def submit_finish(number: int) -> None:
        shard = shards[number]
        results = [batch_refs[b][0] for b in shard.batches]
        where = [(shard.batches.index(b), position) for b, position in shard.where]
        finishing[finish.remote(stages, shard.refs[2], writer, where, *results)] = number

    def close_batch() -> None:
        nonlocal batch
        if batch.images:
            chosen = min(range(len(actors)), key=queued.__getitem__)  # balanced by faces
            queued[chosen] += batch.faces
            crops = [shards[number].refs[1] for number in batch.shards]
            batch_refs[batch.number] = (actors[chosen].anonymize.remote(batch.images, *crops), chosen, batch.faces)
        for number in waiting:
            submit_finish(number)
        waiting.clear()
        batch = _Batch(batch.number + 1)

    def plan(number: int, faces: list[int]) -> None:
        """Put the shard's images into batches exactly as the local executor would."""
        shard, first_crop = shards[number], 0
        for count in faces:
            if count:
                if number not in batch.shards:
                    batch.shards.append(number)
                shard.where.append((batch.number, len(batch.images)))
                if batch.number not in shard.batches:
                    shard.batches.append(batch.number)
                batch.images.append((batch.shards.index(number), first_crop, count))
                first_crop += count
            batch.faces += count
            batch.size += 1
            if rule.full(batch.faces, batch.size):
                close_batch()
        if batch.number in shard.batches:
            waiting.append(number)  # its last batch is still open
        else:
            submit_finish(number)

    try:
        top_up()
        while to_plan or finishing or waiting:
            if not to_plan and waiting:
                close_batch()  # every prepared image is planned: send the last, partial batch
                continue
            watched = ([shards[to_plan[0]].refs[0]] if to_plan else []) + list(finishing)
            ready, _ = ray.wait(watched, num_returns=1)
            ref = ready[0]
            if to_plan and ref == shards[to_plan[0]].refs[0]:
                plan(to_plan.pop(0), ray.get(ref))
            else:
                number = finishing.pop(ref)
                finished, spent = ray.get(ref)
                shard = shards.pop(number)
                for b in shard.batches:  # a batch is done once every shard that used it is finished
                    if not any(b in other.batches for other in shards.values()):
                        _, chosen, faces = batch_refs.pop(b)
                        queued[chosen] -= faces
                times.prepare += spent["prepare"]
                times.finish += spent["finish"]
                times.anonymize += spent.get("anonymize", 0.0)
                times.images += len(finished)
                state["stop"] = record(finished) or state["stop"]
            top_up()
    finally:
        for ref in [*(shard.refs[0] for shard in shards.values()), *finishing]:
            ray.cancel(ref, force=False)
        for actor in actors:
            ray.kill(actor)
