"""The base maps stage: run a base model (an adapter) over images and check what it returns.

Every map an adapter returns is validated (the image's size, a float dtype, finite, within [0, 1]); an adapter that
raises on an image, or returns a bad map for it, makes that image a :class:`BaseMapFailure` naming the adapter and the
image, and the other images still run. Maps of adapters that compute them are cached by
(image content hash, adapter, options); maps read from files (``predicts_from == "maps"``) are read each time.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import plugins
from .errors import InputError, RelearnError
from .imageio import content_hash, read_image
from .records import BaseMap
from .workspace import Stage, Workspace

log = logging.getLogger("relearn")  #: what the user is told (the command line prints it, once per message)

STAGE = "base"
RANGE_TOLERANCE = 1e-4  #: float rounding allowed outside [0, 1] before a map is rejected (then clipped)


class BadOutputError(RelearnError):
    """An adapter returned something that is not a saliency map of the image."""


@dataclass(frozen=True)
class BaseMapFailure:
    """An image the adapter could not produce a valid map for."""

    image: Path
    adapter: str
    problem: str

    def __str__(self) -> str:
        return f"base {self.adapter!r} failed on {self.image}: {self.problem}"


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or None) -> "cuda" when torch sees a GPU, else "cpu"; any other string is returned as given."""
    if device in (None, "", "auto"):
        try:
            import torch
        except ImportError:
            return "cpu"
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def select_base(name: str, adapter_files: Sequence[str | os.PathLike] = (), maps=None) -> plugins.Adapter:
    """The adapter called ``name``, after loading ``adapter_files``; a maps-based base must be given its maps folder
    (or a list of folders, searched in order)."""
    for path in adapter_files:
        plugins.load_adapter_file(path)
    adapter = plugins.get_adapter(name)
    if adapter.info.predicts_from == "maps":
        if not maps:
            raise RelearnError(f"base {adapter.name!r} reads precomputed maps: give their folder with --maps DIR")
        for folder in [maps] if isinstance(maps, (str, os.PathLike)) else maps:
            if not Path(folder).is_dir():
                raise InputError(folder, "maps folder not found")
    return adapter


def adapter_options(adapter: plugins.Adapter, options: Mapping[str, Any] | None, device: str | None) -> dict[str, Any]:
    """The options an adapter is called with: its defaults, overlaid with the user's, plus the resolved device."""
    merged = dict(adapter.info.options)
    merged.update({key: value for key, value in (options or {}).items() if value is not None})
    merged["device"] = "cpu" if adapter.info.predicts_from == "maps" else resolve_device(device)
    return merged


def validate_map(adapter: str, image: str, result: Any, shape: tuple[int, int]) -> np.ndarray:
    """``result`` as float32 (H, W) in [0, 1], or BadOutputError naming the adapter and the image."""

    def bad(problem: str) -> BadOutputError:
        return BadOutputError(f"adapter {adapter!r} returned {problem} for image {image!r}")

    if not isinstance(result, np.ndarray):
        raise bad(f"a {type(result).__name__}, not a numpy array")
    if result.shape != tuple(shape):
        raise bad(f"a map of shape {result.shape}, expected the image's size {tuple(shape)}")
    if not np.issubdtype(result.dtype, np.floating):
        raise bad(f"dtype {result.dtype}, expected float32 values in [0, 1]")
    if not np.isfinite(result).all():
        raise bad(f"{int((~np.isfinite(result)).sum())} NaN or infinite values")
    low, high = float(result.min()), float(result.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise bad(f"values in [{low:.4g}, {high:.4g}], outside [0, 1]")
    return np.clip(result, 0.0, 1.0).astype(np.float32, copy=False)


def _fingerprint(options: Mapping[str, Any]) -> dict[str, Any]:
    """Cache parameters of the options: the device is left out; a file named by an option enters by its content hash."""
    params = {}
    for key, value in sorted(options.items()):
        if key == "device":
            continue
        if isinstance(value, (str, os.PathLike)) and str(value) and Path(value).is_file():
            value = f"{value}#{content_hash(value)}"
        params[key] = value if isinstance(value, (int, float, bool, type(None))) else str(value)
    return params


def _predict_batch(adapter, batch, options) -> Iterator[tuple[Path, np.ndarray | BaseMapFailure]]:
    """Predict a batch at once; when the adapter raises, predict its images one by one to find the bad ones."""
    images = [image for _, image in batch]
    names = [path.stem for path, _ in batch]
    try:
        results = plugins.predict(adapter, images, names, options)
    except Exception as exc:
        if len(batch) == 1:
            path = batch[0][0]
            yield path, BaseMapFailure(path, adapter.name, f"{type(exc).__name__}: {exc}")
            return
        for item in batch:
            yield from _predict_batch(adapter, [item], options)
        return
    if results is None or len(results) != len(batch):
        count = "nothing" if results is None else f"{len(results)} maps"
        for path, _ in batch:
            yield (
                path,
                BaseMapFailure(path, adapter.name, f"adapter returned {count} for a batch of {len(batch)} images"),
            )
        return
    for (path, image), result in zip(batch, results):
        try:
            yield path, validate_map(adapter.name, path.name, result, image.shape[:2])
        except BadOutputError as exc:
            yield path, BaseMapFailure(path, adapter.name, str(exc))


def _batch_maps(ws: Workspace, adapter: plugins.Adapter, options: Mapping[str, Any], paths: list[Path]) -> list:
    """The maps (or failures) of one batch of images: read from the cache where the adapter's maps are stored there,
    the others predicted in one call."""
    stored = adapter.info.predicts_from != "maps"  # maps read from files are cheaper to read again than to store
    stage = Stage(STAGE, adapter.source.version, stored=stored)
    params = {"adapter": adapter.name, "options": _fingerprint(options)} if stored else {}
    readable, outcomes = [], {}
    for path in paths:
        try:
            readable.append((path, read_image(path), content_hash(path)))
        except RelearnError as exc:
            outcomes[path] = BaseMapFailure(path, adapter.name, str(exc))

    def compute(indices: list[int]) -> list:
        batch = [readable[i][:2] for i in indices]
        return [
            BaseMap(result) if isinstance(result, np.ndarray) else result
            for _, result in _predict_batch(adapter, batch, options)
        ]

    found = ws.run_batch(stage, [[digest] for _, _, digest in readable], params, compute, BaseMap)
    for (path, _, _), result in zip(readable, found):
        outcomes[path] = result.map if isinstance(result, BaseMap) else result
    return [(path, outcomes[path]) for path in paths]


def base_maps(
    ws: Workspace,
    adapter: plugins.Adapter,
    image_paths: Sequence[str | os.PathLike],
    options: Mapping[str, Any] | None = None,
    batch_size: int = 8,
) -> Iterator[tuple[Path, np.ndarray | BaseMapFailure]]:
    """Yield ``(image path, map or failure)`` for each image, in order, batch by batch as the executor finishes them.

    :param adapter: the adapter (``relearn_core.plugins.get_adapter(name)``).
    :param options: the user's options for the adapter (e.g. ``{"maps": DIR}``), overlaid on its defaults.
    Maps of adapters that compute them are cached by (image content hash, adapter, adapter version, options).
    The adapter checks the options first (``relearn_check_options``); what it says it will do is logged once.
    """
    options = adapter_options(adapter, options, ws.device)
    described = plugins.check_options(adapter, options)  # a bad option stops here, before the first image
    if described:
        log.info("%s: %s", adapter.name, described)
    paths = [Path(path) for path in image_paths]
    batches = [paths[start : start + batch_size] for start in range(0, len(paths), batch_size)]
    for found in ws.map(functools.partial(_batch_maps, ws, adapter, options), batches):
        yield from found
