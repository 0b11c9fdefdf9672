"""The correspondence stage runner: retrieval, regions, SIFT Flow and bi-level alignment for a set of images against
a pool, every artefact cached on disk (paper Section III).

Nothing here depends on a base saliency model, so one cache serves every base and every fold: entries are keyed by
content hashes and stage parameters only (relearn_core/cache.py: atomic writes, a second run reuses, an interrupted
run resumes).

Resolutions: superpixels are computed at full image size; proposals and SIFT Flow at a working size (regions.py,
flow.py). The flow is stored, and the alignment computed, on a grid of long side ``flow_grid`` (240 px by default)
over the target: Eq. (2)'s averages over a superpixel's pixels become averages over its grid samples (about a quarter
of its pixels for 481x321 images), which changes d by sampling noise only and cuts the alignment's cost by four.
"""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .align import (
    AlignParams,
    Alignment,
    align_correspondence,
    grid_coordinates,
    membership,
    superpixel_correspondence,
)
from ..cache import Cache
from ..errors import InputError
from .flow import SiftFlowParams, sift_flow_batch
from ..imageio import content_hash, images_in, read_image
from .regions import (
    EDGEBOXES,
    PROPOSALS,
    SUPERPIXELS,
    Proposals,
    Superpixels,
    proposals,
    resolve_edge_method,
    superpixels,
)
from .retrieval import NEIGHBOURS, Neighbour, RetrievalIndex, describe_images

MIN_SIDE = 32
# part of every cache key: bump a stage's number when its output changes for the same parameters
STAGE_VERSIONS = {"descriptor": 1, "superpixels": 1, "proposals": 2, "flow": 1, "align": 4}


@dataclass(frozen=True)
class ImageEntry:
    """An image read for the correspondence stage: name (file stem), path, content hash, RGB uint8 pixels."""

    name: str
    path: Path
    hash: str
    image: np.ndarray = field(repr=False)


@dataclass
class PoolSet:
    """A retrieval pool as read: the usable images, and the files left out with the reason (unreadable, too small,
    a duplicate of another pool image)."""

    entries: list[ImageEntry]
    skipped: list[tuple[Path, str]]


def _image_files(source: str | os.PathLike) -> list[Path]:
    """The image files of a folder (or of its ``images/`` subfolder, the layout of a data set), or the file itself."""
    source = Path(source)
    return sorted(images_in(source).values()) if source.is_dir() else [source]


def read_entry(path: str | os.PathLike) -> ImageEntry:
    """Read one image for the correspondence stage. Raises InputError naming the file when it cannot be read or is
    smaller than 32 px a side. Grey and RGBA images are converted to RGB (alpha composited on white)."""
    path = Path(path)
    image = read_image(path)
    if min(image.shape[:2]) < MIN_SIDE:
        raise InputError(path, f"image is {image.shape[1]}x{image.shape[0]} px; needs at least {MIN_SIDE} px a side")
    return ImageEntry(path.stem, path, content_hash(path), image)


def read_pool(sources: list[str | os.PathLike]) -> PoolSet:
    """Read pool images from folders and/or files. Unreadable or too small files and exact duplicates (same content
    hash) are skipped and listed, with a warning, instead of failing the run."""
    entries: list[ImageEntry] = []
    skipped: list[tuple[Path, str]] = []
    seen: dict[str, Path] = {}
    for source in sources:
        if not Path(source).exists():
            raise InputError(source, "pool folder or file does not exist")
        for path in _image_files(source):
            try:
                entry = read_entry(path)
            except InputError as exc:
                skipped.append((path, exc.problem))
                continue
            if entry.hash in seen:
                skipped.append((path, f"duplicate of {seen[entry.hash]}"))
                continue
            seen[entry.hash] = path
            entries.append(entry)
    if skipped:
        listed = "; ".join(f"{path}: {reason}" for path, reason in skipped)
        warnings.warn(f"{len(skipped)} pool files skipped: {listed}", stacklevel=2)
    return PoolSet(entries, skipped)


@dataclass(frozen=True)
class CorrespondenceParams:
    neighbours: int = NEIGHBOURS
    superpixels: int = SUPERPIXELS
    edge_boxes: int = EDGEBOXES
    proposals: int = PROPOSALS
    edge_method: str = "auto"
    flow_grid: int = 240
    align: AlignParams = AlignParams()
    flow: SiftFlowParams = SiftFlowParams()


@dataclass(frozen=True)
class PairCorrespondence:
    """The correspondences between a target image and one retrieved neighbour."""

    target: ImageEntry
    neighbour: ImageEntry
    distance: float  # retrieval distance of the descriptors
    alignment: Alignment
    flow_matches: np.ndarray  # (M, 2) superpixel matches of SIFT Flow alone (majority landing), for comparison


def _grid_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    scale = min(1.0, long_side / max(shape))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def sample_grid(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Nearest samples of a full-size map at the centres of a coarser grid (the grid align.py reads flows on)."""
    xs, ys = grid_coordinates(grid, values.shape[:2])
    return values[ys, xs]


class CorrespondenceBuilder:
    """Computes and caches every correspondence artefact of targets against a pool.

    ``seconds`` holds, per stage, the time each artefact took to compute, by cache key (stored in its cache entry,
    so a cache hit reports the original time): ``descriptor``, ``superpixels`` and ``proposals`` per image, ``flow`` and
    ``align`` per pair, and ``search`` per query (never cached). ``computed`` counts the cache misses per stage.
    """

    def __init__(self, pool: list[ImageEntry], cache: Cache | None = None, params: CorrespondenceParams = CorrespondenceParams(),
                 device="cpu"):
        self.pool = list(pool)
        self.cache = cache if cache is not None else Cache()
        self.params = params
        self.device = device
        self.seconds: dict[str, dict[str, float]] = defaultdict(dict)
        self.computed: dict[str, int] = defaultdict(int)
        descriptors = self.descriptors(self.pool)
        self.index = RetrievalIndex(descriptors, [e.hash for e in self.pool], [e.name for e in self.pool], device=device)

    def _key(self, stage: str, params: dict) -> dict:
        return {"version": STAGE_VERSIONS[stage], **params}

    def _cached(self, stage: str, hashes, params: dict, compute) -> dict[str, np.ndarray]:
        """The cache entry of a stage, computed when missing. Entries keep their compute time under ``seconds``
        (batched stages put each item's share there themselves)."""
        def timed():
            start = time.perf_counter()
            arrays = compute()
            self.computed[stage] += 1
            return {"seconds": np.float64(time.perf_counter() - start), **arrays}

        key = self._key(stage, params)
        arrays = self.cache.get_or_compute(stage, hashes, key, timed)
        if "seconds" in arrays:
            self.seconds[stage][Cache.key(hashes, key)] = float(arrays["seconds"])
        return arrays

    def _stored(self, stage: str, hashes, params: dict) -> bool:
        path = self.cache.path(stage, hashes, self._key(stage, params))
        return path is not None and path.exists()

    def _cached_batch(self, stage: str, keys: list[list[str]], params: dict,
                      compute: Callable[[list[int]], list[dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
        """The cache entries of a batched stage, one per item of ``keys`` (its input hashes). ``compute(indices)``
        returns the arrays of those items; the missing ones are computed in one call, each entry keeping its share of
        the call's time; an entry found damaged when read is computed alone."""
        missing = [i for i, hashes in enumerate(keys) if not self._stored(stage, hashes, params)]
        computed = {}
        if missing:
            start = time.perf_counter()
            results = compute(missing)
            share = np.float64((time.perf_counter() - start) / len(missing))
            computed = {i: {**arrays, "seconds": share} for i, arrays in zip(missing, results)}
        return [self._cached(stage, hashes, params, lambda i=i: computed[i] if i in computed else compute([i])[0])
                for i, hashes in enumerate(keys)]

    def descriptors(self, entries: list[ImageEntry]) -> np.ndarray:
        """GIST + HOG descriptors of the entries (N, D); the missing ones are computed in one batch."""
        def compute(indices):
            return [{"descriptor": row} for row in describe_images([entries[i].image for i in indices], self.device)]

        stored = [arrays["descriptor"] for arrays in self._cached_batch("descriptor", [[e.hash] for e in entries], {},
                                                                        compute)]
        return np.stack(stored) if stored else np.zeros((0, 0), np.float32)

    def neighbours(self, target: ImageEntry) -> list[tuple[ImageEntry, float]]:
        """The target's nearest pool images (never itself or a copy of it), with their descriptor distances."""
        descriptor = self.descriptors([target])[0]
        start = time.perf_counter()
        found: list[Neighbour] = self.index.neighbours(descriptor, self.params.neighbours, exclude_hashes=[target.hash])
        self.seconds["search"][target.hash] = time.perf_counter() - start
        return [(self.pool[n.index], n.distance) for n in found]

    def superpixels(self, entry: ImageEntry) -> Superpixels:
        params = {"count": self.params.superpixels}
        arrays = self._cached("superpixels", [entry.hash], params,
                              lambda: {"labels": superpixels(entry.image, self.params.superpixels).labels})
        labels = arrays["labels"].astype(np.int32)
        return Superpixels(labels, int(labels.max()) + 1)

    def proposals(self, entry: ImageEntry) -> Proposals:
        # the key names the edge map actually used, so installing HED later does not reuse Sobel-based entries
        params = {"count": self.params.proposals, "candidates": self.params.edge_boxes,
                  "edges": resolve_edge_method(self.params.edge_method)}

        def compute():
            found = proposals(entry.image, self.params.proposals, self.params.edge_boxes, self.params.edge_method,
                              self.device)
            return {"boxes": found.boxes, "scores": found.scores}

        arrays = self._cached("proposals", [entry.hash], params, compute)
        return Proposals(arrays["boxes"].astype(np.int64), arrays["scores"].astype(np.float64))

    def _flow_params(self) -> dict:
        return {"grid": self.params.flow_grid, **asdict(self.params.flow)}

    def flows(self, target: ImageEntry, neighbours: list[ImageEntry]) -> list[tuple[np.ndarray, np.ndarray]]:
        """SIFT Flow from the target to each neighbour on the target's flow grid: (flow (h, w, 2), cost (h, w)).
        The missing pairs are computed in one batch."""
        params = self._flow_params()
        grid = _grid_shape(target.image.shape[:2], self.params.flow_grid)

        def compute(indices):
            fields = sift_flow_batch([target.image] * len(indices), [neighbours[i].image for i in indices],
                                     self.params.flow, self.device)
            return [{"flow": sample_grid(result.flow, grid).astype(np.float16),
                     "cost": sample_grid(result.cost, grid).astype(np.float16)} for result in fields]

        stored = self._cached_batch("flow", [[target.hash, n.hash] for n in neighbours], params, compute)
        return [(arrays["flow"].astype(np.float32), arrays["cost"].astype(np.float32)) for arrays in stored]

    def correspondences(self, target: ImageEntry) -> list[PairCorrespondence]:
        """Retrieval, regions, flows and bi-level alignment of the target against its neighbours."""
        found = self.neighbours(target)
        if not found:
            return []
        target_sp, target_pr = self.superpixels(target), self.proposals(target)
        region_pairs = [(self.superpixels(n), self.proposals(n)) for n, _ in found]
        fields = self.flows(target, [n for n, _ in found])
        params = {**asdict(self.params.align), "superpixels": self.params.superpixels,
                  "proposals": self.params.proposals, "edges": resolve_edge_method(self.params.edge_method),
                  **self._flow_params()}
        target_members = membership(target_pr, target_sp)

        def align(index: int) -> dict[str, np.ndarray]:
            (neighbour_sp, neighbour_pr), (flow, cost) = region_pairs[index], fields[index]
            correspondence = superpixel_correspondence(target_sp, neighbour_sp, flow, cost)
            alignment = align_correspondence(correspondence, target_members, membership(neighbour_pr, neighbour_sp),
                                             self.params.align)
            return {**alignment.as_arrays(), "flow_matches": correspondence.flow_matches()}

        def align_batch(indices):
            # the alignments' numpy and numba work releases the GIL: threads put every core torch may use to work
            with ThreadPoolExecutor(min(torch.get_num_threads(), len(indices))) as pool:
                return list(pool.map(align, indices))

        stored = self._cached_batch("align", [[target.hash, n.hash] for n, _ in found], params, align_batch)
        return [PairCorrespondence(target, neighbour, distance, Alignment.from_arrays(arrays), arrays["flow_matches"])
                for (neighbour, distance), arrays in zip(found, stored)]
