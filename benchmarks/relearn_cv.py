"""Does Our(X) beat X on images it never trained on? K-fold cross-validation of relearn train + wrap.

    .venv/bin/python benchmarks/relearn_cv.py --data ../shared/data/SOD --base dss --maps ../shared/data/SOD/maps/DSS \
        --folds 5 --seed 0 --out benchmarks/results/relearn_cv_dss.json

Protocol: ids = the sorted stems with an image and a mask; ``np.random.RandomState(seed).permutation(n)``; the image
at position p of the permutation is in fold p mod k. For each fold: train on the other folds (pool: those images plus
every --pool), wrap the held fold against the same pool; all held folds are scored together (dataset-level scores, the
keys of ``relearn eval --json``) for ``base`` (X), ``base_crf`` (X refined by one standard dense CRF, the anchor) and
``ours``, with per-fold differences (mean, std, min, max over folds) for max F and MAE.

Ablation (paper Fig. 11), each a separate training per fold, scored the same way:
    C1  the base
    C2  joint re-learning without the pair filter (every aligned pair kept), SIFT Flow matches, no extra pool
    C3  with the filter, one classifier (M = 1, the most trusted neighbour)
    C4  with the filter, M = 5 classifiers and the joint classifier
    C5  C4 with the pool enlarged by the --pool images (pseudo-GT only)
    C6  C5 with the bi-level top-K alignment of Eq. (1) instead of SIFT Flow matches: the full method (= ours)

Correspondences (retrieval, superpixels, proposals, flows, alignments) do not depend on the base and are cached on
disk by content hash: folds and bases share them; a rerun reuses everything (``--cache``).
``seconds_per_image``: compute time of each stage of wrap per held-out image on this machine (computed now, plus the
compute time stored with each entry read from the disk cache, so a rerun reports the same cold times; what training
left in memory, the pool's own preparation, is not counted); wrap runs as many images side by side as --threads, each
on one core, so these add up to about --threads times ``relearn_wrap_wall_first_fold``, the wall clock per image of
wrapping the first fold. C6 runs first in each fold so its held images are new to the workspace's memory.
Everything goes through relearn's Python API (relearn_core.train, relearn_core.wrap), as `relearn table` does.
Nothing is chosen on a held fold: every setting is fixed before the run.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from reporting import write_report

from relearn_core import __version__
from relearn_core.api import RunReport, copies, knowledge_adapter, knowledge_maps, predict, read_entries, train, wrap
from relearn_core.base import BaseMapFailure, resolve_device, select_base
from relearn_core.cache import Cache
from relearn_core.config import default_config
from relearn_core.evaluation.evaluate import SCORE_KEYS
from relearn_core.evaluation.metrics import ImagePair, SaliencyMetrics
from relearn_core.evaluation.protocol import BEYOND, COMPONENTS, FULL, component, folds_of
from relearn_core.executors import make_executor
from relearn_core.imageio import (
    eight_bit,
    images_in,
    list_by_stem,
    read_image,
    read_mask,
)
from relearn_core.relearning.pseudo_gt import crf_refine
from relearn_core.workspace import Workspace

FAST = {  # --fast: a quick check on a small machine (coarser flow, Sobel edges); not the reported configuration
    "correspondence": {
        "edge_method": "sobel",
        "flow_grid": 120,
        "flow": {"working_size": 112, "levels": 2, "top_iterations": 10, "iterations": 5},
    },
}


def knowledge_maps_of(paths: list[Path], config, ws: Workspace) -> tuple[str, dict]:
    """The knowledge adapter's name ("" when the backbone is no saliency network) and its map of each path, over the
    configuration's knowledge views (a BaseMapFailure where it failed): the ensemble's second map."""
    knowledge = knowledge_adapter(config.with_overrides({"join": "fused"}))
    if knowledge and config.knowledge_views:
        return knowledge, knowledge_maps(paths, config, workspace=ws)
    return knowledge, (dict(predict(paths, knowledge, workspace=ws)) if knowledge else {})


class ChangedPixels:
    """Where Our(X) differs from X as the metrics see them: is Our(X) closer to the ground truth there?"""

    def __init__(self):
        self.pixels = self.changed = 0
        self.base_error = self.ours_error = 0.0

    def step(self, base: np.ndarray, ours: np.ndarray, gt: np.ndarray) -> None:
        # each map min-max normalised as the metrics do (PySODMetrics), so these errors agree with the MAE column
        base_values, ours_values = ImagePair(base, gt).normalised, ImagePair(ours, gt).normalised
        moved = base_values != ours_values
        truth = gt[moved].astype(np.float64)
        self.pixels += base.size
        self.changed += int(moved.sum())
        self.base_error += float(np.abs(base_values[moved] - truth).sum())
        self.ours_error += float(np.abs(ours_values[moved] - truth).sum())

    def results(self) -> dict:
        count = max(self.changed, 1)
        return {
            "share": self.changed / max(self.pixels, 1),
            "base_mae": self.base_error / count,
            "ours_mae": self.ours_error / count,
        }


class Scorer:
    """All held-out maps of one method scored together, plus per-fold scores for the spreads."""

    def __init__(self):
        self.overall = SaliencyMetrics()
        self.per_fold: dict[int, SaliencyMetrics] = defaultdict(SaliencyMetrics)

    def step(self, fold: int, saliency: np.ndarray, gt: np.ndarray) -> None:
        self.overall.step(eight_bit(saliency), gt)  # as relearn writes it: scores match `relearn eval`
        self.per_fold[fold].step(eight_bit(saliency), gt)

    def scores(self) -> dict:
        values = self.overall.scores()
        return {"count": len(self.overall), **{key: values.get(key) for key in SCORE_KEYS}}

    def fold_scores(self) -> dict[int, dict]:
        return {fold: metrics.scores() for fold, metrics in sorted(self.per_fold.items())}


def spread(method: Scorer, reference: Scorer, key: str) -> dict:
    ours, ref = method.fold_scores(), reference.fold_scores()
    diffs = np.array([ours[f][key] - ref[f][key] for f in ours])
    return {
        "per_fold": diffs.round(5).tolist(),
        "mean": float(diffs.mean()),
        "std": float(diffs.std()),
        "min": float(diffs.min()),
        "max": float(diffs.max()),
    }


def run(args) -> dict:
    data = Path(args.data)
    device = resolve_device(args.device)
    ws = Workspace(
        Cache(args.cache) if args.cache else Cache(), device, make_executor(args.executor, args.threads, device)
    )
    adapter = select_base(args.base, args.adapter, args.maps)
    options = {"maps": str(args.maps)} if args.maps else {}
    config = default_config()
    if args.fast:
        config = config.with_overrides(FAST)
    for path in args.config:
        config = config.with_overrides_from(path)
    if args.backbone:
        config = config.with_overrides({"backbone": args.backbone})

    images = list_by_stem(data / "images")
    masks = list_by_stem(data / "gt")
    ids = sorted(set(images) & set(masks))
    if args.limit:
        ids = ids[: args.limit]
    extra = [path for folder in args.pool for path in images_in(folder).values()]
    base_maps, failures = {}, []
    for path, outcome in predict([images[i] for i in ids] + extra, adapter, options=options, workspace=ws):
        if isinstance(outcome, BaseMapFailure):
            failures.append(str(outcome))
        else:
            base_maps[path] = outcome
    ids = [i for i in ids if images[i] in base_maps]
    extra = [path for path in extra if path in base_maps]
    gts = {images[i]: read_mask(masks[i]) for i in ids}
    fold = dict(zip(ids, folds_of(len(ids), args.folds, args.seed)))
    # labelled datasets added to every fold's training set (never a copy of one of the fold's held images)
    extra_train = {}
    for folder in args.extra_train:
        found, extra_masks = images_in(folder / "images"), list_by_stem(folder / "gt")
        extra_train.update({path: read_mask(extra_masks[stem]) for stem, path in found.items() if stem in extra_masks})
    extra_entries = read_entries(list(extra_train), RunReport())
    # the full method first in each fold, so that its held images are new to the cache's memory
    wanted = set(args.components) | ({c.name for c in COMPONENTS} if args.ablation else set())
    variants = [component(FULL)] + [c for c in (*COMPONENTS[:-1], *BEYOND) if c.name in wanted]

    scorers = defaultdict(Scorer)
    stage_seconds: dict[str, float] = defaultdict(float)
    wrapped = 0
    relearned_images = 0
    # wall clock of wrapping the first fold's held images, per image (as `relearn wrap` runs it, images side by side
    # on the --threads cores; cache reads and overheads included): cold when the run starts with an empty cache; later
    # folds' held images were training images before, partly cached
    first_fold_wall: list[float] = []
    changed = ChangedPixels()
    training = {}
    for k in range(args.folds):
        held = [images[i] for i in ids if fold[i] == k]
        held_entries = read_entries(held, RunReport())
        copies_of_held = copies(extra_entries, held_entries)
        more = [entry.path for entry, copy in zip(extra_entries, copies_of_held) if not copy]
        train_images = [images[i] for i in ids if fold[i] != k] + more
        train_gt = {**{path: gts[path] for path in train_images if path in gts}, **extra_train}
        print(f"fold {k}: train {len(train_images)}, held {len(held)}", file=sys.stderr, flush=True)
        for variant in variants:
            name = variant.name
            pools = [extra] if variant.extra_pool and extra else []
            variant_config = config.with_overrides(variant.overrides)
            start = time.perf_counter()
            progress = (
                (
                    lambda stage, done, total, name=name: print(
                        f"  {name} {stage} {done}/{total}", file=sys.stderr, flush=True
                    )
                )
                if args.verbose
                else None
            )
            trained = train(
                train_images,
                {path: train_gt[path] for path in train_images},
                adapter,
                pools=pools,
                options=options,
                config=variant_config,
                workspace=ws,
                progress=progress,
            )
            relearner = trained.relearner
            training.setdefault(name, []).append(
                {"fold": k, "seconds": time.perf_counter() - start, **relearner.summary}
            )
            start = time.perf_counter()
            report = wrap(
                held,
                relearner,
                adapter,
                pools=[train_images, *pools],
                options=options,
                workspace=ws,
                pool_ground_truth=train_gt,
            )
            wall = time.perf_counter() - start
            outcomes = {outcome.entry.path: outcome for outcome in report.outcomes}
            for path in held:
                scorers[name].step(k, outcomes[path].saliency, gts[path])
            if name != FULL:
                continue
            wrapped += len(held)
            if k == 0:
                first_fold_wall.append(wall / max(len(held), 1))
            for stage, times in report.timings.stages.items():
                stage_seconds[stage] += times.computed_seconds + times.cached_seconds
            for path in held:
                gt, base_map, outcome = gts[path], base_maps[path], outcomes[path]
                relearned_images += outcome.relearned
                scorers["base"].step(k, base_map, gt)
                changed.step(eight_bit(base_map), eight_bit(outcome.saliency), gt)
                start = time.perf_counter()
                refined = crf_refine(read_image(path), base_map)
                stage_seconds["base_crf (the anchor, not part of wrap)"] += time.perf_counter() - start
                scorers["base_crf"].step(k, refined, gt)
    # the backbone's own saliency map (U2-Net-p's for the u2netp backbone; over the knowledge views when there are
    # some): the mean of X and it is what a re-learner with that knowledge must beat beyond averaging. Made after
    # the folds (read from the cache that wrap filled), so the first fold's wrap computes its features cold
    knowledge, knowledge_of = knowledge_maps_of([images[i] for i in ids], config, ws)
    for i in ids if knowledge else []:
        path = images[i]
        scorers["knowledge_map"].step(fold[i], knowledge_of[path], gts[path])
        scorers["ensemble"].step(fold[i], (base_maps[path] + knowledge_of[path]) / 2, gts[path])
    per_image = {stage: total / max(wrapped, 1) for stage, total in stage_seconds.items()}
    wrap_total = sum(v for stage, v in per_image.items() if not stage.startswith("base"))

    result = {
        "relearn_version": __version__,
        "data": str(data),
        "base_model": adapter.name,
        "maps": str(args.maps) if args.maps else None,
        "pool": [str(p) for p in args.pool],
        "pool_images_used": len(extra),
        "backbone": config.backbone,
        "folds": args.folds,
        "seed": args.seed,
        "limit": args.limit,
        "fast": args.fast,
        "images": len(ids),
        "config": config.to_dict(),
        "base_failures": failures,
        "base": scorers["base"].scores(),
        "base_crf": scorers["base_crf"].scores(),
        "knowledge": knowledge,
        "knowledge_views": list(config.knowledge_views),
        "knowledge_map": scorers["knowledge_map"].scores() if knowledge else None,
        "ensemble": scorers["ensemble"].scores() if knowledge else None,
        "extra_train": [str(p) for p in args.extra_train],
        "extra_train_images": len(extra_entries),
        "ours": scorers[FULL].scores(),
        "relearned_images": relearned_images,
        "changed_pixels": changed.results(),
        "fold_spread": {
            "ours_minus_base": {key: spread(scorers[FULL], scorers["base"], key) for key in ("max_f", "mae")},
            "ours_minus_base_crf": {key: spread(scorers[FULL], scorers["base_crf"], key) for key in ("max_f", "mae")},
            **(
                {
                    "ours_minus_ensemble": {
                        key: spread(scorers[FULL], scorers["ensemble"], key) for key in ("max_f", "mae")
                    }
                }
                if knowledge
                else {}
            ),
        },
        "ablation": {"C1": scorers["base"].scores(), **{v.name: scorers[v.name].scores() for v in variants}},
        "training": training,
        "seconds_per_image": {
            **per_image,
            "relearn_wrap_total_beyond_base": wrap_total,
            "relearn_wrap_wall_first_fold": float(np.mean(first_fold_wall)),
        },
        "machine": args.machine,
        "torch_threads": args.threads,
        "executor": ws.executor.kind,
    }
    return result


def markdown_rows(result: dict) -> list[str]:
    """The table of scores: X, X + CRF, the ensemble, Our(X) and the ablation's variants."""
    rows = [("X (base)", result["base"]), ("X + CRF", result["base_crf"])]
    if result["ensemble"]:
        views = result.get("knowledge_views")
        knowledge = result["knowledge"] + (f" over views {', '.join(views)}" if views else "")
        if result.get("knowledge_map"):
            rows.append((f"{knowledge} alone", result["knowledge_map"]))
        rows.append((f"ensemble: mean of X and {knowledge}", result["ensemble"]))
    rows.append(("Our(X)", result["ours"]))
    rows += [(f"ablation {k}", v) for k, v in result.get("ablation", {}).items() if k not in ("C1", FULL)]
    lines = ["| method | max F | MAE | mean F | S-measure | max E |", "|---|---|---|---|---|---|"]
    for label, s in rows:
        lines.append(
            f"| {label} | {s['max_f']:.4f} | {s['mae']:.4f} | {s['mean_f']:.4f} | {s['s_measure']:.4f} | "
            f"{s['max_e']:.4f} |"
        )
    return lines


def markdown(result: dict) -> str:
    lines = [
        f"# relearn k-fold CV: base {result['base_model']} on {result['data']}",
        "",
        f"{result['images']} images, {result['folds']} folds (seed {result['seed']}), backbone {result['backbone']}, "
        f"extra pool images {result['pool_images_used']}, extra training images {result['extra_train_images']}"
        f"{', FAST correspondence settings' if result['fast'] else ''}; "
        f"machine: {result['machine']}. Images the re-learner corrected: {result['relearned_images']}; "
        f"pixels changed: {100 * result['changed_pixels']['share']:.2f} %, where their MAE goes from "
        f"{result['changed_pixels']['base_mae']:.4f} (X) to {result['changed_pixels']['ours_mae']:.4f} (Our(X)).",
        "",
        *markdown_rows(result),
    ]
    chosen = [fold.get("fusion_held_out", {}).get("views") for fold in result["training"].get(FULL, [])]
    if any(views is not None for views in chosen):
        lines += ["", "Knowledge views each fold's re-learner chose on its held-out training images:", ""]
        lines += [f"- fold {k}: {', '.join(views) or 'none'}" for k, views in enumerate(chosen) if views is not None]
    lines += ["", "Per-fold differences (mean ± std, [min, max]):", ""]
    for name, block in result["fold_spread"].items():
        for key, d in block.items():
            lines.append(f"- {name} {key}: {d['mean']:+.4f} ± {d['std']:.4f} [{d['min']:+.4f}, {d['max']:+.4f}]")
    lines += [
        "",
        "Seconds per image of wrap by stage (compute time of one worker, cache entries included; wrap runs "
        f"{result['torch_threads']} images side by side, see relearn_wrap_wall_first_fold for the wall clock):",
        "",
    ]
    lines += [f"- {stage}: {value:.3f}" for stage, value in result["seconds_per_image"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="folder with images/ and gt/")
    parser.add_argument("--base", required=True)
    parser.add_argument("--maps", type=Path, help="the base's precomputed maps (maps-based bases)")
    parser.add_argument("--adapter", action="append", default=[], type=Path, help="adapter file (repeatable)")
    parser.add_argument(
        "--pool", action="append", default=[], type=Path, help="extra unlabelled pool folder (repeatable)"
    )
    parser.add_argument("--backbone", help="default: the default configuration's (registry.yaml)")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        type=Path,
        help="YAML overrides of the re-learner's configuration (repeatable, applied in order)",
    )
    parser.add_argument(
        "--extra-train",
        action="append",
        default=[],
        type=Path,
        help="a labelled dataset (images/, gt/) added to every fold's training set (repeatable); "
        "copies of the fold's held images are left out",
    )
    parser.add_argument(
        "--components",
        action="append",
        default=[],
        help="an ablation variant to run besides the full method (repeatable): C2..C5, "
        "'paper join', 'no correspondence', 'fusion only', 'label transfer'",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N sorted ids (quick check)")
    parser.add_argument("--fast", action="store_true", help="coarser correspondence settings (quick check)")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false", help="only the full method")
    parser.add_argument("--cache", type=Path, help="cache folder (default $RELEARN_CACHE or ~/.cache/relearn)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--machine", default="2-core CPU, no GPU")
    parser.add_argument("--threads", type=int, default=1, help="images worked on at once (each on one torch thread)")
    parser.add_argument(
        "--executor",
        choices=("threads", "processes", "ray"),
        default=None,
        help="where the work runs (default $RELEARN_EXECUTOR, else threads)",
    )
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    warnings.simplefilter("default")
    result = run(args)
    write_report(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
