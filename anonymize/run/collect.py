"""The faces of a folder, found and aligned exactly as ``anonymize run`` finds and aligns them.

Attribute tables are joined to a run's manifest by face key (``"<relative path>#<face index>"``),
so the keys must come from the same walk, the same detector choice and the same alignment: this
module runs the run's own :class:`~anonymize.run.prepare.Preparer` on the local executor's worker
pool in walk order (nothing is written). Faces come in batches formed by the run's batching rule,
so a CelebA-sized folder never holds every crop in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from anonymize.errors import RunError
from anonymize.faces.choose import choose_detector
from anonymize.io.walk import ImageFile, walk_tree
from anonymize.faces.types import FaceCrop
from anonymize.run.batching import BatchRule
from anonymize.run.config import DEFAULT_MAX_PIXELS, Detection
from anonymize.run.local import available_cores, prepare_window, prepared_in_order, worker_pool
from anonymize.run.prepare import Prepared, Preparer, ResumePolicy
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
        choice = None if self.aligned else choose_detector(self.detector, self.weights)  # as the run resolves it
        detector = self.detector if choice is None else choice.name
        self.detector_used = "aligned input" if choice is None else detector
        augment = choice is not None and choice.augment
        self.preparer = Preparer(Detection(detector, aligned=self.aligned, augment=augment), ResumePolicy(False, self.input_dir), CROP_SIZE,
                                 DEFAULT_MAX_PIXELS, self.weights.root, self.device)

    def batches(self, faces_per_batch: int = FACES_PER_BATCH,
                advance: Callable[[int], None] | None = None) -> Iterator[list[FaceCrop]]:
        """The faces in walk order, ``faces_per_batch`` at a time (an image's faces stay together);
        ``advance`` hears each image's face count."""
        workers = available_cores() if self.workers is None else self.workers
        pool = worker_pool(workers)
        try:
            prepared = prepared_in_order(pool, self.preparer, self.files, {}, prepare_window(workers))
            for images in BatchRule(faces_per_batch, images=None).group(map(self._seen, prepared), len):
                batch = [crop for crops in images for crop in crops]
                if batch:
                    yield batch
                for crops in images:
                    if advance is not None:
                        advance(len(crops))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _seen(self, prepared: Prepared) -> list[FaceCrop]:
        """Count one image (no face, or an error naming it) -> its crops."""
        self.images += 1
        if prepared.error is not None:
            self.errors.append(prepared.error)
        elif not prepared.faces:
            self.without_face.append(str(prepared.file.relpath))
        return prepared.crops() if prepared.error is None else []


def collect_faces(input_dir: Path, weights: WeightsStore, detector: str = "auto", aligned: bool = False,
                  device: str = "cpu") -> list[FaceCrop]:
    """Every face under ``input_dir`` at once, detected and aligned as ``anonymize run`` would (small folders)."""
    collector = FaceCollector(input_dir, weights, detector, aligned, device)
    return [face for batch in collector.batches() for face in batch]
