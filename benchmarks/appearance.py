"""Issue 24, "Look at the results": where each method changes pixels, whether faces stay sharp, and a figure.

For each method, ``anonymize run`` runs as a whole process (the CLI a user runs, with the flags each photo
set needs: celeba-ids ``--aligned`` plus ``--identity-from folder`` for dataset-level methods; portraits
plain) into a work folder, or an existing output folder is taken as it is (``--outputs NAME=DIR``). Then,
against the originals (faces from dlib's HOG detector and 68 landmarks on each original,
:mod:`anonymize.metrics.appearance`), it prints per method:

* ``outside``: of all changed pixels (a channel moved by more than 8 of 255), pooled over the images, the
  share outside every face region (landmark hull scaled 1.4): a pasted square or another photo's
  background is counted here; goal: no more than blur's share;
* ``sharpness``: the mean over images of the face regions' Laplacian variance, output / original; goal:
  at least 0.5 (a face, not a smear);

and writes a figure (``--figure``): a row of originals (face regions outlined in green) and one row per
method's outputs, each cell 160 px tall. The figure shows original faces: keep it where the originals
may be seen, and out of git (a portraits figure is about 3 MB).

``python -m benchmarks.appearance --set celeba-ids --method blur --method pixelate --method ksame -p k=5 --figure /tmp/appearance.png``

``--method NAME`` may be repeated; ``-p KEY=VALUE`` and ``--run-args "..."`` (more ``anonymize run``
flags, e.g. ``--region ellipse``) apply to the ``--method`` before them. With several ``--set``s the
figure of each set is written as ``<figure stem>-<set><suffix>``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from anonymize.io.decode import decode_image
from anonymize.io.walk import image_files
from anonymize.metrics.appearance import (CHANGE_THRESHOLD, FACE_SCALE, ChangeCount, FaceLandmarker, count_changes, face_outline,
                                          faces_mask, sharpness_ratio)

SHARED = Path(__file__).resolve().parents[2] / "shared"
SETS = ("celeba-ids", "portraits")
DEFAULT_METHODS = (("blur", ()), ("pixelate", ()), ("ksame", ("k=5",)))
FIGURE_IMAGES = {"celeba-ids": 6, "portraits": 0}  # 0: every image of the set
CELL_HEIGHT = 160
LABEL_WIDTH = 190
SHARPNESS_GOAL = 0.5


@dataclass
class MethodSpec:
    """One method to run (or one existing output folder): its name, ``-p`` options and extra run flags."""

    name: str
    params: list[str] = field(default_factory=list)
    run_args: list[str] = field(default_factory=list)
    outputs: Path | None = None  # an existing output folder: nothing is run

    @property
    def label(self) -> str:
        return " ".join([self.name, *self.params, *self.run_args])

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label).strip("_")


@dataclass
class Original:
    """One photo of the set, decoded once and shared by every method's measurement."""

    relative: Path
    rgb: np.ndarray
    faces: list[np.ndarray]  # dlib's 68 landmarks of each face
    mask: np.ndarray  # union of the face regions


def anonymize_command() -> list[str]:
    return [sys.executable, "-m", "anonymize"]


def is_dataset_level(method: str) -> bool:
    from anonymize.methods.registry import method_class

    return bool(getattr(method_class(method), "dataset_level", False))


def run_flags(set_name: str, spec: MethodSpec) -> list[str]:
    """The flags the set needs: CelebA crops are aligned, and one folder is one person there."""
    if set_name != "celeba-ids":
        return []
    return ["--aligned", *(["--identity-from", "folder"] if is_dataset_level(spec.name) else [])]


def run_method(spec: MethodSpec, set_name: str, photos: Path, out: Path, env: dict[str, str]) -> dict[str, object]:
    """``anonymize run`` as a whole process; exit 4 (some images are error rows) is reported, not fatal.

    ``--overwrite``: a kept ``--work`` folder must not resume, or outputs of an earlier version of the
    method would be measured again."""
    command = [*anonymize_command(), "run", str(photos), "--out", str(out), "--method", spec.name, "--quiet", "--overwrite",
               *[item for param in spec.params for item in ("-p", param)], *run_flags(set_name, spec), *spec.run_args]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 4):
        raise RuntimeError(f"{shlex.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    shown = shlex.join(["anonymize", *command[3:]])
    warnings = [line for line in done.stderr.splitlines() if line.startswith(("warning:", "detector "))]
    return {"command": shown, "exit_code": done.returncode, "seconds": round(seconds, 1), "note": " | ".join(warnings)}


def load_originals(photos: Path, landmarker: FaceLandmarker) -> list[Original]:
    originals = []
    for path in image_files(photos):
        rgb = decode_image(path).rgb
        faces = landmarker(rgb)
        originals.append(Original(path.relative_to(photos), rgb, faces, faces_mask(faces, rgb.shape, FACE_SCALE)))
    return originals


def measure(originals: list[Original], outputs: Path) -> dict[str, object]:
    """Pooled changed-outside share and mean sharpness ratio of one output folder against the originals."""
    total, ratios, missing, no_face, changed_images = ChangeCount(0, 0), [], 0, 0, 0
    for original in originals:
        path = outputs / original.relative
        if not path.is_file():
            missing += 1
            continue
        if not original.faces:
            no_face += 1  # every change would count as outside: not measurable without a face
            continue
        output = decode_image(path).rgb
        if output.shape != original.rgb.shape:
            raise RuntimeError(f"{path}: {output.shape} but the original is {original.rgb.shape}")
        count = count_changes(original.rgb, output, original.mask, CHANGE_THRESHOLD)
        total += count
        changed_images += count.changed > 0
        ratio = sharpness_ratio(original.rgb, output, original.mask)
        if ratio is not None:
            ratios.append(ratio)
    share = total.share
    return {"images": len(originals) - missing - no_face, "not_written": missing, "no_dlib_face": no_face,
            "changed_images": changed_images, "changed_px": total.changed,
            "outside_share": None if share is None else round(share, 4),
            "sharpness_ratio": round(float(np.mean(ratios)), 3) if ratios else None,
            "sharpness_ratio_median": round(float(np.median(ratios)), 3) if ratios else None}


def figure_picks(originals: list[Original], count: int) -> list[Original]:
    """``count`` photos taken in turn from each top-level folder (one per identity first); 0: all."""
    if count <= 0 or count >= len(originals):
        return list(originals)
    folders: dict[str, list[Original]] = {}
    for original in originals:
        folders.setdefault(original.relative.parts[0] if len(original.relative.parts) > 1 else "", []).append(original)
    queues, picks = [list(items) for items in folders.values()], []
    while len(picks) < count:
        for queue in queues:
            if queue and len(picks) < count:
                picks.append(queue.pop(0))
    return picks


def _cell(rgb: np.ndarray, outline: list[np.ndarray] | None = None) -> np.ndarray:
    scale = CELL_HEIGHT / rgb.shape[0]
    width = max(1, round(rgb.shape[1] * scale))
    cell = cv2.resize(rgb, (width, CELL_HEIGHT), interpolation=cv2.INTER_AREA)
    for landmarks in outline or []:
        polygon = np.round(face_outline(landmarks, FACE_SCALE) * scale).astype(np.int32)
        cv2.polylines(cell, [polygon], True, (0, 220, 0), 1, cv2.LINE_AA)
    return cell


def _label(lines: list[str]) -> np.ndarray:
    panel = np.full((CELL_HEIGHT, LABEL_WIDTH, 3), 255, np.uint8)
    for index, line in enumerate(lines):
        cv2.putText(panel, line, (6, 22 + 20 * index), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def write_figure(path: Path, set_name: str, picks: list[Original], rows: list[tuple[MethodSpec, Path, dict[str, object]]]) -> None:
    """Originals, then one row per method; a missing output (an error row) is a grey cell."""
    grid = [np.concatenate([_label([set_name, "originals", f"green: face x{FACE_SCALE}"]),
                            *[_cell(original.rgb, original.faces) for original in picks]], axis=1)]
    for spec, outputs, result in rows:
        cells = []
        for original in picks:
            output_path = outputs / original.relative
            if output_path.is_file():
                cells.append(_cell(decode_image(output_path).rgb))
            else:
                cells.append(np.full_like(_cell(original.rgb), 200))
        share, sharpness = result["outside_share"], result["sharpness_ratio"]
        label = [spec.label[i:i + 22] for i in range(0, min(len(spec.label), 44), 22)]
        label += [f"outside: {'-' if share is None else f'{100 * float(share):.0f}%'}",
                  f"sharpness: {'-' if sharpness is None else f'{float(sharpness):.2f}'}"]
        grid.append(np.concatenate([_label(label), *cells], axis=1))
    width = max(row.shape[1] for row in grid)
    padded = [np.pad(row, ((0, 2), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in grid]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(padded, axis=0)).save(path, optimize=True)


def figure_path(figure: Path, set_name: str, several: bool) -> Path:
    return figure.with_name(f"{figure.stem}-{set_name}{figure.suffix}") if several else figure


def measure_set(set_name: str, specs: list[MethodSpec], shared: Path = SHARED, work: Path | None = None,
                figure: Path | None = None, figure_images: int | None = None, weights_dir: Path | None = None,
                landmarker: FaceLandmarker | None = None) -> list[dict[str, object]]:
    """Run (or read) every method on one photo set; one row per method, with the goals judged; the figure if asked."""
    photos = shared / "data" / set_name
    if not photos.is_dir():
        raise SystemExit(f"{photos} is absent: the photo sets live in ../shared/data")
    env = dict(os.environ)
    if weights_dir is not None:
        env["ANONYMIZE_HOME"] = str(Path(weights_dir).resolve())
    originals = load_originals(photos, landmarker or FaceLandmarker())
    results: list[tuple[MethodSpec, Path, dict[str, object]]] = []
    with tempfile.TemporaryDirectory(prefix="appearance-") as tmp:
        for spec in specs:
            row: dict[str, object] = {"set": set_name, "method": spec.label}
            if spec.outputs is not None:
                outputs = spec.outputs
                row["command"] = f"(existing {outputs})"
            else:
                outputs = (work or Path(tmp)) / set_name / spec.slug
                row.update(run_method(spec, set_name, photos, outputs, env))
            row.update(measure(originals, outputs))
            results.append((spec, outputs, row))
        if figure is not None:
            picks = figure_picks(originals, FIGURE_IMAGES.get(set_name, 6) if figure_images is None else figure_images)
            write_figure(figure, set_name, picks, results)
    rows = [row for _, _, row in results]
    blur = next((row["outside_share"] for row in rows if row["method"] == "blur"), None)
    for row in rows:
        share, sharpness = row["outside_share"], row["sharpness_ratio"]
        if blur is not None and share is not None:
            row["outside_goal"] = f"{'met' if float(share) <= float(blur) else 'NOT met'} (blur {100 * float(blur):.1f}%)"
        if sharpness is not None:
            row["sharpness_goal"] = "met" if float(sharpness) >= SHARPNESS_GOAL else "NOT met"
    return rows


def printable(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    shown = []
    for row in rows:
        share = row["outside_share"]
        shown.append({"set": row["set"], "method": row["method"], "images": row["images"],
                      "not written": row["not_written"], "no dlib face": row["no_dlib_face"],
                      "changed outside face": "-" if share is None else f"{100 * float(share):.1f}%",
                      "outside goal (<= blur)": row.get("outside_goal", ""),
                      "sharpness out/orig (mean, median)": f"{row['sharpness_ratio']}, {row['sharpness_ratio_median']}",
                      "sharpness goal (>= 0.5)": row.get("sharpness_goal", ""),
                      "run": f"exit {row['exit_code']}, {row['seconds']} s" if "exit_code" in row else row["command"]})
    return shown


class _AddMethod(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: object, option: str | None = None) -> None:
        namespace.methods = [*(namespace.methods or []), MethodSpec(str(value))]


class _ToLastMethod(argparse.Action):
    """``-p`` and ``--run-args`` belong to the ``--method`` given before them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: object, option: str | None = None) -> None:
        if not namespace.methods:
            parser.error(f"{option} must follow a --method")
        spec = namespace.methods[-1]
        if self.dest == "params":
            spec.params.append(str(value))
        else:
            spec.run_args.extend(shlex.split(str(value)))


def parse_outputs(values: list[str]) -> list[MethodSpec]:
    specs = []
    for value in values:
        name, _, folder = value.partition("=")
        if not name or not folder:
            raise SystemExit(f"--outputs {value!r}: expected NAME=DIR")
        specs.append(MethodSpec(name, outputs=Path(folder)))
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", action=_AddMethod, dest="methods", default=None, metavar="NAME", help="a method to run (repeatable)")
    parser.add_argument("-p", action=_ToLastMethod, dest="params", metavar="KEY=VALUE", help="an option of the --method before it")
    parser.add_argument("--run-args", action=_ToLastMethod, dest="run_args", metavar="FLAGS",
                        help="more `anonymize run` flags for the --method before it, one quoted string")
    parser.add_argument("--outputs", action="append", default=[], metavar="NAME=DIR",
                        help="an existing output folder of the (single) --set, measured as NAME; nothing is run for it")
    parser.add_argument("--set", dest="sets", action="append", choices=SETS, help="photo set (repeatable; default celeba-ids)")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, default=None, help="keep the outputs in WORK/<set>/<method> (default: a temporary folder)")
    parser.add_argument("--figure", type=Path, default=None, help="write the figure PNG here")
    parser.add_argument("--figure-images", type=int, default=None, help="photos in the figure (default 6 of celeba-ids, every portrait)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="ANONYMIZE_HOME for the runs")
    args = parser.parse_args()
    sets = args.sets or ["celeba-ids"]
    existing = parse_outputs(args.outputs)
    if existing and len(sets) > 1:
        parser.error("--outputs folders belong to one --set")
    specs = [*(args.methods or ([] if existing else [MethodSpec(name, list(params)) for name, params in DEFAULT_METHODS])), *existing]
    landmarker = FaceLandmarker()
    rows = []
    for set_name in sets:
        figure = None if args.figure is None else figure_path(args.figure, set_name, len(sets) > 1)
        rows += measure_set(set_name, specs, args.shared, args.work, figure, args.figure_images, args.weights_dir, landmarker)
        if figure is not None:
            print(f"figure: {figure}")
    from benchmarks.models import print_table

    print_table(f"changed pixels outside the face (dlib 68-landmark hull x{FACE_SCALE}, change > {CHANGE_THRESHOLD}/255) "
                "and face sharpness (Laplacian variance, output/original)", printable(rows))
    for row in rows:
        if row.get("note"):
            print(f"{row['set']} {row['method']}: {row['note']}")


if __name__ == "__main__":
    main()
