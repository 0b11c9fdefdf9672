"""Where the project's shared benchmark data lives: ``$RELEARN_DATA``, else ``../shared/data`` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError


def shared_data_dir() -> Path:
    """The data folder holding SOD/, GrabCut/ and BSDS500-pool/. Raises InputError naming the path when absent."""
    configured = os.environ.get("RELEARN_DATA")
    path = Path(configured) if configured else Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if not (path / "SOD").is_dir():
        raise InputError(
            path, "shared data not found (set RELEARN_DATA to the folder holding SOD/, GrabCut/, BSDS500-pool/)"
        )
    return path
