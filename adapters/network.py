"""Generic adapters for any exported saliency network: ``onnx`` (onnxruntime) and ``torchscript`` (torch.jit).

A network is described by :class:`NetworkConfig`, built from the adapter's options (a registry entry or the command
line): the model file, the input size, the normalisation, the channel order, which output is the saliency map and
how that output becomes a map in [0, 1]. Option values may be given as Python values or as command-line strings
(``"320"``, ``"320x240"``, ``"0.485,0.456,0.406"``, ``"true"``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relearn_core.errors import InputError, RelearnError
from relearn_core.hookspecs import AdapterInfo, hookimpl
from relearn_core.imageio import network_map, resize_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the options every generic network adapter understands, with their meaning
NETWORK_OPTIONS = {
    "model": "path of the exported network file (required)",
    "input_size": "network input size, N or HxW; empty: each image at its own size",
    "mean": "per-channel mean subtracted after scaling (3 numbers, in the model's channel order)",
    "std": "per-channel standard deviation divided by after subtracting the mean",
    "channel_order": "rgb or bgr",
    "input_scale": "255: divide pixels by 255; max: divide by the image's maximum (as U2-Net does)",
    "output": "the network output that is the saliency map: its index or (ONNX) its name",
    "sigmoid": "apply a sigmoid to the output (true when the network returns logits)",
    "minmax": "stretch each map to [0, 1] by its own minimum and maximum",
    "batch_size": "images per forward pass when the input size is fixed",
    "device": "cpu or cuda (torchscript runs there; onnx uses the CUDA provider when it is available)",
}


@dataclass(frozen=True)
class NetworkConfig:
    """How to run one exported network and turn its output into saliency maps."""

    model: Path
    input_size: tuple[int, int] | None = None  #: (height, width); None runs each image at its own size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "rgb"
    input_scale: str = "255"
    output_index: int = 0
    output_name: str = ""  #: the output chosen by name (ONNX); resolved to ``output_index`` against the model
    sigmoid: bool = False
    minmax: bool = True
    batch_size: int = 8
    device: str = "cpu"


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise RelearnError(f"option {name}={value!r}: expected true or false")


def _as_triple(name: str, value: Any) -> tuple[float, float, float]:
    if isinstance(value, str):
        items = value.replace(" ", "").split(",")
    elif isinstance(value, (int, float)):
        items = [value] * 3  # one value for every channel
    else:
        items = value
    try:
        numbers = tuple(float(item) for item in items)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3:
        raise RelearnError(f"option {name}={value!r}: expected three numbers, e.g. 0.485,0.456,0.406")
    return numbers  # type: ignore[return-value]


def _as_size(value: Any) -> tuple[int, int] | None:
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
    elif isinstance(value, (int, np.integer)):
        parts = [value, value]
    else:
        parts = list(value)
    try:
        size = tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        size = ()
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise RelearnError(f"option input_size={value!r}: expected N or HxW (positive integers)")
    return size  # type: ignore[return-value]


def _as_int(name: str, value: Any, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = minimum - 1
    if number < minimum:
        raise RelearnError(f"option {name}={value!r}: expected an integer >= {minimum}")
    return number


def config_from_options(options: Mapping[str, Any]) -> NetworkConfig:
    """Validate an adapter's options into a :class:`NetworkConfig` (RelearnError naming the bad option)."""
    unknown = sorted(set(options) - set(NETWORK_OPTIONS) - {"maps", "suffix"})
    if unknown:
        raise RelearnError(f"unknown network option(s) {', '.join(unknown)}; known: {', '.join(NETWORK_OPTIONS)}")
    if not options.get("model"):
        raise RelearnError("option model is required: the path of the exported network file")
    defaults = NetworkConfig(model=Path(options["model"]))
    channel_order = str(options.get("channel_order", defaults.channel_order)).lower()
    if channel_order not in ("rgb", "bgr"):
        raise RelearnError(f"option channel_order={channel_order!r}: expected rgb or bgr")
    input_scale = str(options.get("input_scale", defaults.input_scale)).lower()
    if input_scale not in ("255", "max"):
        raise RelearnError(f"option input_scale={input_scale!r}: expected 255 or max")
    std = _as_triple("std", options.get("std", defaults.std))
    if min(std) <= 0:
        raise RelearnError(f"option std={std!r}: every value must be positive")
    output = options.get("output", defaults.output_index)
    named = isinstance(output, str) and not output.strip().isdigit()
    return NetworkConfig(
        model=Path(os.path.expanduser(str(options["model"]))),
        input_size=_as_size(options.get("input_size", defaults.input_size)),
        mean=_as_triple("mean", options.get("mean", defaults.mean)),
        std=std,
        channel_order=channel_order,
        input_scale=input_scale,
        output_index=0 if named else _as_int("output", output, 0),
        output_name=output.strip() if named else "",
        sigmoid=_as_bool("sigmoid", options.get("sigmoid", defaults.sigmoid)),
        minmax=_as_bool("minmax", options.get("minmax", defaults.minmax)),
        batch_size=_as_int("batch_size", options.get("batch_size", defaults.batch_size), 1),
        device=str(options.get("device", defaults.device)),
    )


def preprocess(images: Sequence[np.ndarray], config: NetworkConfig) -> np.ndarray:
    """RGB uint8 images of one size (after resizing to ``config.input_size``) -> float32 (N, 3, H, W) input."""
    batch = []
    for image in images:
        if config.input_size is not None:
            image = resize_image(image, *config.input_size)
        pixels = image.astype(np.float32)
        pixels /= max(float(pixels.max()), 1.0) if config.input_scale == "max" else 255.0
        if config.channel_order == "bgr":
            pixels = pixels[..., ::-1]
        pixels = (pixels - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
        batch.append(pixels.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32)


def postprocess(output: np.ndarray, images: Sequence[np.ndarray], config: NetworkConfig) -> list[np.ndarray]:
    """The chosen network output (N, 1, h, w) or (N, h, w) -> one float32 map in [0, 1] per image, at its size."""
    output = np.asarray(output, dtype=np.float32)
    if output.ndim == 4 and output.shape[1] == 1:
        output = output[:, 0]
    if output.ndim != 3 or output.shape[0] != len(images):
        raise RelearnError(
            f"{config.model}: output {config.output_index} has shape {output.shape}; "
            f"expected ({len(images)}, 1, H, W) or ({len(images)}, H, W)"
        )
    if config.sigmoid:
        from scipy.special import expit

        output = expit(output)
    return [network_map(prediction, image.shape[:2], config.minmax) for prediction, image in zip(output, images)]


def _batches(count: int, config: NetworkConfig, fixed_batch: int | None) -> list[list[int]]:
    """Index groups run together: one image at a time when sizes differ, else ``batch_size`` (or the model's fixed
    batch)."""
    step = fixed_batch or (config.batch_size if config.input_size is not None else 1)
    return [list(range(start, min(start + step, count))) for start in range(0, count, step)]


def _first_sentence(exc: Exception) -> str:
    """A loader's error, cut to its first line and sentence so the message stays one short line."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0].split(". ")[0]
    return first if len(first) <= 200 else first[:197] + "..."


def _check_model_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(path, "model file not found")


# --- ONNX ---------------------------------------------------------------------------------------------------------


def onnx_providers(device: str) -> list[str]:
    """CUDA first when the device asks for it and this onnxruntime has it; always CPU as the fallback."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if device.startswith("cuda") else []
    return [provider for provider in wanted if provider in available] + ["CPUExecutionProvider"]


@functools.lru_cache(maxsize=8)
def _onnx_session(path: str, modified: float, providers: tuple[str, ...]):
    # keyed by modification time as well, so a re-exported file is loaded again
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(path, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types for files that are not ONNX
        raise InputError(path, f"not a loadable ONNX model ({_first_sentence(exc)})") from None


def onnx_session(path: Path, device: str = "cpu"):
    """One onnxruntime InferenceSession per model file and device in this process."""
    _check_model_file(path)
    resolved = path.resolve()
    return _onnx_session(str(resolved), resolved.stat().st_mtime, tuple(onnx_providers(device)))


def onnx_config(config: NetworkConfig) -> tuple[NetworkConfig, int | None, bool]:
    """``config`` completed by the model itself: the output chosen by name found, the input size of a model exported
    at one size. Returns (config, the model's fixed batch size or None, whether the input size came from the model)."""
    session = onnx_session(config.model, config.device)
    outputs = [output.name for output in session.get_outputs()]
    if config.output_name:
        if config.output_name not in outputs:
            raise RelearnError(
                f"{config.model}: no output named {config.output_name!r}; its outputs: {', '.join(outputs)}"
            )
        config = dataclasses.replace(config, output_index=outputs.index(config.output_name))
    if config.output_index >= len(outputs):
        raise RelearnError(
            f"{config.model}: output {config.output_index} requested but the model has {len(outputs)} outputs"
        )
    shape = list(session.get_inputs()[0].shape or [])
    fixed = [dim if isinstance(dim, int) and dim > 0 else None for dim in shape]
    from_model = config.input_size is None and len(fixed) == 4 and bool(fixed[2] and fixed[3])
    if from_model:  # a model exported at one input size can only run at that size
        config = dataclasses.replace(config, input_size=(fixed[2], fixed[3]))
    return config, (fixed[0] if fixed else None), from_model


def predict_onnx(images: Sequence[np.ndarray], config: NetworkConfig) -> list[np.ndarray]:
    """Saliency maps of ``images`` from the ONNX network described by ``config``."""
    session = onnx_session(config.model, config.device)
    network_input = session.get_inputs()[0]
    outputs = session.get_outputs()
    config, fixed_batch, _ = onnx_config(config)
    maps: list[np.ndarray] = []
    for group in _batches(len(images), config, fixed_batch):
        group_images = [images[index] for index in group]
        batch = preprocess(group_images, config)
        if fixed_batch and len(group) < fixed_batch:  # fill a fixed-size batch with copies, dropped below
            batch = np.concatenate([batch, np.repeat(batch[-1:], fixed_batch - len(group), axis=0)])
        (output,) = session.run([outputs[config.output_index].name], {network_input.name: batch})
        maps.extend(postprocess(output[: len(group)], group_images, config))
    return maps


# --- TorchScript --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _torchscript_module(path: str, modified: float, device: str):
    import torch

    try:
        with warnings.catch_warnings():  # torch deprecates jit.load in favour of torch.export; TorchScript files remain
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(path, map_location=device)
    except Exception as exc:  # torch raises RuntimeError/ValueError/zipfile errors for files that are not TorchScript
        raise InputError(path, f"not a loadable TorchScript model ({_first_sentence(exc)})") from None
    return module.eval()


def torchscript_module(path: Path, device: str = "cpu"):
    """One loaded TorchScript module per model file and device in this process, in eval mode."""
    _check_model_file(path)
    resolved = path.resolve()
    return _torchscript_module(str(resolved), resolved.stat().st_mtime, device)


def torchscript_checked(config: NetworkConfig):
    """The loaded TorchScript module of ``config``, after refusing an output chosen by name (it has none)."""
    if config.output_name:
        raise RelearnError(f"option output={config.output_name!r}: TorchScript outputs have no names, give an index")
    return torchscript_module(config.model, config.device)


def predict_torchscript(images: Sequence[np.ndarray], config: NetworkConfig) -> list[np.ndarray]:
    """Saliency maps of ``images`` from the TorchScript network described by ``config``, run on ``config.device``."""
    import torch

    module = torchscript_checked(config)
    maps: list[np.ndarray] = []
    for group in _batches(len(images), config, None):
        group_images = [images[index] for index in group]
        with torch.inference_mode():
            result = module(torch.from_numpy(preprocess(group_images, config)).to(config.device))
        if isinstance(result, (list, tuple)):
            if config.output_index >= len(result):
                raise RelearnError(
                    f"{config.model}: output {config.output_index} requested but the model returns "
                    f"{len(result)} outputs"
                )
            result = result[config.output_index]
        if not isinstance(result, torch.Tensor):
            raise RelearnError(
                f"{config.model}: output {config.output_index} is a {type(result).__name__}, not a tensor"
            )
        maps.extend(postprocess(result.float().cpu().numpy(), group_images, config))
    return maps


# --- hooks --------------------------------------------------------------------------------------------------------

_PREDICTORS = {"onnx": predict_onnx, "torchscript": predict_torchscript}


_DEFAULT_OPTIONS = {
    "input_size": None,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "channel_order": "rgb",
    "input_scale": "255",
    "output": 0,
    "sigmoid": False,
    "minmax": True,
    "batch_size": 8,
}


@hookimpl
def relearn_adapters() -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name="onnx",
            description="any saliency network exported to ONNX, run with onnxruntime (options: model, input_size, ...)",
            predicts_from="network",
            options=dict(_DEFAULT_OPTIONS),
        ),
        AdapterInfo(
            name="torchscript",
            description="any saliency network saved as TorchScript, run with torch on the chosen device",
            predicts_from="network",
            options=dict(_DEFAULT_OPTIONS),
        ),
    ]


def describe(config: NetworkConfig, options: Mapping[str, Any], from_model: bool = False) -> str:
    """The pre-processing and post-processing applied, each with where it came from: the user's option, the model
    (its declared input shape), or this adapter's default."""

    def source(key: str) -> str:
        return "option" if key in options and options[key] != _DEFAULT_OPTIONS.get(key) else "default"

    size = "each image at its own size" if config.input_size is None else "x".join(map(str, config.input_size))
    scale = "/ 255" if config.input_scale == "255" else "/ the image's maximum"
    mean = ",".join(f"{value:g}" for value in config.mean)
    std = ",".join(f"{value:g}" for value in config.std)
    imagenet = " = ImageNet's" if (config.mean, config.std) == (IMAGENET_MEAN, IMAGENET_STD) else ""
    output = f"{config.output_index}" + (f" {config.output_name!r}" if config.output_name else "")
    on = {True: "on", False: "off"}
    return (
        f"{config.model.name}: input {size} ({'model' if from_model else source('input_size')}), "
        f"pixels {scale} ({source('input_scale')}), mean {mean} std {std}{imagenet} "
        f"({'option' if 'option' in (source('mean'), source('std')) else 'default'}), "
        f"{config.channel_order.upper()} ({source('channel_order')}), output {output} ({source('output')}), "
        f"sigmoid {on[config.sigmoid]} ({source('sigmoid')}), min-max {on[config.minmax]} ({source('minmax')})"
    )


@hookimpl
def relearn_check_options(adapter: str, options: Mapping[str, Any]) -> str:
    config = config_from_options(options)
    if adapter == "onnx":
        config, _, from_model = onnx_config(config)
        return describe(config, options, from_model)
    torchscript_checked(config)
    return describe(config, options)


@hookimpl
def relearn_predict(adapter: str, images: Sequence[np.ndarray], names: Sequence[str], options: Mapping[str, Any]):
    return _PREDICTORS[adapter](images, config_from_options(options))
