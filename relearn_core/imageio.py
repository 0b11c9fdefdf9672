"""Reading and writing images, saliency maps and masks; matching files by stem; atomic writes.

Every stage reads its inputs through these functions so that bad files fail the same way everywhere:
an :class:`~relearn_core.errors.InputError` whose message names the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def list_by_stem(folder: str | os.PathLike, suffix: str = "") -> dict[str, Path]:
    """Map file stem -> path for the image files in ``folder``.

    ``suffix`` is a part of the stem to strip (for maps named ``<id>_dss.png`` pass ``"_dss"``).
    Raises InputError when the folder does not exist or two files share a stem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = path.stem
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[: -len(suffix)]
        if stem in found:
            raise InputError(path, f"two files with the stem {stem!r} (also {found[stem].name})")
        found[stem] = path
    return found


def images_in(folder: str | os.PathLike) -> dict[str, Path]:
    """Map file stem -> path for the images of ``folder``, or of its ``images/`` subfolder when the folder holds none
    itself (the layout of a data set). Raises InputError when there are none."""
    folder = Path(folder)
    found = list_by_stem(folder)
    if not found and (folder / "images").is_dir():
        found = list_by_stem(folder / "images")
    if not found:
        raise InputError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or in an images/ subfolder")
    return found


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot be read as an image ({type(exc).__name__})") from None
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB image as uint8 (H, W, 3); grey, palette and RGBA images are converted (alpha is dropped)."""
    path = Path(path)
    image = _open(path)
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if array.ndim != 3 or min(array.shape[:2]) < 1:
        raise InputError(path, f"unexpected image shape {array.shape}")
    return array


def _to_grey_float(path: Path, image: Image.Image) -> np.ndarray:
    """Any single- or multi-channel image as float64 (H, W) scaled by its type's range (8 or 16 bit, float)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        return array / top
    if image.mode == "F":
        return np.asarray(image, dtype=np.float64)
    if image.mode == "1":
        return np.asarray(image, dtype=np.float64)
    if image.mode != "L":
        image = image.convert("RGBA" if "A" in image.mode else "RGB").convert("L")
    return np.asarray(image, dtype=np.float64) / 255.0


def read_map(path: str | os.PathLike) -> np.ndarray:
    """A saliency map as float64 (H, W) in [0, 1] (8- or 16-bit, grey or RGB). Rejects NaN."""
    path = Path(path)
    array = _to_grey_float(path, _open(path))
    if not np.isfinite(array).all():
        raise InputError(path, "map has NaN or infinite values")
    return np.clip(array, 0.0, 1.0)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A ground-truth mask as bool (H, W): foreground where the value is above half its range."""
    return read_map(path) > 0.5


def unwritable(path: str | os.PathLike, exc: OSError) -> InputError:
    """The one-line error for a path the operating system refused to write."""
    return InputError(path, f"cannot be written ({exc.strerror or type(exc).__name__})")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, so a reader never sees half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise unwritable(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile: one line, the old file intact
        Path(tmp).unlink(missing_ok=True)
        raise unwritable(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize with area averaging when shrinking (no aliasing) and bilinear interpolation when enlarging: the one rule
    for every network input, so a backbone sees what its adapter feeds the same network."""
    if image.shape[:2] == (height, width):
        return image
    import cv2  # loaded with the first image, so that relearn starts fast

    shrinking = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def network_map(prediction: np.ndarray, shape: tuple[int, int], minmax: bool = True) -> np.ndarray:
    """A network's probability map (h, w) as an image's saliency map: min-max normalised when asked (a constant map
    becomes 0), resized bilinearly to ``shape`` (height, width), float32 in [0, 1]. The one rule for an adapter's
    map and the backbone's own map, which must match."""
    import cv2

    prediction = np.asarray(prediction, dtype=np.float32)
    if minmax:
        low, high = float(prediction.min()), float(prediction.max())
        prediction = (prediction - low) / (high - low) if high > low else np.zeros_like(prediction)
    resized = cv2.resize(prediction, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def eight_bit(saliency: np.ndarray) -> np.ndarray:
    """A float map in [0, 1] as the uint8 values a written map holds."""
    return np.round(np.clip(saliency, 0, 1) * 255).astype(np.uint8)


def write_map(path: str | os.PathLike, saliency: np.ndarray) -> None:
    """Write a float map in [0, 1] as an 8-bit grey PNG, atomically."""
    import io

    saliency = np.asarray(saliency, dtype=np.float64)
    if saliency.ndim != 2 or not np.isfinite(saliency).all():
        raise InputError(path, f"refusing to write a map of shape {saliency.shape} or with NaN values")
    buffer = io.BytesIO()
    Image.fromarray(eight_bit(saliency), mode="L").save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex, first 16 characters): the key of every per-image cache entry."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
