"""SIFT Flow accuracy on known warps and its speed, over real images.

    python benchmarks/flow_epe.py --data ../shared/data/SOD --limit 20 --out benchmarks/results/flow_epe.json

For each of the first N images of DIR/images: warp it by known amounts (shifts of 5, 10, 20 px; scale 0.9 and 1.1;
rotation 5 degrees), run SIFT Flow from the original to each warped copy (the six pairs in one batch) and measure
the mean end-point error in pixels over the pixels whose true match stays inside the warped image. Writes the mean
and worst EPE per warp, seconds per pair (wall clock and CPU time of this process) and the settings, as JSON and as
a Markdown summary beside it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path

import click
import numpy as np
import torch
from flow_accuracy import WARPS, warp_epe
from reporting import write_report

from relearn_core.correspondence.flow import SiftFlowParams
from relearn_core.imageio import list_by_stem, read_image

TARGETS = {"shift": 1.0, "scale": 2.0}  # EPE bounds the project sets (px)


def run(data: Path, limit: int, params: SiftFlowParams, device: str) -> dict:
    images = list(list_by_stem(data / "images").items())[:limit]
    per_image, wall, cpu = {}, [], []
    for stem, path in images:
        picture = read_image(path)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        per_image[stem] = warp_epe(picture, params, device)
        wall.append((time.perf_counter() - start_wall) / len(WARPS))
        cpu.append((time.process_time() - start_cpu) / len(WARPS))
    epe = {name: float(np.mean([errors[name] for errors in per_image.values()])) for name in WARPS}
    worst = {name: float(np.max([errors[name] for errors in per_image.values()])) for name in WARPS}
    passed = {name: epe[name] < TARGETS[kind] for name, (kind, _) in WARPS.items() if kind in TARGETS}
    return {
        "data": str(data),
        "images": len(per_image),
        "epe": epe,
        "epe_worst_image": worst,
        "targets_met": passed,
        "seconds_per_pair_wall": float(np.mean(wall)),
        "seconds_per_pair_cpu": float(np.mean(cpu)),
        "pairs_per_batch": len(WARPS),
        "params": dataclasses.asdict(params),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_end": os.getloadavg(),
            "processor": platform.processor() or platform.machine(),
            "device": device,
        },
        "per_image": per_image,
    }


def markdown(result: dict) -> str:
    lines = [
        "# SIFT Flow end-point error on known warps",
        "",
        f"{result['images']} images from `{result['data']}`, working size {result['params']['working_size']} px, "
        f"device {result['machine']['device']}, {result['machine']['torch_threads']} torch threads on "
        f"{result['machine']['cpu_count']} cores (load average at the end: "
        f"{', '.join(f'{x:.1f}' for x in result['machine']['load_average_at_end'])}).",
        "",
        "| warp | mean EPE (px) | worst image (px) | target |",
        "|---|---|---|---|",
    ]
    for name, (kind, _) in WARPS.items():
        target = (
            f"< {TARGETS[kind]:g}" + (" met" if result["targets_met"][name] else " MISSED") if kind in TARGETS else "-"
        )
        lines.append(f"| {name} | {result['epe'][name]:.3f} | {result['epe_worst_image'][name]:.3f} | {target} |")
    lines += [
        "",
        f"Seconds per pair ({result['pairs_per_batch']} pairs per batch): "
        f"{result['seconds_per_pair_wall']:.3f} wall, {result['seconds_per_pair_cpu']:.3f} CPU time of the process.",
        "",
    ]
    return "\n".join(lines)


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Folder holding images/.",
)
@click.option("--limit", type=int, default=20, show_default=True, help="Number of images (sorted by name).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON file to write.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--iterations", type=int, default=None, help="Belief propagation sweeps per finer level.")
@click.option("--top-iterations", type=int, default=None, help="Sweeps at the coarsest level.")
@click.option("--working-size", type=int, default=None, help="Long side of the working resolution.")
def main(data, limit, out, device, iterations, top_iterations, working_size):
    overrides = {"iterations": iterations, "top_iterations": top_iterations, "working_size": working_size}
    params = dataclasses.replace(SiftFlowParams(), **{k: v for k, v in overrides.items() if v is not None})
    with torch.no_grad():
        result = run(data, limit, params, device)
    write_report(out, result, markdown(result))


if __name__ == "__main__":
    main()
