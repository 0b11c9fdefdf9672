"""How far can a learned combination of the base map and the knowledge map go? K-fold by image id, seed 0.

Our(X) on SOD is the fusion of X with U2-Net-p's map over the knowledge views (``training.fit_fusion``: three
weights). This measures what a richer combination of the same two maps (and the image) reaches on held-out images,
and two bounds that no learned combination of the family can pass:

- ``fusion``: the three weights fitted on the other folds, applied as wrap applies them (``saliency.fuse``);
- ``fusion fitted on all images (in-sample bound)``: the same weights fitted on every image, the held ones included;
- ``image gate``: a logistic regression on eight statistics of the two maps (means, agreement, softness, border
  share, mean difference) says per image which map is right; the output weighs the two by it;
- ``pick the better map per image (oracle bound)``: X or the knowledge map, whichever has the lower MAE against the
  ground truth;
- ``spatial refiner``: a small dilated CNN with a global-context branch over the two maps' logits and the image (at
  REFINER_SIZE px), trained on the other folds to add a residual logit to the fusion's, its output upsampled onto
  the fused logit so the map's pixel detail stays.

    python benchmarks/fusion_limits.py --base dss --maps ../shared/data/SOD/maps/DSS \
        --out benchmarks/results/fusion_limits_dss.json [--views flip scale=1.4 scale=0.8]

Maps come from relearn's Python API (``predict``, ``knowledge_maps``) and its cache. Writes the JSON and a Markdown
summary beside it (same name, .md). Nothing is chosen on a held fold: every setting is fixed before the run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from reporting import stamp, write_report
from sklearn.linear_model import LogisticRegression
from torch import nn

from relearn_core.api import knowledge_maps, predict
from relearn_core.base import BaseMapFailure
from relearn_core.cache import Cache
from relearn_core.config import default_config
from relearn_core.evaluation.metrics import MAE, DatasetPR
from relearn_core.evaluation.protocol import folds_of
from relearn_core.imageio import eight_bit, list_by_stem, read_image, read_mask
from relearn_core.relearning.saliency import fuse, logit
from relearn_core.training import fit_fusion
from relearn_core.workspace import Workspace

REFINER_SIZE = 112  #: the refiner's working resolution (px, square)
REFINER_STEPS = 600  #: Adam steps of 16 images each, cosine-decayed from 2e-3
LOGIT_SCALE = 6.0  #: logits are clipped to +-LOGIT_SCALE and divided by it as the refiner's inputs
VARIANTS = (
    "X",
    "knowledge map alone",
    "ensemble (mean of the two maps)",
    "fusion",
    "image gate",
    "spatial refiner",
    "fusion fitted on all images (in-sample bound)",
    "pick the better map per image (oracle bound)",
)


def map_statistics(base_map: np.ndarray, knowledge_map: np.ndarray) -> list[float]:
    """The image gate's inputs: what the two maps say of themselves and of each other."""
    base_mask, knowledge_mask = base_map > 0.5, knowledge_map > 0.5

    def border(saliency: np.ndarray) -> float:
        return float(np.concatenate([saliency[0], saliency[-1], saliency[:, 0], saliency[:, -1]]).mean())

    agreement = (base_mask & knowledge_mask).sum() / max((base_mask | knowledge_mask).sum(), 1)
    return [
        float(base_map.mean()),
        float(knowledge_map.mean()),
        float(agreement),
        float((base_map * (1 - base_map)).mean()),
        float((knowledge_map * (1 - knowledge_map)).mean()),
        border(base_map),
        border(knowledge_map),
        float(np.abs(base_map - knowledge_map).mean()),
    ]


def _small(array: np.ndarray) -> torch.Tensor:
    """(C, REFINER_SIZE, REFINER_SIZE) float32 of an (H, W) or (H, W, C) array."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    return F.interpolate(tensor, (REFINER_SIZE, REFINER_SIZE), mode="bilinear", align_corners=False)[0]


def refiner_inputs(image: np.ndarray, base_map: np.ndarray, knowledge_map: np.ndarray) -> torch.Tensor:
    """(5, S, S): the two maps' scaled logits and the image's RGB centred on 0."""
    scaled = [np.clip(logit(m), -LOGIT_SCALE, LOGIT_SCALE) / LOGIT_SCALE for m in (base_map, knowledge_map)]
    return torch.cat([_small(scaled[0]), _small(scaled[1]), _small(image.astype(np.float32) / 255.0) - 0.5])


class SpatialRefiner(nn.Module):
    """Residual logit from local context (dilated 3x3 convolutions) and the image's global context (pooled)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.entry = nn.Conv2d(5, channels, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=d, dilation=d) for d in (1, 2, 4, 8))
        self.context = nn.Linear(channels, channels)
        self.exit = nn.Conv2d(2 * channels, 1, 3, padding=1)
        nn.init.zeros_(self.exit.weight)  # starts as the fusion itself
        nn.init.zeros_(self.exit.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.entry(x))
        for conv in self.body:
            hidden = hidden + F.relu(conv(hidden))
        context = F.relu(self.context(hidden.mean((2, 3))))[:, :, None, None].expand_as(hidden)
        return self.exit(torch.cat([hidden, context], 1))


def train_refiner(inputs: torch.Tensor, fused_logits: torch.Tensor, targets: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    model = SpatialRefiner()
    optimiser = torch.optim.Adam(model.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, REFINER_STEPS)
    generator = torch.Generator().manual_seed(seed)
    for step in range(REFINER_STEPS):
        pick = torch.randint(len(inputs), (16,), generator=generator)
        x, z, y = inputs[pick], fused_logits[pick], targets[pick]
        if step % 2:  # mirrored half the time
            x, z, y = x.flip(-1), z.flip(-1), y.flip(-1)
        loss = F.binary_cross_entropy_with_logits(z + model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval()


def out_of_fold_gate(statistics: np.ndarray, base_better: np.ndarray, fold_of: np.ndarray) -> np.ndarray:
    """The gate's out-of-fold probability that X is the better map, for every image."""
    trust = np.zeros(len(base_better))
    for fold in np.unique(fold_of):
        gate = LogisticRegression(max_iter=1000).fit(statistics[fold_of != fold], base_better[fold_of != fold])
        trust[fold_of == fold] = gate.predict_proba(statistics[fold_of == fold])[:, 1]
    return trust


def run(args) -> dict:
    images, masks = list_by_stem(args.data / "images"), list_by_stem(args.data / "gt")
    stems = sorted(set(images) & set(masks))
    paths = [images[stem] for stem in stems]
    config = default_config()
    if args.views is not None:
        config = config.with_overrides({"knowledge_views": args.views})
    ws = Workspace(Cache(args.cache) if args.cache else Cache())
    options = {"maps": str(args.maps)} if args.maps else {}
    started = time.perf_counter()
    base_maps = dict(predict(paths, args.base, options=options, workspace=ws))
    knowledge = knowledge_maps(paths, config, workspace=ws)
    maps_seconds = time.perf_counter() - started
    failed = [path.name for path, found in base_maps.items() if isinstance(found, BaseMapFailure)]
    if failed or not knowledge:
        raise SystemExit(f"no map for {failed[:3]} or no knowledge map (backbone {config.backbone!r})")
    pairs = {stem: (base_maps[path], knowledge[path], read_mask(masks[stem])) for stem, path in zip(stems, paths)}
    fold_of = folds_of(len(stems), args.folds, args.seed)
    predicted: dict[str, dict[str, np.ndarray]] = {variant: {} for variant in VARIANTS}
    statistics = np.array([map_statistics(b, k) for b, k, _ in pairs.values()])
    base_better = np.array([np.abs(b - gt).mean() < np.abs(k - gt).mean() for b, k, gt in pairs.values()])
    trusts_base = dict(zip(stems, out_of_fold_gate(statistics, base_better, fold_of)))
    base_is_better = dict(zip(stems, base_better))
    small_inputs = {stem: refiner_inputs(read_image(images[stem]), *pairs[stem][:2]) for stem in stems}
    small_targets = {stem: _small(pairs[stem][2].astype(np.float32)) for stem in stems}
    everywhere = fit_fusion(list(pairs.values()), args.seed)
    started = time.perf_counter()
    for fold in range(args.folds):
        train = [stem for stem, f in zip(stems, fold_of) if f != fold]
        held = [stem for stem, f in zip(stems, fold_of) if f == fold]
        weights = fit_fusion([pairs[stem] for stem in train], args.seed)
        refiner = train_refiner(
            torch.stack([small_inputs[s] for s in train]),
            torch.stack([_small(logit(fuse(*pairs[s][:2], weights))) for s in train]),
            torch.stack([small_targets[s] for s in train]),
            args.seed,
        )
        for stem in held:
            base_map, knowledge_map, gt = pairs[stem]
            fused = fuse(base_map, knowledge_map, weights)
            with torch.no_grad():
                residual = refiner(small_inputs[stem][None])
                residual = F.interpolate(residual, gt.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
            trust = trusts_base[stem]
            predicted["X"][stem] = base_map
            predicted["knowledge map alone"][stem] = knowledge_map
            predicted["ensemble (mean of the two maps)"][stem] = (base_map + knowledge_map) / 2
            predicted["fusion"][stem] = fused
            predicted["image gate"][stem] = trust * base_map + (1 - trust) * knowledge_map
            predicted["spatial refiner"][stem] = 1 / (1 + np.exp(-(logit(fused) + residual)))
            predicted["fusion fitted on all images (in-sample bound)"][stem] = fuse(base_map, knowledge_map, everywhere)
            better = base_map if base_is_better[stem] else knowledge_map
            predicted["pick the better map per image (oracle bound)"][stem] = better
    results = {}
    for variant, held_maps in predicted.items():
        pr, mae = DatasetPR(), MAE()
        for stem, saliency in held_maps.items():
            pr.step(eight_bit(saliency), pairs[stem][2])
            mae.step(eight_bit(saliency), pairs[stem][2])
        results[variant] = {"max_f": pr.results()["max_f"], "mae": mae.results()["mae"]}
    return {
        "base": args.base,
        "data": args.data.name,
        "images": len(stems),
        "folds": args.folds,
        "seed": args.seed,
        "backbone": config.backbone,
        "knowledge_views": list(config.knowledge_views),
        "gate_accuracy": float(np.mean([(trusts_base[s] > 0.5) == b for s, b in zip(stems, base_better)])),
        "base_better_share": float(base_better.mean()),
        "held_out": results,
        "maps_seconds": round(maps_seconds, 1),
        "fit_seconds": round(time.perf_counter() - started, 1),
    }


def markdown(report: dict) -> str:
    views = ", ".join(report["knowledge_views"]) or "none"
    base = report["held_out"]["X"]["max_f"]
    lines = [
        f"# How far a combination of {report['base']} and the knowledge map goes on {report['data']} "
        f"({report['images']} images, {report['folds']}-fold by image id, seed {report['seed']})",
        "",
        f"Knowledge map: backbone {report['backbone']}, views {views}. {report['date']}, {report['machine']}; load "
        f"average at the end {report['load_average_at_end']}. All held-out maps scored together; everything learned "
        "is fitted on the other folds, except the two bounds. The image gate says which map is right on "
        f"{report['gate_accuracy']:.0%} of the images; X is the better map on {report['base_better_share']:.0%}.",
        "",
        "| method | max F | MAE | gain over X |",
        "|---|---|---|---|",
        *(
            f"| {name} | {s['max_f']:.4f} | {s['mae']:.4f} | {s['max_f'] - base:+.4f} |"
            for name, s in report["held_out"].items()
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/SOD"), help="folder with images/ and gt/")
    parser.add_argument("--base", required=True)
    parser.add_argument("--maps", type=Path, help="the base's precomputed maps (maps-based bases)")
    parser.add_argument("--views", nargs="*", help="knowledge views (default: the default configuration's)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="cache folder (default $RELEARN_CACHE or ~/.cache/relearn)")
    parser.add_argument("--machine", default="2-core CPU, no GPU")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = run(args) | {"machine": args.machine} | stamp()
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
