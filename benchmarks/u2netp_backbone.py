"""Time U2-Net-p three ways on the same SOD images, one thread each: (i) onnxruntime running ``u2netp.onnx``, (ii) the
torch re-implementation's forward (relearn_adapters.u2netp_network, weights read from that file), (iii) its
``features`` (every inner map). Also the largest absolute difference between the torch and onnxruntime outputs.

Images are pre-processed once, untimed, and run one at a time (the ONNX file has a fixed batch of one), after one
untimed warm-up per way. The three ways take turns on every image, so a background job's load falls on all of them
alike; the process's CPU seconds are reported beside the wall clock for the same reason.

    python benchmarks/u2netp_backbone.py --out benchmarks/results/u2netp_backbone.json

Writes the JSON and a Markdown summary beside it (same name, .md).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from relearn_adapters import u2netp
from relearn_adapters.u2netp_network import load_u2netp, preprocess
from reporting import load_average, utc_now, write_report

from relearn_core.imageio import list_by_stem, read_image
from relearn_core.shared_data import shared_data_dir

WAYS = ("onnxruntime", "torch_forward", "torch_features")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def timed(totals: dict, way: str, function, x: torch.Tensor):
    began, began_cpu = time.perf_counter(), time.process_time()
    result = function(x)
    totals[way]["wall"] += time.perf_counter() - began
    totals[way]["cpu"] += time.process_time() - began_cpu
    return result


def run(images_dir: Path, count: int) -> dict:
    paths = list_by_stem(images_dir)
    stems = sorted(paths)[:count]
    inputs = preprocess([read_image(paths[stem]) for stem in stems])  # (N, 3, 320, 320)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(u2netp.model_path()), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    model = load_u2netp()

    def onnx_run(x):
        return session.run(None, {input_name: x.numpy()})

    def torch_forward(x):
        with torch.inference_mode():
            return [output.numpy() for output in model(x)]

    def torch_features(x):
        with torch.inference_mode():
            return model.features(x)

    for function in (onnx_run, torch_forward, torch_features):
        function(inputs[:1])  # warm-up: first-call allocations and kernel selection
    totals = {way: {"wall": 0.0, "cpu": 0.0} for way in WAYS}
    fused_difference = all_difference = 0.0
    for index in range(len(stems)):
        x = inputs[index : index + 1]
        onnx_outputs = timed(totals, "onnxruntime", onnx_run, x)
        torch_outputs = timed(totals, "torch_forward", torch_forward, x)
        timed(totals, "torch_features", torch_features, x)
        differences = [float(np.abs(a - b).max()) for a, b in zip(torch_outputs, onnx_outputs)]
        fused_difference = max(fused_difference, differences[u2netp.FUSED_OUTPUT])
        all_difference = max(all_difference, *differences)
    return {
        "images": len(stems),
        "stems": stems,
        "seconds_per_image": {way: round(totals[way]["wall"] / len(stems), 4) for way in WAYS},
        "cpu_seconds_per_image": {way: round(totals[way]["cpu"] / len(stems), 4) for way in WAYS},
        "max_abs_difference": {"fused_d0": fused_difference, "all_seven_outputs": all_difference},
    }


def markdown(report: dict) -> str:
    machine, versions, difference = report["machine"], report["versions"], report["max_abs_difference"]
    setting = (
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['note']}; {report['date']}; load average "
        f"(1, 5, 15 min) {machine['load_average_at_start']} at the start, {machine['load_average_at_end']} at the end. "
        "One thread everywhere (torch.set_num_threads(1), onnxruntime intra_op_num_threads=1), batch of one, "
        f"pre-processing not timed; torch {versions['torch']}, onnxruntime {versions['onnxruntime']}."
    )
    agreement = (
        "Largest absolute difference, torch vs onnxruntime (sigmoid outputs in [0, 1]): fused d0 "
        f"{difference['fused_d0']:.2e}, any of the seven outputs {difference['all_seven_outputs']:.2e}."
    )
    lines = [
        f"# U2-Net-p: onnxruntime vs the torch re-implementation ({report['images']} SOD images, 320x320)",
        "",
        setting,
        "",
        "| run | wall s/image | CPU s/image |",
        "|---|---|---|",
        *(
            f"| {way} | {report['seconds_per_image'][way]:.3f} | {report['cpu_seconds_per_image'][way]:.3f} |"
            for way in WAYS
        ),
        "",
        agreement,
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: the shared SOD images)")
    parser.add_argument("--count", type=int, default=20, help="how many images (the first in name order)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/u2netp_backbone.json"))
    parser.add_argument("--note", default="a second heavy job running", help="what else ran on the machine")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    machine = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "note": args.note,
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
    }
    report = {
        "date": utc_now(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        **run(args.images or shared_data_dir() / "SOD" / "images", args.count),
        "machine": machine,
    }
    machine["load_average_at_end"] = load_average()
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
