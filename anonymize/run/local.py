"""The local executor: prepare and finish in a pool of threads, the method on the main device.

Threads, not processes: decoding and encoding (Pillow), OpenCV, dlib and torch release the GIL
for their heavy work (measured in benchmarks/pipeline.py), and threads share the method's
models without copying them. Queues are bounded: at most ``window`` images are prepared ahead
and at most two batches are being finished, so memory does not grow with the dataset. Batches
are formed in walk order exactly as in the serial path (``workers <= 1``, the same code with the
stages called inline), so both give the same outputs and rows.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from anonymize.io.walk import ImageFile
from anonymize.run.batching import BatchRule
from anonymize.run.finish import Finished
from anonymize.run.prepare import Prepared, Preparer, PreviousRows
from anonymize.run.stages import Record, Stages, StageTimes

T = TypeVar("T")
R = TypeVar("R")
_END = object()
FINISHING_BATCHES = 2  # batches being pasted and written while the method works on the next one


def available_cores() -> int:
    """The cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _Inline:
    """A pool of no threads: each call runs at once (the serial path, same code as the pool)."""

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised by result(), as a pool would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


@contextmanager
def torch_threads_per_worker(workers: int, method_needs_every_core: bool) -> Iterator[None]:
    """Split the cores between the workers: each worker's torch and OpenCV calls (detection on the CPU)
    use cores / workers threads instead of all of them, so the pool does not oversubscribe the CPU
    (measured on 2 cores: 10.9 instead of 9.2 images/s). Not when the method itself runs torch on
    the CPU (FALCO with --device cpu): it needs every core. torch is only told when something already
    imported it (a torch detector or method is built before the pool starts): a blur run with
    RetinaFace on OpenCV never loads it. Restored when the run ends."""
    import cv2

    split = workers > 1 and not method_needs_every_core
    share = max(1, available_cores() // max(workers, 1))
    torch = sys.modules.get("torch")
    before = (cv2.getNumThreads(), torch.get_num_threads() if torch is not None else None)
    if split:
        cv2.setNumThreads(share)
        if torch is not None:
            torch.set_num_threads(share)
    try:
        yield
    finally:
        cv2.setNumThreads(before[0])
        if torch is not None and before[1] is not None:
            torch.set_num_threads(before[1])


def method_needs_every_core(stages: Stages) -> bool:
    """The method runs torch on the CPU (FALCO with --device cpu): the workers leave it every core."""
    return stages.device == "cpu" and stages.method().uses_torch


def run_local(stages: Stages, files: Iterable[ImageFile], previous: dict[str, PreviousRows],
              rule: BatchRule, workers: int, record: Record, times: StageTimes) -> None:
    """Prepare -> anonymize (batched by ``rule``) -> finish -> record, over ``files`` in walk order."""
    with torch_threads_per_worker(workers, method_needs_every_core(stages)):
        _run_local(stages, files, previous, rule, workers, record, times)


def in_order(pool: Any, function: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``function`` over ``items`` on ``pool``, at most ``window`` ahead, results in the items' order.

    Closing the generator (the consumer stops early) cancels what was not started.
    """
    pending = iter(items)
    queue: deque[Future] = deque()

    def top_up() -> None:
        while len(queue) < window:
            item = next(pending, _END)
            if item is _END:
                return
            queue.append(pool.submit(function, item))

    try:
        top_up()
        while queue:
            result = queue.popleft().result()
            top_up()
            yield result
    finally:
        for future in queue:
            future.cancel()


def prepared_in_order(pool: Any, preparer: Preparer, files: Iterable[ImageFile],
                      previous: dict[str, PreviousRows], window: int) -> Iterator[Prepared]:
    """Prepare ``files`` on the pool, at most ``window`` ahead, and yield them in walk order."""
    return in_order(pool, lambda file: preparer.prepare(file, previous.get(str(file.relpath))), files, window)


def prepare_window(workers: int) -> int:
    """Images prepared ahead of the method: enough to keep it fed, few enough to keep memory flat."""
    return max(8, 4 * workers)


def worker_pool(workers: int) -> Any:
    """Threads for prepare and finish; with one worker or none, calls run inline (the serial path)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="anonymize") if workers > 1 else _Inline()


def _run_local(stages: Stages, files: Iterable[ImageFile], previous: dict[str, PreviousRows],
               rule: BatchRule, workers: int, record: Record, times: StageTimes) -> None:
    pool = worker_pool(workers)
    in_flight = FINISHING_BATCHES if workers > 1 else 0  # serial: each batch is recorded before the next starts
    finishing: deque[list[Future]] = deque()
    stop = False

    def drain(keep: int) -> bool:
        """Record finished batches in order until at most ``keep`` remain; True: stop the run."""
        stopping = False
        while len(finishing) > keep:
            done: list[Finished] = [future.result() for future in finishing.popleft()]
            times.finish += sum(item.seconds for item in done)
            stopping = record(done) or stopping
        return stopping

    def anonymize_and_finish(batch: list[Prepared]) -> None:
        for_method = [item for item in batch if item.needs_method]
        outcomes: Iterator[Any] = iter(())
        share = 0.0
        if for_method:
            started = time.perf_counter()
            outcomes = iter(stages.anonymize(for_method))
            spent = time.perf_counter() - started
            times.anonymize += spent
            share = spent / sum(len(item.faces) for item in for_method)
        futures = []
        for item in batch:
            outcome = next(outcomes) if item.needs_method else None
            futures.append(pool.submit(stages.finish, item, outcome, share * len(item.faces)))
        times.prepare += sum(item.seconds for item in batch)
        times.images += len(batch)
        finishing.append(futures)

    prepared = prepared_in_order(pool, stages.preparer, files, previous, prepare_window(workers))
    try:
        for batch in rule.group(prepared, lambda item: len(item.method_crops())):
            anonymize_and_finish(batch)
            stop = drain(in_flight)
            if stop:
                break
        drain(0)
    finally:
        prepared.close()
        pool.shutdown(wait=True, cancel_futures=True)
