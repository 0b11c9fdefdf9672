"""Speed of relearn's evaluation against PySODMetrics 1.6.2 on the same maps and the same metrics.

Both compute image-level F (max, mean, adaptive), MAE, S-measure, E-measure (max, mean, adaptive) and weighted F over
the 300 SOD maps of one method; relearn also computes the dataset-level PR and ROC curves (max F, AUC) in the same pass.
Two comparisons, each single-threaded:

* metrics only: maps and masks already in memory as uint8 arrays, ``SaliencyMetrics.step`` against the five
  PySODMetrics classes' ``step``;
* end to end: reading the files included, ``evaluate_folders(..., workers=1)`` against ``cv2.imread`` + the five
  classes. relearn's default (threads, ``workers=None``) is timed as well.

Rounds alternate between the two so that a busy machine slows both alike; the fastest round of each is kept, with its
CPU seconds (all threads of the process), and the load average is recorded. The ratio is relearn / PySODMetrics
(below 1: relearn is faster).

    python benchmarks/eval_speed.py --data ../shared/data/SOD --method DSS --out benchmarks/results/eval_speed.json

Writes the JSON and a Markdown summary beside it (same name, .md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
import warnings
from pathlib import Path

import cv2
import py_sod_metrics
from reporting import write_report

from relearn_core.evaluation.evaluate import evaluate_folders
from relearn_core.evaluation.metrics import SaliencyMetrics
from relearn_core.imageio import list_by_stem

SHARED_KEYS = (
    "max_f_image",
    "mean_f_image",
    "adp_f_image",
    "mae",
    "s_measure",
    "max_e",
    "mean_e",
    "adp_e",
    "weighted_f",
)


def _timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def pysod_scores(pairs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        metrics = [
            py_sod_metrics.Fmeasure(),
            py_sod_metrics.MAE(),
            py_sod_metrics.Smeasure(),
            py_sod_metrics.Emeasure(),
            py_sod_metrics.WeightedFmeasure(),
        ]
        for pred, gt in pairs:
            for metric in metrics:
                metric.step(pred, gt)
        fm, mae, sm, em, wfm = (metric.get_results() for metric in metrics)
    return {
        "max_f_image": float(fm["fm"]["curve"].max()),
        "mean_f_image": float(fm["fm"]["curve"].mean()),
        "adp_f_image": float(fm["fm"]["adp"]),
        "mae": float(mae["mae"]),
        "s_measure": float(sm["sm"]),
        "max_e": float(em["em"]["curve"].max()),
        "mean_e": float(em["em"]["curve"].mean()),
        "adp_e": float(em["em"]["adp"]),
        "weighted_f": float(wfm["wfm"]),
    }


def relearn_scores(pairs) -> dict:
    metrics = SaliencyMetrics()
    for pred, gt in pairs:
        metrics.step(pred, gt)
    return metrics.scores()


def read_pairs(map_paths, mask_paths):
    return [
        (cv2.imread(str(m), cv2.IMREAD_GRAYSCALE), cv2.imread(str(g), cv2.IMREAD_GRAYSCALE))
        for m, g in zip(map_paths, mask_paths)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/SOD"), help="Folder with gt/ and maps/.")
    parser.add_argument("--method", default="DSS", help="Which maps/<METHOD> to evaluate.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds; the fastest of each side is kept.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_speed.json"))
    args = parser.parse_args()

    pred_dir, gt_dir = args.data / "maps" / args.method, args.data / "gt"
    maps, masks = list_by_stem(pred_dir), list_by_stem(gt_dir)
    stems = sorted(set(maps) & set(masks))
    map_paths, mask_paths = [maps[s] for s in stems], [masks[s] for s in stems]
    pairs = read_pairs(map_paths, mask_paths)
    relearn_pairs = [(pred, gt > 127) for pred, gt in pairs]

    runs = {
        "metrics_only": {
            "relearn": lambda: relearn_scores(relearn_pairs),
            "pysodmetrics": lambda: pysod_scores(pairs),
        },
        "end_to_end": {
            "relearn": lambda: evaluate_folders(pred_dir, gt_dir, progress=False, workers=1).scores,
            "pysodmetrics": lambda: pysod_scores(read_pairs(map_paths, mask_paths)),
        },
        "end_to_end_threads": {
            "relearn": lambda: evaluate_folders(pred_dir, gt_dir, progress=False).scores,
        },
    }
    best: dict = {name: {} for name in runs}
    scores: dict = {}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, sides in runs.items():
            for side, function in sides.items():
                result, wall, cpu = _timed(function)
                scores[(name, side)] = result
                if side not in best[name] or wall < best[name][side]["wall_s"]:
                    best[name][side] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}
    load_after = os.getloadavg()

    difference = max(
        abs(scores[("metrics_only", "relearn")][k] - scores[("metrics_only", "pysodmetrics")][k]) for k in SHARED_KEYS
    )
    ratios = {
        name: {
            "wall": round(best[name]["relearn"]["wall_s"] / best[name]["pysodmetrics"]["wall_s"], 3),
            "cpu": round(best[name]["relearn"]["cpu_s"] / best[name]["pysodmetrics"]["cpu_s"], 3),
        }
        for name in ("metrics_only", "end_to_end")
    }
    ratios["end_to_end_threads"] = {
        "wall": round(best["end_to_end_threads"]["relearn"]["wall_s"] / best["end_to_end"]["pysodmetrics"]["wall_s"], 3)
    }
    document = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
        "data": str(pred_dir),
        "images": len(stems),
        "rounds": args.rounds,
        "best_round": best,
        "ratio_relearn_over_pysodmetrics": ratios,
        "max_abs_difference_of_shared_scores": difference,
        "relearn_scores": scores[("end_to_end", "relearn")],
    }
    lines = [
        f"# Evaluation speed: relearn vs PySODMetrics 1.6.2 ({len(stems)} maps of {args.method} on SOD)",
        "",
        f"{document['date']}, {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / "
        f"{load_after[0]:.1f} after; fastest of {args.rounds} alternating rounds.",
        "",
        "| run | relearn wall s (CPU s) | PySODMetrics wall s (CPU s) | ratio wall | ratio CPU |",
        "|---|---|---|---|---|",
    ]
    for name in ("metrics_only", "end_to_end"):
        ours, theirs = best[name]["relearn"], best[name]["pysodmetrics"]
        lines.append(
            f"| {name.replace('_', ' ')} (1 thread) | {ours['wall_s']} ({ours['cpu_s']}) | "
            f"{theirs['wall_s']} ({theirs['cpu_s']}) | {ratios[name]['wall']} | {ratios[name]['cpu']} |"
        )
    threaded = best["end_to_end_threads"]["relearn"]
    lines += [
        f"| end to end, relearn default threads | {threaded['wall_s']} ({threaded['cpu_s']}) | "
        f"{best['end_to_end']['pysodmetrics']['wall_s']} | {ratios['end_to_end_threads']['wall']} | |",
        "",
        f"Largest difference of the shared scores: {difference:.2e}. relearn also computes the dataset-level PR/ROC "
        "curves (max F, AUC) in its time.",
    ]
    write_report(args.out, document, "\n".join(lines))


if __name__ == "__main__":
    main()
