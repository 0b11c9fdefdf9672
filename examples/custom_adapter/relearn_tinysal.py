"""relearn adapter ``tinysal``: a small fully convolutional saliency network.

relearn calls ``relearn_adapters`` once to learn the adapter's name, then ``relearn_predict`` with batches of RGB uint8
images; the network runs on the device relearn passes in ``options["device"]``. The weights are a ``state_dict`` of
:class:`TinySalNet` saved with ``torch.save``, named by the option ``weights`` (``--base-option weights=FILE``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from relearn_core.hookspecs import AdapterInfo, hookimpl

NAME = "tinysal"
__version__ = "0.1.0"


class TinySalNet(nn.Module):
    """Two strided conv blocks, a context block, and a 1x1 head; the logits are upsampled to the input size."""

    def __init__(self, width: int = 16):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.encoder = nn.Sequential(block(3, width, 2), block(width, 2 * width, 2), block(2 * width, 2 * width, 1))
        self.context = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, 1, 4, dilation=4), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(4 * width, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) logits."""
        features = self.encoder(images)
        logits = self.head(torch.cat([features, self.context(features)], dim=1))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def to_tensor(images: list[np.ndarray], size: int) -> torch.Tensor:
    """RGB uint8 images -> (N, 3, size, size) float32 in [0, 1]."""
    batch = [torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)[None] for image in images]
    return torch.cat([F.interpolate(item, size=(size, size), mode="bilinear", align_corners=False) for item in batch])


def train(
    images: list[np.ndarray], masks: list[np.ndarray], steps: int = 150, size: int = 64, seed: int = 0
) -> TinySalNet:
    """Fit a TinySalNet on images with boolean object masks (binary cross-entropy, Adam)."""
    torch.manual_seed(seed)
    model = TinySalNet()
    inputs = to_tensor(images, size)
    targets = to_tensor([np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2) for mask in masks], size)[:, :1]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(inputs), targets)
        loss.backward()
        optimiser.step()
    return model.eval()


@functools.lru_cache(maxsize=4)
def load_model(weights: str, modified: float, device: str) -> TinySalNet:
    """The network with its weights, on ``device`` (cached per file version and device)."""
    model = TinySalNet()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device).eval()


@hookimpl
def relearn_adapters():
    return [
        AdapterInfo(
            name=NAME,
            description="TinySalNet, a small fully convolutional saliency network (example third-party adapter)",
            paper="relearn example adapter",
            predicts_from="network",
            options={"weights": os.environ.get("TINYSAL_WEIGHTS", ""), "input_size": 64},
        )
    ]


@hookimpl
def relearn_predict(adapter, images, names, options):
    weights = Path(str(options.get("weights") or ""))
    if not weights.is_file():
        raise FileNotFoundError(
            f"tinysal needs trained weights: pass --base-option weights=FILE (a TinySalNet state_dict saved with "
            f"torch.save, e.g. from relearn_tinysal.train) or set TINYSAL_WEIGHTS; got {str(weights)!r}"
        )
    device = str(options.get("device", "cpu"))
    model = load_model(str(weights.resolve()), weights.stat().st_mtime, device)
    with torch.no_grad():
        probabilities = torch.sigmoid(model(to_tensor(list(images), int(options.get("input_size", 64))).to(device)))
    maps = []
    for image, probability in zip(images, probabilities):
        resized = F.interpolate(probability[None], size=image.shape[:2], mode="bilinear", align_corners=False)
        maps.append(resized[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32))
    return maps
