"""The summary's figures in the papers' language: each names its instrument, threshold and protocol.

``paper_figures(...)`` flattens what the audit measured into one list, one entry per number a
paper's table could hold (FALCO Tables 1-2, CFA-Net Tables 1-3, DeepPrivacy's FID, AnonymousNet's
k and attribute preservation), so a curator can
set a figure beside a published one and see at once whether they were measured the same way.
An instrument that could not run still has its entries, with ``value`` None and its ``status``
saying why. ``anonymize audit compare`` builds its columns from these keys.
"""

from __future__ import annotations

from collections.abc import Mapping

from anonymize.audit.instruments import DETECTOR_INSTRUMENTS, FACENET_MODELS, GRAPH_RECOGNISERS
from anonymize.audit.protocols import FARS
from anonymize.audit.summary import (
    AttributeFigures, DetectorDetection, FaceQuality, ImageQuality, PaperFigure, RecogniserFigures, UnavailableInstrument,
)
from anonymize.faces.detect import DEFAULT_THRESHOLDS

RECOGNISER_LABELS = {"dlib": "dlib", "facenet-casia": "FaceNet-CASIA", "facenet-vggface2": "FaceNet-VGGFace2",
                     "faceres": "faceres", "mobileface": "mobileface"}
DETECTOR_LABELS = {"dlib-hog": "dlib", "mtcnn": "MTCNN", "retinaface": "RetinaFace"}
HIGHER_IS_MORE_PRIVATE = {"mean_rank"}  # for every other re-identification figure, lower is more private


def _figure(key: str, label: str, value: float | None, instrument: str, threshold: str, protocol: str,
            status: str = "measured", kind: str = "rate") -> PaperFigure:
    """A figure; its status is "measured" once it has a value, "not measured" when it has none and no reason."""
    if value is not None:
        status = "measured"
    elif status == "measured":
        status = "not measured"
    return PaperFigure(key, label, value, kind, instrument, threshold, protocol, status)


def _detection(measured: Mapping[str, DetectorDetection], unavailable: Mapping[str, UnavailableInstrument]) -> list[PaperFigure]:
    figures = []
    for name, label in DETECTOR_LABELS.items():
        instrument = f"{DETECTOR_INSTRUMENTS[name]}"
        threshold = f"score >= {DEFAULT_THRESHOLDS[name]} (its default); same face: IoU >= 0.3 with the original's box"
        protocol = "share of the originals' faces still detected at their place in the anonymized image"
        if name in measured:
            figures.append(_figure(f"detection.{name}", f"det {label}", measured[name].rate, instrument, threshold, protocol))
        elif name in unavailable:
            figures.append(_figure(f"detection.{name}", f"det {label}", None, instrument, threshold, protocol, unavailable[name].status))
    return figures


def _reid(recognisers: Mapping[str, RecogniserFigures], unavailable: Mapping[str, UnavailableInstrument]) -> list[PaperFigure]:
    figures = []
    names = ["dlib", *(name for name, _, _ in FACENET_MODELS), *GRAPH_RECOGNISERS]
    for name in names:
        label = RECOGNISER_LABELS[name]
        entry = recognisers.get(name)
        missing = unavailable.get(name)
        status = "measured" if entry is not None else (missing.status if missing is not None else "not measured")
        instrument = entry.instrument if entry else (missing.instrument if missing is not None else label)
        threshold = f"distance < {entry.threshold:g}" if entry else "its same-person threshold"
        verification = entry.verification_rate if entry else None
        pairs = entry.different_person_pairs if entry else None
        figures.append(_figure(f"reid.{name}.verification", f"{label} verif", verification, instrument, threshold,
                               "share of anonymized faces verified as their own original", status))
        tprs = (entry.tpr_at_far if entry else None) or {}
        for far in FARS:
            tpr = tprs.get(f"{far:g}")
            resolution = "" if tpr is None or tpr.resolved else f" (not resolved: {pairs} pairs < 1/FAR)"
            figures.append(_figure(
                f"reid.{name}.tpr@{far:g}", f"{label} TPR@{far:g}", tpr.tpr if tpr else None, instrument,
                f"distance < {tpr.threshold:.4f}, set at FAR {far:g} on {pairs} different-person pairs of the originals{resolution}"
                if tpr is not None and tpr.threshold is not None else f"set at FAR {far:g} on different-person pairs of the originals",
                "share of (anonymized, own original) pairs accepted at that threshold",
                status if verification is None or tprs else "unavailable (needs identity labels: identity folders or --identities)"))
        gallery = entry.gallery if entry and entry.gallery is not None else "the"
        figures.append(_figure(f"reid.{name}.rank1", f"{label} rank-1", entry.rank1_rate if entry else None, instrument,
                               "nearest neighbour", f"true identity ranked first against the gallery of all {gallery} original faces",
                               status))
        figures.append(_figure(f"reid.{name}.mean_rank", f"{label} mean rank", entry.mean_rank if entry else None, instrument,
                               "nearest neighbour",
                               "mean rank of the true identity against the gallery of original faces (higher: more private)", status,
                               kind="rank"))
        parrot = entry.parrot if entry else None
        parrot_rank1 = parrot.rank1_rate if parrot is not None else None
        chance = parrot.chance if parrot is not None else None
        figures.append(_figure(f"reid.{name}.parrot_rank1", f"{label} parrot rank-1", parrot_rank1, instrument, "nearest neighbour",
                               "parrot: rank-1 against a gallery anonymized by the same method (other photos of each person; "
                               f"chance {chance:.1%})" if chance is not None else
                               "parrot: rank-1 against a gallery anonymized by the same method",
                               status if verification is None or parrot_rank1 is not None
                               else "unavailable (needs identity labels with two photos or more per person)"))
    return figures


def _quality(face: FaceQuality | None, quality: ImageQuality | None, lpips: UnavailableInstrument | None) -> list[PaperFigure]:
    box = "inside each face's detected box, mean over faces"
    return [
        _figure("quality.ssim_face", "SSIM face", face.ssim_face if face else None,
                "SSIM (Wang et al. 2004) on luma, Gaussian window sigma 1.5", "-", box, kind="score"),
        _figure("quality.psnr_face", "PSNR face dB", face.psnr_face_db if face else None, "PSNR over RGB", "-", box, kind="db"),
        _figure("quality.ms_ssim_face", "MS-SSIM face", face.ms_ssim_face if face else None,
                "MS-SSIM (Wang et al. 2003) on luma, 5 scales, weights 0.0448 0.2856 0.3001 0.2363 0.1333", "-", box, kind="score"),
        _figure("quality.lpips_face", "LPIPS face", face.lpips_face if face else None,
                "LPIPS v0.1 AlexNet (lpips 0.1.4), crops resized to 64 x 64", "-", box,
                lpips.status if lpips else "measured", kind="score"),
        _figure("quality.fid", "FID", quality.fid if quality else None, "Inception-v3 pool3 (pytorch-fid weights)", "-",
                "Fréchet distance, anonymized vs reference (whole images or face crops, against the originals or a target set: "
                "the status says which)", quality.fid_status if quality else "not measured",
                kind="distance"),
        _figure("quality.farl_proxy", "FaRL-FD (proxy)", quality.farl_frechet_proxy if quality else None,
                "FaRL ViT-B/16 CLS embedding (farl_ep64): NOT comparable to published FID", "-",
                "Fréchet distance, anonymized vs reference (as FID: the status says which)",
                quality.farl_frechet_proxy_status if quality else "not measured", kind="distance"),
    ]


def _attributes(entry: AttributeFigures | None) -> list[PaperFigure]:
    """AnonymousNet's measurable privacy and the attribute preservation (anonymize.audit.attributes)."""
    available = entry is not None and entry.available
    status = "measured" if available else f"unavailable ({entry.reason if entry is not None and entry.reason is not None else 'not measured'})"
    release = entry.release if available else None
    instrument = f"attribute source {entry.source}{' (heuristic)' if entry.heuristic else ''}" if available else "attribute source"
    qis = ", ".join(release.quasi_identifiers if release is not None else []) or "the quasi-identifiers"
    k_status = status if not available or release is not None else f"unavailable ({entry.release_reason})"
    preserved = entry.preservation.mean if available and entry.preservation is not None else None
    return [
        _figure("attributes.k", "attr k", release.k if release is not None else None, instrument, "probability >= 0.5",
                f"smallest class of output faces with the same values of {qis}", k_status, kind="count"),
        _figure("attributes.unique", "attr unique", entry.unique_share if entry is not None else None, instrument,
                "probability >= 0.5", "share of output faces whose whole attribute vector no other output face has", status),
        _figure("attributes.preserved", "attr preserved", preserved, instrument,
                "probability >= 0.5", "share of faces whose attribute agrees between original and output, mean over attributes", status),
    ]


def paper_figures(*, detection_by_detector: Mapping[str, DetectorDetection] | None = None,
                  instruments_unavailable: Mapping[str, UnavailableInstrument] | None = None,
                  recognisers: Mapping[str, RecogniserFigures] | None = None, face_quality: FaceQuality | None = None,
                  quality: ImageQuality | None = None, attributes: AttributeFigures | None = None) -> list[PaperFigure]:
    """Every figure with its instrument, threshold and protocol (see module doc); a part not given reads "not measured"."""
    unavailable = instruments_unavailable or {}
    return [*_detection(detection_by_detector or {}, unavailable), *_reid(recognisers or {}, unavailable),
            *_quality(face_quality, quality, unavailable.get("lpips")), *_attributes(attributes)]
