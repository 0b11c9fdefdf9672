"""relearn: salient object detection via multiple instance joint re-learning (Ma et al., IEEE TMM).

The Python API (relearn_core/api.py) is importable from here: ``train``, ``wrap``, ``predict``, ``knowledge_maps``,
``save_checkpoint``,
``load_checkpoint``, ``RelearnConfig``, ``Workspace``, ``make_executor``. It loads on first use, so that the command
line starts without importing torch.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("relearn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_API = {
    "train": "api",
    "wrap": "api",
    "predict": "api",
    "knowledge_maps": "api",
    "prepare_pool": "api",
    "RunReport": "api",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "default_checkpoint": "checkpoint",
    "Relearner": "checkpoint",
    "RelearnConfig": "config",
    "Workspace": "workspace",
    "make_executor": "executors",
}


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'relearn_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
