"""SIFT Flow accuracy tooling for the benchmarks (flow_epe.py, correspondence.py) and the flow tests: the energy
of a flow, the data-term-only baseline, and the end-point error on known warps of an image."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from relearn_core.correspondence import flow as sift_flow
from relearn_core.correspondence.flow import SiftFlowParams


def flow_energy(
    target: torch.Tensor, neighbour: torch.Tensor, flow: torch.Tensor, params: SiftFlowParams
) -> torch.Tensor:
    """The SIFT Flow energy (N,) of an integer flow (N, 2, H, W) between descriptor images at one resolution."""
    flow = flow.long()
    cost = sift_flow._data_cost(target, neighbour, flow, 0, params.t)[0, 0]
    data = cost.sum(dim=(1, 2))
    small = params.eta * flow.abs().sum(dim=(1, 2, 3)).to(target.dtype)
    smooth = 0.0
    for diff in (flow[..., 1:] - flow[..., :-1], flow[..., 1:, :] - flow[..., :-1, :]):
        smooth = smooth + (params.alpha * diff.abs().to(target.dtype)).clamp_max(params.d).sum(dim=(1, 2, 3))
    return data + small + smooth


def winner_take_all_flow(
    target: torch.Tensor, neighbour: torch.Tensor, params: SiftFlowParams, radius: int
) -> torch.Tensor:
    """The data-term-only baseline: each pixel's best displacement in a (2 radius + 1)^2 window (N, 2, H, W)."""
    centre = torch.zeros(target.shape[0], 2, *target.shape[-2:], dtype=torch.long, device=target.device)
    cost = sift_flow._data_cost(target, neighbour, centre, radius, params.t)
    ks = torch.arange(-radius, radius + 1, device=target.device, dtype=target.dtype).abs().view(-1, 1, 1, 1)
    cost = cost + params.eta * (ks[:, None] + ks[None, :])
    best = cost.flatten(0, 1).min(0).indices
    labels = 2 * radius + 1
    return torch.stack([best % labels, best // labels], dim=1) - radius


WARPS = {
    "shift_5": ("shift", 5.0),
    "shift_10": ("shift", 10.0),
    "shift_20": ("shift", 20.0),
    "scale_0.9": ("scale", 0.9),
    "scale_1.1": ("scale", 1.1),
    "rotate_5": ("rotate", 5.0),
}


def warp_matrix(kind: str, amount: float, shape) -> np.ndarray:
    """2x3 affine map from target pixel coordinates to warped-image coordinates (about the image centre)."""
    h, w = shape[:2]
    centre = ((w - 1) / 2, (h - 1) / 2)
    if kind == "shift":  # diagonal shift of ``amount`` px along each axis
        return np.array([[1, 0, amount], [0, 1, amount]], dtype=np.float64)
    if kind == "scale":
        return np.array([[amount, 0, (1 - amount) * centre[0]], [0, amount, (1 - amount) * centre[1]]])
    if kind == "rotate":
        return cv2.getRotationMatrix2D(centre, amount, 1.0)
    raise ValueError(f"unknown warp kind {kind!r} (shift, scale, rotate)")


def warp_epe(
    image: np.ndarray, params: SiftFlowParams = SiftFlowParams(), device="cpu", warps=None
) -> dict[str, float]:
    """Mean end-point error (px, original resolution) of SIFT Flow from ``image`` to copies of it warped by known
    amounts, over the target pixels whose true match stays inside the warped image. One entry per warp."""
    image = np.asarray(image)
    sift_flow._check_size(image, "target", 0)
    warps = WARPS if warps is None else warps
    h, w = image.shape[:2]
    warped, truths = [], []
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    for kind, amount in warps.values():
        matrix = warp_matrix(kind, amount, image.shape)
        warped.append(cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
        mx = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
        my = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
        truths.append(np.stack([mx - xs, my - ys], axis=-1))
    fields = sift_flow.sift_flow_batch([image] * len(warped), warped, params, device)
    result = {}
    for name, field, truth in zip(warps, fields, truths):
        mx, my = xs + truth[..., 0], ys + truth[..., 1]
        inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
        error = np.linalg.norm(field.flow.astype(np.float64) - truth, axis=-1)
        result[name] = float(error[inside].mean())
    return result
