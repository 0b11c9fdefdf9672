"""Which knowledge views (test-time augmentation of the backbone's saliency network) to use, chosen on data that the
SOD cross-validation never scores: U2-Net-p's map over each view set (``api.knowledge_maps``, as join "fused" makes it)
scored on the selection datasets' images pooled (GrabCut's images that are not SOD images, and WeizmannHorse-dev), the
set with the highest dataset max F minus MAE chosen; SOD's scores are reported beside, not used.

    python benchmarks/knowledge_views.py --out benchmarks/results/knowledge_views.json

Writes the JSON and a Markdown summary beside it (same name, .md).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from reporting import stamp, write_report

from relearn_core.api import knowledge_maps
from relearn_core.cache import Cache
from relearn_core.config import default_config
from relearn_core.evaluation.metrics import MAE, DatasetPR
from relearn_core.imageio import eight_bit, list_by_stem, read_mask
from relearn_core.shared_data import shared_data_dir
from relearn_core.workspace import Workspace

VIEW_SETS = {
    "none": (),
    "flip": ("flip",),
    "flip + scale 1.4": ("flip", "scale=1.4"),
    "flip + scales 1.4, 0.8": ("flip", "scale=1.4", "scale=0.8"),
}
SELECTION = ("GrabCut", "WeizmannHorse-dev")


def labelled(folder: Path, leave_out: set[str]) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a dataset, without the stems in ``leave_out``."""
    images, masks = list_by_stem(folder / "images"), list_by_stem(folder / "gt")
    return [(images[stem], masks[stem]) for stem in sorted((set(images) & set(masks)) - leave_out)]


def scores(pairs: list[tuple[Path, Path]], views: tuple[str, ...], ws: Workspace) -> tuple[dict, float]:
    """Dataset max F and MAE of U2-Net-p's map over ``views`` on ``pairs``, and the seconds it took."""
    config = default_config().with_overrides({"backbone": "u2netp", "join": "fused", "knowledge_views": list(views)})
    start = time.perf_counter()
    maps = knowledge_maps([image for image, _ in pairs], config, workspace=ws)
    seconds = time.perf_counter() - start
    pr, mae = DatasetPR(), MAE()
    for image, mask in pairs:
        written, gt = eight_bit(maps[image]), read_mask(mask)
        pr.step(written, gt)
        mae.step(written, gt)
    return {"max_f": pr.results()["max_f"], "mae": mae.results()["mae"]}, seconds


def run(data: Path, ws: Workspace, selection_sets: tuple[str, ...] = SELECTION, sod_too: bool = True) -> dict:
    sod = set(list_by_stem(data / "SOD" / "images"))
    selection = [pair for name in selection_sets for pair in labelled(data / name, sod)]
    sod_pairs = labelled(data / "SOD", set())
    report = {"selection_datasets": list(selection_sets), "selection_images": len(selection), "view_sets": {}}
    for name, views in VIEW_SETS.items():
        chosen_on, seconds = scores(selection, views, ws)
        report["view_sets"][name] = {
            "views": list(views),
            "selection": chosen_on,
            "criterion": chosen_on["max_f"] - chosen_on["mae"],
            "sod": scores(sod_pairs, views, ws)[0] if sod_too else None,
            "seconds_per_image_selection": seconds / len(selection),
        }
    report["chosen"] = max(report["view_sets"], key=lambda name: report["view_sets"][name]["criterion"])
    return report


def markdown(report: dict) -> str:
    lines = [
        f"# Knowledge views of U2-Net-p, chosen on {' + '.join(report['selection_datasets'])} "
        f"({report['selection_images']} images, none of them SOD's)",
        "",
        f"Chosen by max F - MAE on the selection images: **{report['chosen']}**. SOD is reported where run, not used. "
        f"{report['machine']}, {report['date']}.",
        "",
        "| views | selection max F | selection MAE | max F - MAE | SOD max F | SOD MAE | s/image (cold or cached) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, found in report["view_sets"].items():
        chosen, sod = found["selection"], found["sod"]
        sod_cells = f"{sod['max_f']:.4f} | {sod['mae']:.4f}" if sod else "not run | not run"
        lines.append(
            f"| {name} | {chosen['max_f']:.4f} | {chosen['mae']:.4f} | {found['criterion']:.4f} | "
            f"{sod_cells} | {found['seconds_per_image_selection']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default $RELEARN_CACHE)")
    parser.add_argument("--machine", default=f"{os.cpu_count()}-core CPU")
    parser.add_argument(
        "--selection",
        action="append",
        help=f"a dataset to choose on, its SOD images left out (repeatable; default: {', '.join(SELECTION)})",
    )
    parser.add_argument("--no-sod", dest="sod", action="store_false", help="do not report SOD's scores beside")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/knowledge_views.json"))
    args = parser.parse_args(argv)
    ws = Workspace(Cache(args.cache) if args.cache else Cache())
    report = run(args.data or shared_data_dir(), ws, tuple(args.selection or SELECTION), args.sod)
    report |= {"machine": args.machine} | stamp()
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
