"""The pool's preparation on each executor: threads of one process, processes, and Ray with its workers.

    python benchmarks/executors.py --pool ../shared/data/BSDS500-pool --base u2netp --workers 2 \
        --sizes 200,2000 --kinds threads,ray --out benchmarks/results/executors.json

A size beyond the pool's own images is filled with synthetic variants of them (each image shrunk by a few percent
and mirrored: VARIANTS), written once to a temporary folder and labelled synthetic in the results; pixels per second
are reported beside images per second because the variants are smaller than the originals.

Each executor prepares the whole pool from a cold cache of its own (a fresh temporary folder): base maps, descriptors,
superpixels and pseudo-GT of every image (relearn_core.api.predict and relearn_core.prepare_pool, the code every
command runs). Reported: the executor's start-up (Ray: starting a local cluster), then wall seconds (workers' first
imports included), images per second, the ratio to threads, and whether every executor gave the
same descriptors and base maps as threads (they must: results do not depend on the executor). Writes JSON and a
Markdown summary beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from reporting import write_report

from relearn_core.api import RunReport, predict, prepare_pool, read_entries
from relearn_core.base import BaseMapFailure, select_base
from relearn_core.cache import Cache
from relearn_core.config import RelearnConfig
from relearn_core.executors import make_executor
from relearn_core.imageio import images_in, read_image
from relearn_core.workspace import Workspace

#: (scale, mirrored) of each copy of the pool: the originals first, then smaller and mirrored copies
VARIANTS = [(scale, mirrored) for scale in (1.0, 0.95, 0.9, 0.85, 0.8) for mirrored in (False, True)]


def pool_of_size(originals: list[Path], size: int, folder: Path) -> tuple[list[Path], int]:
    """``size`` image paths: the originals, then synthetic variants of them written to ``folder`` as PNG; and how
    many of them are synthetic."""
    if size > len(originals) * len(VARIANTS):
        raise SystemExit(f"--sizes {size}: at most {len(originals) * len(VARIANTS)} from {len(originals)} images")
    paths = []
    for index in range(size):
        (scale, mirrored), original = VARIANTS[index // len(originals)], originals[index % len(originals)]
        if (scale, mirrored) == (1.0, False):
            paths.append(original)
            continue
        path = folder / f"{original.stem}_s{round(scale * 100)}{'_m' if mirrored else ''}.png"
        if not path.exists():
            image = read_image(original)
            height, width = image.shape[:2]
            image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
            if mirrored:
                image = image[:, ::-1]
            cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths, max(0, size - len(originals))


def prepare(kind: str, workers: int, paths: list[Path], adapter, cache_dir: Path) -> dict:
    start = time.perf_counter()
    executor = make_executor(kind, workers)
    startup = time.perf_counter() - start
    try:
        ws = Workspace(Cache(cache_dir), "cpu", executor)
        start = time.perf_counter()
        entries = read_entries(paths, RunReport())
        maps = {}
        for path, outcome in predict(paths, adapter, workspace=ws):
            if not isinstance(outcome, BaseMapFailure):
                maps[path] = outcome
        by_hash = {entry.hash: maps[entry.path] for entry in entries if entry.path in maps}
        pool = prepare_pool(ws, entries, by_hash, RelearnConfig())
        wall = time.perf_counter() - start
    finally:
        executor.close()
    return {
        "kind": kind,
        "workers": executor.workers,
        "startup_seconds": startup,
        "wall_seconds": wall,
        "images": len(pool.entries),
        "images_per_second": len(pool.entries) / wall,
        "megapixels_per_second": sum(entry.image[..., 0].size for entry in pool.entries) / 1e6 / wall,
        "descriptors": pool.index.descriptors,
        "maps": [by_hash[entry.hash] for entry in pool.entries],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", required=True, type=Path, help="folder of pool images")
    parser.add_argument("--base", default="u2netp", help="a base that computes its maps")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--limit", type=int, default=0, help="only the first N images of --pool (quick check)")
    parser.add_argument("--sizes", default="", help="pool sizes to prepare, e.g. 200,2000 (default: the pool's own)")
    parser.add_argument("--kinds", default="threads,processes,ray")
    parser.add_argument(
        "--machine", default=f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    )
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    originals = sorted(images_in(args.pool).values())[: args.limit or None]
    sizes = [int(size) for size in args.sizes.split(",")] if args.sizes else [len(originals)]
    adapter = select_base(args.base)
    runs = []
    with tempfile.TemporaryDirectory(prefix="relearn-variants-") as variants:
        for size in sizes:
            paths, synthetic = pool_of_size(originals, size, Path(variants))
            reference = None
            for kind in args.kinds.split(","):
                with tempfile.TemporaryDirectory(prefix="relearn-executors-") as cache:
                    run = prepare(kind, args.workers, paths, adapter, Path(cache))
                reference = run if reference is None else reference
                runs.append(
                    {key: value for key, value in run.items() if key not in ("descriptors", "maps")}
                    | {
                        "size": size,
                        "synthetic_images": synthetic,
                        "ratio_to_first_kind": run["wall_seconds"] / reference["wall_seconds"],
                        "same_as_first_kind": bool(
                            np.array_equal(run["descriptors"], reference["descriptors"])
                            and all(np.array_equal(a, b) for a, b in zip(run["maps"], reference["maps"]))
                        ),
                    }
                )
                print(f"{size} images, {kind}: {run['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
    first_size = {run["kind"]: run for run in runs if run["size"] == sizes[0]}
    for run in runs:
        first = first_size[run["kind"]]
        run["time_per_image_vs_first_size"] = (run["wall_seconds"] / run["images"]) / (
            first["wall_seconds"] / first["images"]
        )
    result = {
        "pool": str(args.pool),
        "base_model": args.base,
        "machine": args.machine,
        "variants": VARIANTS,
        "load_average_at_end": os.getloadavg(),
        "runs": runs,
    }
    kinds = args.kinds.split(",")
    lines = [
        f"# Pool preparation by executor: {', '.join(map(str, sizes))} images from {args.pool}, base {args.base}",
        "",
        f"Machine: {args.machine}; {args.workers} workers each; cold cache per run (base maps, descriptors, "
        f"superpixels, pseudo-GT of every image). Images beyond the pool's own {len(originals)} are synthetic: "
        "copies shrunk to 95-80 % and mirrored.",
        "",
        "| images (synthetic) | executor | workers | start-up s | wall s (after start-up) | images / s | "
        f"megapixels / s | time vs {kinds[0]} | time per image vs {sizes[0]} images | same results as {kinds[0]} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['images']} ({run['synthetic_images']}) | {run['kind']} | {run['workers']} | "
            f"{run['startup_seconds']:.1f} | {run['wall_seconds']:.1f} | {run['images_per_second']:.2f} | "
            f"{run['megapixels_per_second']:.3f} | {run['ratio_to_first_kind']:.2f} | "
            f"{run['time_per_image_vs_first_size']:.2f} | {'yes' if run['same_as_first_kind'] else 'NO'} |"
        )
    write_report(args.out, result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
