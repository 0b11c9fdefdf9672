"""Measure the bi-level pseudo-GT, the "X + CRF" anchor and the join's ceiling on a labelled set with a base's maps.

    .venv/bin/python benchmarks/pseudo_gt.py --data ../shared/data/SOD --maps ../shared/data/SOD/maps/DSS \
        --out benchmarks/results/pseudo_gt_dss.json

Reports (JSON, and Markdown beside it):
- pixel fractions trusted salient / trusted background / unsure, the precision of the trusted labels against the ground
  truth (the paper quotes about 81 % as a lower bound), the ground-truth salient rate inside each region, and the
  share of the base's errors (map > 0.5 against the ground truth) that fall in the unsure region;
- dataset-level max F and MAE (relearn_core.evaluation.metrics) of the base maps, of ``crf_refine`` (the X + CRF
  anchor), of the
  base painted per superpixel, and two oracles of the join: a re-learner that knows each superpixel's ground-truth
  fraction, applied only where the pseudo-GT is unsure (the ceiling of the paper's design with these superpixels) and
  applied everywhere;
- CPU seconds per image of each function (process time, so other load on the machine does not inflate it), the
  feature backbones on the first ``--feature-images`` images.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from reporting import write_report

from relearn_core.correspondence.regions import superpixels
from relearn_core.evaluation.metrics import MAE, DatasetPR
from relearn_core.imageio import (
    list_by_stem,
    read_image,
    read_map,
    read_mask,
)
from relearn_core.relearning.pseudo_gt import bilevel_pseudo_gt, crf_refine
from relearn_core.relearning.saliency import (
    join_with_base,
    paint,
    spatial_weighting,
    superpixel_means,
)

VARIANTS = ("base", "base_crf", "base_painted", "oracle_join_unsure", "oracle_join_everywhere")


def _timed(seconds: dict, name: str, function, *args, **kwargs):
    start = time.process_time()
    result = function(*args, **kwargs)
    seconds[name] = time.process_time() - start
    return result


def measure_image(paths: tuple[str, str, str]) -> dict:
    """Everything measured on one image; maps are returned as uint8 to keep the transfer small."""
    image_path, map_path, gt_path = paths
    image, base, gt = read_image(image_path), read_map(map_path), read_mask(gt_path)
    seconds: dict[str, float] = {}
    pseudo = _timed(seconds, "bilevel_pseudo_gt", bilevel_pseudo_gt, image, base)
    refined = _timed(seconds, "crf_refine", crf_refine, image, base)
    regions = _timed(seconds, "superpixels (regions stage)", superpixels, image)
    truth = superpixel_means(gt.astype(np.float64), regions)
    _timed(seconds, "spatial_weighting", spatial_weighting, image, regions, truth)
    oracle_unsure = _timed(seconds, "join_with_base", join_with_base, image, base, regions, truth, pseudo.unsure)
    maps = {
        "base": base,
        "base_crf": refined,
        "base_painted": paint(regions, superpixel_means(base, regions)),
        "oracle_join_unsure": oracle_unsure,
        "oracle_join_everywhere": join_with_base(image, base, regions, truth),
    }
    unsure = pseudo.unsure
    base_error = (base > 0.5) != gt
    return {
        "maps": {name: np.round(np.clip(m, 0, 1) * 255).astype(np.uint8) for name, m in maps.items()},
        "gt": gt,
        "pixels": gt.size,
        "salient": int(pseudo.salient.sum()),
        "background": int(pseudo.background.sum()),
        "unsure": int(unsure.sum()),
        "salient_right": int((pseudo.salient & gt).sum()),
        "background_right": int((pseudo.background & ~gt).sum()),
        "unsure_gt_salient": int((unsure & gt).sum()),
        "base_errors": int(base_error.sum()),
        "base_errors_unsure": int((base_error & unsure).sum()),
        "seconds": seconds,
    }


def feature_seconds(pairs: list[tuple[str, str]], backbones: list[str]) -> dict[str, float]:
    import torch

    from relearn_core.relearning.features import superpixel_features

    if not pairs or not backbones:
        return {}
    torch.set_num_threads(1)
    images = [read_image(image_path) for image_path, _ in pairs]
    regions = [superpixels(image) for image in images]
    out = {}
    for backbone in backbones:
        superpixel_features(images[:1], regions[:1], backbone=backbone)  # load weights outside the clock
        start = time.process_time()
        for image, region in zip(images, regions):
            superpixel_features([image], [region], backbone=backbone)
        out[f"superpixel_features[{backbone}]"] = (time.process_time() - start) / len(images)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with images/ and gt/")
    parser.add_argument("--maps", type=Path, required=True, help="the base's maps, named by image stem")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (Markdown beside it)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--feature-images", type=int, default=20)
    parser.add_argument("--backbones", nargs="*", default=["handcrafted", "vgg16-hed"])
    args = parser.parse_args(argv)

    images, gts, maps = list_by_stem(args.data / "images"), list_by_stem(args.data / "gt"), list_by_stem(args.maps)
    stems = sorted(set(images) & set(gts) & set(maps))
    if args.limit:
        stems = stems[: args.limit]
    if not stems:
        print(f"no image has both a ground truth and a map under {args.data} and {args.maps}", file=sys.stderr)
        return 2
    jobs = [(str(images[s]), str(maps[s]), str(gts[s])) for s in stems]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(measure_image, jobs, chunksize=4))
    wall = time.perf_counter() - started

    scores = {}
    for name in VARIANTS:
        pr, mae = DatasetPR(), MAE()
        for result in results:
            pr.step(result["maps"][name], result["gt"])
            mae.step(result["maps"][name], result["gt"])
        scores[name] = {"max_f": pr.results()["max_f"], "mae": mae.results()["mae"]}
    total = lambda key: sum(r[key] for r in results)  # noqa: E731
    pixels, salient, background, unsure = total("pixels"), total("salient"), total("background"), total("unsure")
    pseudo_gt = {
        "fraction_trusted_salient": salient / pixels,
        "fraction_trusted_background": background / pixels,
        "fraction_unsure": unsure / pixels,
        "precision_trusted_salient": total("salient_right") / max(salient, 1),
        "precision_trusted_background": total("background_right") / max(background, 1),
        "precision_trusted": (total("salient_right") + total("background_right")) / max(salient + background, 1),
        "gt_salient_rate_in_unsure": total("unsure_gt_salient") / max(unsure, 1),
        "base_error_rate": total("base_errors") / pixels,
        "share_of_base_errors_in_unsure": total("base_errors_unsure") / max(total("base_errors"), 1),
    }
    seconds = {name: float(np.mean([r["seconds"][name] for r in results])) for name in results[0]["seconds"]}
    seconds.update(feature_seconds([(images[s], maps[s]) for s in stems[: args.feature_images]], args.backbones))
    report = {
        "data": str(args.data),
        "maps": str(args.maps),
        "images": len(stems),
        "pseudo_gt": pseudo_gt,
        "scores": scores,
        "cpu_seconds_per_image": seconds,
        "wall_seconds_total": wall,
        "machine": f"{os.cpu_count()}-core CPU",
    }
    lines = [
        f"# Pseudo-GT, X + CRF and join ceilings: {args.maps.name} on {args.data.name} ({len(stems)} images)",
        "",
        "| pseudo-GT | value |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in pseudo_gt.items()],
        "",
        "| map | max F | MAE |",
        "|---|---|---|",
        *[f"| {k} | {v['max_f']:.4f} | {v['mae']:.4f} |" for k, v in scores.items()],
        "",
        f"| function | CPU s / image ({report['machine']}) |",
        "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in seconds.items()],
        "",
    ]
    write_report(args.out, report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
