"""Where `wrap` spends its time: per stage (compute seconds, items, seconds per call), cold and warm cache, the pool's
preparation apart from the targets' stages, and the wall clock beside the base model's own prediction.

A re-learner that corrects is trained first (on the labelled images of ``--train``, every image used, so training
cannot choose to keep the base) unless ``--relearner`` names one; then ``--count`` images of ``--images`` are wrapped
against themselves as the pool, as ``relearn wrap`` does, in a fresh cache (cold) and again (warm).

    .venv/bin/python benchmarks/wrap_profile.py --base mbplus --images ../shared/data/SOD/images \
        --train ../shared/data/GrabCut --out benchmarks/results/wrap_profile.json
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from reporting import write_report

from relearn_core import __version__
from relearn_core.api import predict, train, wrap
from relearn_core.cache import Cache
from relearn_core.checkpoint import load_checkpoint, save_checkpoint
from relearn_core.config import default_config
from relearn_core.executors import make_executor
from relearn_core.imageio import images_in, list_by_stem
from relearn_core.workspace import Workspace

#: train on every image, a few epochs: a re-learner that corrects, so every stage of wrap runs
PROFILE_TRAINING = {"joint": {"validation_share": 0.0, "epochs": 5}}


class PhaseClock:
    """Wall-clock seconds of each phase that wrap reports progress for (base maps, knowledge maps, pool, wrap)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.last: dict[str, float] = {}
        self.first: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter() - self.start
        self.first.setdefault(stage, now)
        self.last[stage] = now

    def phases(self) -> dict[str, float]:
        """Seconds from the end of the previous phase to the end of each one, in the order they ran."""
        order = sorted(self.last, key=self.last.get)
        spans, previous = {}, 0.0
        for stage in order:
            spans[stage] = self.last[stage] - previous
            previous = self.last[stage]
        return spans


def stage_rows(timings, count: int) -> dict:
    rows = {}
    for name, times in timings.stages.items():
        rows[name] = {
            "computed": times.computed,
            "computed_seconds": round(times.computed_seconds, 3),
            "seconds_per_call": round(times.computed_seconds / times.computed, 4) if times.computed else None,
            "seconds_per_image": round(times.computed_seconds / count, 4),
            "cached": times.cached,
        }
    return rows


def timed_wrap(images, relearner, base, cache_dir: Path, workers: int, device: str) -> dict:
    ws = Workspace(Cache(cache_dir), device, make_executor("threads", workers, device))
    clock = PhaseClock()
    start = time.perf_counter()
    report = wrap(images, relearner, base, workspace=ws, progress=clock)
    wall = time.perf_counter() - start
    ws.executor.close()
    return {
        "wall_seconds": round(wall, 2),
        "phases_wall_seconds": {k: round(v, 2) for k, v in clock.phases().items()},
        "relearned_images": len(report.written) - len(report.kept_base),
        "stages": stage_rows(report.timings, len(images)),
    }


def run(args) -> dict:
    images = list(images_in(args.images).values())[: args.count]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if args.relearner:
            relearner = load_checkpoint(args.relearner, args.base)
        else:
            train_images = images_in(args.train)
            gt = list_by_stem(args.train / "gt")
            masks = {path: gt[stem] for stem, path in train_images.items() if stem in gt}
            train_images = list(train_images.values())
            ws = Workspace(Cache(work / "train-cache"), args.device, make_executor("threads", args.workers))
            config = default_config()
            for path in args.config:
                config = config.with_overrides_from(path)
            config = config.with_overrides(PROFILE_TRAINING)
            relearner = train(train_images, masks, args.base, config=config, workspace=ws).relearner
            ws.executor.close()
            if args.keep_relearner:
                save_checkpoint(relearner, args.keep_relearner)
        if not relearner.corrects:
            raise SystemExit("the re-learner does not correct: wrap would not run its stages")
        start = time.perf_counter()
        ws = Workspace(Cache(work / "predict-cache"), args.device, make_executor("threads", args.workers))
        for _ in predict(images, args.base, workspace=ws):
            pass
        predict_wall = time.perf_counter() - start
        cold = timed_wrap(images, relearner, args.base, work / "cache", args.workers, args.device)
        warm = timed_wrap(images, relearner, args.base, work / "cache", args.workers, args.device)
    count = len(images)
    return {
        "relearn_version": __version__,
        "machine": args.machine,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "base": args.base,
        "images": count,
        "workers": args.workers,
        "device": args.device,
        "backbone": relearner.config.backbone,
        "configuration": [str(path) for path in args.config],
        "predict_wall_seconds": round(predict_wall, 2),
        "cold": cold,
        "warm": warm,
        "beyond_base_seconds_per_image": {
            "cold": round((cold["wall_seconds"] - predict_wall) / count, 3),
            "warm": round((warm["wall_seconds"] - predict_wall) / count, 3),
        },
    }


def markdown(result: dict) -> str:
    load = [round(x, 2) for x in result["load_average"]]
    lines = [
        f"# wrap profile: base {result['base']}, {result['images']} images, backbone {result['backbone']}"
        + (f", configuration {' + '.join(result['configuration'])}" if result.get("configuration") else ""),
        "",
        f"Machine: {result['machine']} ({result['cpus']} CPUs), {result['workers']} workers, device "
        f"{result['device']}; {result['date']}; load average at the end {load}. "
        "Each image is wrapped against the others (the pool is the images themselves).",
        "",
        f"- `predict` alone: {result['predict_wall_seconds']} s wall",
        f"- `wrap`, cold cache: {result['cold']['wall_seconds']} s wall, "
        f"{result['beyond_base_seconds_per_image']['cold']} s per image beyond the base",
        f"- `wrap`, warm cache: {result['warm']['wall_seconds']} s wall, "
        f"{result['beyond_base_seconds_per_image']['warm']} s per image beyond the base",
        f"- phases (wall s, cold): {result['cold']['phases_wall_seconds']}",
        "",
        "| stage | calls (cold) | compute s (cold) | s per call | s per image | read from the cache (warm) |",
        "|---|---|---|---|---|---|",
    ]
    warm = result["warm"]["stages"]
    for name, row in result["cold"]["stages"].items():
        lines.append(
            f"| {name} | {row['computed']} | {row['computed_seconds']} | {row['seconds_per_call']} | "
            f"{row['seconds_per_image']} | {warm.get(name, {}).get('cached', 0)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--images", required=True, type=Path, help="the images to wrap (the first --count)")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--train", type=Path, help="a labelled dataset (images/, gt/) to train the re-learner on")
    parser.add_argument("--relearner", type=Path, help="a trained re-learner instead of --train")
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        help="YAML overrides of the re-learner's configuration for --train (repeatable, applied in order)",
    )
    parser.add_argument("--keep-relearner", type=Path, help="where to save the re-learner trained on --train")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--machine", default="2-core CPU, no GPU")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if not args.relearner and not args.train:
        parser.error("give --train DATASET or --relearner FILE")
    result = run(args)
    write_report(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
