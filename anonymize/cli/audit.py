"""``anonymize audit``: check that an anonymized folder is safe to release (exit 3 to stop a pipeline),
and ``anonymize audit compare``: several audited runs in one table, in the papers' units.

``anonymize audit ORIGINAL_DIR ANON_DIR`` is short for ``anonymize audit check ORIGINAL_DIR ANON_DIR``.
"""

from __future__ import annotations

from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from anonymize.audit import AuditConfig, AuditError, AuditProgress, AuditResult, Thresholds, run_audit
from anonymize.audit.attributes import DEFAULT_K, DEFAULT_QUASI_IDENTIFIERS, DEFAULT_SENSITIVE
from anonymize.audit.compare import comparison_json, legend, load_comparison, selected_columns, write_comparison_report
from anonymize.audit.format import attribute_line, format_value, judge_rates, number, percent, significant
from anonymize.audit.fid import FID_REGIONS
from anonymize.audit.human import PRIVACY_GOALS
from anonymize.audit.lfw_pairs import PAIRS_RESULT_NAME, FoldedTpr, PairsConfig, run_pairs_protocol, write_pairs_result
from anonymize.audit.results import default_audit_dir
from anonymize.audit.summary import AuditSample, AuditSummary
from anonymize.cli.app import app
from anonymize.cli.console import DefaultCommandGroup, Device, fail, print_json, progress_bar, shown, stdout
from anonymize.errors import AnonymizeError
from anonymize.faces.detect import DETECTORS
from anonymize.weights import WeightsError

EXIT_THRESHOLD_CROSSED = 3

RecogniserBackend = Enum("RecogniserBackend", {name: name for name in ("torch", "dlib")}, type=str)
AuditDetector = Enum("AuditDetector", {name: name for name in ("auto", *DETECTORS)}, type=str)
PrivacyGoal = Enum("PrivacyGoal", {name: name for name in ("auto", *PRIVACY_GOALS)}, type=str)
FidRegion = Enum("FidRegion", {name: name for name in FID_REGIONS}, type=str)


class AuditGroup(DefaultCommandGroup):
    """``audit`` with sub-commands, where a first word that is no sub-command means ``check``."""

    default_command = "check"


audit_app = typer.Typer(
    cls=AuditGroup,
    help="Audit an anonymized folder (`anonymize audit ORIGINAL_DIR ANON_DIR`, short for `audit check`), "
         "compare audited runs (`anonymize audit compare RUN...`), train on anonymized and test on real "
         "(`anonymize audit utility`), or look at N before/after pairs (`anonymize audit preview`).",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")


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
            self.bar.console.print(shown(text), soft_wrap=True)


def method_audited(summary: AuditSummary) -> str:
    """The method that made the folder, with its options, as the run's manifest records it (a verdict is about one method)."""
    run = summary.run
    if run.method is None:
        return "unknown (no run manifest: the folder was paired by relative path)"
    options = ", ".join(f"{key}={value}" for key, value in sorted(run.options.items()))
    return run.method + (f" ({options})" if options else "")


def gated_row(summary: AuditSummary) -> tuple[str, str]:
    """The identity figure the verdict gates on, with its limit: the worst judge's re-identification rate
    (machine goal) or the judge's match rate (human goal)."""
    limits = summary.thresholds
    human = summary.human_goal
    if summary.privacy_goal == "human" and human is not None:
        return (f"match rate (gated, min {limits.min_match_rate:.0%})",
                f"{percent(human.match_rate)} ({human.matched} of {human.faces} faces still matched by {human.judge or 'no judge'}; "
                "the utility of a human-goal method)")
    judges = summary.judges
    label = f"re-identification rate (gated, max {limits.max_reid_rate:.0%})"
    worst = judges.per_judge[judges.worst] if judges.worst else None
    if worst is None:
        return label, f"n/a ({judges.reason if not judges.names else 'no face compared'})"
    return label, (f"{percent(worst.verification_rate)} by {judges.worst}, the worst judge ({worst.matched} of {worst.faces} "
                   f"faces still match their original); per judge: {judge_rates(judges)}")


def sample_line(sample: AuditSample) -> str:
    """What --sample audited and the gated figure's 95% interval."""
    line = f"{sample.images} of {sample.released} images audited face by face (seed {sample.seed}); the rest: metadata and copies only"
    if sample.gated_judge is not None:
        low, high = sample.intervals[f"re-identification ({sample.gated_judge})"]
        line += f"; re-identification by {sample.gated_judge} {low:.1%} to {high:.1%} (95%), gated on the upper bound"
    return line


def print_audit_summary(result: AuditResult) -> None:
    """The summary as a table, the rank-1 sentence, warnings, the verdict and the files written."""
    summary = result.summary
    reid, quality = summary.reid, summary.quality
    table = Table(title="anonymize audit", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")

    def add(label: str, value: str) -> None:
        table.add_row(label, shown(value))  # values name files, options and models: never read as markup

    add("method audited", method_audited(summary))
    add(*gated_row(summary))
    add("released images", str(summary.outputs))
    if summary.sample is not None:
        add("sample", sample_line(summary.sample))
    add("faces audited", str(summary.faces))
    add("detector", f"{summary.detector} ({summary.detector_reason})")
    roles = summary.recogniser_roles
    add("privacy goal", f"{summary.privacy_goal} ({summary.privacy_goal_source})")
    add("recognisers", f"white-box (in the method's loss): {', '.join(roles.white_box) or 'none recorded'}; "
                       f"judges: {', '.join(roles.judges) or 'none'}")
    human = summary.human_goal
    if human is not None:
        change = human.visual_change
        tar = " / ".join(percent(item.tar) for item in human.tar_at_far.values())
        add("TAR at FAR 0.01 / 0.1", tar + (f" ({human.tar_note})" if human.tar_note else ""))
        add("rank-1 among originals", percent(human.rank1_rate))
        add("visual change (face box)", f"PSNR {significant(change.psnr_face_db, ' dB')}, SSIM {significant(change.ssim_face, '')}; "
                                        f"{change.too_similar} face(s) above the ceiling")
    add("rank-1 identification", f"{percent(reid.rank1_rate)} (chance {percent(reid.rank1_chance)})")
    add("still detected in output", percent(summary.detection.rate))
    if summary.detection_by_detector:
        add("... per detector (default thresholds)",
            ", ".join(f"{name} {percent(item.rate)}" for name, item in summary.detection_by_detector.items()))
    for name, entry in summary.recognisers.items():
        if entry.tpr_at_far:
            add(f"{name}: TPR at FAR 0.001 / 0.01 / 0.1", " / ".join(percent(tpr.tpr) for tpr in entry.tpr_at_far.values())
                + f" (mean rank {entry.mean_rank:.2f})")
    add("missed faces", str(summary.missed_faces.count))
    possible = summary.possible_faces
    if possible.count:
        ruled = f", {possible.ruled_out} ruled out by {possible.mesh}" if possible.ruled_out is not None else ""
        add("possible faces", f"{possible.count} (one detector only, not confirmed); {possible.unchanged} left unchanged{ruled}; "
                              f"{possible.counted if possible.counted is not None else 'n/a'} gated (max {summary.thresholds.max_possible_faces})")
    add("attribute privacy", attribute_line(summary.attributes))
    add("metadata leaks", str(summary.metadata.leaks))
    add("not audited", str(summary.unaudited.count))
    add("PSNR / SSIM outside faces", f"{number(quality.psnr_outside_db, 1, ' dB')} / {number(quality.ssim_outside, 4)}")
    add("FID", number(quality.fid, 2) if quality.fid is not None else quality.fid_status)
    check = summary.identity_check
    if check.available:
        add("identity check", f"same {check.mean_same:.3f} vs different {check.mean_different:.3f}, "
                              f"ROC AUC {check.roc_auc:.3f}")
    stdout.print(table)
    if reid.rank1_meaning:
        stdout.print(f"rank-1: {shown(reid.rank1_meaning)}", soft_wrap=True)
    for warning in summary.warnings:
        stdout.print(f"[yellow]warning:[/] {shown(warning)}", soft_wrap=True)
    if result.passed:
        stdout.print("[bold green]PASS[/]: no threshold crossed")
    else:
        stdout.print("[bold red]FAIL[/]: " + shown("; ".join(result.crossed)), soft_wrap=True)
    for label, path in (("parquet", result.parquet_path), ("summary", result.summary_path), ("report", result.report_path)):
        if path is not None:
            stdout.print(f"{label}: {shown(path)}", soft_wrap=True)


@audit_app.command("check")
def audit_command(
    original_dir: Path = typer.Argument(..., help="Folder of the original images."),
    anon_dir: Path = typer.Argument(..., help="Folder of the anonymized images (what would be released)."),
    manifest: Optional[Path] = typer.Option(None, help="Run manifest used to pair outputs with sources (default: <ANON_DIR>/manifest.parquet if present, else pair by relative path)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a static HTML report (and the audit files) into this folder. It shows original faces: keep it private."),
    report_only: bool = typer.Option(False, "--report-only", help=f"Report the verdict but exit 0 when a threshold is crossed (by default the audit exits {EXIT_THRESHOLD_CROSSED}, so a release job stops)."),
    fail_on_leak: bool = typer.Option(False, "--fail-on-leak", help=f"Exit {EXIT_THRESHOLD_CROSSED} when a threshold is crossed: the default now, kept for old scripts (it wins over --report-only)."),
    max_reid_rate: float = typer.Option(0.05, min=0.0, max=1.0, help="Largest share of faces still matching their original."),
    max_rank1_rate: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Largest rank-1 identification rate (default: not gated)."),
    min_detection_rate: float = typer.Option(0.0, min=0.0, max=1.0, help="Smallest share of faces still detected in the output (default: not gated)."),
    max_missed_faces: int = typer.Option(0, min=0, help="Most faces allowed to be left unchanged."),
    max_possible_faces: int = typer.Option(0, min=0, help="Most possible faces (one detector only) allowed to be left unchanged that the face mesh does not rule out."),
    max_metadata_leaks: int = typer.Option(0, min=0, help="Most output files allowed to carry metadata beyond ICC."),
    privacy_goal: PrivacyGoal = typer.Option("auto", help="Whom the output must fool: machine (recognisers must not match it) or human (viewers must not recognise it; recognisers still match it: camouflage). auto: as the run's manifest records, else machine."),
    min_match_rate: float = typer.Option(0.9, min=0.0, max=1.0, help="Human goal: smallest share of faces the judge recogniser must still match to their original."),
    max_face_psnr: float = typer.Option(25.0, help="Human goal: a face box with a higher PSNR (dB) to its original still looks like it (counted against --max-missed-faces)."),
    max_face_ssim: float = typer.Option(0.8, min=-1.0, max=1.0, help="Human goal: likewise for the face box's SSIM."),
    study_pairs: Optional[int] = typer.Option(None, min=0, help="With --report: a blind human study kit of N face pairs (study.html for volunteers, study-answer-key.csv for you). Default: 200 for the human goal (the papers'), none otherwise."),
    study_control_pairs: int = typer.Option(200, min=0, help="Real-real control pairs (two originals) shuffled into the study kit, the baseline for its score; need identities."),
    study_seed: int = typer.Option(0, help="Seed that picks and shuffles the study pairs."),
    distance_threshold: float = typer.Option(0.6, min=0.0, help="dlib distance under which two faces are the same person."),
    unchanged_threshold: float = typer.Option(4.0, min=0.0, help="Mean absolute pixel change (0-255) at or under which a face counts as missed."),
    detector: AuditDetector = typer.Option("auto", metavar="NAME", help="Detector for the audit: auto or any of `anonymize run --detector`; auto: the ensemble of every available detector (RetinaFace, MTCNN, dlib-hog) at recall-first thresholds, stronger than the run's (dlib-cnn is thorough but slow on CPU)."),
    det_threshold: Optional[float] = typer.Option(None, help="Detection score threshold (default: per detector)."),
    weights_dir: Optional[Path] = typer.Option(None, envvar="ANONYMIZE_HOME", help="Weights folder (default: ~/.cache/anonymize)."),
    trust_unverified: bool = typer.Option(False, "--trust-unverified", help="Use weight files that do not match weights.lock."),
    device: Device = typer.Option("auto", help="Where RetinaFace and Inception run."),
    aligned: Optional[bool] = typer.Option(None, "--aligned/--not-aligned", help="Images are aligned face crops (default: as the run's manifest says)."),
    identity_from_folders: Optional[bool] = typer.Option(None, "--identity-from-folders/--no-identity-from-folders", help="Top-level folders of ORIGINAL_DIR are identities (default: when the tree looks so)."),
    fid: bool = typer.Option(True, "--fid/--no-fid", help="Compute FID when the Inception weights (inception_fid) are present."),
    fid_region: FidRegion = typer.Option("image", "--fid-region", help="What FID (and the FaRL proxy) compares: whole images, or the crops of the detected faces (CFA-Net Table 3)."),
    fid_target: Optional[Path] = typer.Option(None, "--fid-target", help="Compare the outputs with the images of this folder instead of the originals (FALCO Table 2: LFW's FID against CelebA-HQ)."),
    identities: Optional[Path] = typer.Option(None, "--identities", help="File of '<original path>,<identity>' lines (for TPR at FAR, rank and parrot protocols when the originals are not in identity folders)."),
    recogniser_backend: RecogniserBackend = typer.Option("torch", "--recogniser-backend", "--recognizer-backend", help="dlib recogniser backend: torch (batched, CPU or CUDA) or dlib."),
    attribute_source: str = typer.Option("auto", "--attribute-source", help="Attribute source for the k / l / t and preservation figures (estimated on original and output crops): auto (estimators+landmarks when the human-models are installed, else landmarks), any `anonymize attributes` source, 'a+b' to merge, or 'none'."),
    quasi_identifiers: str = typer.Option(",".join(DEFAULT_QUASI_IDENTIFIERS), "--quasi-identifiers", help="Attributes an attacker links with, comma-separated."),
    sensitive: str = typer.Option(",".join(DEFAULT_SENSITIVE), "--sensitive", help="Attributes a class must not give away (l and t), comma-separated; empty for none."),
    attribute_k: int = typer.Option(DEFAULT_K, "--attribute-k", min=1, help="Report the share of faces in attribute classes smaller than this."),
    out_parquet: Optional[Path] = typer.Option(None, help="Audit Parquet path (default: <report>/audit.parquet, else <ANON_DIR>-audit/audit.parquet)."),
    summary: Optional[Path] = typer.Option(None, help="Summary JSON path (default: beside the Parquet, audit-summary.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary table."),
    sample: Optional[int] = typer.Option(None, "--sample", min=1, help="Audit the faces of N images drawn with --sample-seed (every file is still checked for metadata and copies); rates get 95% intervals and the identity gate reads the upper bound."),
    sample_seed: int = typer.Option(0, "--sample-seed", help="Seed that draws the --sample images."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Threads that decode, detect and describe images (default: one per core)."),
    heads: bool = typer.Option(True, "--heads/--no-heads", help="Also look for the heads the pose model (MoveNet, human-models) finds where no face was (auto detector, when its weights are here)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Instead of the audit, CFA-Net's Table 1 protocol on an LFW pairs.txt file: the second image of each same-person pair read from ANON_DIR, TPR at --far per fold (threshold set on the other folds), mean +- std, per recogniser; writes pairs-protocol.json (default: <ANON_DIR>-audit/, or --summary)."),
    far: float = typer.Option(0.001, "--far", min=0.0, max=1.0, help="With --pairs: the false accept rate the thresholds are set at (CFA-Net: 0.001)."),
) -> None:
    """Audit ANON_DIR against ORIGINAL_DIR: re-identification, detection, missed faces, metadata, quality.

    Exits 3 when the verdict is FAIL (a gate: `anonymize audit ORIGINAL ANON && publish`), 2 on an error."""
    if pairs is not None:
        pairs_command(PairsConfig(original_dir, anon_dir, pairs, far, manifest, detector.value, det_threshold, weights_dir,
                                  trust_unverified, device.value, aligned, recogniser_backend.value,
                                  distance_threshold), summary, as_json, quiet)
        return
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
        fid_region=fid_region.value,
        fid_target=fid_target,
        identities_file=identities,
        recogniser_backend=recogniser_backend.value,
        privacy_goal=privacy_goal.value,
        study_pairs=study_pairs,
        study_control_pairs=study_control_pairs,
        study_seed=study_seed,
        attribute_source=None if attribute_source == "none" else attribute_source,
        quasi_identifiers=tuple(name.strip() for name in quasi_identifiers.split(",") if name.strip()),
        sensitive=tuple(name.strip() for name in sensitive.split(",") if name.strip()),
        attribute_k=attribute_k,
        sample=sample,
        sample_seed=sample_seed,
        workers=workers,
        heads=heads,
        thresholds=Thresholds(
            max_reid_rate=max_reid_rate,
            max_rank1_rate=max_rank1_rate,
            min_detection_rate=min_detection_rate,
            max_missed_faces=max_missed_faces,
            max_possible_faces=max_possible_faces,
            max_metadata_leaks=max_metadata_leaks,
            min_match_rate=min_match_rate,
            max_face_psnr_db=max_face_psnr,
            max_face_ssim=max_face_ssim,
        ),
    )
    try:
        with RichAuditProgress(quiet or as_json) as progress:
            result = run_audit(config, progress)
    except (AnonymizeError, WeightsError) as exc:  # AuditError, and DeviceError for --device cuda without CUDA
        fail(str(exc), as_json=as_json)
    if as_json:
        print_json(result.summary.to_json())
    elif not quiet:
        print_audit_summary(result)
    code = gate_exit_code(result.passed, report_only and not fail_on_leak)
    if code:
        raise typer.Exit(code)


def pairs_command(config: PairsConfig, summary: Optional[Path], as_json: bool, quiet: bool) -> None:
    """``audit --pairs``: the pairs protocol, its table per recogniser, and its JSON file (not a gate: exit 0)."""
    try:
        result = run_pairs_protocol(config, lambda text: None if quiet or as_json else stdout.print(shown(text)))
        path = write_pairs_result(result, summary or default_audit_dir(config.anonymized_dir) / PAIRS_RESULT_NAME, config)
    except (AnonymizeError, WeightsError) as exc:
        fail(str(exc), as_json=as_json)
    if as_json:
        print_json({**asdict(result), "path": str(path)})
        return
    if quiet:
        return
    table = Table(title=f"pairs protocol: TPR at FAR {config.far:g}, {result.folds} fold(s), mean ± std")
    for column in ("recogniser", "judge", "before (originals)", "after (2nd anonymized)", "resolved"):
        table.add_column(column)

    def cell(folded: FoldedTpr) -> str:
        return "n/a" if folded.mean is None else f"{folded.mean:.3f} ± {folded.std:.3f}"

    for name, entry in result.recognisers.items():
        table.add_row(name, "yes" if entry.judge else "no (in the method's loss)", cell(entry.before), cell(entry.after),
                      "yes" if entry.after.resolved else f"no (< {1 / config.far:g} threshold pairs)" if config.far else "no")
    stdout.print(table)
    stdout.print(shown(f"{result.same_pairs} same-person and {result.different_pairs} different-person pairs measured; "
                       f"detector {result.detector}; judges: {', '.join(result.judges) or 'none'} ({result.judge_reason})"), soft_wrap=True)
    for name, status in result.unavailable.items():
        stdout.print(f"[yellow]not measured:[/] {shown(name)}: {shown(status)}", soft_wrap=True)
    for line in result.left_out:
        stdout.print(f"[yellow]left out:[/] {shown(line)}", soft_wrap=True)
    stdout.print(f"pairs protocol: {shown(path)}", soft_wrap=True)


def gate_exit_code(passed: bool, report_only: bool = False) -> int:
    """The audit's exit status: a FAIL stops the job that runs it (exit 3) unless it only reports (``--report-only``)."""
    return 0 if passed or report_only else EXIT_THRESHOLD_CROSSED


@audit_app.command("compare")
def compare_command(
    runs: list[Path] = typer.Argument(..., help="Audited runs: an audit folder, its audit-summary.json, or a run folder whose audit is in <RUN>-audit/."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the table, its legend and a privacy-utility plot to <REPORT>/compare.html."),
    all_columns: bool = typer.Option(False, "--all", help="Print every figure (default: the columns the papers' tables hold)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON on stdout."),
) -> None:
    """One table, a row per run and a column per figure, each column named with its instrument and threshold."""
    try:
        comparison = load_comparison(runs)
        report_path = write_comparison_report(comparison, report) if report is not None else None
    except AuditError as exc:
        fail(str(exc))
    if as_json:
        print_json({**comparison_json(comparison), "report_path": str(report_path) if report_path else None})
        return
    columns = selected_columns(comparison, all_columns)
    table = Table(title="anonymize audit compare")
    table.add_column("run", style="bold", no_wrap=True)
    for _, label in columns:
        table.add_column(label, justify="right", no_wrap=True)
    cells = [[shown(run.label), *(format_value(run.figures.get(key)) for key, _ in columns)] for run in comparison.runs]
    for row in cells:
        table.add_row(*row)
    headers = ["run", *(label for _, label in columns)]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells)]
    wide = Console(file=stdout.file, width=max(stdout.width, sum(widths) + 3 * len(widths) + 1), highlight=False)
    wide.print(table)  # one line per run, however wide the table
    for label, text in legend(comparison, columns):
        stdout.print(f"[bold]{shown(label)}[/]: {shown(text)}", soft_wrap=True, highlight=False)
    if report_path is not None:
        stdout.print(f"report: {shown(report_path)}", soft_wrap=True)


@audit_app.command("study-score")
def study_score_command(
    answers: Path = typer.Argument(..., help="Volunteers' answers: a CSV with columns pair, answer (yes/no) and optionally volunteer."),
    key: Optional[Path] = typer.Option(None, "--key", help="The kit's answer key (default: study-answer-key.csv beside ANSWERS)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
) -> None:
    """Score a study.html answer sheet: accuracy on anonymized pairs against real-real control pairs, with 95% intervals."""
    from anonymize.audit.study import ANSWER_KEY
    from anonymize.audit.study_score import score_files

    key_path = key if key is not None else answers.parent / ANSWER_KEY
    try:
        score = score_files(answers, key_path)
    except AnonymizeError as exc:
        fail(str(exc), as_json=as_json)
    if as_json:
        print_json({"volunteers": score.volunteers, "unanswered": score.unanswered, "left_out": score.left_out,
                    **{kind: {"right": entry.right, "answered": entry.answered, "accuracy": entry.accuracy,
                              "ci95": list(entry.interval) if entry.interval else None} for kind, entry in score.kinds.items()}})
        return
    table = Table(title=f"study score: {score.volunteers} volunteer(s), {score.unanswered} unanswered")
    for column in ("pairs", "right / answered", "accuracy", "95% interval (Wilson)"):
        table.add_column(column)
    for kind, entry in score.kinds.items():
        label = "anonymized (an output on the right)" if kind == "anonymized" else "control (real-real)"
        accuracy = "n/a" if entry.accuracy is None else f"{entry.accuracy:.3f}"
        interval = "n/a" if entry.interval is None else f"{entry.interval[0]:.3f} .. {entry.interval[1]:.3f}"
        table.add_row(label, f"{entry.right} / {entry.answered}", accuracy, interval)
    stdout.print(table)
    for line in score.left_out:
        stdout.print(f"[yellow]note:[/] {shown(line)}", soft_wrap=True)


@audit_app.command("utility")
def utility_command(
    original_dir: Path = typer.Argument(..., help="Folder of the original images (whole aligned faces, as CelebA-HQ or LFW)."),
    anon_dir: Path = typer.Argument(..., help="Folder of the anonymized images."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Attribute labels of the originals: list_attr_celeba.txt, a CSV or a Parquet file (as `anonymize attributes --source labels`)."),
    labels_from: Optional[str] = typer.Option(None, "--labels-from", help="Instead of --labels: pseudo-labels an attribute source (estimators, zero-shot, probe, ...) estimates on the originals, as FALCO labels LFW."),
    split: Optional[Path] = typer.Option(None, "--split", help="CelebA's list_eval_partition.txt (0 train, 2 test), as FALCO splits CelebA-HQ (default: a seeded random split)."),
    test_share: float = typer.Option(0.2, "--test-share", min=0.01, max=0.99, help="Share of the labelled images tested on, with the random split (FALCO's LFW: 0.2)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random split."),
    c: float = typer.Option(1.0, "--c", min=1e-6, help="Inverse L2 regularisation strength of each logistic head."),
    backbone: str = typer.Option("dlib", "--backbone", help="Frozen features the heads read: dlib (the face's 128-d descriptor; every install has it) or farl (FaRL's CLS embedding of the whole image; inside FALCO's loss, so an upper bound for FALCO)."),
    manifest: Optional[Path] = typer.Option(None, help="Run manifest used to pair outputs with sources (default: <ANON_DIR>/manifest.parquet if present, else pair by relative path)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Result JSON (default: <ANON_DIR>-audit/utility.json)."),
    weights_dir: Optional[Path] = typer.Option(None, envvar="ANONYMIZE_HOME", help="Weights folder (default: ~/.cache/anonymize)."),
    trust_unverified: bool = typer.Option(False, "--trust-unverified", help="Use weight files that do not match weights.lock."),
    device: Device = typer.Option("auto", help="Where FaRL (and neural label sources) run."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Train on anonymized, test on real (FALCO Tables 3, 5, 6): per-attribute accuracy of a linear probe on frozen features
    trained on the real training images vs on their anonymized versions, both tested on the real test images."""
    from anonymize.audit.utility import UTILITY_RESULT_NAME, UtilityConfig, run_utility, write_utility_result

    config = UtilityConfig(original_dir, anon_dir, labels, labels_from, split, test_share, seed, c, backbone, manifest, weights_dir,
                           trust_unverified, device.value)
    try:
        result = run_utility(config, lambda text: None if as_json else stdout.print(shown(text)))
        path = write_utility_result(result, out or default_audit_dir(anon_dir) / UTILITY_RESULT_NAME, config)
    except (AnonymizeError, WeightsError) as exc:
        fail(str(exc), as_json=as_json)
    if as_json:
        print_json({**asdict(result), "path": str(path)})
        return
    table = Table(title="train on anonymized, test on real: accuracy on the real test split")
    for column in ("attribute", "test images (positive)", "majority class", "trained on real", "trained on anonymized"):
        table.add_column(column, justify="left" if column == "attribute" else "right")
    for name, item in result.attributes.items():
        if item.status != "measured":
            table.add_row(name, f"{item.test_images} ({item.test_positives})", number(item.majority, 3), shown(item.status), "")
            continue
        table.add_row(name, f"{item.test_images} ({item.test_positives})", number(item.majority, 3),
                      number(item.trained_on_real, 3), number(item.trained_on_anonymized, 3))
    table.add_row("combined", "", "", number(result.combined_real, 3), number(result.combined_anonymized, 3))
    stdout.print(table)
    for line in (f"classifier: {result.classifier}", f"labels: {result.labels}", f"split: {result.split}",
                 f"{result.train_images} training and {result.test_images} test images; {result.unlabelled_images} without labels left out"):
        stdout.print(shown(line), soft_wrap=True)
    stdout.print(f"utility: {shown(path)}", soft_wrap=True)


@audit_app.command("preview")
def preview_command(
    original_dir: Path = typer.Argument(..., help="The folder that was anonymized."),
    anon_dir: Path = typer.Argument(..., help="What `anonymize run` wrote."),
    count: int = typer.Option(12, "--count", "-n", min=1, help="Before/after pairs on the sheet."),
    seed: int = typer.Option(0, "--seed", help="Seed that draws the pairs (the same seed shows the same images)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: <ANON_DIR>-preview.png, beside the release)."),
    manifest: Optional[Path] = typer.Option(None, help="Run manifest used to pair outputs with sources (default: <ANON_DIR>/manifest.parquet if present)."),
    as_json: bool = typer.Option(False, "--json", help="Print the sheet's path and the pairs shown as JSON."),
) -> None:
    """A contact sheet of N seeded before/after pairs (the run's face boxes outlined), to look at before a release."""
    from anonymize.audit.preview import write_preview

    try:
        path, count_shown = write_preview(original_dir, anon_dir, count, seed, out, manifest)
    except AuditError as exc:
        fail(str(exc), as_json=as_json)
    if as_json:
        print_json({"preview": str(path), "pairs": count_shown})
        return
    stdout.print(f"preview: {shown(path)} ({count_shown} pairs; it shows original faces: keep it private)", soft_wrap=True)
