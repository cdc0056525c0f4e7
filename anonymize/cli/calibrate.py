"""``anonymize calibrate``: the recogniser's "not the same person" cosine and angle at a chosen FAR.

Feeds CFA's ``-p angle=``: an angle above the printed one is "another person" for that recogniser; with
``--recognizer arcface`` the angle is stored, and ``-p angle=threshold+10`` refers to it.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from anonymize.cli.app import app
from anonymize.cli.console import Device, console, fail, progress_bar, stdout
from anonymize.errors import AnonymizeError


class Recogniser(str, Enum):
    dlib = "dlib"
    arcface = "arcface"
    faceres = "faceres"
    mobileface = "mobileface"


@app.command("calibrate")
def calibrate_command(
    faces_dir: Annotated[Path, typer.Argument(help="One sub-folder of aligned face images per identity (e.g. ../shared/data/celeba-ids).")],
    recogniser: Annotated[Recogniser, typer.Option("--recogniser", "--recognizer", help="Whose threshold: dlib (installed), arcface (CFA's sphere; needs its weights), faceres or mobileface (the audit's independent judges; their threshold is stored for the audit).")] = Recogniser.dlib,
    far: Annotated[float, typer.Option("--far", min=0.0, max=0.5, help="False-accept rate of different-identity pairs.")] = 1e-3,
    max_per_identity: Annotated[Optional[int], typer.Option(min=2, help="Use at most this many images per identity (sorted by name).")] = None,
    weights_dir: Annotated[Optional[Path], typer.Option("--weights-dir", envvar="ANONYMIZE_HOME", help="Weights folder (default ~/.cache/anonymize).")] = None,
    device: Annotated[Device, typer.Option(help="Where the recogniser runs.")] = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    record: Annotated[bool, typer.Option(help="faceres / mobileface / arcface: store the threshold in the weights folder, where the audit (faceres, mobileface) and CFA's -p angle=threshold+N (arcface) read it.")] = True,
) -> None:
    """Score every same- and different-identity pair of FACES_DIR and print the cosine threshold at --far and its angle."""
    from anonymize.audit.calibrate import STORED, calibrate, embed_folders, identity_folders, recogniser_embedder, write_record
    from anonymize.models.device import resolve_device

    try:
        folders = identity_folders(faces_dir, max_per_identity)
        embed = recogniser_embedder(recogniser.value, weights_dir, resolve_device(device.value))
        with progress_bar("calibrating", quiet=as_json) as bar:
            task = bar.add_task("calibrate", total=sum(len(images) for _, images in folders))
            embeddings, labels = embed_folders(folders, embed, lambda: bar.advance(task, 1))
        result = calibrate(embeddings, labels, far, recogniser.value)
        recorded = write_record(result, faces_dir, weights_dir) if record and recogniser.value in STORED else None
    except (AnonymizeError, ValueError) as exc:  # ValueError: audit's CalibrationError among others
        fail(str(exc), as_json=as_json)
    except OSError as exc:
        fail(f"cannot store the calibration record: {exc}", as_json=as_json)
    if as_json:
        stdout.print_json(json.dumps({**result.as_dict(), "record": str(recorded) if recorded else None}))
        return
    console.print(f"{result.recogniser}: {result.identities} identities, {result.images} images, "
                  f"{result.same_pairs} same / {result.different_pairs} different pairs", soft_wrap=True)
    stdout.print(f"cosine threshold at FAR {far:g}: {result.cosine.value:.4f} (FAR reached {result.cosine.far:.4g}, "
                 f"TAR {result.cosine.tar:.1%}); angle {result.angle_degrees:.1f} degrees", soft_wrap=True)
    if result.distance is not None:
        stdout.print(f"Euclidean distance threshold at the same FAR: {result.distance.value:.4f} "
                     f"(TAR {result.distance.tar:.1%}; dlib's own rule is 0.6)", soft_wrap=True)
    stdout.print(f"a CFA angle above {result.angle_degrees:.1f} degrees is 'another person' for {result.recogniser} at this FAR",
                 soft_wrap=True)
    if recorded is not None and result.recogniser == "arcface":
        stdout.print(f"stored for CFA: {recorded} (-p angle=threshold+N means N degrees beyond {result.angle_degrees:.1f})",
                     soft_wrap=True)
    elif recorded is not None:
        stdout.print(f"stored for the audit: {recorded} (the audit judges {result.recogniser} with this threshold)", soft_wrap=True)
