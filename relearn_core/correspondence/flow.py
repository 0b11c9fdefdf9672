"""Dense SIFT descriptors and SIFT Flow (Liu, Yuen and Torralba, TPAMI 2011), on torch and batched over pairs.

SIFT Flow finds, for every pixel p of a target image, a displacement w(p) = (u, v) into a neighbour image that
minimises

    E(w) = sum_p min(||s1(p) - s2(p + w(p))||_1, t)                              data term
         + eta * sum_p (|u(p)| + |v(p)|)                                          small displacement
         + sum_(p,q) min(alpha |u(p) - u(q)|, d) + min(alpha |v(p) - v(q)|, d)    truncated L1 smoothness

over the 4-connected grid, where s1, s2 are dense SIFT descriptors.

How it is minimised here (the paper's scheme, vectorised):
- Descriptors: 4x4 cells of 8-bin gradient-orientation histograms per pixel (128 values, SIFT's normalise /
  clip at 0.2 / renormalise), projected per pair by PCA to ``descriptor_dims`` values for speed. Projected L1
  distances are rescaled so that their mean equals the full 128-d descriptor's mean L1 distance, so the energy's
  constants keep the units of the full descriptor whatever the projection.
- Coarse to fine: a pyramid of descriptor images (2x2 averaging). At the top level every pixel searches a
  (2 * top_radius + 1)^2 window around zero; at each finer level the upsampled flow (times 2, rounded) is the
  centre of a (2 * radius + 1)^2 window per pixel.
- At each level, min-sum loopy belief propagation on the paper's dual-layer graph: one layer of horizontal
  displacements u, one of vertical displacements v, coupled at each pixel by the data term. Messages inside a
  layer carry truncated L1 costs between neighbours whose windows have different centres; they are computed
  exactly in O(labels) with the distance transform of the L1 cost (a forward and a backward pass over the
  labels) and a shift by the difference of the centres where they differ. All messages are updated in parallel
  (synchronous schedule); tensors keep labels first so that every per-label slice is contiguous.
- The decoded flow is the joint (u, v) minimising each pixel's belief. The sub-pixel part comes from the data
  term at the neighbouring labels (an equiangular fit: L1 costs are V-shaped near their minimum), lightly
  smoothed (Gaussian, sigma 1 working px).
Everything runs at a working resolution (long side ``working_size``); the flow is then resized and rescaled to
the original pixel grids.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numba
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import RelearnError
from ..records import MIN_SIDE, FlowGrid, ImageEntry
from ..workspace import Stage, Workspace

CONTRAST_FLOOR = 0.05  # descriptors of gradients weaker than this fraction of the mean stay short
SUBPIXEL_SMOOTHING = 1.0  # sigma (working px) of the Gaussian over the refined flow
FLOW_STAGE = Stage("flow", 1)
FLOW_GRID = 240  #: long side of the grid over the target on which flows are stored and the alignment reads them


@dataclass(frozen=True)
class SiftFlowParams:
    """SIFT Flow settings. Energy constants are in units of the L1 distance between unit-norm 128-d SIFT
    descriptors (true matches are about 1 apart, unrelated descriptors about 9): the paper's code uses alpha = 2,
    d = 40 and eta = 0.005 for descriptors scaled to 0..255 with the constants scaled by 255 too, which are the
    same values in these units."""

    working_size: int = 224  # long side of the working resolution, px
    cell_size: int = 4  # SIFT cell width at the working resolution, px (descriptor spans 4 cells)
    descriptor_dims: int = 32  # PCA dimensions (128 keeps the full descriptor)
    levels: int = 3  # pyramid levels, the finest being the working resolution
    top_radius: int = 8  # search radius at the coarsest level, px of that level
    radius: int = 2  # search radius around the upsampled flow at the finer levels (the paper: 2 or 3)
    # belief propagation sweeps at the coarsest level and at each finer level: 20 and 6 rather than 30 and 10 take a
    # quarter off SIFT Flow's time; on 20 SOD targets the alignment's correct rate stays 0.824 (0.827 with 30 and 10,
    # benchmarks/correspondence.py) and the mean EPE on known warps rises by 0.03-0.06 px (benchmarks/flow_epe.py)
    top_iterations: int = 20
    iterations: int = 6
    alpha: float = 2.0  # smoothness weight per pixel of flow difference
    d: float = 40.0  # smoothness truncation (20 alpha)
    eta: float = 0.005  # small-displacement weight
    t: float = 10.0  # data-term truncation (about the distance between unrelated descriptors)
    subpixel: bool = True  # refine the integer flow to sub-pixel precision from the data term


@dataclass(frozen=True)
class FlowField:
    """Dense correspondence from a target image to a neighbour image, at the target's original size.

    ``flow[y, x] = (dx, dy)``: target pixel (x, y) corresponds to neighbour pixel (x + dx, y + dy), in the
    neighbour's original pixel coordinates. ``cost[y, x]`` is ||f(i) - f(j)||_1, the descriptor distance at the
    match (energy units, see :class:`SiftFlowParams`)."""

    flow: np.ndarray  # (H, W, 2) float32
    cost: np.ndarray  # (H, W) float32


# ----------------------------------------------------------------------------------------------------------------
# Dense SIFT


def _grey(image: np.ndarray) -> np.ndarray:
    """Luminance in [0, 1] of an RGB(A) or grey image, uint8 or float in [0, 1]."""
    image = np.asarray(image)
    scale = 1 / 255 if image.dtype == np.uint8 else 1.0
    if image.ndim == 3:
        return (image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) * scale
    return image.astype(np.float32) * scale


def dense_sift(grey: torch.Tensor, cell_size: int = 4) -> torch.Tensor:
    """SIFT descriptors at every pixel of grey images (N, 1, H, W) in [0, 1]: (N, 128, H, W), unit L2 norm.

    Gradient orientations are voted into 8 bins with linear interpolation between bins, pooled over 4x4 cells with
    bilinear (tent) spatial weights and a Gaussian window over the descriptor (sigma = half its width), then
    normalised, clipped at 0.2 and renormalised as in SIFT. Flat regions keep near-zero descriptors (the
    normaliser has a floor) so they match everything equally and the smoothness term decides there."""
    n, _, h, w = grey.shape
    smooth = _gaussian_blur(grey, 0.8)
    padded = F.pad(smooth, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) * 0.5
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) * 0.5
    magnitude = torch.sqrt(gx * gx + gy * gy)
    position = torch.remainder(torch.atan2(gy, gx), 2 * math.pi) * (8 / (2 * math.pi))
    lower = torch.floor(position)
    upper_weight = position - lower
    lower = lower.long() % 8
    orientations = torch.zeros(n, 8, h, w, dtype=grey.dtype, device=grey.device)
    orientations.scatter_add_(1, lower, magnitude * (1 - upper_weight))
    orientations.scatter_add_(1, (lower + 1) % 8, magnitude * upper_weight)

    # tent kernel of half-width cell_size: each pixel votes bilinearly into the cells around it
    taps = torch.arange(-cell_size + 1, cell_size, device=grey.device, dtype=grey.dtype)
    tent = 1 - taps.abs() / cell_size
    tent = tent / tent.sum()
    cells = _separable_conv(orientations, tent)

    offsets = [int(math.floor((i - 1.5) * cell_size + 0.5)) for i in range(4)]
    reach = max(abs(o) for o in offsets)
    cells = F.pad(cells, (reach, reach, reach, reach), mode="replicate")
    sigma = 2.0 * cell_size
    windows = [  # (Gaussian weight, the cell's rows and columns) of the 16 cells of a descriptor
        (
            math.exp(-(ox * ox + oy * oy) / (2 * sigma * sigma)),
            (slice(reach + oy, reach + oy + h), slice(reach + ox, reach + ox + w)),
        )
        for oy in offsets
        for ox in offsets
    ]
    # The first norm is summed from the cells' own norms (weight^2 |cell|^2 over the 16 windows): the 128-d
    # descriptor is then written once, already normalised, rather than assembled and rescaled in further passes.
    squares = cells.square().sum(1, keepdim=True)
    norm = sum(weight * weight * squares[(..., *window)] for weight, window in windows).sqrt_()
    floor = CONTRAST_FLOOR * norm.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    inverse = torch.maximum(norm, floor).reciprocal_()
    descriptor = torch.empty(n, 128, h, w, dtype=grey.dtype, device=grey.device)
    for index, (weight, window) in enumerate(windows):
        torch.mul(cells[(..., *window)], inverse * weight, out=descriptor[:, 8 * index : 8 * index + 8])
    descriptor.clamp_max_(0.2)
    return descriptor.div_(torch.maximum(descriptor.norm(dim=1, keepdim=True), floor))


def _separable_conv(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    channels = maps.shape[1]
    half = kernel.numel() // 2
    maps = F.pad(maps, (half, half, half, half), mode="replicate")
    maps = F.conv2d(maps, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(maps, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    half = max(1, int(math.ceil(2.5 * sigma)))
    taps = torch.arange(-half, half + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma * sigma))
    return _separable_conv(maps, kernel / kernel.sum())


def _samples(descriptors: torch.Tensor) -> torch.Tensor:
    """About 4096 regularly spaced descriptors (samples, C) of a descriptor image (1, C, H, W)."""
    flat = descriptors.flatten(2)[0]
    return flat[:, :: max(1, flat.shape[1] // 4096)].T


def _principal_axes(target: torch.Tensor, neighbour: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and the ``dims`` leading principal directions (C, dims) of a pair's descriptors (samples of both
    images: a basis fitted on the target alone lowered the alignment's correct rate on SOD, 0.817 against 0.827)."""
    sample = torch.cat([_samples(target), _samples(neighbour)])
    mean = sample.mean(0)
    centred = sample - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred / sample.shape[0])
    return mean, vectors[:, -dims:]


def _project(descriptors: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, scale) -> torch.Tensor:
    """(N, C, H, W) -> (N, dims, H, W) projections times ``scale``, as a 1x1 convolution: straight from and to the
    image layout, no transposed copies."""
    weight = (basis.T * scale)[:, :, None, None].contiguous()
    return F.conv2d(descriptors, weight, -(mean @ basis) * scale)


def _distance_scale(target: torch.Tensor, neighbour: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The factor that brings projected L1 distances between a pair's descriptors to the full ones: measured on a
    fixed pairing of target and neighbour samples (reversed order), the typical distance in both spaces."""
    difference = _samples(target) - _samples(neighbour).flip(0)
    return difference.abs().sum(-1).mean() / (difference @ basis).abs().sum(-1).mean().clamp_min(1e-8)


# ----------------------------------------------------------------------------------------------------------------
# Working resolution


def working_shape(height: int, width: int, params: SiftFlowParams) -> tuple[int, int]:
    scale = params.working_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _check_size(image: np.ndarray, role: str, index: int) -> None:
    if image.ndim not in (2, 3) or min(image.shape[:2]) < MIN_SIDE:
        raise RelearnError(
            f"SIFT Flow {role} image {index}: shape {tuple(image.shape)} is too small "
            f"(needs at least {MIN_SIDE} px a side)"
        )


def pair_descriptors(
    targets: list[np.ndarray], neighbours: list[np.ndarray], params: SiftFlowParams, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected dense SIFT images (N, C, h, w) of each target and its neighbour at the targets' working size.

    All targets must share one working shape; each neighbour is resized to its target's working shape."""
    import cv2

    shapes = {working_shape(*t.shape[:2], params) for t in targets}
    if len(shapes) != 1:
        raise RelearnError(f"pair_descriptors needs targets of one working shape, got {sorted(shapes)}")
    h, w = shapes.pop()
    # a target listed once per neighbour (the same array: one target and its retrieved neighbours) is described once
    unique = list({id(image): image for image in targets}.values())
    slot = {id(image): index for index, image in enumerate(unique)}
    greys = [cv2.resize(_grey(image), (w, h), interpolation=cv2.INTER_AREA) for image in [*unique, *neighbours]]
    stack = torch.from_numpy(np.stack(greys)[:, None]).to(device)
    described = dense_sift(stack[: len(unique)], params.cell_size)
    if params.descriptor_dims >= described.shape[1]:
        return described[[slot[id(t)] for t in targets]], dense_sift(stack[len(unique) :], params.cell_size)
    out_t, out_n = [], []
    # neighbour by neighbour: the 128-d descriptors are large, only their projections are kept
    for i, image in enumerate(targets):
        target = described[slot[id(image)]][None]
        neighbour = dense_sift(stack[len(unique) + i][None], params.cell_size)
        mean, basis = _principal_axes(target, neighbour, params.descriptor_dims)
        scale = _distance_scale(target, neighbour, basis)
        out_t.append(_project(target, mean, basis, scale))
        out_n.append(_project(neighbour, mean, basis, scale))
    return torch.cat(out_t), torch.cat(out_n)


# ----------------------------------------------------------------------------------------------------------------
# Energy terms


def _data_cost(target, neighbour, centre, radius, truncation):
    """Truncated L1 data cost (L, L, N, H, W), indexed [v label, u label], of the displacements centre + k,
    k in [-radius, radius]^2 (labels first, so that per-label slices are contiguous); matches falling outside
    the neighbour cost the truncation (with an infinite truncation: the raw distance to the nearest pixel)."""
    if target.device.type != "cpu":
        return _data_cost_torch(target, neighbour, centre, radius, truncation)
    # one fused pass on CPU (3-5 times faster): the torch version reads and writes every gathered descriptor 4 times
    target = target.permute(0, 2, 3, 1).contiguous().numpy()
    neighbour = neighbour.permute(0, 2, 3, 1).contiguous().numpy()
    centre = centre.contiguous().numpy()
    labels = 2 * radius + 1
    cost = np.empty((labels, labels, *target.shape[:3]), dtype=target.dtype)
    _data_cost_kernel(target, neighbour, centre, radius, truncation, cost)
    return torch.from_numpy(cost)


def _data_cost_torch(target, neighbour, centre, radius, truncation):
    """_data_cost in torch operations, for any device."""
    n, c, h, w = target.shape
    labels = 2 * radius + 1
    cost = torch.empty(labels, labels, n, h, w, dtype=target.dtype, device=target.device)
    rows_n = neighbour.permute(0, 2, 3, 1).reshape(n * h * w, c)
    rows_t = target.permute(0, 2, 3, 1).reshape(n * h * w, c)
    ks = torch.arange(-radius, radius + 1, device=target.device).view(labels, 1, 1, 1)
    ys = torch.arange(h, device=target.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=target.device).view(1, 1, 1, w)
    base = (torch.arange(n, device=target.device) * (h * w)).view(1, n, 1, 1)
    x = xs + centre[None, :, 0] + ks  # (L, N, H, W): u labels
    inside_x = (x >= 0) & (x < w)
    x = base + x.clamp(0, w - 1)
    # one label at a time, into reused buffers: temporaries stay small (no fresh pages for every row)
    matched = torch.empty(n * h * w, c, dtype=target.dtype, device=target.device)
    distance = torch.empty(n * h * w, dtype=target.dtype, device=target.device)
    for row in range(labels):
        y = ys + centre[None, :, 1] + (row - radius)
        inside = inside_x & (y >= 0) & (y < h)
        index = x + y.clamp(0, h - 1) * w
        for column in range(labels):
            torch.index_select(rows_n, 0, index[column].reshape(-1), out=matched)
            torch.sub(matched, rows_t, out=matched).abs_()
            torch.sum(matched, dim=-1, out=distance)
            if math.isinf(truncation):  # raw distances: a match off the image is measured at the nearest pixel
                cost[row, column] = distance.view(n, h, w)
            else:
                cost[row, column] = torch.where(
                    inside[column], distance.view(n, h, w).clamp_max(truncation), truncation
                )
    return cost


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})  # reassoc: a vectorised sum over C
def _data_cost_kernel(target, neighbour, centre, radius, truncation, cost):
    """_data_cost on CPU arrays: target, neighbour (N, H, W, C), centre (N, 2, H, W), into cost (L, L, N, H, W)."""
    n, h, w, c = target.shape
    labels = 2 * radius + 1
    raw = truncation == np.inf
    for b in range(n):
        for y in range(h):
            for x in range(w):
                for row in range(labels):
                    match_y = y + centre[b, 1, y, x] + row - radius
                    clamped_y = min(max(match_y, 0), h - 1)
                    for column in range(labels):
                        match_x = x + centre[b, 0, y, x] + column - radius
                        if not raw and (match_y != clamped_y or match_x < 0 or match_x >= w):
                            cost[row, column, b, y, x] = truncation
                            continue
                        clamped_x = min(max(match_x, 0), w - 1)
                        distance = 0.0
                        for k in range(c):
                            distance += abs(target[b, y, x, k] - neighbour[b, clamped_y, clamped_x, k])
                        cost[row, column, b, y, x] = min(distance, truncation)


def _distance_transform_(envelope: torch.Tensor, alpha: float, step: torch.Tensor) -> torch.Tensor:
    """min_j h(j) + alpha |k - j| over the first axis (labels) of a contiguous h, in place: one forward and one
    backward pass. ``step`` is a scratch tensor of one label slice's shape."""
    for k in range(1, envelope.shape[0]):
        torch.minimum(envelope[k], torch.add(envelope[k - 1], alpha, out=step), out=envelope[k])
    for k in range(envelope.shape[0] - 2, -1, -1):
        torch.minimum(envelope[k], torch.add(envelope[k + 1], alpha, out=step), out=envelope[k])
    return envelope


class _Edges:
    """Per-edge constants of one direction of message passing on one layer. Where the sender's window centre
    differs from the receiver's (few edges once the flow is smooth), receiving label k reads the sender's label
    k - (c_sender - c_receiver), clamped into the window, plus the L1 cost of the part outside it."""

    def __init__(self, sender_centre, receiver_centre, labels, alpha):
        delta = (sender_centre - receiver_centre).reshape(-1)
        self.moving = torch.nonzero(delta).squeeze(1)
        if self.moving.numel() == 0:
            self.moving = None
            return
        wanted = torch.arange(labels, device=delta.device)[:, None] - delta[self.moving][None]
        self.index = wanted.clamp(0, labels - 1)
        self.extra = alpha * (wanted - self.index).abs()

    def send(self, h: torch.Tensor, alpha: float, d: float, out: torch.Tensor, step: torch.Tensor) -> None:
        """The min-sum message m(k) = min_j h(j) + min(alpha |u_j - u_k|, d), less min_j h(j), written into
        ``out``; h (contiguous) is overwritten."""
        lowest = h.amin(0)
        envelope = _distance_transform_(h, alpha, step)
        if self.moving is not None:
            flat = envelope.view(envelope.shape[0], -1)
            flat[:, self.moving] = flat[:, self.moving].gather(0, self.index).add_(self.extra.to(h.dtype))
        # normalised by the sender's minimum, which is the message's minimum wherever the windows overlap
        torch.minimum(envelope, lowest + d, out=out)
        out.sub_(lowest)


# The four sides a pixel hears from: (side, the side whose message the sender leaves out, sender slice, receiver
# slice) over the last two axes (H, W).
_SIDES = (
    ("left", "right", (slice(None), slice(None, -1)), (slice(None), slice(1, None))),
    ("right", "left", (slice(None), slice(1, None)), (slice(None), slice(None, -1))),
    ("up", "down", (slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ("down", "up", (slice(1, None), slice(None)), (slice(None, -1), slice(None))),
)


def _belief_propagation(cost, centre, radius, params, sweeps):
    """Min-sum loopy BP on the dual-layer graph, synchronous schedule. cost (L, L, N, H, W) [v, u];
    centre (N, 2, H, W) long. Returns, per layer (u, v), the sum of the small-displacement term and the
    smoothness messages arriving at each pixel (L, N, H, W)."""
    if cost.device.type != "cpu":
        return _belief_propagation_torch(cost, centre, radius, params, sweeps)
    unary_u, unary_v = _unaries(cost, centre, radius, params)
    # one fused pass over the pixels per sweep on CPU (about 3 times faster): the torch version reads and writes
    # every message several times per sweep; the kernel does the same float32 operations in the same order, so
    # that the flows are the same
    cost, centre = cost.contiguous().numpy(), centre.contiguous().numpy()
    unary_u, unary_v = np.ascontiguousarray(unary_u.numpy()), np.ascontiguousarray(unary_v.numpy())
    scalar = cost.dtype.type
    totals = np.stack([unary_u, unary_v])
    _belief_propagation_kernel(cost, centre, unary_u, unary_v, scalar(params.alpha), scalar(params.d), sweeps, totals)
    totals = torch.from_numpy(totals)
    return [totals[0], totals[1]]


def _unaries(cost, centre, radius, params):
    """The small-displacement term eta |c + k| of each layer (u, v), (L, N, H, W)."""
    labels = cost.shape[0]
    ks = torch.arange(-radius, radius + 1, device=cost.device, dtype=cost.dtype).view(labels, 1, 1, 1)
    return [params.eta * (centre[:, axis][None].to(cost.dtype) + ks).abs() for axis in (0, 1)]


def _belief_propagation_torch(cost, centre, radius, params, sweeps):
    """_belief_propagation in torch operations, for any device.

    Every sweep writes into buffers allocated once (two sets of messages, new and previous): tensors of a few MB
    freshly allocated per operation cost more in page faults than the arithmetic on them."""
    labels, _, n, h, w = cost.shape
    unaries, edges = _unaries(cost, centre, radius, params), []
    for axis in (0, 1):
        c = centre[:, axis]
        edges.append(
            {  # keyed by the side the receiver hears from
                "left": _Edges(c[:, :, :-1], c[:, :, 1:], labels, params.alpha),
                "right": _Edges(c[:, :, 1:], c[:, :, :-1], labels, params.alpha),
                "up": _Edges(c[:, :-1], c[:, 1:], labels, params.alpha),
                "down": _Edges(c[:, 1:], c[:, :-1], labels, params.alpha),
            }
        )
    like = lambda *shape: torch.empty(*shape, dtype=cost.dtype, device=cost.device)
    # messages into the border pixels from outside the image stay zero
    incoming, previous = (
        [{side: torch.zeros_like(unaries[0]) for side, *_ in _SIDES} for _ in range(2)] for _ in range(2)
    )
    senders = {"left": like(labels, n, h, w - 1), "up": like(labels, n, h - 1, w)}
    senders["right"], senders["down"] = senders["left"], senders["up"]
    steps = {"left": like(n, h, w - 1), "up": like(n, h - 1, w)}
    steps["right"], steps["down"] = steps["left"], steps["up"]
    totals = [unary.clone() for unary in unaries]
    data_message, full, pair = like(labels, n, h, w), like(labels, n, h, w), like(labels, n, h, w)
    for _ in range(sweeps):
        incoming, previous = previous, incoming
        for layer in (0, 1):
            # the data factor tells each layer the best it can do given what the other layer believes
            other = totals[1 - layer]
            for k in range(labels):
                # layer u: min over v of cost[v, u] + totals_v[v]; layer v: min over u of cost[v, u] + totals_u[u]
                torch.add(cost[k] if layer == 0 else cost[:, k], other[k], out=pair)
                if k == 0:
                    data_message.copy_(pair)
                else:
                    torch.minimum(data_message, pair, out=data_message)
            torch.add(totals[layer], data_message, out=full)
            came, edge = previous[layer], edges[layer]
            for side, opposite, sender, receiver in _SIDES:
                h_sender = torch.sub(full[(..., *sender)], came[opposite][(..., *sender)], out=senders[side])
                edge[side].send(h_sender, params.alpha, params.d, incoming[layer][side][(..., *receiver)], steps[side])
        for layer in (0, 1):
            into = incoming[layer]
            torch.add(into["left"], into["right"], out=totals[layer])
            totals[layer].add_(into["up"]).add_(into["down"]).add_(unaries[layer])
    return totals


@numba.njit(cache=True, nogil=True)  # no fastmath: every operation rounds as in the torch version
def _belief_propagation_kernel(cost, centre, unary_u, unary_v, alpha, d, sweeps, totals):
    """_belief_propagation_torch on CPU float32 arrays: cost (L, L, N, H, W), centre (N, 2, H, W), unaries
    (L, N, H, W), into totals (2, L, N, H, W) (left as it is, the unaries, after no sweep). The schedule is
    synchronous, as there: a sweep reads only the previous sweep's messages, so visiting the pixels a chunk of
    rows at a time (its labels x pixels stay in cache) gives the same messages. Pixels are indexed flat within a
    chunk, so that loops run unit-stride over about a thousand pixels, which the compiler vectorises (np.minimum
    rather than a conditional: LLVM turns the latter into masked stores, slow on some CPUs)."""
    labels, _, n, h, w = cost.shape
    plane = h * w
    cost = cost.reshape((labels, labels, n * plane))
    totals = totals.reshape((2, labels, n * plane))
    unaries = (unary_u.reshape((labels, n * plane)), unary_v.reshape((labels, n * plane)))
    # messages[set, layer, side]: sides left, right, up, down (the side the receiver hears from); borders stay zero
    messages = np.zeros((2, 2, 4, labels, n * plane), dtype=cost.dtype)
    rows = max(1, min(h, _CHUNK_PIXELS // w))
    beliefs = np.empty((2, labels, rows * w), dtype=cost.dtype)  # the chunk's totals
    data = np.empty((2, labels, rows * w), dtype=cost.dtype)  # the chunk's data messages, then its full beliefs
    envelope = np.empty((labels, rows * w), dtype=cost.dtype)
    lowest = np.empty(rows * w, dtype=cost.dtype)
    # the senders whose window centre differs from their receiver's, fixed for the level: per layer and side, row
    # by row (from listed[layer, side, row] to listed[layer, side, row + 1]), their column and the difference
    listed = np.empty((2, 4, n * h + 1), dtype=np.int64)
    found = _moving_senders(centre, listed, np.empty(0, np.int64), np.empty(0, np.int64))
    columns, deltas = np.empty(found, np.int64), np.empty(found, np.int64)
    _moving_senders(centre, listed, columns, deltas)
    for sweep in range(sweeps):
        incoming, previous = messages[(sweep + 1) % 2], messages[sweep % 2]
        for b in range(n):
            for top in range(0, h, rows):
                bottom = min(h, top + rows)
                count = (bottom - top) * w
                start = b * plane + top * w
                # the totals of the previous sweep, from its messages (those of no sweep are zero: the unaries)
                for layer in range(2):
                    _add_messages(previous[layer], unaries[layer], start, count, beliefs[layer])
                # layer u: min over v of cost[v, u] + totals_v[v]; layer v: min over u of cost[v, u] + totals_u[u]
                data[:] = np.inf
                for v in range(labels):
                    best_v, totals_v = data[1, v], beliefs[1, v]
                    for u in range(labels):
                        costs, best_u = cost[v, u, start : start + count], data[0, u]
                        totals_u = beliefs[0, u]
                        for x in range(count):
                            to_u, to_v = costs[x] + totals_v[x], costs[x] + totals_u[x]
                            best_u[x] = np.minimum(best_u[x], to_u)
                            best_v[x] = np.minimum(best_v[x], to_v)
                for layer in range(2):
                    for k in range(labels):
                        full, own = data[layer, k], beliefs[layer, k]
                        for x in range(count):
                            full[x] = own[x] + full[x]
                    # (side, the side whose message the sender leaves out, senders first..last - 1 of the chunk,
                    # the receivers' offset); a horizontal message is also sent from the row's last (first) pixel
                    # to the next (previous) row's first (last) pixel, and that receiver is reset to zero after
                    for side in range(4):
                        if side == 0:
                            opposite, first, last, offset = 1, 0, count - 1, 1
                        elif side == 1:
                            opposite, first, last, offset = 0, 1, count, -1
                        elif side == 2:
                            opposite, first, last, offset = 3, 0, (min(bottom, h - 1) - top) * w, w
                        else:
                            opposite, first, last, offset = 2, (max(top, 1) - top) * w, count, -w
                        if last <= first:
                            continue
                        out = incoming[layer, side]
                        _send_chunk(
                            data[layer],
                            previous[layer, opposite],
                            envelope,
                            lowest,
                            start,
                            first,
                            last,
                            alpha,
                            d,
                            offset,
                            listed[layer, side],
                            columns,
                            deltas,
                            b * h + top,
                            w,
                            out,
                        )
                        if side == 0:
                            for k in range(labels):
                                for y in range(1, bottom - top):
                                    out[k, start + y * w] = 0
                        elif side == 1:
                            for k in range(labels):
                                for y in range(bottom - top - 1):
                                    out[k, start + y * w + w - 1] = 0
    if sweeps > 0:
        for layer in range(2):
            _add_messages(messages[sweeps % 2, layer], unaries[layer], 0, n * plane, totals[layer])


@numba.njit(nogil=True, inline="always")
def _add_messages(messages, unary, start, count, out):
    """The total of the messages (4, L, pixels) from every side and the unary (L, pixels) of the pixels start..
    start + count - 1, in the torch version's order, into out (L, count)."""
    for k in range(unary.shape[0]):
        left, right = messages[0, k, start : start + count], messages[1, k, start : start + count]
        up, down = messages[2, k, start : start + count], messages[3, k, start : start + count]
        own, total = unary[k, start : start + count], out[k]
        for x in range(count):
            total[x] = (((left[x] + right[x]) + up[x]) + down[x]) + own[x]


@numba.njit(cache=True, nogil=True)
def _moving_senders(centre, listed, columns, deltas):
    """Lists the senders whose window centre differs from their receiver's into listed, columns and deltas (see
    _belief_propagation_kernel) where columns has room; returns how many there are."""
    n, _, h, w = centre.shape
    found = 0
    for layer in range(2):
        for side in range(4):
            dy, dx = _SIDE_OFFSETS[side]
            for b in range(n):
                for y in range(h):
                    listed[layer, side, b * h + y] = found
                    if y + dy < 0 or y + dy >= h:
                        continue
                    for x in range(max(0, -dx), min(w, w - dx)):
                        delta = centre[b, layer, y, x] - centre[b, layer, y + dy, x + dx]
                        if delta != 0:
                            if found < len(columns):
                                columns[found], deltas[found] = x, delta
                            found += 1
            listed[layer, side, n * h] = found
    return found


_SIDE_OFFSETS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (rows, columns) from a sender to its receiver, per side
_CHUNK_PIXELS = 1024  # pixels of a chunk of rows in _belief_propagation_kernel (at least one row)


@numba.njit(nogil=True, inline="always")
def _send_chunk(
    full, came, envelope, lowest, start, first, last, alpha, d, offset, listed, columns, deltas, row, w, out
):
    """_Edges.send for the senders first..last - 1 of a chunk of rows starting at flat pixel ``start`` (row ``row``
    of the pairs' rows): h = full - came, with full (L, chunk) the chunk's beliefs and came (L, pixels) the messages
    the senders heard from their receivers; the message to the receiver ``offset`` pixels away goes to out
    (L, pixels). listed, columns, deltas: the senders whose window centre differs from their receiver's (see
    _belief_propagation_kernel). envelope (L, chunk), lowest (chunk,): scratch. The torch version's passes are fused
    into two: h, its minimum and the forward distance transform; the backward one and the message."""
    labels = full.shape[0]
    # views that start at the first sender: loops over range(senders) index them unit-stride from zero
    senders = last - first
    floor = lowest[first:last]
    h, heard, into = envelope[0, first:last], full[0, first:last], came[0, start + first : start + last]
    for x in range(senders):
        h[x] = heard[x] - into[x]
        floor[x] = h[x]
    for k in range(1, labels):
        h, below = envelope[k, first:last], envelope[k - 1, first:last]
        heard, into = full[k, first:last], came[k, start + first : start + last]
        for x in range(senders):
            value = heard[x] - into[x]
            floor[x] = np.minimum(floor[x], value)
            h[x] = np.minimum(value, below[x] + alpha)
    for k in range(labels - 1, -1, -1):
        h, message = envelope[k, first:last], out[k, start + first + offset : start + last + offset]
        if k < labels - 1:
            above = envelope[k + 1, first:last]
            for x in range(senders):
                h[x] = np.minimum(h[x], above[x] + alpha)
        for x in range(senders):
            message[x] = np.minimum(h[x], floor[x] + d) - floor[x]
    # where the windows' centres differ, receiving label k reads the sender's label k - delta, plus the L1 cost
    # of the part outside the window
    for r in range((last + w - 1) // w):
        for listing in range(listed[row + r], listed[row + r + 1]):
            x, delta = r * w + columns[listing], deltas[listing]
            cap, receiver = lowest[x] + d, start + x + offset
            for k in range(labels):
                wanted = k - delta
                if wanted < 0:
                    value = envelope[0, x] + alpha * np.float32(-wanted)
                elif wanted >= labels:
                    value = envelope[labels - 1, x] + alpha * np.float32(wanted - labels + 1)
                else:
                    value = envelope[wanted, x]
                out[k, receiver] = np.minimum(value, cap) - lowest[x]


def _decode(cost, totals, centre, radius):
    """Joint argmin of each pixel's belief over (u, v): the integer flow (N, 2, H, W) and the label index."""
    labels = cost.shape[0]
    best = (cost + totals[1][:, None] + totals[0][None]).flatten(0, 1).min(0).indices
    flow = torch.stack([best % labels, best // labels], dim=1) - radius + centre
    return flow, best


def _refine_subpixel(cost, flow, best):
    """Sub-pixel flow (N, 2, H, W) float from the integer flow and its label index in the data cost."""
    labels = cost.shape[0]
    kv, ku = best // labels, best % labels

    # The data term alone locates the sub-pixel minimum (the belief's L1 smoothness messages would pull it to the
    # integer label); an L1-type cost is V-shaped near its minimum, so the fit is equiangular (two lines of equal
    # and opposite slope), then the result is lightly smoothed to average out the per-pixel noise.
    data = cost.flatten(0, 1)

    def vertex(step, inner):
        low = data.gather(0, (best - step).clamp(0, labels * labels - 1)[None])[0]
        mid = data.gather(0, best[None])[0]
        high = data.gather(0, (best + step).clamp(0, labels * labels - 1)[None])[0]
        rise = 2 * (torch.maximum(low, high) - mid)
        offset = (low - high) / rise.clamp_min(1e-6)
        return torch.where(inner & (rise > 1e-6), offset.clamp(-0.5, 0.5), 0.0)

    du = vertex(1, (ku > 0) & (ku < labels - 1))
    dv = vertex(labels, (kv > 0) & (kv < labels - 1))
    return _gaussian_blur(flow.to(cost.dtype) + torch.stack([du, dv], dim=1), SUBPIXEL_SMOOTHING)


def _upsample_flow(flow: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Flow of a coarser level at a finer level's size, in the finer level's pixels."""
    h, w = flow.shape[-2:]
    scale = torch.tensor([shape[1] / w, shape[0] / h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return F.interpolate(flow, size=shape, mode="bilinear", align_corners=False) * scale


def solve_flow(
    target: torch.Tensor, neighbour: torch.Tensor, params: SiftFlowParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse-to-fine SIFT Flow between descriptor images (N, C, H, W).

    Returns the flow (N, 2, H, W) as (dx, dy) in working pixels (sub-pixel when ``params.subpixel``) and the
    integer flow the belief propagation chose (N, 2, H, W, long)."""
    pyramid = [(target, neighbour)]
    for _ in range(params.levels - 1):
        t, nb = pyramid[-1]
        if min(t.shape[-2:]) < 2 * (2 * params.top_radius + 1):
            break  # the next level would be smaller than the top search window
        pyramid.append((F.avg_pool2d(t, 2, ceil_mode=True), F.avg_pool2d(nb, 2, ceil_mode=True)))
    flow = None
    for level, (t, nb) in enumerate(reversed(pyramid)):
        top = level == 0
        radius = params.top_radius if top else params.radius
        if top:
            centre = torch.zeros(t.shape[0], 2, *t.shape[-2:], dtype=torch.long, device=t.device)
        else:
            centre = torch.round(_upsample_flow(flow, tuple(t.shape[-2:]))).long()
        cost = _data_cost(t, nb, centre, radius, params.t)
        totals = _belief_propagation(cost, centre, radius, params, params.top_iterations if top else params.iterations)
        integer, best = _decode(cost, totals, centre, radius)
        flow = integer.to(t.dtype)
    if params.subpixel:
        flow = _refine_subpixel(cost, integer, best)
    return flow, integer


# ----------------------------------------------------------------------------------------------------------------
# Public API on images


def _to_original(flow_work: torch.Tensor, target_shape, neighbour_shape) -> np.ndarray:
    """Working-resolution flow (2, h, w) -> (H, W, 2) float32 in original pixels of target and neighbour."""
    import cv2

    _, h, w = flow_work.shape
    th, tw = target_shape
    nh, nw = neighbour_shape
    flow = flow_work.permute(1, 2, 0).cpu().numpy().astype(np.float32)
    flow = cv2.resize(flow, (tw, th), interpolation=cv2.INTER_LINEAR)
    xs = np.arange(tw, dtype=np.float32)[None, :]
    ys = np.arange(th, dtype=np.float32)[:, None]
    # pixel centres: working x_w = (x + 0.5) * w / W - 0.5; the match x_w + u lies in the neighbour at the same scale
    xw = (xs + 0.5) * (w / tw) - 0.5
    yw = (ys + 0.5) * (h / th) - 0.5
    match_x = (xw + flow[..., 0] + 0.5) * (nw / w) - 0.5
    match_y = (yw + flow[..., 1] + 0.5) * (nh / h) - 0.5
    return np.stack([match_x - xs, match_y - ys], axis=-1).astype(np.float32)


def sift_flow_batch(
    targets: list[np.ndarray], neighbours: list[np.ndarray], params: SiftFlowParams = SiftFlowParams(), device="cpu"
) -> list[FlowField]:
    """SIFT Flow for each (target, neighbour) pair of images (H, W, 3) uint8 or (H, W) grey; pairs whose targets
    share a working shape are computed together in one batch on ``device``."""
    if len(targets) != len(neighbours):
        raise RelearnError(f"sift_flow_batch: {len(targets)} targets but {len(neighbours)} neighbours")
    for role, images in (("target", targets), ("neighbour", neighbours)):
        for index, image in enumerate(images):
            _check_size(np.asarray(image), role, index)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(targets):
        groups.setdefault(working_shape(*np.asarray(image).shape[:2], params), []).append(index)
    results: list[FlowField | None] = [None] * len(targets)
    with torch.no_grad():
        for members in groups.values():
            desc_t, desc_n = pair_descriptors(
                [targets[i] for i in members], [neighbours[i] for i in members], params, device
            )
            flow, integer = solve_flow(desc_t, desc_n, params)
            distance = _data_cost(desc_t, desc_n, integer, 0, float("inf"))[0, 0]
            for slot, index in enumerate(members):
                target_shape = np.asarray(targets[index]).shape[:2]
                flow_full = _to_original(flow[slot], target_shape, np.asarray(neighbours[index]).shape[:2])
                cost = _resize_map(distance[slot].cpu().numpy(), target_shape)
                results[index] = FlowField(flow=flow_full, cost=cost)
    return results


def _resize_map(values: np.ndarray, shape) -> np.ndarray:
    import cv2

    return cv2.resize(values.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------------------------------------------
# The cached stage: flows on a grid over the target


def grid_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(h, w) of a grid of long side ``long_side`` over an image of ``shape`` (the image's own size if smaller)."""
    scale = min(1.0, long_side / max(shape))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def grid_coordinates(grid: tuple[int, int], image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image-pixel coordinates (x, y) of the centres of a (h, w) sampling grid over an image of ``image_shape``."""
    h, w = grid
    height, width = image_shape
    xs = np.minimum(((np.arange(w) + 0.5) * width / w).astype(np.int64), width - 1)
    ys = np.minimum(((np.arange(h) + 0.5) * height / h).astype(np.int64), height - 1)
    return np.broadcast_to(xs[None, :], grid), np.broadcast_to(ys[:, None], grid)


def sample_grid(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Nearest samples of a full-size map at the centres of a coarser grid."""
    xs, ys = grid_coordinates(grid, values.shape[:2])
    return values[ys, xs]


def flows_for(
    ws: Workspace,
    target: ImageEntry,
    neighbours: list[ImageEntry],
    params: SiftFlowParams = SiftFlowParams(),
    grid: int = FLOW_GRID,
) -> list[FlowGrid]:
    """SIFT Flow from the target to each neighbour on the target's grid of long side ``grid``, cached. Over that
    grid, Eq. (2)'s averages over a superpixel's pixels become averages over its grid samples (about a quarter of its
    pixels for 481x321 images): d changes by sampling noise only, the alignment costs four times less. The missing
    pairs are computed in one batch."""
    shape = grid_shape(target.image.shape[:2], grid)

    def compute(indices: list[int]) -> list[FlowGrid]:
        fields = sift_flow_batch(
            [target.image] * len(indices), [neighbours[i].image for i in indices], params, ws.device
        )
        return [FlowGrid(sample_grid(field.flow, shape), sample_grid(field.cost, shape)) for field in fields]

    return ws.run_batch(
        FLOW_STAGE, [[target.hash, n.hash] for n in neighbours], flow_key(params, grid), compute, FlowGrid
    )


def flow_key(params: SiftFlowParams, grid: int) -> dict:
    """The parameters that fix a stored flow (the alignment's key holds them too)."""
    return {"grid": grid, **asdict(params)}
