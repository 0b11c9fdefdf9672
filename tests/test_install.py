"""The environment the README's set-up command builds."""

import importlib.metadata as metadata
import shutil
import subprocess
import sys

OPENCV_DISTRIBUTIONS = {
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
}


def test_exactly_one_opencv_distribution_and_it_has_contrib():
    installed = {dist.metadata["Name"].lower() for dist in metadata.distributions()} & OPENCV_DISTRIBUTIONS
    assert installed == {"opencv-contrib-python-headless"}
    import cv2

    assert hasattr(cv2, "ximgproc"), "cv2 was overwritten by a build without the contrib modules"


def test_console_script_reports_version():
    relearn = shutil.which("relearn") or str(__import__("pathlib").Path(sys.executable).parent / "relearn")
    out = subprocess.run([relearn, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("relearn, version ")


def test_adapters_package_installed_under_its_own_name():
    import relearn_adapters

    assert hasattr(relearn_adapters, "BUILTIN_MODULES")
