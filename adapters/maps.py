"""Bases that read precomputed saliency maps from a folder (``--maps DIR``).

``maps`` takes any method's maps; every baseline of registry.yaml (``dss``, ``srm``, ...) gets an adapter of its own
name that applies the registry's file naming (stem + suffix + extension). The maps are matched to the images by stem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from relearn_core.errors import InputError, RelearnError
from relearn_core.hookspecs import AdapterInfo, hookimpl
from relearn_core.imageio import IMAGE_SUFFIXES, read_map
from relearn_core.registry import load_registry

GENERIC = "maps"


def _infos() -> dict[str, AdapterInfo]:
    infos = {
        GENERIC: AdapterInfo(
            name=GENERIC,
            description="any method's precomputed maps, from --maps DIR (named <image stem><suffix>.<ext>)",
            predicts_from="maps",
            options={"suffix": "", "extension": ""},
        )
    }
    for baseline in load_registry().baselines:
        infos[baseline.name] = AdapterInfo(
            name=baseline.name,
            description=f"{baseline.display} ({baseline.tag}): the authors' released maps, from --maps DIR",
            paper=f"{baseline.full_name}. {baseline.authors}",
            venue=baseline.venue,
            year=baseline.year,
            predicts_from="maps",
            options={"suffix": baseline.suffix, "extension": baseline.extension},
        )
    return infos


@hookimpl
def relearn_adapters():
    return list(_infos().values())


def find_map(folder: Path, stem: str, suffix: str, extension: str) -> Path:
    """The map file of image ``stem`` in ``folder``: ``stem + suffix + extension`` (any image extension if none is
    set)."""
    extensions = [extension] if extension else list(IMAGE_SUFFIXES)
    for ext in extensions:
        for candidate in (folder / f"{stem}{suffix}{ext}", folder / f"{stem}{suffix}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    expected = f"{stem}{suffix}{extension or '.png'}"
    raise InputError(folder, f"maps folder has no map for image {stem!r} (expected {expected})")


def map_folders(adapter: str, maps) -> list[Path]:
    """The ``maps`` option as folders: one folder, or a list of them searched in order (maps of several datasets)."""
    if not maps:
        raise RelearnError(f"base {adapter!r} reads precomputed maps: give their folder with --maps DIR")
    folders = [Path(folder) for folder in ([maps] if isinstance(maps, (str, Path)) else maps)]
    for folder in folders:
        if not folder.is_dir():
            raise InputError(folder, "maps folder not found")
    return folders


def _first_map(folders: list[Path], stem: str, suffix: str, extension: str) -> Path:
    for folder in folders[:-1]:
        try:
            return find_map(folder, stem, suffix, extension)
        except InputError:
            continue
    return find_map(folders[-1], stem, suffix, extension)


@hookimpl
def relearn_predict(adapter, images, names, options):
    folders = map_folders(adapter, options.get("maps"))
    suffix, extension = str(options.get("suffix") or ""), str(options.get("extension") or "")
    maps = []
    for image, stem in zip(images, names):
        path = _first_map(folders, stem, suffix, extension)
        saliency = read_map(path).astype(np.float32)
        if saliency.shape != image.shape[:2]:
            raise InputError(
                path,
                f"map is {saliency.shape[1]}x{saliency.shape[0]} but image {stem!r} is "
                f"{image.shape[1]}x{image.shape[0]}",
            )
        maps.append(saliency)
    return maps
