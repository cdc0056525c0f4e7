"""The faces of a folder, found and aligned exactly as ``anonymize run`` finds and aligns them.

Attribute tables are joined to a run's manifest by face key (``"<relative path>#<face index>"``),
so the keys must come from the same walk, the same detector choice and the same alignment: this
module builds the run's own :class:`~anonymize.stages.Stages` (a dry run: nothing is written) and
keeps only its prepare stage, run on the local executor's worker pool in walk order. Faces come in
batches, so a CelebA-sized folder never holds every crop in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from anonymize.executors.local import available_cores, prepared_in_order, worker_pool
from anonymize.faces.choose import choose_detector
from anonymize.io.walk import ImageFile, walk_tree
from anonymize.methods import FaceCrop
from anonymize.pipeline import RunConfig, RunError
from anonymize.stages import RunFacts, Stages
from anonymize.weights import WeightsStore

CROP_SIZE = 256  # the aligned crop every attribute source sees (the size most methods ask for)
FACES_PER_BATCH = 256


def image_files(input_dir: Path) -> list[ImageFile]:
    """The run's walk of ``input_dir`` (image candidates only, in the run's order)."""
    if not input_dir.is_dir():
        raise RunError(f"{input_dir}: input folder does not exist" if not input_dir.exists() else f"{input_dir}: input is not a folder")
    files = [ImageFile(entry.path, entry.relpath) for entry in walk_tree(input_dir) if entry.kind == "image"]
    if not files:
        raise RunError(f"{input_dir}: no image found (looked for jpg, jpeg, png, webp, bmp, tif, tiff)")
    return files


@dataclass
class FaceCollector:
    """Walks ``input_dir`` and yields its aligned faces in batches; counts what gave no face or failed."""

    input_dir: Path
    weights: WeightsStore
    detector: str = "auto"
    aligned: bool = False
    device: str = "cpu"
    workers: int | None = None  # threads preparing images (None: the cores available)
    images: int = 0
    without_face: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line each, naming the file

    def __post_init__(self) -> None:
        self.files = image_files(self.input_dir)
        # The run's output folder is never written in a dry run without resume; the input stands in for it.
        config = RunConfig(input_dir=self.input_dir, output_dir=self.input_dir, detector=self.detector,
                           weights_dir=self.weights.root, aligned=self.aligned, resume=False, dry_run=True, device=self.device)
        if not self.aligned:  # --detector auto resolved once, as the run resolves it
            config = replace(config, detector=choose_detector(self.detector, self.weights).name)
        self.detector_used = "aligned input" if self.aligned else config.detector
        self.stages = Stages(RunFacts(config, run_id="attributes", method_params="{}", device=self.device,
                                      crop_size=CROP_SIZE, replaces_aligned_image=False))

    def batches(self, faces_per_batch: int = FACES_PER_BATCH,
                advance: Callable[[int], None] | None = None) -> Iterator[list[FaceCrop]]:
        """The faces in walk order, ``faces_per_batch`` at a time (an image's faces stay together);
        ``advance`` hears each image's face count."""
        workers = available_cores() if self.workers is None else self.workers
        pool = worker_pool(workers)
        batch: list[FaceCrop] = []
        try:
            for prepared in prepared_in_order(pool, self.stages, self.files, {}, max(8, 4 * workers)):
                self.images += 1
                if prepared.error is not None:
                    self.errors.append(prepared.error)
                elif not prepared.faces:
                    self.without_face.append(str(prepared.file.relpath))
                else:
                    batch.extend(prepared.crops())
                if advance is not None:
                    advance(len(prepared.faces))
                if len(batch) >= faces_per_batch:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def collect_faces(input_dir: Path, weights: WeightsStore, detector: str = "auto", aligned: bool = False,
                  device: str = "cpu") -> list[FaceCrop]:
    """Every face under ``input_dir`` at once, detected and aligned as ``anonymize run`` would (small folders)."""
    collector = FaceCollector(input_dir, weights, detector, aligned, device)
    return [face for batch in collector.batches() for face in batch]
