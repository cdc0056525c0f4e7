"""The faces of a folder, found and aligned exactly as ``anonymize run`` finds and aligns them.

Attribute tables are joined to a run's manifest by face key (``"<relative path>#<face index>"``),
so the keys must come from the same walk, the same detector choice and the same alignment: this
module builds the run's own :class:`~anonymize.stages.Stages` (a dry run: nothing is written) and
keeps only its prepare stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from anonymize.faces.choose import choose_detector
from anonymize.io.walk import ImageFile, walk_tree
from anonymize.methods import FaceCrop
from anonymize.pipeline import RunConfig, RunError
from anonymize.stages import Prepared, RunFacts, Stages
from anonymize.weights import WeightsStore

CROP_SIZE = 256  # the aligned crop every attribute source sees (the size most methods ask for)


@dataclass
class CollectedFaces:
    """Every face of a folder in walk order, and the images that gave none or failed."""

    faces: list[FaceCrop] = field(default_factory=list)
    images: int = 0
    without_face: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line each, naming the file
    detector: str = ""


def image_files(input_dir: Path) -> list[ImageFile]:
    """The run's walk of ``input_dir`` (image candidates only, in the run's order)."""
    if not input_dir.is_dir():
        raise RunError(f"{input_dir}: input folder does not exist" if not input_dir.exists() else f"{input_dir}: input is not a folder")
    files = [ImageFile(entry.path, entry.relpath) for entry in walk_tree(input_dir) if entry.kind == "image"]
    if not files:
        raise RunError(f"{input_dir}: no image found (looked for jpg, jpeg, png, webp, bmp, tif, tiff)")
    return files


def collect_faces(input_dir: Path, weights: WeightsStore, detector: str = "auto", aligned: bool = False,
                  device: str = "cpu", advance: Callable[[int], None] | None = None,
                  start: Callable[[int], None] | None = None) -> CollectedFaces:
    """Detect and align every face under ``input_dir`` as ``anonymize run`` would (``--detector``, ``--aligned``);
    ``start`` hears the number of images, ``advance`` the faces of each image done."""
    collected = CollectedFaces()
    for file, prepared in _prepared(input_dir, weights, detector, aligned, device, collected, start):
        collected.images += 1
        if prepared.error is not None:
            collected.errors.append(prepared.error)
        elif not prepared.faces:
            collected.without_face.append(str(file.relpath))
        else:
            collected.faces.extend(prepared.crops())
        if advance is not None:
            advance(len(prepared.faces))
    return collected


def _prepared(input_dir: Path, weights: WeightsStore, detector: str, aligned: bool, device: str,
              collected: CollectedFaces, start: Callable[[int], None] | None) -> Iterator[tuple[ImageFile, Prepared]]:
    files = image_files(input_dir)
    if start is not None:
        start(len(files))
    config = RunConfig(input_dir=input_dir, output_dir=input_dir, detector=detector, weights_dir=weights.root,
                       aligned=aligned, resume=False, dry_run=True, device=device)
    if not aligned:  # --detector auto resolved once, as the run does (RetinaFace when its weights are here)
        config = replace(config, detector=choose_detector(detector, weights).name)
    collected.detector = "aligned input" if aligned else config.detector
    stages = Stages(RunFacts(config, run_id="attributes", method_params="{}", device=device, crop_size=CROP_SIZE,
                             replaces_aligned_image=False))
    for file in files:
        yield file, stages.prepare(file)
