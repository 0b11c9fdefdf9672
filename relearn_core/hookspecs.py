"""Every hook specification of relearn (pluggy project name ``relearn``).

An adapter is a module or object with ``@hookimpl`` functions for some of these hooks. Built-in adapters
(``relearn_adapters``), adapters found through the ``relearn.adapters`` entry-point group and adapter files given
with ``--adapter path/to/file.py`` are registered the same way.

Dispatch is done by relearn, once: :func:`relearn_predict` and :func:`relearn_extract_features` are called on the
one plugin that declared the adapter (or backbone) named in the call, never on another, so an implementation only
ever receives its own names (relearn_core/plugins.py). ``RELEARN_TRACE_HOOKS=1`` prints every call.

A complete adapter, one file::

    from relearn_core.hookspecs import AdapterInfo, hookimpl

    @hookimpl
    def relearn_adapters():
        return [AdapterInfo(name="mynet", description="my saliency network", predicts_from="network")]

    @hookimpl
    def relearn_predict(adapter, images, names, options):
        return [my_network(image, options["device"]) for image in images]   # float32 (H, W) in [0, 1] each
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pluggy

PROJECT = "relearn"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter tells about the base model it provides."""

    name: str  #: the ``--base`` name, lower case, unique among all adapters
    description: str  #: one line
    paper: str = ""  #: title and authors of the model's paper
    venue: str = ""  #: e.g. "CVPR"
    year: int | None = None
    predicts_from: str = "network"  #: how maps are made: "maps" (precomputed files), "network", or "algorithm"
    options: Mapping[str, Any] = field(default_factory=dict)  #: defaults (e.g. map-name suffix, input size)


@dataclass(frozen=True)
class BackboneInfo:
    """A deep-feature extractor usable by the re-learner's features stage."""

    name: str
    description: str
    channels: tuple[int, ...]  #: channels of each feature map returned, coarsest last
    needs_weights: str = ""  #: where its weights come from, shown to the user; empty when none are needed
    #: the adapter whose maps are this backbone's own saliency, for a backbone that is a saliency network: what a
    #: re-learner with it must beat beyond averaging (benchmarks/relearn_cv.py's ``ensemble``)
    saliency_adapter: str = ""
    #: (level, channel) of the backbone's own saliency logit among the maps :func:`relearn_extract_features` returns,
    #: for a saliency network: its sigmoid, min-max normalised per image and resized to the image, is the map the
    #: fused join fuses with the base (taken from the features pass where the re-learner needs the features, so the
    #: network runs once per image; from a pass of the network alone where it does not, a wrap that corrects nothing)
    saliency_logit: tuple[int, int] | None = None
    #: (height, width) the features stage resizes every image to, for a network with a fixed input (so it sees what
    #: its adapter feeds it); None: images are shrunk to a long side of 320 px, their aspect kept
    input_size: tuple[int, int] | None = None


@hookspec
def relearn_adapters() -> Sequence[AdapterInfo]:
    """Declare the adapters (base models) this plugin provides.

    :return: one :class:`AdapterInfo` per adapter.

    Called once per process, the first time relearn lists or looks up adapters (and again after ``--adapter FILE``
    loads a file). Every name must be unique across all plugins: two adapters with one name are an error naming both
    sources.
    """


@hookspec
def relearn_predict(
    adapter: str, images: Sequence[np.ndarray], names: Sequence[str], options: Mapping[str, Any]
) -> list[np.ndarray]:
    """Predict saliency for a batch of images with one of this plugin's adapters.

    :param adapter: the name of the adapter (one this plugin declared in :func:`relearn_adapters`).
    :param images: RGB uint8 arrays of shape (H, W, 3), one per image (sizes may differ). Grey, palette and RGBA
        files are converted to RGB before (alpha composited on white), 16-bit files to 8 bits.
    :param names: the images' file stems, in the same order (used by adapters that read precomputed maps).
    :param options: the adapter's ``AdapterInfo.options`` overlaid with the user's: ``--maps DIR`` as ``maps``,
        ``--network FILE`` as ``model``, every ``--base-option KEY=VALUE`` as ``KEY``; ``device`` is always set
        (``"cpu"``, ``"cuda"``, ...; ``--device auto`` already resolved).
    :return: one float32 array per image, shape (H, W) of that image, values in [0, 1].

    Called for every batch of images (``--batch-size``, 8 by default) whose maps are not in the cache, from worker
    threads, processes or Ray workers. Raise an exception for an image that cannot be predicted: relearn then predicts
    the batch's images one by one, lists the ones that fail with the adapter's name, and goes on with the others.
    """


@hookspec
def relearn_check_options(adapter: str, options: Mapping[str, Any]) -> str | None:
    """Check an adapter's options before its first image, and say what it will do with them.

    :param adapter: the name of the adapter (one this plugin declared in :func:`relearn_adapters`).
    :param options: the same mapping :func:`relearn_predict` will receive.
    :return: one line for the user on what the adapter does with these options (for a network: its input size,
        scaling, normalisation, channel order, output, sigmoid, min-max, and where each came from), printed once per
        run; or None.

    Called once per run and adapter, in the main process, before any image is predicted (also when every map comes
    from the cache). Raise :class:`relearn_core.errors.RelearnError` naming the option for a bad option: the command
    stops with that one line before it does any work. Optional: an adapter without it is called with any options.
    """


@hookspec
def relearn_backbones() -> Sequence[BackboneInfo]:
    """Declare the feature backbones this plugin provides (an adapter may offer its own network's features here, so
    that the re-learner can use the base network's knowledge: ``relearn train --backbone NAME``).

    :return: one :class:`BackboneInfo` per backbone.

    Called once per process, the first time relearn lists or looks up backbones. Names are unique across plugins.
    """


@hookspec
def relearn_extract_features(backbone: str, images: torch.Tensor, device: str) -> list[torch.Tensor]:  # noqa: F821
    """Compute deep feature maps with one of this plugin's backbones.

    :param backbone: the name of the backbone (one this plugin declared in :func:`relearn_backbones`).
    :param images: float32 tensor (N, 3, H, W), RGB in [0, 1], on ``device``; images shrunk to a long side of 320 px,
        or resized to ``BackboneInfo.input_size`` where the backbone sets it; for a saliency network, also those
        images mirrored or rescaled (the configuration's ``knowledge_views``, e.g. "scale=1.4": 448 x 448 for 320).
    :param device: a torch device string ("cpu", "cuda", ...).
    :return: a list of feature maps (N, C_k, H_k, W_k), one per level listed in ``BackboneInfo.channels``, at any
        resolution (relearn pools them over each superpixel).

    Called by the features stage for every image whose superpixel features (or knowledge map over views) are not in
    the cache, from worker threads, processes or Ray workers, with torch on one thread per worker.
    """
