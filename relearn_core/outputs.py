"""Where the commands write: never over or inside an input, only where writing works (checked before any work), and
never into a folder of maps made with other settings.

A folder of maps carries a manifest (``.relearn-output.json``): the settings that made its maps (command, base,
adapter version, options, checkpoint digest, configuration, relearn version). A rerun with the same settings resumes;
other settings stop with one line naming what differs; ``--overwrite`` replaces the maps.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import InputError
from .imageio import atomic_write_bytes, list_by_stem, unwritable

MANIFEST_NAME = ".relearn-output.json"


def refuse_overlap(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """InputError when ``output`` is one of ``inputs`` (files or folders) or lies inside one of them."""
    written = Path(output).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if written == source:
            raise InputError(output, "is one of this command's inputs: relearn never writes over its inputs")
        if source in written.parents:
            raise InputError(output, f"is inside the input {given}: relearn never writes inside its inputs")


def probe_writable(path: str | os.PathLike, folder: bool) -> None:
    """InputError now, before any work, when ``path`` (a folder to fill, or a file) cannot be written: the folder
    (or the file's folder) is created with its parents, and a temporary file is made and removed in it."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise InputError(path, "exists and is not a folder")
    if not folder and path.is_dir():
        raise InputError(path, "is a folder; a file name was expected")
    place = path if folder else path.parent
    try:
        place.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=place, prefix=".relearn-probe-"):
            pass
    except OSError as exc:
        raise unwritable(path, exc) from None


def map_settings(command: str, adapter, options: Mapping, **more) -> dict:
    """What makes a folder's maps what they are, kept in its manifest: the command, the base (``adapter``, a
    ``plugins.Adapter``) and its version, the user's options, relearn's version, and whatever else fixes them."""
    from . import __version__

    return {
        "command": command,
        "base": adapter.name,
        "adapter_version": adapter.source.version,
        "options": dict(options),
        "relearn_version": __version__,
        **more,
    }


def _differences(before: Mapping, now: Mapping) -> list[str]:
    keys = sorted(set(before) | set(now))
    return [f"{key} {before.get(key)!r} there, {now.get(key)!r} now" for key in keys if before.get(key) != now.get(key)]


def claim_map_folder(folder: str | os.PathLike, settings: Mapping, overwrite: bool) -> bool:
    """Make ``folder`` the home of maps made with ``settings`` (JSON-able). Returns True when its maps may be kept
    (same settings: the run resumes), False when every map is to be written again (``overwrite``); raises InputError
    when it holds maps of other or unrecorded settings and ``overwrite`` is not given."""
    folder = Path(folder)
    settings = json.loads(json.dumps(dict(settings), default=str))
    manifest = folder / MANIFEST_NAME
    maps = list_by_stem(folder) if folder.is_dir() else {}
    before = None
    if manifest.is_file():
        try:
            before = json.loads(manifest.read_text())
        except (OSError, ValueError):
            before = {"manifest": "unreadable"}
    if before == settings and not overwrite:
        return True
    if not overwrite:
        if before is not None:
            differ = "; ".join(_differences(before, settings))
            raise InputError(
                folder,
                f"holds maps made with other settings ({differ}): use --overwrite to replace them, or another --out",
            )
        if maps:
            raise InputError(
                folder,
                f"holds {len(maps)} maps whose settings relearn did not record: use --overwrite to replace them, "
                "or another --out",
            )
    atomic_write_bytes(manifest, json.dumps(settings, indent=2, sort_keys=True).encode())
    return not overwrite
