"""The pool's preparation on each executor: threads of one process, processes, and Ray with its workers.

    python benchmarks/executors.py --pool ../shared/data/BSDS500-pool --base u2netp --workers 2 \
        --out benchmarks/results/executors.json

Each executor prepares the whole pool from a cold cache of its own (a fresh temporary folder): base maps, descriptors,
superpixels and pseudo-GT of every image (relearn_core.api.predict and relearn_core.prepare_pool, the code every
command runs). Reported: the executor's start-up (Ray: starting a local cluster), then wall seconds (workers' first
imports included), images per second, the ratio to threads, and whether every executor gave the
same descriptors and base maps as threads (they must: results do not depend on the executor). Writes JSON and a
Markdown summary beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from relearn_core.api import RunReport, predict, prepare_pool, read_entries
from relearn_core.base import BaseMapFailure, select_base
from relearn_core.cache import Cache
from relearn_core.config import RelearnConfig
from relearn_core.executors import make_executor
from relearn_core.imageio import atomic_write_bytes, images_in
from relearn_core.workspace import Workspace


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
        "descriptors": pool.index.descriptors,
        "maps": [by_hash[entry.hash] for entry in pool.entries],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", required=True, type=Path, help="folder of pool images")
    parser.add_argument("--base", default="u2netp", help="a base that computes its maps")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (quick check)")
    parser.add_argument("--kinds", default="threads,processes,ray")
    parser.add_argument(
        "--machine", default=f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    )
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    paths = sorted(images_in(args.pool).values())[: args.limit or None]
    adapter = select_base(args.base)
    runs = []
    for kind in args.kinds.split(","):
        with tempfile.TemporaryDirectory(prefix="relearn-executors-") as cache:
            runs.append(prepare(kind, args.workers, paths, adapter, Path(cache)))
        print(f"{kind}: {runs[-1]['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
    reference = runs[0]
    result = {
        "pool": str(args.pool),
        "base_model": args.base,
        "machine": args.machine,
        "load_average_at_end": os.getloadavg(),
        "runs": [
            {key: value for key, value in run.items() if key not in ("descriptors", "maps")}
            | {
                "ratio_to_threads": run["wall_seconds"] / reference["wall_seconds"],
                "same_as_threads": bool(
                    np.array_equal(run["descriptors"], reference["descriptors"])
                    and all(np.array_equal(a, b) for a, b in zip(run["maps"], reference["maps"]))
                ),
            }
            for run in runs
        ],
    }
    atomic_write_bytes(args.out, json.dumps(result, indent=2).encode())
    lines = [
        f"# Pool preparation by executor: {len(paths)} images of {args.pool}, base {args.base}",
        "",
        f"Machine: {args.machine}; {args.workers} workers each; cold cache per run (base maps, descriptors, "
        "superpixels, pseudo-GT of every image).",
        "",
        "| executor | workers | start-up s | wall s (after start-up) | images / s | time vs threads | "
        "same results as threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['kind']} | {run['workers']} | {run['startup_seconds']:.1f} | {run['wall_seconds']:.1f} | "
            f"{run['images_per_second']:.2f} | "
            f"{run['ratio_to_threads']:.2f} | {'yes' if run['same_as_threads'] else 'NO'} |"
        )
    atomic_write_bytes(args.out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
