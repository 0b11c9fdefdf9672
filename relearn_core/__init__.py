"""relearn: salient object detection via multiple instance joint re-learning (Ma et al., IEEE TMM)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("relearn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
