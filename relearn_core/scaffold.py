"""``relearn adapters new NAME``: write the skeleton of an installable adapter package.

The package works as written: its adapter computes frequency-tuned saliency (Achanta et al., CVPR 2009: distance of
each blurred Lab pixel from the image's mean Lab colour), a few lines to replace with your own model. It has a
pyproject with the ``relearn.adapters`` entry point, the hook module, and a test that passes.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from .errors import InputError, RelearnError
from .plugins import ENTRY_POINT_GROUP

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "relearn-{dist}"
version = "0.1.0"
description = "relearn adapter '{name}': a base saliency model for relearn"
requires-python = ">=3.10"
dependencies = ["relearn", "numpy", "scipy", "scikit-image"]

[project.optional-dependencies]
test = ["pytest"]

# relearn finds the adapter through this entry-point group once the package is installed (pip install -e .)
[project.entry-points."{group}"]
{name} = "{module}"

[tool.setuptools]
py-modules = ["{module}"]

[tool.pytest.ini_options]
pythonpath = ["."]
"""

MODULE = '''"""relearn adapter '{name}'.

relearn calls the two hooks below: ``relearn_adapters`` once to learn the adapter's name, and ``relearn_predict``
with batches of RGB uint8 images. Replace ``saliency`` with your model; keep its contract: one float32 map per image,
the image's height and width, values in [0, 1]. Raise an exception for an image you cannot predict.
"""

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.color import rgb2lab

from relearn_core.hookspecs import AdapterInfo, hookimpl

NAME = "{name}"
__version__ = "0.1.0"


@hookimpl
def relearn_adapters():
    return [
        AdapterInfo(
            name=NAME,
            description="frequency-tuned saliency (replace with your model)",
            paper="Frequency-tuned Salient Region Detection. R. Achanta, S. Hemami, F. Estrada, S. Susstrunk",
            venue="CVPR",
            year=2009,
            predicts_from="algorithm",
            options={{"blur_sigma": 1.0}},
        )
    ]


def saliency(image: np.ndarray, blur_sigma: float = 1.0) -> np.ndarray:
    """Saliency of one RGB uint8 image: float32 (H, W) in [0, 1]."""
    lab = rgb2lab(image)
    blurred = np.stack([gaussian_filter(lab[..., c], blur_sigma) for c in range(3)], axis=-1)
    distance = np.linalg.norm(blurred - lab.reshape(-1, 3).mean(axis=0), axis=-1)
    return (distance / max(float(distance.max()), 1e-12)).astype(np.float32)


@hookimpl
def relearn_predict(adapter, images, names, options):
    return [saliency(image, float(options.get("blur_sigma", 1.0))) for image in images]
'''

TEST = """import numpy as np

import {module}


def _square_on_grey(size=64):
    image = np.full((size, size + 16, 3), 128, dtype=np.uint8)
    image[20:44, 30:54] = (220, 30, 30)
    return image


def test_declares_its_adapter():
    assert [info.name for info in {module}.relearn_adapters()] == ["{name}"]


def test_maps_have_the_image_size_and_range_and_find_the_object():
    image = _square_on_grey()
    (saliency,) = {module}.relearn_predict(adapter="{name}", images=[image], names=["square"], options={{}})
    assert saliency.shape == image.shape[:2] and saliency.dtype == np.float32
    assert 0.0 <= saliency.min() and saliency.max() <= 1.0
    inside = np.zeros(image.shape[:2], bool)
    inside[20:44, 30:54] = True
    assert saliency[inside].mean() > saliency[~inside].mean() + 0.3
"""


def scaffold_adapter(name: str, folder: str | Path) -> list[Path]:
    """Write a new adapter package called ``relearn-NAME`` into ``folder`` (created; must be empty). Returns its
    files."""
    if not NAME_PATTERN.match(name) or keyword.iskeyword(name):
        raise RelearnError(f"adapter name {name!r}: use lower-case letters, digits and _, starting with a letter")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(folder, "exists and is not an empty folder; choose a new one")
    module = f"relearn_{name}"
    values = {"name": name, "module": module, "dist": name.replace("_", "-"), "group": ENTRY_POINT_GROUP}
    files = {
        folder / "pyproject.toml": PYPROJECT.format(**values),
        folder / f"{module}.py": MODULE.format(**values),
        folder / "tests" / f"test_{name}.py": TEST.format(**values),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)
