"""relearn's Python API: lists of images in, maps and re-learners out. The command line, ``relearn table`` and the
benchmarks are shells over these functions.

    import relearn_core as relearn

    report = relearn.train(images, ground_truth, "dss", options={"maps": "maps/DSS"})   # images: paths
    relearn.save_checkpoint(report.relearner, "dss.pt")
    ours = relearn.wrap(new_images, report.relearner, "dss", options={"maps": "maps/DSS"})
    ours.outcomes[0].saliency                                                         # float32 (H, W) in [0, 1]

Every function takes a :class:`~relearn_core.workspace.Workspace` (cache, device, executor; a default one when none is
given) and a ``progress(stage, done, total)`` callback. Unreadable images and images the base fails on are listed in
the report and left out; the others go on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import plugins
from .base import BaseMapFailure, base_maps
from .checkpoint import Relearner
from .config import RelearnConfig, default_config
from .correspondence.retrieval import RetrievalIndex
from .errors import InputError, RelearnError
from .executors import one_torch_thread
from .imageio import read_mask
from .pipeline import Pool, knowledge_map, prepare_image, relearn_image, training_image
from .records import ImageEntry, WrapOutcome, read_entry
from .relearning.features import knowledge_backbone
from .relearning.saliency import fuse
from .training import (
    IDENTITY_FUSION,
    Progress,
    choose_fusion,
    fit,
    fit_fusion,
    held_out_images,
    negative_cap,
    objective,
    written_scores,
)
from .workspace import Timings, Workspace

ImagePath = str | os.PathLike


@dataclass
class RunReport:
    """What a train or wrap run did: the re-learner (train), the maps (wrap), what was left out, the stage times."""

    relearner: Relearner | None = None  #: the re-learner trained (train)
    outcomes: list[WrapOutcome] = field(default_factory=list)  #: the Our(X) maps, when wrap was given no ``write``
    written: list[str] = field(default_factory=list)  #: names (file stems) of the images wrapped
    kept_base: list[str] = field(default_factory=list)  #: wrapped with the base map: no usable neighbour or pair
    missing_gt: list[str] = field(default_factory=list)  #: training images without ground truth (pool only)
    duplicates: list[str] = field(default_factory=list)  #: images left out as copies (same content) of others
    base_failures: list[BaseMapFailure] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  #: (path, problem)
    pool_size: int = 0
    timings: Timings = field(default_factory=Timings)


def _adapter(base: str | plugins.Adapter) -> plugins.Adapter:
    return plugins.get_adapter(base) if isinstance(base, str) else base


def _progress(progress: Progress | None) -> Progress:
    return progress or (lambda stage, done, total: None)


def read_entries(paths: Iterable[ImagePath], report: RunReport) -> list[ImageEntry]:
    """The readable images, each content once (a copy is listed in ``report.duplicates``)."""
    entries, seen = [], set()
    for path in paths:
        try:
            entry = read_entry(path)
        except InputError as exc:
            report.unreadable.append((str(path), exc.problem))
            continue
        if entry.hash in seen:
            report.duplicates.append(str(path))
            continue
        seen.add(entry.hash)
        entries.append(entry)
    return entries


COPY_DIFFERENCE = 4.0
"""Root-mean-square difference (grey levels 0-255) of two images' 32x32 thumbnails below which they are one picture:
a re-encoded, resized or rotated copy. Measured: SOD images and their GrabCut copies (19, 8 of them re-encoded) differ
by at most 0.7, two different SOD or GrabCut pictures by at least 14."""


def _thumbnails(entry: ImageEntry) -> np.ndarray:
    """(4, 1024) grey 32x32 thumbnails of the image and of its three 90-degree rotations."""
    import cv2

    grey = cv2.cvtColor(entry.image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    return np.stack([np.rot90(small, turn).ravel() for turn in range(4)])


def _copy_matrix(entries: Sequence[ImageEntry], of: Sequence[ImageEntry]) -> np.ndarray:
    """bool (len(entries), len(of)): entry i is a copy of picture j (any of its rotations)."""
    if not entries or not of:
        return np.zeros((len(entries), len(of)), bool)
    rotations = np.stack([_thumbnails(entry) for entry in entries])  # (N, 4, P)
    reference = np.stack([_thumbnails(entry)[0] for entry in of])  # (R, P)
    # squared distances through one product: |a|^2 + |b|^2 - 2 a.b
    squared = (rotations**2).sum(-1)[..., None] + (reference**2).sum(-1) - 2 * rotations @ reference.T  # (N, 4, R)
    return (np.maximum(squared, 0).min(1) / reference.shape[1]) < COPY_DIFFERENCE**2


def copies(entries: Sequence[ImageEntry], of: Sequence[ImageEntry]) -> list[bool]:
    """Whether each entry is a copy of a picture in ``of`` (the same content, or the same picture re-encoded,
    resized or rotated): what must never be both trained on and scored."""
    return _copy_matrix(entries, of).any(1).tolist()


def _without_copies(entries: list[ImageEntry], report: RunReport) -> list[ImageEntry]:
    """The entries, each picture once: a later copy of an earlier one is listed in ``report.duplicates``."""
    same = _copy_matrix(entries, entries)
    kept = []
    for index, entry in enumerate(entries):
        if any(same[index, earlier] for earlier in kept):
            report.duplicates.append(str(entry.path))
        else:
            kept.append(index)
    return [entries[index] for index in kept]


def _unique(entries: Iterable[ImageEntry]) -> list[ImageEntry]:
    seen, out = set(), []
    for entry in entries:
        if entry.hash not in seen:
            seen.add(entry.hash)
            out.append(entry)
    return out


def _base_maps(
    ws: Workspace, adapter: plugins.Adapter, entries: list[ImageEntry], options, report: RunReport, progress: Progress
) -> dict[str, np.ndarray]:
    """Base maps by content hash; the images the base fails on are listed in ``report.base_failures``."""
    maps, by_path = {}, {entry.path: entry for entry in entries}
    for done, (path, outcome) in enumerate(base_maps(ws, adapter, [e.path for e in entries], options), 1):
        if isinstance(outcome, BaseMapFailure):
            report.base_failures.append(outcome)
        else:
            maps[by_path[path].hash] = outcome
        progress("base maps", done, len(entries))
    return maps


def prepare_pool(
    ws: Workspace,
    entries: list[ImageEntry],
    maps: Mapping[str, np.ndarray],
    config: RelearnConfig,
    progress: Progress | None = None,
) -> Pool:
    """Descriptors, superpixels and pseudo-GT of every pool image (spread over the executor), and the retrieval
    index."""
    progress = _progress(progress)
    entries = [entry for entry in entries if entry.hash in maps]
    descriptors = []
    work = functools.partial(prepare_image, ws, config)
    for done, descriptor in enumerate(ws.map(work, [(entry, maps[entry.hash]) for entry in entries]), 1):
        descriptors.append(descriptor)
        progress("pool", done, len(entries))
    index = RetrievalIndex(
        np.stack(descriptors) if descriptors else np.zeros((0, 0), np.float32),
        [e.hash for e in entries],
        [e.name for e in entries],
        device=ws.device,
    )
    return Pool(entries, {e.hash: maps[e.hash] for e in entries}, index)


def predict(
    images: Sequence[ImagePath],
    base: str | plugins.Adapter,
    *,
    options: Mapping | None = None,
    workspace: Workspace | None = None,
    batch_size: int = 8,
) -> Iterator[tuple[Path, np.ndarray | BaseMapFailure]]:
    """The base model's map (float32 (H, W) in [0, 1]) or failure of each image, in order, as they are made."""
    ws = workspace or Workspace()
    with one_torch_thread():
        yield from base_maps(ws, _adapter(base), images, options, batch_size)


def knowledge_adapter(config: RelearnConfig) -> str:
    """The saliency network among the backbone's parts whose own map join "fused" fuses with the base's maps (the
    adapter that predicts its maps, e.g. for the ensemble beside Our(X)); "" when the join is the paper's or no part is
    a saliency network."""
    if config.join != "fused":
        return ""
    part = knowledge_backbone(config.backbone)
    return (plugins.get_backbone(part).info.saliency_adapter or part) if part else ""


def knowledge_maps(
    images: Sequence[ImagePath], config: RelearnConfig, *, workspace: Workspace | None = None
) -> dict[Path, np.ndarray]:
    """The map join "fused" fuses with the base's, by path: the backbone's own saliency map of each image, over the
    configuration's knowledge views (float32 (H, W) in [0, 1]); empty when no backbone part is a saliency network."""
    ws = workspace or Workspace()
    if not knowledge_backbone(config.backbone):
        return {}
    entries = [read_entry(path) for path in images]
    with one_torch_thread():
        made = ws.map(functools.partial(knowledge_map, ws, config), entries)
        return {Path(entry.path): saliency for entry, saliency in zip(entries, made)}


def _knowledge_maps(
    ws: Workspace,
    adapter: plugins.Adapter,
    knowledge: str,
    entries: list[ImageEntry],
    maps: Mapping[str, np.ndarray],
    config: RelearnConfig,
    progress: Progress,
    features_needed: bool,
) -> dict[str, np.ndarray]:
    """The backbone's own saliency maps of the entries by content hash (the base's maps when the base is that
    network and no views are asked for). ``features_needed``: the re-learner needs these images' superpixel features
    too, and the maps come from that features pass (the network runs once per image, and once more per knowledge
    view); else from a pass of the network alone."""
    if not knowledge:
        return {}
    if knowledge == adapter.name and not config.knowledge_views:
        return {entry.hash: maps[entry.hash] for entry in entries}
    found = {}
    made = ws.map(functools.partial(knowledge_map, ws, config, features_needed=features_needed), entries)
    for done, (entry, saliency) in enumerate(zip(entries, made), 1):
        found[entry.hash] = saliency
        progress("knowledge maps", done, len(entries))
    return found


def _start_maps(entries: list[ImageEntry], maps, knowledge_maps, fusion) -> dict[str, np.ndarray]:
    """The maps the re-learner corrects: the base's, fused with the knowledge maps (identity fusion: the base's)."""
    if fusion == IDENTITY_FUSION:
        return {entry.hash: maps[entry.hash] for entry in entries}
    return {entry.hash: fuse(maps[entry.hash], knowledge_maps.get(entry.hash), fusion) for entry in entries}


def _choose_knowledge(
    ws: Workspace,
    adapter: plugins.Adapter,
    knowledge: str,
    targets: list[tuple[ImageEntry, np.ndarray]],
    maps: Mapping[str, np.ndarray],
    held: np.ndarray,
    config: RelearnConfig,
    progress: Progress,
) -> tuple[RelearnConfig, dict[str, np.ndarray], tuple[float, float, float], dict | None]:
    """The knowledge views, their maps and the fusion the re-learner starts from: for ``knowledge_views`` and each
    of ``knowledge_view_choices``, the fusion fitted on the training images that are not ``held`` out, and the set
    whose start maps score best on those that are. Returns the configuration with the chosen ``knowledge_views``, the
    targets' knowledge maps by hash, the fusion and its held-out record (None: no fusion was fitted and no view
    set chosen)."""
    entries = [entry for entry, _ in targets]
    held_base = [(maps[entry.hash], gt) for (entry, gt), out in zip(targets, held) if out]
    # start maps without a fusion are the base's, and score as the base does (needed only to choose among view sets)
    choosing = bool(held_base and config.knowledge_view_choices)
    base_score = objective(config, *written_scores(held_base)) if choosing else -np.inf
    best, by_views = None, {}
    for views in dict.fromkeys((config.knowledge_views, *config.knowledge_view_choices)):
        viewed = config.with_overrides({"knowledge_views": list(views)})
        knowledge_maps = _knowledge_maps(ws, adapter, knowledge, entries, maps, viewed, progress, True)
        fusion, choice = IDENTITY_FUSION, None
        # a base is never fused with its own network's plain map: that is only a recalibration, which shifts the
        # dataset-level thresholds of every map and adds no knowledge (its map over views is new evidence)
        if config.join == "fused" and (knowledge != adapter.name or views):
            samples = [(maps[entry.hash], knowledge_maps.get(entry.hash), gt) for entry, gt in targets]
            fusion, choice = choose_fusion(
                fit_fusion([sample for sample, out in zip(samples, held) if not out]),
                [sample for sample, out in zip(samples, held) if out],
                viewed,
            )
        score = objective(config, **choice["fused"]) if fusion != IDENTITY_FUSION and held_base else base_score
        by_views[", ".join(views) or "none"] = float(score) if np.isfinite(score) else None
        if best is None or score > best[0]:  # ties: the earlier
            best = (score, (viewed, knowledge_maps, fusion, choice))
    viewed, knowledge_maps, fusion, choice = best[1]
    if len(by_views) > 1:  # the choice is recorded even when no fusion won
        choice = (choice or {}) | {"views": list(viewed.knowledge_views), "by_views": by_views}
    return viewed, knowledge_maps, fusion, choice


def train(
    images: Sequence[ImagePath],
    ground_truth: Mapping[ImagePath, ImagePath | np.ndarray],
    base: str | plugins.Adapter,
    *,
    pools: Sequence[Sequence[ImagePath]] = (),
    options: Mapping | None = None,
    config: RelearnConfig | None = None,
    workspace: Workspace | None = None,
    progress: Progress | None = None,
) -> RunReport:
    """Train a re-learner for ``base`` on labelled images; the report's ``relearner`` is it.

    :param images: the training images, of one or several datasets: a picture found twice (the same file content,
        or a re-encoded, resized or rotated copy) is used once, the first time.
    :param ground_truth: image path -> its mask (a file, or a bool array); images without one serve in the pool only.
    :param pools: further images (unlabelled) for the pool; the training images are always in it. Pool images get
        base maps and pseudo-GT, never ground truth (with ``label_transfer``, labelled training images lend theirs).
    :param config: the re-learner's configuration (default: :func:`~relearn_core.config.default_config`).
    """
    config = config or default_config()
    adapter = _adapter(base)
    ws = workspace or Workspace()
    progress = _progress(progress)
    report = RunReport()
    masks = {Path(path): mask for path, mask in ground_truth.items()}
    with one_torch_thread(), ws.measure() as timings:
        entries = _without_copies(read_entries(images, report), report)
        pool_entries = _unique(entries + read_entries([p for pool in pools for p in pool], report))
        maps = _base_maps(ws, adapter, pool_entries, options, report, progress)
        targets = []
        for entry in entries:
            if entry.hash not in maps:
                continue
            if entry.path not in masks:
                report.missing_gt.append(entry.name)
                continue
            targets.append((entry, _mask(masks[entry.path], entry)))
        if not targets:
            raise RelearnError(f"none of the {len(entries)} training images has both a base map and ground truth")
        knowledge = knowledge_adapter(config)
        held = held_out_images(len(targets), config)
        config, knowledge_maps, fusion, fusion_choice = _choose_knowledge(
            ws, adapter, knowledge, targets, maps, held, config, progress
        )
        start = _start_maps([e for e, _ in targets], maps, knowledge_maps, fusion)
        pool = prepare_pool(ws, pool_entries, maps, config, progress)
        if config.label_transfer:
            pool.ground_truth = {entry.hash: gt for entry, gt in targets}
        report.pool_size = len(pool.entries)
        work = functools.partial(training_image, ws, config, pool, negative_cap(config, len(targets)))
        found = []
        items = [(number, e, maps[e.hash], start[e.hash], gt) for number, (e, gt) in enumerate(targets, 1)]
        for done, image in enumerate(ws.map(work, items), 1):
            found.append(image)
            progress("pairs", done, len(items))
        report.relearner = fit(adapter.name, found, held, config, ws.device, progress, knowledge, fusion)
        if fusion_choice is not None:
            report.relearner.summary["fusion_held_out"] = fusion_choice
    report.timings = timings
    return report


def _mask(mask: ImagePath | np.ndarray, entry: ImageEntry) -> np.ndarray:
    gt = np.asarray(mask, dtype=bool) if isinstance(mask, np.ndarray) else read_mask(mask)
    if gt.shape != entry.image.shape[:2]:
        where = mask if not isinstance(mask, np.ndarray) else entry.path
        raise InputError(
            where,
            f"mask is {gt.shape[1]}x{gt.shape[0]}, image {entry.path.name} is "
            f"{entry.image.shape[1]}x{entry.image.shape[0]}",
        )
    return gt


def wrap(
    images: Sequence[ImagePath],
    relearner: Relearner,
    base: str | plugins.Adapter,
    *,
    pools: Sequence[Sequence[ImagePath]] = (),
    pool_ground_truth: Mapping[ImagePath, ImagePath | np.ndarray] | None = None,
    options: Mapping | None = None,
    workspace: Workspace | None = None,
    progress: Progress | None = None,
    write: Callable[[WrapOutcome], None] | None = None,
) -> RunReport:
    """Our(X) maps of the images: ``write(outcome)`` is called for each as it is made (without ``write`` the maps are
    kept in the report's ``outcomes``).

    Without ``pools`` the images themselves are the pool (an image is never its own neighbour). An image with no usable
    neighbour keeps the map before correction (the base's, or the fused map), and so do all images when training chose
    no correction (``Relearner.corrects`` False: then no pool or correspondence is needed). ``pool_ground_truth``
    (pool image -> mask) is what labelled pool images lend a re-learner trained with ``label_transfer``.
    """
    adapter = _adapter(base)
    if relearner.base != adapter.name:
        raise RelearnError(f"the re-learner was trained for base {relearner.base!r}, not {adapter.name!r}")
    ws = workspace or Workspace()
    progress = _progress(progress)
    report = RunReport(relearner=relearner)
    write = write or report.outcomes.append
    with one_torch_thread(), ws.measure() as timings:
        entries = read_entries(images, report)
        pool_entries = []
        if relearner.corrects:
            pool_entries = _unique(read_entries([p for pool in pools for p in pool], report)) if pools else entries
        maps = _base_maps(ws, adapter, _unique(entries + pool_entries), options, report, progress)
        targets = [entry for entry in entries if entry.hash in maps]
        knowledge_maps = {}
        if relearner.fusion != IDENTITY_FUSION:  # unfused, the start maps are the base's: no knowledge map is read
            knowledge_maps = _knowledge_maps(
                ws, adapter, relearner.knowledge, targets, maps, relearner.config, progress, relearner.corrects
            )
        start = _start_maps(targets, maps, knowledge_maps, relearner.fusion)
        if relearner.corrects:
            pool = prepare_pool(ws, pool_entries, maps, relearner.config, progress)
            if relearner.config.label_transfer and pool_ground_truth:
                by_path = {Path(path): mask for path, mask in pool_ground_truth.items()}
                pool.ground_truth = {e.hash: _mask(by_path[e.path], e) for e in pool.entries if e.path in by_path}
            report.pool_size = len(pool.entries)
            items = [(entry, maps[entry.hash], start[entry.hash]) for entry in targets]
            outcomes: Iterable[WrapOutcome] = ws.map(functools.partial(relearn_image, ws, relearner, pool), items)
        else:
            outcomes = (WrapOutcome(entry, start[entry.hash], False) for entry in targets)
        for done, outcome in enumerate(outcomes, 1):
            write(outcome)
            report.written.append(outcome.entry.name)
            if not outcome.relearned:
                report.kept_base.append(outcome.entry.name)
            progress("wrap", done, len(targets))
    report.timings = timings
    return report
