"""Our(X) on a dataset it never trained on: train on labelled datasets, wrap another one against a pool of its own
images (an image is never its own neighbour), score X, X + CRF, the ensemble (mean of X and the backbone's own
saliency map) and Our(X) on it.

    python benchmarks/cross_dataset.py --train ../shared/data/SOD --train ../shared/data/GrabCut \
        --data ../shared/data/WeizmannHorse-dev --base mbplus --backbone u2netp \
        --out benchmarks/results/cross_horses_mbplus.json

The files' variants were made with ``--config benchmarks/configs/confidence_0.yaml`` (``*_confidence_0``) and
``--config benchmarks/configs/no_views.yaml`` (``*_no_views``) and ``--config benchmarks/configs/view_choice.yaml``
(``*_view_choice``).

Copies of a wrapped image (the same content, or re-encoded, resized, rotated) are left out of the training images.
Everything runs through relearn's Python API, as `relearn train` and `relearn wrap` do.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from relearn_cv import Scorer, knowledge_maps_of, markdown_rows
from reporting import write_report

from relearn_core import __version__
from relearn_core.api import RunReport, copies, predict, read_entries, train, wrap
from relearn_core.base import BaseMapFailure, resolve_device, select_base
from relearn_core.cache import Cache
from relearn_core.config import default_config
from relearn_core.executors import make_executor
from relearn_core.imageio import images_in, list_by_stem, read_image, read_mask
from relearn_core.relearning.pseudo_gt import crf_refine
from relearn_core.workspace import Workspace


def labelled(folder: Path) -> dict[Path, Path]:
    images, masks = images_in(folder / "images"), list_by_stem(folder / "gt")
    return {path: masks[stem] for stem, path in images.items() if stem in masks}


def run(args) -> dict:
    device = resolve_device(args.device)
    ws = Workspace(
        Cache(args.cache) if args.cache else Cache(), device, make_executor(args.executor, args.threads, device)
    )
    adapter = select_base(args.base)
    config = default_config()
    for path in args.config:
        config = config.with_overrides_from(path)
    if args.backbone:
        config = config.with_overrides({"backbone": args.backbone})
    targets = labelled(args.data)
    target_entries = read_entries(list(targets), RunReport())
    training = {}
    for folder in args.train:
        training.update(labelled(folder))
    training_entries = read_entries(list(training), RunReport())
    kept = [e.path for e, copy in zip(training_entries, copies(training_entries, target_entries)) if not copy]
    start = time.perf_counter()
    trained = train(kept, {path: training[path] for path in kept}, adapter, config=config, workspace=ws)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    report = wrap([e.path for e in target_entries], trained.relearner, adapter, workspace=ws)
    wrap_seconds = time.perf_counter() - start
    base_maps = dict(predict([e.path for e in target_entries], adapter, workspace=ws))
    knowledge, knowledge_maps = knowledge_maps_of([e.path for e in target_entries], config, ws)
    scorers = {name: Scorer() for name in ("base", "base_crf", "ensemble", "ours")}
    for outcome in report.outcomes:
        path = outcome.entry.path
        base_map = base_maps[path]
        if isinstance(base_map, BaseMapFailure):
            continue
        gt = read_mask(targets[path])
        scorers["base"].step(0, base_map, gt)
        scorers["base_crf"].step(0, crf_refine(read_image(path), base_map), gt)
        if knowledge:
            scorers["ensemble"].step(0, (base_map + knowledge_maps[path]) / 2, gt)
        scorers["ours"].step(0, outcome.saliency, gt)
    return {
        "relearn_version": __version__,
        "train": [str(p) for p in args.train],
        "training_images": len(kept),
        "copies_left_out": len(training_entries) - len(kept),
        "data": str(args.data),
        "images": len(report.outcomes),
        "base_model": adapter.name,
        "backbone": config.backbone,
        "knowledge": knowledge,
        "knowledge_views": list(config.knowledge_views),
        "config": config.to_dict(),
        "held_out": trained.relearner.summary.get("held_out"),
        "fusion_held_out": trained.relearner.summary.get("fusion_held_out"),
        "chosen_knowledge_views": list(trained.relearner.config.knowledge_views),
        "fusion": trained.relearner.fusion,
        "base": scorers["base"].scores(),
        "base_crf": scorers["base_crf"].scores(),
        "ensemble": scorers["ensemble"].scores() if knowledge else None,
        "ours": scorers["ours"].scores(),
        "relearned_images": len(report.written) - len(report.kept_base),
        "train_seconds": train_seconds,
        "wrap_seconds_per_image": wrap_seconds / max(len(report.outcomes), 1),
        "machine": args.machine,
    }


def markdown(result: dict) -> str:
    lines = [
        f"# Our({result['base_model']}) across datasets: trained on {', '.join(result['train'])}, wrapping "
        f"{result['data']}",
        "",
        f"{result['training_images']} training images ({result['copies_left_out']} copies of wrapped images left out), "
        f"{result['images']} wrapped against a pool of their own images; backbone {result['backbone']}; images the "
        f"re-learner corrected: {result['relearned_images']}; fusion (a, b, c) {result['fusion']}; held-out choice "
        f"{result['held_out']}; machine: {result['machine']}.",
    ]
    by_views = (result.get("fusion_held_out") or {}).get("by_views")
    if by_views:
        lines += [
            "",
            f"Knowledge views chosen on the held-out training images: "
            f"{', '.join(result['chosen_knowledge_views']) or 'none'} (start maps by view set: {by_views}).",
        ]
    lines += ["", *markdown_rows(result)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="append", required=True, type=Path, help="labelled dataset (repeatable)")
    parser.add_argument("--data", required=True, type=Path, help="the dataset wrapped and scored (images/, gt/)")
    parser.add_argument("--base", required=True, help="a base that computes its maps")
    parser.add_argument("--backbone", help="default: the default configuration's (registry.yaml)")
    parser.add_argument("--config", action="append", default=[], type=Path, help="YAML overrides (repeatable)")
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--executor", choices=("threads", "processes", "ray"), default=None)
    parser.add_argument("--threads", type=int, default=1, help="images worked on at once")
    parser.add_argument("--machine", default="2-core CPU, no GPU")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    result = run(args)
    write_report(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
