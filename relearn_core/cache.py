"""On-disk cache of per-image and per-pair artefacts.

An entry is keyed by (content hashes of the images involved, stage name, stage parameters), stored as one
compressed ``.npz`` file written atomically, so a second run reuses it and an interrupted run resumes where it stopped.
The cache folder is ``$RELEARN_CACHE`` or ``~/.cache/relearn``; on a cluster, a folder every worker reaches. Only the
stage runner (relearn_core/workspace.py) reads and writes entries.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .imageio import atomic_write_bytes


def default_cache_dir() -> Path:
    return Path(os.environ.get("RELEARN_CACHE", Path.home() / ".cache" / "relearn"))


class Cache:
    """A folder of ``<stage>/<key>.npz`` entries. ``Cache(None)`` disables caching (everything is recomputed)."""

    def __init__(self, root: str | os.PathLike | None = ...):
        self.root = default_cache_dir() if root is ... else (Path(root) if root is not None else None)
        # one lock per entry: images processed side by side often need the same neighbour's entry at the same time,
        # and one of them computes it while the other waits for it
        self._entry_locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def __getstate__(self) -> dict:  # a worker process gets the folder, and locks of its own
        return {"root": self.root}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    @staticmethod
    def key(hashes: tuple[str, ...] | list[str], params: dict) -> str:
        text = json.dumps({"inputs": list(hashes), "params": params}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def path(self, stage: str, hashes, params: dict) -> Path | None:
        if self.root is None:
            return None
        return self.root / stage / f"{self.key(hashes, params)}.npz"

    def load(self, stage: str, hashes, params: dict) -> dict[str, np.ndarray] | None:
        """The arrays of this entry, or None when it is absent or damaged (a damaged entry is removed, not trusted)."""
        path = self.path(stage, hashes, params)
        if path is None or not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)
            return None

    def get_or_compute(self, stage: str, hashes, params: dict, compute: Callable[[], dict[str, np.ndarray]]):
        """Return the cached arrays of this entry, computing and storing them first when absent or unreadable."""
        arrays = self.load(stage, hashes, params)
        if arrays is not None:
            return arrays
        path = self.path(stage, hashes, params)
        if path is None:
            return compute()
        with self._locks_guard:
            lock = self._entry_locks.setdefault(path, threading.Lock())
        with lock:
            arrays = self.load(stage, hashes, params)  # written by another thread while this one waited
            if arrays is not None:
                return arrays
            arrays = compute()
            atomic_write_bytes(path, npz_bytes(arrays))
        return arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as a compressed ``.npz`` (what ``np.load`` reads), deflated at level 1: float data shrinks about as
    much as at numpy's default level 6, for a fraction of the compute every cache write costs."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, values in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(values), allow_pickle=False)
    return buffer.getvalue()
