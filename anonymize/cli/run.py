"""``anonymize run``: anonymize a folder of images into a mirrored output folder."""

from __future__ import annotations

from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.progress import TextColumn
from rich.table import Table
from rich.text import Text

from anonymize.adversarial import AdversarialError, split_adversarial_options
from anonymize.cli.app import app
from anonymize.cli.console import Device, fail, print_json, progress_bar, shown, stdout
from anonymize.errors import AnonymizeError
from anonymize.faces.detect import CHOICES as DETECTORS
from anonymize.io.store import StoreError, location, uses_store
from anonymize.methods import METHODS, MethodError, method_class
from anonymize.run import Progress as PipelineProgress
from anonymize.run import RunConfig, RunError, RunSummary, default_output_dir, run, run_config
from anonymize.weights import WeightsError

EXIT_ERROR_ROWS = 4  # the run finished, but some images are error rows (not written, faces not anonymized)
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it
INTERRUPTED = "interrupted: re-run the same command to resume"

MethodName = Enum("MethodName", {name: name for name in METHODS}, type=str)
DetectorName = Enum("DetectorName", {name: name for name in DETECTORS}, type=str)
HeadsMode = Enum("HeadsMode", {name: name for name in ("auto", "on", "off")}, type=str)


class OnNoFace(str, Enum):
    copy = "copy"
    skip = "skip"
    fail = "fail"


class OnError(str, Enum):
    skip = "skip"
    fail = "fail"


class IdentityFromName(str, Enum):
    cluster = "cluster"
    folder = "folder"


class ExecutorName(str, Enum):
    local = "local"
    ray = "ray"


class Region(str, Enum):
    ellipse = "ellipse"
    hull = "hull"
    crop = "crop"


class RichProgress(PipelineProgress):
    """A progress bar with images/s and the number of faces found."""

    def __init__(self, quiet: bool) -> None:
        self.faces = 0
        self.quiet = quiet
        self.bar = progress_bar("", TextColumn("[bold]{task.description}"), TextColumn("{task.fields[rate]} img/s"),
                                TextColumn("{task.fields[faces]} faces"), quiet=quiet)
        self.task = None
        self._download = None
        self.files: list[dict[str, object]] = []  # per image: what --dry-run lists

    def __enter__(self) -> RichProgress:
        return self  # the bar appears only once the run starts: an early error stays a single line

    def __exit__(self, *exc: object) -> None:
        if self._download is not None:
            self._download.stop()
        if self.task is not None:
            self.bar.stop()

    def start(self, total: int, phase: str = "anonymizing") -> None:
        if self.task is None:
            self.bar.start()
        else:  # the next phase (a dataset-level method surveys every face first)
            self.bar.remove_task(self.task)
            self.faces = 0
        self.task = self.bar.add_task(phase, total=total, faces=0, rate="-")

    def advance(self, faces: int) -> None:
        self.faces += faces
        self.bar.advance(self.task, 1)
        task = next(task for task in self.bar.tasks if task.id == self.task)
        rate = f"{task.completed / task.elapsed:.1f}" if task.elapsed else "-"
        self.bar.update(self.task, faces=self.faces, rate=rate)

    def file_done(self, path: str, status: str, faces: int, error: str | None) -> None:
        self.files.append({"path": path, "status": status, "faces": faces, "error": error})

    def message(self, text: str) -> None:
        if not self.quiet:
            self.bar.console.print(Text.assemble(("error row:", "yellow"), " ", text), soft_wrap=True)

    def warning(self, text: str) -> None:
        self.bar.console.print(Text.assemble(("warning:", "yellow"), " ", text), soft_wrap=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.bar.console.print(Text(text), soft_wrap=True, highlight=False)

    def download(self, label: str, done: int, total: int | None) -> None:
        if self._download is None:  # its own bar, gone once the file is here
            self._download = progress_bar(label, quiet=self.quiet, transient=True)
            self._download.start()
            self._download.add_task(label, total=total)
        self._download.update(self._download.task_ids[0], completed=done, total=total)
        if total is not None and done >= total:
            self._download.stop()


def parse_options(pairs: list[str], as_json: bool = False) -> dict[str, str]:
    """``-p KEY=VALUE`` pairs -> a dict; a pair without ``=`` fails in one line."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--option {pair!r}: expected KEY=VALUE", as_json=as_json)
        options[key.strip()] = value.strip()
    return options


def _options_of(method: str) -> set[str]:
    return {f.name for f in fields(method_class(method).Params)}


def _with_option_flags(method: str, options: dict[str, str], flags: dict[str, tuple[str, str | None]],
                       as_json: bool = False) -> dict[str, str]:
    """Flags that are sugar for a method option (--margin: -p margin=, --save-latents: -p save_latents=true):
    only a method with that option takes one; anything else is an error, never a silent no-op."""
    for flag, (key, value) in flags.items():
        if value is None:
            continue
        if key not in _options_of(method):
            users = [name for name in METHODS if key in _options_of(name)]
            fail(f"{flag} only applies to --method {' or '.join(users)} (got --method {method})", as_json=as_json)
        options[key] = value
    return options


def print_dry_run_files(files: list[dict[str, object]]) -> None:
    """--dry-run: one line per image, what detection found in it (or why it failed), before the counts."""
    for item in files:
        found = f"error: {item['error']}" if item["error"] else f"{item['faces']} face{'s' if item['faces'] != 1 else ''}"
        stdout.print(Text.assemble((str(item["path"]), "bold"), "  ", found), soft_wrap=True, highlight=False)


def _print_summary(summary: RunSummary) -> None:
    table = Table(title="dry run (nothing written)" if summary.dry_run else "anonymize run", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("images", str(summary.images))
    table.add_row("faces", str(summary.faces))
    table.add_row("no-face images", str(summary.no_face_images))
    table.add_row("errors", str(summary.errors))
    table.add_row("skipped (not images, hidden)", str(summary.skipped))
    table.add_row("resumed (already done)", str(summary.resumed))
    table.add_row("time", f"{summary.seconds:.1f} s")
    if "setup_s" in summary.stages:
        table.add_row("before the first image", f"imports {summary.stages['imports_s']:.1f} s, set-up {summary.stages['setup_s']:.1f} s")
    stdout.print(table)
    if summary.redone_outputs:
        count = summary.redone_outputs
        stdout.print(f"redid {count} image{'s' if count != 1 else ''} whose output no longer matched the manifest", soft_wrap=True)
    if summary.removed_outputs:
        count = summary.removed_outputs
        stdout.print(f"removed {count} output{'s whose sources are' if count != 1 else ' whose source is'} gone", soft_wrap=True)
    if summary.privacy_note:
        stdout.print(f"[yellow]{shown(summary.privacy_note)}[/]", soft_wrap=True)
    if not summary.dry_run:
        stdout.print(f"output:   {shown(summary.output_dir)}", soft_wrap=True)
        stdout.print(f"manifest: {shown(summary.manifest_path)}", soft_wrap=True)


@app.command("run")
def run_command(
    input_dir: str = typer.Argument(..., metavar="INPUT_DIR", show_default=False, help="Folder of images (searched recursively), a path or a URI (s3://, gs://, file://); or one image file, written as <out>/<its name>."),
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="DIR", help="Output folder, a path or a URI (default: <input>-anonymized beside the input; for one image, <its stem>-anonymized)."),
    method: MethodName = typer.Option("falco", metavar="NAME", help="Anonymization method: " + ", ".join(METHODS) + " (`anonymize methods` lists what each does, its weights and options)."),
    margin: Optional[float] = typer.Option(None, min=0.0, max=1.0, metavar="M", help="Identity margin m (falco; attributes with -p identity=falco): target cosine to the original (default 0); sugar for -p margin=."),
    option: list[str] = typer.Option([], "--option", "-p", metavar="KEY=VALUE", help="Method option KEY=VALUE (repeatable), e.g. -p sigma=0.1; any method: -p adversarial=fgsm|pgd|uap (-p adv_eps=4/255 -p adv_steps=10) perturbs the output against dlib's recogniser."),
    unique_pairs: bool = typer.Option(False, "--unique-pairs", help="FALCO: give every face of the run a different fake."),
    save_latents: bool = typer.Option(False, "--save-latents", help="FALCO: save each face's final W+ code under <out>/.anonymize/latents/."),
    detector: DetectorName = typer.Option("auto", metavar="NAME", help="Face detector: " + ", ".join(DETECTORS) + ". auto: RetinaFace (its 1.8 MB weights fetched on first use) with MTCNN from the installed facenet-pytorch, or MTCNN alone, each also searching the padded frame and the mirror (faces cut by the frame or half hidden); a named detector runs plainly and faster."),
    weights_dir: Optional[Path] = typer.Option(None, envvar="ANONYMIZE_HOME", metavar="DIR", help="Weights folder (default: ~/.cache/anonymize)."),
    aligned: bool = typer.Option(False, "--aligned", help="One centred face per image (CelebA, FFHQ crops): cropped FFHQ-style from its landmarks (CelebA template if none) and pasted back; FFHQ-framed squares are used whole. A fast detector still counts the faces: more than one is an error row (see --aligned-lenient)."),
    aligned_lenient: bool = typer.Option(False, "--aligned-lenient", help="With --aligned: an image with more than one face is written with a warning, its other faces anonymized the ordinary way (default: an error row)."),
    aligned_ffhq: bool = typer.Option(False, "--aligned-ffhq", help="Like --aligned, but every input is an FFHQ-framed square (FFHQ, CelebA-HQ): used whole, no landmarks."),
    min_face: int = typer.Option(0, min=0, metavar="PIXELS", help="Ignore faces smaller than this many pixels."),
    det_threshold: Optional[float] = typer.Option(None, metavar="SCORE", help="Detection score threshold (default: per detector)."),
    recall_first: bool = typer.Option(False, "--recall-first", help="Lower detection thresholds, the frame padded and the mirror searched: fewer missed faces, more false positives (README, Detection)."),
    heads: HeadsMode = typer.Option("auto", help="Also anonymize the heads the pose model (MoveNet, human-models) finds where no face was: on, off, or auto (on with --recall-first when its weights are here)."),
    on_no_face: OnNoFace = typer.Option("copy", help="Images without a face: copy them (metadata stripped), skip, or fail."),
    on_error: OnError = typer.Option("skip", help="Unreadable images: record and go on, or stop."),
    allow_errors: bool = typer.Option(False, "--allow-errors", help=f"Exit 0 even when images became error rows (default: exit {EXIT_ERROR_ROWS})."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip images an earlier run finished (same source hash)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Forget earlier runs into this output and redo everything."),
    batch_size: str = typer.Option("auto", metavar="N|auto", help="Faces per method batch, or auto."),
    device: Device = typer.Option("auto", help="Where models run."),
    seed: int = typer.Option(0, metavar="N", help="Seed for every random choice."),
    limit: Optional[int] = typer.Option(None, min=1, metavar="N", help="Process at most N images."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Walk and detect, list per image the faces found (or the error), write nothing."),
    jpeg_quality: int = typer.Option(95, min=1, max=100, metavar="Q", help="JPEG output quality."),
    strip_icc: bool = typer.Option(False, "--strip-icc", help="Write no ICC profile at all, pixels as decoded (default: the profile's colour data only, its text cleared)."),
    region: Optional[Region] = typer.Option(None, help="Region pasted back: ellipse (face ellipse + detected box down to the chin; default of blur, pixelate, mask), crop (the whole aligned square, feathered; default of falco) or hull (landmark outline)."),
    region_scale: float = typer.Option(1.0, min=0.1, max=3.0, metavar="S", help="Scale of the face region."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Bit-stable CUDA runs: deterministic algorithms, no TF32, fixed cuDNN choices (slower)."),
    identity_metric: bool = typer.Option(False, "--identity-metric", help="Record dlib identity distance original vs output per face."),
    manifest: Optional[str] = typer.Option(None, metavar="PATH", help="Manifest path or URI (default: <out>/manifest.parquet); never inside the input folder."),
    max_pixels: int = typer.Option(178_956_970, "--max-pixels", min=1, metavar="N", help="Refuse (error row) images with more pixels than this: a 13000 x 13000 photo needs about 3 GB."),
    max_bytes: int = typer.Option(2 << 30, "--max-bytes", min=1, metavar="N", help="Refuse (error row) files larger than this many bytes before reading them (default 2 GiB)."),
    copy_other: bool = typer.Option(False, "--copy-other", help="Copy files that are not images (labels, CSV) unchanged into the output; off by default, since side files may carry names."),
    identity_from: Optional[IdentityFromName] = typer.Option(None, "--identity-from", help="Dataset-level methods (ksame, cfa): who is the same person: cluster (identity embeddings, default) or folder (one folder = one person)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, metavar="N", help="Threads that decode, detect, paste and write while the method runs (default: the cores available; 0 or 1: serial)."),
    executor: ExecutorName = typer.Option("local", help="local: this machine; ray: a Ray cluster (pip install 'anonymize[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", metavar="ADDRESS", help="--executor ray: the cluster to join, e.g. ray://head:10001 or auto (default: a Ray on this machine)."),
    audit: bool = typer.Option(False, "--audit", help="Audit the output against the input at the end; exit 3 when the audit fails."),
    preview: Optional[int] = typer.Option(None, "--preview", min=1, metavar="N", help="At the end, a contact sheet of N seeded before/after pairs, <OUT>-preview.png (it shows original faces: keep it private)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
) -> None:
    """Detect, align and anonymize every face under INPUT_DIR (a folder, or one image); write a mirrored tree and a Parquet manifest."""
    if batch_size != "auto" and not (batch_size.isdigit() and int(batch_size) > 0):
        fail(f"--batch-size {batch_size!r}: expected a positive integer or auto", as_json=as_json)
    if aligned_lenient and not (aligned or aligned_ffhq):
        fail("--aligned-lenient only applies with --aligned or --aligned-ffhq", as_json=as_json)
    if identity_from is not None and not method_class(method.value).dataset_level:
        fail(f"--identity-from only applies to dataset-level methods (got --method {method.value})", as_json=as_json)
    try:
        source = location(input_dir)
        one_image = isinstance(source, Path) and source.is_file()
        target = location(out) if out is not None else (
            source.resolve().parent / f"{source.stem}-anonymized" if one_image else default_output_dir(source))
        manifest_path = location(manifest) if manifest is not None else None
    except (StoreError, RunError) as exc:  # unknown scheme, missing bucket name, unreachable store: one line
        fail(str(exc), as_json=as_json)
    if audit and one_image:
        fail("--audit compares folders; for one image, run into a folder and audit it with `anonymize audit`", as_json=as_json)
    if audit and uses_store(source, target, manifest_path):
        fail("--audit reads local folders only; audit a local copy with `anonymize audit`", as_json=as_json)
    try:  # -p adversarial=fgsm|pgd|uap (adv_eps, adv_steps): the finishing step of any method, not a method option
        method_options, adversarial = split_adversarial_options(parse_options(option, as_json), method.value)
    except AdversarialError as exc:
        fail(str(exc), as_json=as_json)
    method_options = _with_option_flags(method.value, method_options, {
        "--margin": ("margin", repr(margin) if margin is not None else None),
        "--unique-pairs": ("unique_pairs", "true" if unique_pairs else None),
        "--save-latents": ("save_latents", "true" if save_latents else None)}, as_json)
    config = run_config(
        source,
        target,
        method=method.value,
        method_options=method_options,
        adversarial=adversarial,
        detector=detector.value,
        weights_dir=weights_dir,
        aligned=aligned or aligned_ffhq,
        aligned_framing="ffhq" if aligned_ffhq else "auto",
        aligned_lenient=aligned_lenient,
        min_face=min_face,
        det_threshold=det_threshold,
        recall_first=recall_first,
        heads=heads.value,
        on_no_face=on_no_face.value,
        on_error=on_error.value,
        resume=resume,
        overwrite=overwrite,
        batch_size=None if batch_size == "auto" else int(batch_size),
        device=device.value,
        seed=seed,
        limit=limit,
        dry_run=dry_run,
        jpeg_quality=jpeg_quality,
        strip_icc=strip_icc,
        region=region.value if region is not None else None,
        region_scale=region_scale,
        identity_metric=identity_metric,
        deterministic=deterministic,
        manifest_path=manifest_path,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        copy_other=copy_other,
        workers=workers,
        executor=executor.value,
        ray_address=ray_address,
        identity_from=identity_from.value if identity_from is not None else "cluster",
    )
    if ray_address is not None and executor != ExecutorName.ray:
        fail("--ray-address only applies to --executor ray", as_json=as_json)
    try:
        with RichProgress(quiet or as_json) as progress:
            summary = run(config, progress)
    except KeyboardInterrupt:  # Ctrl-C: what was written is kept (parts, outputs) and the next run resumes it
        fail(INTERRUPTED, EXIT_INTERRUPTED, as_json=as_json)
    except (AnonymizeError, MethodError, WeightsError) as exc:
        fail(str(exc), as_json=as_json)
    except OSError as exc:  # the environment (disk full, read-only, no permission): one line, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}", as_json=as_json)
    report = summary.as_dict()
    if dry_run:
        report["files"] = progress.files
    code = _exit_code(summary, on_error.value, allow_errors)
    audit_result = _audit(config, as_json) if audit and not dry_run else None
    if preview is not None and not dry_run:
        report["preview"] = _preview(config, preview, as_json)
    if audit_result is not None:
        report["audit"] = audit_result.summary.to_json()  # it holds passed and crossed
        if not audit_result.passed and code != 1:
            from anonymize.cli.audit import EXIT_THRESHOLD_CROSSED  # the audit's modules: only when auditing

            code = EXIT_THRESHOLD_CROSSED
    report["exit_code"] = code
    if as_json:
        print_json(report)
    elif not quiet:
        if dry_run:
            print_dry_run_files(progress.files)
        _print_summary(summary)
        if report.get("preview"):
            stdout.print(f"preview:  {shown(report['preview'])} (it shows original faces: keep it private)", soft_wrap=True)
        if audit_result is not None:
            from anonymize.cli.audit import print_audit_summary

            print_audit_summary(audit_result)
    if code:
        raise typer.Exit(code)


def _exit_code(summary: RunSummary, on_error: str, allow_errors: bool) -> int:
    """CI jobs read exit codes, not tables: error rows are non-zero unless --allow-errors; 0 is a clean run."""
    if summary.clean:
        return 0
    if on_error == "fail":
        return 1
    return 0 if allow_errors else EXIT_ERROR_ROWS


def _preview(config: RunConfig, count: int, as_json: bool) -> str:
    """--preview N: the contact sheet beside the output folder (local outputs only)."""
    from anonymize.audit import AuditError
    from anonymize.audit.preview import write_preview

    output = config.output.output_dir
    if not isinstance(output, Path):
        fail("--preview: the output is not a local folder; run `anonymize audit preview` on a local copy", as_json=as_json)
    try:
        source = Path(config.inputs.input_dir)
        path, _ = write_preview(source.parent if source.is_file() else source, output, count,
                                manifest_path=config.output.manifest_path)
    except AuditError as exc:
        fail(f"preview: {exc}", as_json=as_json)
    return str(path)


def _audit(config: RunConfig, as_json: bool = False) -> AuditResult:
    """The audit with its defaults (independent detector, files in <out>-audit/) on what this run wrote."""
    from anonymize.audit import AuditConfig, AuditError, run_audit  # torch: imported only when auditing

    audit_config = AuditConfig(original_dir=config.inputs.input_dir, anonymized_dir=config.output.output_dir,
                               manifest_path=config.output.manifest_path, weights_dir=config.execution.weights_dir)
    try:
        return run_audit(audit_config)
    except (AuditError, WeightsError) as exc:
        fail(f"audit: {exc}", as_json=as_json)
