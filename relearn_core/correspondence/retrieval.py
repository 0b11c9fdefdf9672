"""Retrieval of similar images (paper Section III): a GIST + HOG descriptor per image and a nearest-neighbour index.

GIST (Oliva and Torralba) on a 128x128 grey image: Oliva's prefiltering (log intensity, whitening by a Gaussian
high-pass, local contrast normalisation), then a bank of Gabor filters, 4 scales x 8 orientations, applied as transfer
functions in the Fourier domain, and the response energy averaged over a 4x4 grid: 4 x 8 x 16 = 512 values. The
filtering runs in torch over the whole batch. HOG is scikit-image's on the same grey image. Each part is L2-normalised
and the two are joined and scaled to unit length, so both weigh the same in the Euclidean distance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from skimage.feature import hog

from ..records import Descriptor, ImageEntry
from ..workspace import Stage, Workspace

log = logging.getLogger("relearn")

GIST_SIZE = 128
GIST_SCALES = 4
GIST_ORIENTATIONS = 8
GIST_GRID = 4
PREFILTER_CUTOFF = 4.0  # cycles per image of Oliva's whitening filter
HOG_CELL = 16
NEIGHBOURS = 5
FAISS_ABOVE = 20000  # pool size from which faiss replaces the exact torch search
DUPLICATE_DISTANCE = 1e-6  # descriptors this close come from identical pixels


def _frequency_grid(size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Radial frequency (cycles per image) and angle of each FFT coefficient of a size x size image."""
    freqs = torch.fft.fftfreq(size, d=1.0 / size, device=device, dtype=torch.float64)
    fy, fx = torch.meshgrid(freqs, freqs, indexing="ij")
    return torch.sqrt(fx * fx + fy * fy), torch.atan2(fy, fx)


def gabor_bank(size: int = GIST_SIZE, scales: int = GIST_SCALES, orientations: int = GIST_ORIENTATIONS, device="cpu"):
    """Transfer functions (scales * orientations, size, size) of the GIST Gabor bank.

    Gaussians in log-polar frequency: centre frequencies 0.3 / 1.85^s cycles per pixel, radial bandwidth set by the
    constant 0.35 and angular bandwidth by the number of orientations (Oliva and Torralba's LMgist parameters).
    """
    radius, angle = _frequency_grid(size, device)
    filters = []
    for scale in range(scales):
        centre = 0.3 / 1.85**scale
        angular = 16.0 * orientations**2 / 32.0**2
        for orientation in range(orientations):
            theta = np.pi / orientations * orientation
            difference = torch.remainder(angle + theta + np.pi, 2 * np.pi) - np.pi
            radial = radius / size / centre - 1.0
            filters.append(torch.exp(-10.0 * 0.35 * radial**2 - 2.0 * angular * np.pi * difference**2))
    return torch.stack(filters).float()


def _prefilter(grey: torch.Tensor) -> torch.Tensor:
    """Oliva's prefilter on (N, S, S) intensities in 0..255: whitening then local contrast normalisation."""
    size = grey.shape[-1]
    pad = 5
    image = torch.log1p(grey)
    image = torch.nn.functional.pad(image[:, None], (pad, pad, pad, pad), mode="reflect")[:, 0]
    radius, _ = _frequency_grid(size + 2 * pad, grey.device)
    sigma = PREFILTER_CUTOFF / np.sqrt(np.log(2.0))
    lowpass = torch.exp(-(radius**2) / sigma**2).float()
    whitened = image - torch.fft.ifft2(torch.fft.fft2(image) * lowpass).real
    local_std = torch.sqrt(torch.fft.ifft2(torch.fft.fft2(whitened**2) * lowpass).abs())
    normalised = whitened / (0.2 + local_std)
    return normalised[:, pad:-pad, pad:-pad]


def gist(greys: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
    """GIST (N, scales * orientations * 16) of grey images (N, S, S) with intensities 0..255."""
    size = greys.shape[-1]
    bank = gabor_bank(size, device=greys.device) if bank is None else bank
    spectrum = torch.fft.fft2(_prefilter(greys))
    energy = torch.fft.ifft2(spectrum[:, None] * bank[None]).abs()  # (N, F, S, S)
    pooled = torch.nn.functional.adaptive_avg_pool2d(energy, GIST_GRID)
    return pooled.flatten(1)


def _grey_thumbnail(image: np.ndarray) -> np.ndarray:
    grey = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (GIST_SIZE, GIST_SIZE), interpolation=cv2.INTER_AREA)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def describe_images(images: list[np.ndarray], device="cpu") -> np.ndarray:
    """GIST + HOG descriptors (N, D) float32 of RGB uint8 (or grey) images of any sizes, unit L2 norm."""
    if len(images) == 0:
        return np.zeros((0, descriptor_length()), np.float32)
    thumbnails = np.stack([_grey_thumbnail(np.asarray(image)) for image in images])
    with torch.no_grad():
        greys = torch.as_tensor(thumbnails, device=device).float()
        gist_part = gist(greys).cpu().numpy().astype(np.float64)
    hog_part = np.stack(
        [hog(t, orientations=9, pixels_per_cell=(HOG_CELL, HOG_CELL), cells_per_block=(2, 2)) for t in thumbnails]
    )
    return (np.concatenate([_unit(gist_part), _unit(hog_part)], axis=1) / np.sqrt(2.0)).astype(np.float32)


DESCRIPTOR_STAGE = Stage("descriptor", 1, keep_in_memory=True)


def descriptors_for(ws: Workspace, entries: list[ImageEntry]) -> np.ndarray:
    """GIST + HOG descriptors (N, D) of the entries, cached; the missing ones are computed in one batch."""

    def compute(indices: list[int]) -> list[Descriptor]:
        return [Descriptor(row) for row in describe_images([entries[i].image for i in indices], ws.device)]

    found = ws.run_batch(DESCRIPTOR_STAGE, [[entry.hash] for entry in entries], {}, compute, Descriptor)
    return np.stack([d.descriptor for d in found]) if found else np.zeros((0, descriptor_length()), np.float32)


def descriptor_length() -> int:
    cells = GIST_SIZE // HOG_CELL - 1
    return GIST_SCALES * GIST_ORIENTATIONS * GIST_GRID**2 + cells * cells * 4 * 9


@dataclass(frozen=True)
class Neighbour:
    """A retrieved pool image: its position in the pool given to the index, name, content hash, distance."""

    index: int
    name: str
    hash: str
    distance: float


class RetrievalIndex:
    """Nearest-neighbour search over a pool of descriptors: exact on torch, or faiss (exact L2) for large pools.

    Pool entries with the same content hash are kept once (the first one).
    """

    def __init__(
        self,
        descriptors: np.ndarray,
        hashes: list[str],
        names: list[str] | None = None,
        device="cpu",
        faiss_above: int = FAISS_ABOVE,
    ):
        descriptors = np.asarray(descriptors, dtype=np.float32)
        names = list(names) if names is not None else list(hashes)
        if not (len(descriptors) == len(hashes) == len(names)):
            raise ValueError(f"{len(descriptors)} descriptors, {len(hashes)} hashes and {len(names)} names")
        seen: dict[str, int] = {}
        for position, content in enumerate(hashes):
            seen.setdefault(content, position)
        self.positions = np.asarray(sorted(seen.values()), dtype=np.int64)
        self.duplicates = [names[i] for i in range(len(hashes)) if seen[hashes[i]] != i]
        self.hashes = [hashes[i] for i in self.positions]
        self.names = [names[i] for i in self.positions]
        self.descriptors = descriptors[self.positions]
        self.device = device
        self._faiss = None
        if len(self.positions) > faiss_above:
            import faiss

            self._faiss = faiss.IndexFlatL2(self.descriptors.shape[1])
            self._faiss.add(np.ascontiguousarray(self.descriptors))
        else:
            self._pool = torch.as_tensor(self.descriptors, device=device)

    def __len__(self) -> int:
        return len(self.positions)

    def _nearest(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        if self._faiss is not None:
            distances, rows = self._faiss.search(query[None].astype(np.float32), count)
            return rows[0], np.sqrt(np.maximum(distances[0], 0.0))
        distances = torch.cdist(torch.as_tensor(query[None], device=self.device), self._pool)[0]
        values, rows = torch.topk(distances, count, largest=False)
        return rows.cpu().numpy(), values.cpu().numpy()

    def neighbours(self, descriptor: np.ndarray, k: int = NEIGHBOURS, exclude_hashes=()) -> list[Neighbour]:
        """The ``k`` nearest pool images, nearest first, never one whose content hash is in ``exclude_hashes`` (pass
        the query image's own hash) nor one with the query's exact pixels. A pool that has fewer gives what it has,
        with a warning."""
        excluded = set(exclude_hashes)
        count = min(len(self), k + sum(h in excluded for h in self.hashes) + 5)
        found: list[Neighbour] = []
        if count > 0:
            rows, distances = self._nearest(np.asarray(descriptor, np.float32), count)
            for row, distance in zip(rows, distances):
                if row < 0 or self.hashes[row] in excluded or distance <= DUPLICATE_DISTANCE:
                    continue
                found.append(Neighbour(int(self.positions[row]), self.names[row], self.hashes[row], float(distance)))
                if len(found) == k:
                    break
        if len(found) < k:
            log.warning(f"retrieval pool has only {len(found)} usable images for {k} neighbours; using those")
        return found
