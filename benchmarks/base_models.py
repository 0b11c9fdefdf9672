"""Benchmark the base models that run on any image offline (u2netp, mbplus) on a labelled data set, with a centre
prior for comparison: dataset-level max F / mean F / AUC (the paper's protocol,
relearn_core.evaluation.metrics.DatasetPR), MAE,
and images per second of prediction on this machine (image reading and evaluation not counted; one untimed warm-up
image first, so model loading and numba compilation are not counted either). Wall-clock speed depends on what else
runs on the machine, so the process's CPU seconds per image (all its threads) are reported too, with the load average.

    python benchmarks/base_models.py --data ../shared/data/SOD --out benchmarks/results/base_models.json

Writes the JSON and a Markdown summary beside it (same name, .md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from relearn_adapters.mbplus import centre_prior
from reporting import load_average, utc_now, write_report

from relearn_core import plugins
from relearn_core.errors import InputError
from relearn_core.evaluation.metrics import MAE, DatasetPR
from relearn_core.imageio import (
    list_by_stem,
    read_image,
    read_mask,
    write_map,
)

CENTRE_PRIOR = "centre-prior"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_dataset(folder: Path, limit: int | None):
    images = list_by_stem(folder / "images")
    masks = list_by_stem(folder / "gt")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise InputError(folder / "gt", f"no ground truth for {len(missing)} images, e.g. {', '.join(missing[:5])}")
    stems = sorted(images)[:limit]
    return stems, [images[stem] for stem in stems], [masks[stem] for stem in stems]


def run_model(name: str, stems, image_paths, mask_paths, batch_size: int, device: str, maps_dir: Path | None) -> dict:
    """Predict every image with one base (or the centre prior), timing prediction only, and evaluate."""
    if name == CENTRE_PRIOR:
        predict = lambda images, names: [centre_prior(*image.shape[:2]) for image in images]  # noqa: E731
    else:
        adapter = plugins.get_adapter(name)
        predict = lambda images, names: plugins.predict(adapter, images, names, {"device": device})  # noqa: E731
    predict([read_image(image_paths[0])], [stems[0]])  # warm-up: session load, numba compilation
    precision_recall, mae = DatasetPR(), MAE()
    seconds = cpu_seconds = 0.0
    for start in range(0, len(stems), batch_size):
        names = stems[start : start + batch_size]
        images = [read_image(path) for path in image_paths[start : start + batch_size]]
        began, began_cpu = time.perf_counter(), time.process_time()
        maps = predict(images, names)
        seconds += time.perf_counter() - began
        cpu_seconds += time.process_time() - began_cpu
        for stem, saliency, mask_path in zip(names, maps, mask_paths[start : start + batch_size]):
            mask = read_mask(mask_path)
            precision_recall.step(saliency, mask)
            mae.step(saliency, mask)
            if maps_dir is not None:
                write_map(maps_dir / name / f"{stem}.png", saliency)
    scores = precision_recall.results()
    return {
        "max_f": round(scores["max_f"], 4),
        "mean_f": round(scores["mean_f"], 4),
        "auc": round(scores["auc"], 4),
        "mae": round(mae.results()["mae"], 4),
        "images": len(stems),
        "predict_seconds": round(seconds, 2),
        "images_per_second": round(len(stems) / seconds, 2) if seconds > 0 else None,
        "cpu_seconds_per_image": round(cpu_seconds / len(stems), 4),
    }


def markdown(report: dict) -> str:
    lines = [
        f"# Base models on {report['dataset']} ({report['images']} images)",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, device {report['device']}; "
        f"{report['date']}; load average (1, 5, 15 min) {report['machine']['load_average_at_start']} at the start, "
        f"{report['machine']['load_average_at_end']} at the end (other jobs shared the CPU).",
        "Max F / mean F / AUC: dataset-level (mean precision and recall over images at 256 thresholds, maps divided "
        "by their maximum, gt > 0.5, beta^2 = 0.3); MAE on min-max normalised maps. Speed: prediction only, "
        "wall clock (images/s) and the process's CPU seconds per image.",
        "",
        "| model | max F | mean F | AUC | MAE | images/s | CPU s/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["models"].items():
        speed = (
            " | " if name == CENTRE_PRIOR else f"{row['images_per_second']:.2f} | {row['cpu_seconds_per_image']:.3f}"
        )
        lines.append(
            f"| {name} | {row['max_f']:.3f} | {row['mean_f']:.3f} | {row['auc']:.3f} | {row['mae']:.3f} | {speed} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="data set folder with images/ and gt/")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (a .md summary goes beside it)")
    parser.add_argument("--models", default=f"u2netp,mbplus,{CENTRE_PRIOR}", help="comma-separated bases")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (for a quick look)")
    parser.add_argument("--save-maps", type=Path, default=None, help="also write every map under DIR/<model>/")
    args = parser.parse_args(argv)

    stems, image_paths, mask_paths = load_dataset(args.data, args.limit)
    report = {
        "dataset": args.data.resolve().name,
        "images": len(stems),
        "device": args.device,
        "date": utc_now(),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": load_average(),
        },
        "metrics": "relearn_core.evaluation.metrics.DatasetPR (max_f, mean_f, auc) and MAE",
        "models": {},
    }
    for name in [model.strip() for model in args.models.split(",") if model.strip()]:
        report["models"][name] = run_model(
            name, stems, image_paths, mask_paths, args.batch_size, args.device, args.save_maps
        )
        print(name, report["models"][name], flush=True)
    report["machine"]["load_average_at_end"] = load_average()
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
