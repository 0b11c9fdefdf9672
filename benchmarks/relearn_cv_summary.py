"""One table over several ``relearn_cv.py`` results: per dataset, base and backbone, X, X + CRF, the ensemble (the
mean of X and the backbone's own saliency map), Our(X) and every ablation variant the run trained.

    .venv/bin/python benchmarks/relearn_cv_summary.py benchmarks/results/relearn_cv_*_u2netp.json \
        --out benchmarks/results/relearn_ablation.json

Each row is one method of one result file, as it was measured (held-out folds only). The goal column applies the
re-learning issue's yardstick to Our(X): at least +0.02 max F over X with a lower MAE and above X + CRF and the
ensemble in max F; for a base whose own network is the backbone (no knowledge is new), at least +0.005 max F with a
lower MAE and above X + CRF (and above the ensemble when its map is taken over knowledge views: test-time
augmentation of X is then the yardstick).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reporting import write_report

from relearn_core.config import default_config

GAIN = 0.02  #: over X, for a base the backbone's knowledge is new to
OWN_GAIN = 0.005  #: over X, for a base re-learned with its own network's features
#: configuration fields added since some results were made, with the value those runs had in effect
EARLIER = {"sharpness": (1.0,), "knowledge_views": (), "confidence": 0.0}


def _score(block: dict | None) -> dict | None:
    return None if block is None else {"max_f": block["max_f"], "mae": block["mae"]}


def goal_met(result: dict) -> bool:
    base, crf, ours, ensemble = result["base"], result["base_crf"], result["ours"], result.get("ensemble")
    own = result["base_model"] == result.get("knowledge")
    gain = OWN_GAIN if own else GAIN
    met = ours["max_f"] >= base["max_f"] + gain and ours["mae"] < base["mae"] and ours["max_f"] > crf["max_f"]
    # a base's own network over knowledge views is test-time augmentation: its mean with X is a yardstick too
    if ensemble is not None and (not own or result.get("knowledge_views")):
        met = met and ours["max_f"] > ensemble["max_f"]
    return met


def _flat(values: dict, where: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{where}{key}.")
        else:
            flat[where + key] = _tuples(value)
    return flat


def _tuples(value):
    """JSON's lists (nested too) as the configuration's tuples, so that they compare equal to its defaults."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def changed_settings(config: dict) -> str:
    """The configuration fields a run set away from the default (backbone and join have their own columns); a field
    added after the run was made counts with the value that was in effect then (``EARLIER``)."""
    default, used = _flat(default_config().to_dict()), EARLIER | _flat(config)
    changed = {key: value for key, value in used.items() if default.get(key) != value}
    return ", ".join(f"{key}={value}" for key, value in sorted(changed.items()) if key not in ("backbone", "join"))


def _extra_training(images: int) -> str:
    return f"+{images} extra training images" if images else ""


def summary_rows(path: Path) -> list[dict]:
    """X, X + CRF, the ensemble, Our(X) and the ablation variants of one result file, one row each."""
    result = json.loads(path.read_text())
    common = {
        "file": path.name,
        "dataset": Path(result["data"]).name,
        "base_model": result["base_model"],
        "backbone": result["backbone"],
        "join": result["config"]["join"],
        "settings": ", ".join(
            filter(None, [changed_settings(result["config"]), _extra_training(result.get("extra_train_images", 0))])
        ),
        "extra_pool": result["pool_images_used"],
        "extra_train": result.get("extra_train_images", 0),
    }
    base = result["base"]
    methods = [("X", base), ("X + CRF", result["base_crf"])]
    if result.get("ensemble"):
        views = result.get("knowledge_views")
        knowledge = result["knowledge"] + (f" over views {', '.join(views)}" if views else "")
        if result.get("knowledge_map"):
            methods.append((f"{knowledge} alone", result["knowledge_map"]))
        methods.append((f"ensemble (mean of X and {knowledge})", result["ensemble"]))
    methods.append(("Our(X)", result["ours"]))
    methods += [(f"ablation: {name}", block) for name, block in result["ablation"].items() if name not in ("C1", "C6")]
    rows = []
    for method, block in methods:
        rows.append(
            {
                **common,
                "method": method,
                **_score(block),
                "gain_max_f": block["max_f"] - base["max_f"],
                "change_mae": block["mae"] - base["mae"],
            }
        )
    ours = rows[[row["method"] for row in rows].index("Our(X)")]
    ours["goal_met"] = goal_met(result)
    spread = result["fold_spread"]
    ours["gain_fold_std"] = spread["ours_minus_base"]["max_f"]["std"]
    if "ours_minus_ensemble" in spread:
        ours["over_ensemble_per_fold"] = spread["ours_minus_ensemble"]["max_f"]["per_fold"]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "# relearn k-fold CV (5 folds by image id, seed 0): X, X + CRF, the ensemble, Our(X) and its ablations",
        "",
        "Max F (dataset level) / MAE of all held-out maps together; gain = the method minus X in max F. Goal (Our(X) "
        f"rows): >= +{GAIN} max F with a lower MAE, above X + CRF and the ensemble; a base re-learned with its own "
        f"network (no new knowledge): >= +{OWN_GAIN}, lower MAE, above X + CRF (and above the ensemble with knowledge "
        "views).",
        "",
        "| dataset | base | backbone | join | settings | method | max F | MAE | gain | MAE change | goal | file |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        goal = ""
        if "goal_met" in r:
            goal = "met" if r["goal_met"] else "not met"
            if "gain_fold_std" in r:
                goal += f" (gain ± {r['gain_fold_std']:.4f} over folds)"
        cells = [
            r["dataset"],
            r["base_model"],
            r["backbone"],
            r["join"],
            r["settings"] or "default",
            r["method"],
            f"{r['max_f']:.4f}",
            f"{r['mae']:.4f}",
            f"{r['gain_max_f']:+.4f}",
            f"{r['change_mae']:+.4f}",
            goal,
            r["file"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="relearn_cv.py JSON files")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    rows = [row for path in args.results for row in summary_rows(path)]
    write_report(args.out, rows, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
