"""The summary's figures in the papers' language: each names its instrument, threshold and protocol.

``paper_figures(summary)`` flattens what the audit measured into one list, one entry per number a
paper's table could hold (FALCO Tables 1-2, CFA-Net Tables 1-3, DeepPrivacy's FID, AnonymousNet's
k and attribute preservation), so a curator can
set a figure beside a published one and see at once whether they were measured the same way.
An instrument that could not run still has its entries, with ``value`` None and its ``status``
saying why. ``anonymize audit compare`` builds its columns from these keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anonymize.audit.instruments import DETECTOR_INSTRUMENTS, FACENET_MODELS, GRAPH_RECOGNISERS
from anonymize.audit.protocols import FARS
from anonymize.faces.detect import DEFAULT_THRESHOLDS

RECOGNISER_LABELS = {"dlib": "dlib", "facenet-casia": "FaceNet-CASIA", "facenet-vggface2": "FaceNet-VGGFace2",
                     "faceres": "faceres", "mobileface": "mobileface"}
DETECTOR_LABELS = {"dlib-hog": "dlib", "mtcnn": "MTCNN", "retinaface": "RetinaFace"}
HIGHER_IS_MORE_PRIVATE = {"mean_rank"}  # for every other re-identification figure, lower is more private


def _figure(key: str, label: str, value: float | None, instrument: str, threshold: str, protocol: str,
            status: str = "measured", kind: str = "rate") -> dict[str, Any]:
    return {"key": key, "label": label, "value": value, "kind": kind, "instrument": instrument,
            "threshold": threshold, "protocol": protocol, "status": status if value is not None or status != "measured" else "not measured"}


def _detection(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    figures = []
    measured = summary.get("detection_by_detector", {})
    unavailable = summary.get("instruments_unavailable", {})
    for name, label in DETECTOR_LABELS.items():
        instrument = f"{DETECTOR_INSTRUMENTS[name]}"
        threshold = f"score >= {DEFAULT_THRESHOLDS[name]} (its default); same face: IoU >= 0.3 with the original's box"
        protocol = "share of the originals' faces still detected at their place in the anonymized image"
        if name in measured:
            figures.append(_figure(f"detection.{name}", f"det {label}", measured[name]["rate"], instrument, threshold, protocol))
        elif name in unavailable:
            figures.append(_figure(f"detection.{name}", f"det {label}", None, instrument, threshold, protocol, unavailable[name]["status"]))
    return figures


def _reid(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    figures = []
    recognisers = summary.get("recognisers", {})
    unavailable = summary.get("instruments_unavailable", {})
    names = ["dlib", *(name for name, _, _ in FACENET_MODELS), *GRAPH_RECOGNISERS]
    for name in names:
        label = RECOGNISER_LABELS[name]
        entry = recognisers.get(name)
        status = "measured" if entry is not None else unavailable.get(name, {}).get("status", "not measured")
        instrument = entry["instrument"] if entry else unavailable.get(name, {}).get("instrument", label)
        threshold = f"distance < {entry['threshold']:g}" if entry else "its same-person threshold"
        entry = entry or {}
        figures.append(_figure(f"reid.{name}.verification", f"{label} verif", entry.get("verification_rate"), instrument, threshold,
                               "share of anonymized faces verified as their own original", status))
        tprs = entry.get("tpr_at_far", {})
        for far in FARS:
            tpr = tprs.get(f"{far:g}", {})
            resolution = "" if tpr.get("resolved", True) else f" (not resolved: {entry.get('different_person_pairs')} pairs < 1/FAR)"
            figures.append(_figure(
                f"reid.{name}.tpr@{far:g}", f"{label} TPR@{far:g}", tpr.get("tpr"), instrument,
                f"distance < {tpr['threshold']:.4f}, set at FAR {far:g} on {entry.get('different_person_pairs')} different-person pairs of the originals{resolution}"
                if tpr.get("threshold") is not None else f"set at FAR {far:g} on different-person pairs of the originals",
                "share of (anonymized, own original) pairs accepted at that threshold",
                status if entry.get("verification_rate") is None or tprs else "unavailable (needs identity labels: identity folders or --identities)"))
        figures.append(_figure(f"reid.{name}.rank1", f"{label} rank-1", entry.get("rank1_rate"), instrument, "nearest neighbour",
                               f"true identity ranked first against the gallery of all {entry.get('gallery', 'the')} original faces", status))
        figures.append(_figure(f"reid.{name}.mean_rank", f"{label} mean rank", entry.get("mean_rank"), instrument, "nearest neighbour",
                               "mean rank of the true identity against the gallery of original faces (higher: more private)", status, kind="rank"))
        parrot = entry.get("parrot", {})
        figures.append(_figure(f"reid.{name}.parrot_rank1", f"{label} parrot rank-1", parrot.get("rank1_rate"), instrument, "nearest neighbour",
                               "parrot: rank-1 against a gallery anonymized by the same method (other photos of each person; "
                               f"chance {parrot['chance']:.1%})" if parrot.get("chance") is not None else
                               "parrot: rank-1 against a gallery anonymized by the same method",
                               status if entry.get("verification_rate") is None or parrot.get("rank1_rate") is not None
                               else "unavailable (needs identity labels with two photos or more per person)"))
    return figures


def _quality(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    face, quality = summary.get("face_quality", {}), summary.get("quality", {})
    lpips = summary.get("instruments_unavailable", {}).get("lpips")
    box = "inside each face's detected box, mean over faces"
    return [
        _figure("quality.ssim_face", "SSIM face", face.get("ssim_face"), "SSIM (Wang et al. 2004) on luma, Gaussian window sigma 1.5",
                "-", box, kind="score"),
        _figure("quality.psnr_face", "PSNR face dB", face.get("psnr_face_db"), "PSNR over RGB", "-", box, kind="db"),
        _figure("quality.lpips_face", "LPIPS face", face.get("lpips_face"),
                "LPIPS v0.1 AlexNet (lpips 0.1.4), crops resized to 64 x 64", "-", box,
                lpips["status"] if lpips else "measured", kind="score"),
        _figure("quality.fid", "FID", quality.get("fid"), "Inception-v3 pool3 (pytorch-fid weights)", "-",
                "Fréchet distance, originals vs anonymized whole images", quality.get("fid_status", "not measured"), kind="distance"),
        _figure("quality.farl_proxy", "FaRL-FD (proxy)", quality.get("farl_frechet_proxy"),
                "FaRL ViT-B/16 CLS embedding (farl_ep64): NOT comparable to published FID", "-",
                "Fréchet distance, originals vs anonymized whole images", quality.get("farl_frechet_proxy_status", "not measured"),
                kind="distance"),
    ]


def _attributes(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """AnonymousNet's measurable privacy and the attribute preservation (anonymize.audit.attributes)."""
    entry = summary.get("attributes") or {}
    available = bool(entry.get("available"))
    status = "measured" if available else f"unavailable ({entry.get('reason', 'not measured')})"
    release = entry.get("release") or {}
    instrument = f"attribute source {entry.get('source')}{' (heuristic)' if entry.get('heuristic') else ''}" if available else "attribute source"
    qis = ", ".join(release.get("quasi_identifiers", [])) or "the quasi-identifiers"
    k_status = status if not available or release else f"unavailable ({entry.get('release_reason')})"
    return [
        _figure("attributes.k", "attr k", release.get("k"), instrument, "probability >= 0.5",
                f"smallest class of output faces with the same values of {qis}", k_status, kind="count"),
        _figure("attributes.unique", "attr unique", entry.get("unique_share"), instrument, "probability >= 0.5",
                "share of output faces whose whole attribute vector no other output face has", status),
        _figure("attributes.preserved", "attr preserved", (entry.get("preservation") or {}).get("mean"), instrument,
                "probability >= 0.5", "share of faces whose attribute agrees between original and output, mean over attributes", status),
    ]


def paper_figures(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every figure with its instrument, threshold and protocol (see module doc)."""
    figures = [*_detection(summary), *_reid(summary), *_quality(summary), *_attributes(summary)]
    for figure in figures:
        if figure["value"] is not None:
            figure["status"] = "measured"
    return figures
