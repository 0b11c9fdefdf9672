"""Would the fusion gain from more of U2-Net-p's outputs? K-fold by image id: the re-learner's fusion of the base map
with U2-Net-p's map (``training.fit_fusion``, three weights, as wrap applies it) against a pixel logistic regression
over the base's logit and all seven of U2-Net-p's side logits (d0..d6, resized to the image), and the same with
interaction terms (base logit x d0, |base logit - d0|). All held-out maps are scored together (dataset max F, MAE);
the weights are fitted on the other folds only, on FUSION_PIXELS pixels sampled per training image.

    python benchmarks/fusion_inputs.py --base DSS --out benchmarks/results/fusion_inputs_dss.json

Writes the JSON and a Markdown summary beside it (same name, .md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from relearn_adapters.u2netp_network import network, preprocess
from reporting import stamp, write_report

from relearn_core.evaluation.metrics import MAE, DatasetPR
from relearn_core.evaluation.protocol import folds_of
from relearn_core.imageio import eight_bit, list_by_stem, read_image, read_map, read_mask
from relearn_core.relearning.features import backbone_saliency
from relearn_core.relearning.saliency import fuse, logit
from relearn_core.shared_data import shared_data_dir
from relearn_core.training import FUSION_PIXELS, fit_fusion

VARIANTS = ("fusion (base, U2-Net-p map)", "base + seven side logits", "+ interaction terms")


def side_logits(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U2-Net-p's seven side logits (7, H, W) at the image's size, and its map as the features stage makes it."""
    with torch.no_grad():
        maps = network("cpu").features(preprocess([image]))
    logits = torch.cat([maps[f"d{level}"] for level in range(7)], 1)
    resized = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    return resized.numpy(), backbone_saliency(maps["d0"][0, 0], image.shape[:2]).astype(np.float32)


def inputs(variant: str, base_map: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """(pixels, inputs) of a logistic-regression variant."""
    base = logit(base_map).reshape(1, -1)
    columns = [base, sides.reshape(7, -1)]
    if variant == VARIANTS[2]:
        columns += [base * columns[1][:1], np.abs(base - columns[1][:1])]
    return np.concatenate(columns, 0).T


def fit_logistic(x: np.ndarray, y: np.ndarray):
    """Standardised logistic regression by L-BFGS; returns the predictor of probabilities."""
    x = torch.tensor(x, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.float64)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    weights = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=300, line_search_fn="strong_wolfe")

    def loss():
        optimiser.zero_grad()
        value = F.binary_cross_entropy_with_logits(((x - mean) / scale) @ weights[:-1] + weights[-1], y)
        value.backward()
        return value

    optimiser.step(loss)
    fitted = weights.detach()

    def predict(features: np.ndarray) -> np.ndarray:
        z = ((torch.tensor(features, dtype=torch.float64) - mean) / scale) @ fitted[:-1] + fitted[-1]
        return torch.sigmoid(z).numpy()

    return predict


def run(data: Path, base: str, folds: int, seed: int) -> dict:
    images, masks = list_by_stem(data / "images"), list_by_stem(data / "gt")
    maps = list_by_stem(data / "maps" / base)
    stems = sorted(set(images) & set(masks) & set(maps))
    gts = {stem: read_mask(masks[stem]) for stem in stems}
    base_maps = {stem: read_map(maps[stem]) for stem in stems}
    sides, knowledge = {}, {}
    for stem in stems:
        sides[stem], knowledge[stem] = side_logits(read_image(images[stem]))
    fold_of = dict(zip(stems, folds_of(len(stems), folds, seed)))
    scores = {variant: (DatasetPR(), MAE()) for variant in VARIANTS}
    for fold in range(folds):
        train = [stem for stem in stems if fold_of[stem] != fold]
        held = [stem for stem in stems if fold_of[stem] == fold]
        weights = fit_fusion([(base_maps[s], knowledge[s], gts[s]) for s in train], seed)
        predicted = {VARIANTS[0]: {s: fuse(base_maps[s], knowledge[s], weights) for s in held}}
        rng = np.random.RandomState(seed)
        for variant in VARIANTS[1:]:
            x, y = [], []
            for stem in train:
                columns = inputs(variant, base_maps[stem], sides[stem])
                pick = rng.choice(len(columns), min(FUSION_PIXELS, len(columns)), replace=False)
                x.append(columns[pick])
                y.append(gts[stem].ravel()[pick])
            predict = fit_logistic(np.concatenate(x), np.concatenate(y))
            predicted[variant] = {
                s: predict(inputs(variant, base_maps[s], sides[s])).reshape(gts[s].shape) for s in held
            }
        for variant, held_maps in predicted.items():
            for stem, saliency in held_maps.items():
                for metric in scores[variant]:
                    metric.step(eight_bit(saliency), gts[stem])
    base_pr, base_mae = DatasetPR(), MAE()
    for stem in stems:
        base_pr.step(eight_bit(base_maps[stem]), gts[stem])
        base_mae.step(eight_bit(base_maps[stem]), gts[stem])
    results = {"X": {"max_f": base_pr.results()["max_f"], "mae": base_mae.results()["mae"]}}
    for variant, (pr, mae) in scores.items():
        results[variant] = {"max_f": pr.results()["max_f"], "mae": mae.results()["mae"]}
    return {"base": base, "images": len(stems), "folds": folds, "seed": seed, "held_out": results}


def markdown(report: dict) -> str:
    lines = [
        f"# Fusion inputs: {report['base']} and U2-Net-p on {report['data']} ({report['images']} images, "
        f"{report['folds']}-fold by image id, seed {report['seed']})",
        "",
        f"{report['date']}; load average at the end {report['load_average_at_end']}. All held-out maps scored "
        "together; weights fitted on the other folds.",
        "",
        "| method | max F | MAE |",
        "|---|---|---|",
        *(f"| {name} | {s['max_f']:.4f} | {s['mae']:.4f} |" for name, s in report["held_out"].items()),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="folder with images/, gt/, maps/BASE (default: SOD)")
    parser.add_argument("--base", default="DSS", help="the base's map folder under maps/")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fusion_inputs_dss.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = args.data or shared_data_dir() / "SOD"
    report = run(data, args.base, args.folds, args.seed)
    report |= {"data": data.name} | stamp()
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
