"""``anonymize audit``: check that an anonymized folder is safe to release; exit 3 to stop a pipeline."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from anonymize.audit import AuditConfig, AuditError, AuditProgress, AuditResult, Thresholds, run_audit
from anonymize.cli import app
from anonymize.cli.console import Device, fail, progress_bar, stdout
from anonymize.faces.detect import DETECTORS
from anonymize.weights import WeightsError

EXIT_THRESHOLD_CROSSED = 3

AuditDetector = Enum("AuditDetector", {name: name for name in ("auto", *DETECTORS)}, type=str)


class RichAuditProgress(AuditProgress):
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = progress_bar("auditing", quiet=quiet)
        self.task = None

    def __enter__(self) -> RichAuditProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def start(self, total: int) -> None:
        self.task = self.bar.add_task("audit", total=total)

    def advance(self) -> None:
        self.bar.advance(self.task, 1)

    def message(self, text: str) -> None:
        if not self.quiet:
            self.bar.console.print(text, soft_wrap=True)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def print_audit_summary(result: AuditResult) -> None:
    summary = result.summary
    reid, quality = summary["reid"], summary["quality"]
    table = Table(title="anonymize audit", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("released images", str(summary["outputs"]))
    table.add_row("faces audited", str(summary["faces"]))
    table.add_row("detector", f"{summary['detector']} ({summary['detector_reason']})")
    table.add_row("re-identified (verification)", f"{_percent(reid['verification_rate'])} ({reid['reidentified']} faces)")
    table.add_row("rank-1 identification", f"{_percent(reid['rank1_rate'])} (chance {_percent(reid['rank1_chance'])})")
    table.add_row("still detected in output", _percent(summary["detection"]["rate"]))
    table.add_row("missed faces", str(summary["missed_faces"]["count"]))
    possible = summary.get("possible_faces", {})
    if possible.get("count"):
        table.add_row("possible faces", f"{possible['count']} (one detector only, not confirmed; {possible['unchanged']} left unchanged; "
                                        "not counted above)")
    table.add_row("metadata leaks", str(summary["metadata"]["leaks"]))
    table.add_row("not audited", str(summary["unaudited"]["count"]))
    psnr, ssim = quality["psnr_outside_db"], quality["ssim_outside"]
    table.add_row("PSNR / SSIM outside faces", f"{'n/a' if psnr is None else f'{psnr:.1f} dB'} / {'n/a' if ssim is None else f'{ssim:.4f}'}")
    table.add_row("FID", f"{quality['fid']:.2f}" if quality["fid"] is not None else quality["fid_status"])
    check = summary["identity_check"]
    if check.get("available"):
        table.add_row("identity check", f"same {check['mean_same']:.3f} vs different {check['mean_different']:.3f}, "
                                        f"ROC AUC {check['roc_auc']:.3f}")
    stdout.print(table)
    if reid.get("rank1_meaning"):
        stdout.print(f"rank-1: {reid['rank1_meaning']}", soft_wrap=True)
    for warning in summary["warnings"]:
        stdout.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    if result.passed:
        stdout.print("[bold green]PASS[/]: no threshold crossed")
    else:
        stdout.print("[bold red]FAIL[/]: " + "; ".join(result.crossed), soft_wrap=True)
    for label, path in (("parquet", result.parquet_path), ("summary", result.summary_path), ("report", result.report_path)):
        if path is not None:
            stdout.print(f"{label}: {path}", soft_wrap=True)


@app.command("audit")
def audit_command(
    original_dir: Path = typer.Argument(..., help="Folder of the original images."),
    anon_dir: Path = typer.Argument(..., help="Folder of the anonymized images (what would be released)."),
    manifest: Optional[Path] = typer.Option(None, help="Run manifest used to pair outputs with sources (default: <ANON_DIR>/manifest.parquet if present, else pair by relative path)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a static HTML report (and the audit files) into this folder. It shows original faces: keep it private."),
    fail_on_leak: bool = typer.Option(False, "--fail-on-leak", help=f"Exit with code {EXIT_THRESHOLD_CROSSED} when any threshold is crossed."),
    max_reid_rate: float = typer.Option(0.05, min=0.0, max=1.0, help="Largest share of faces still matching their original."),
    max_rank1_rate: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Largest rank-1 identification rate (default: not gated)."),
    min_detection_rate: float = typer.Option(0.0, min=0.0, max=1.0, help="Smallest share of faces still detected in the output (default: not gated)."),
    max_missed_faces: int = typer.Option(0, min=0, help="Most faces allowed to be left unchanged."),
    max_metadata_leaks: int = typer.Option(0, min=0, help="Most output files allowed to carry metadata beyond ICC."),
    distance_threshold: float = typer.Option(0.6, min=0.0, help="dlib distance under which two faces are the same person."),
    unchanged_threshold: float = typer.Option(4.0, min=0.0, help="Mean absolute pixel change (0-255) at or under which a face counts as missed."),
    detector: AuditDetector = typer.Option("auto", help="Detector for the audit; auto: the ensemble of every available detector (RetinaFace, MTCNN, dlib-hog) at recall-first thresholds, stronger than the run's (dlib-cnn is thorough but slow on CPU)."),
    det_threshold: Optional[float] = typer.Option(None, help="Detection score threshold (default: per detector)."),
    weights_dir: Optional[Path] = typer.Option(None, envvar="ANONYMIZE_HOME", help="Weights folder (default: ~/.cache/anonymize)."),
    trust_unverified: bool = typer.Option(False, "--trust-unverified", help="Use weight files that do not match weights.lock."),
    device: Device = typer.Option("auto", help="Where RetinaFace and Inception run."),
    aligned: Optional[bool] = typer.Option(None, "--aligned/--not-aligned", help="Images are aligned face crops (default: as the run's manifest says)."),
    identity_from_folders: Optional[bool] = typer.Option(None, "--identity-from-folders/--no-identity-from-folders", help="Top-level folders of ORIGINAL_DIR are identities (default: when the tree looks so)."),
    fid: bool = typer.Option(True, "--fid/--no-fid", help="Compute FID when the Inception weights (inception_fid) are present."),
    out_parquet: Optional[Path] = typer.Option(None, help="Audit Parquet path (default: <report>/audit.parquet, else <ANON_DIR>-audit/audit.parquet)."),
    summary: Optional[Path] = typer.Option(None, help="Summary JSON path (default: beside the Parquet, audit-summary.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary table."),
) -> None:
    """Audit ANON_DIR against ORIGINAL_DIR: re-identification, detection, missed faces, metadata, quality."""
    config = AuditConfig(
        original_dir=original_dir,
        anonymized_dir=anon_dir,
        manifest_path=manifest,
        report_dir=report,
        parquet_path=out_parquet,
        summary_path=summary,
        detector=detector.value,
        det_threshold=det_threshold,
        weights_dir=weights_dir,
        trust_unverified=trust_unverified,
        device=device.value,
        aligned=aligned,
        identity_from_folders=identity_from_folders,
        distance_threshold=distance_threshold,
        unchanged_threshold=unchanged_threshold,
        fid=fid,
        thresholds=Thresholds(
            max_reid_rate=max_reid_rate,
            max_rank1_rate=max_rank1_rate,
            min_detection_rate=min_detection_rate,
            max_missed_faces=max_missed_faces,
            max_metadata_leaks=max_metadata_leaks,
        ),
    )
    try:
        with RichAuditProgress(quiet or as_json) as progress:
            result = run_audit(config, progress)
    except (AuditError, WeightsError) as exc:
        fail(str(exc))
    if as_json:
        stdout.print_json(json.dumps(result.summary, default=str))
    elif not quiet:
        print_audit_summary(result)
    if fail_on_leak and not result.passed:
        raise typer.Exit(EXIT_THRESHOLD_CROSSED)
