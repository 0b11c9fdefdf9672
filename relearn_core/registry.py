"""The registry of base models (``registry.yaml``): the published baselines and the user's named networks.

The file lives at the repository root; ``relearn_core/registry.yaml`` links to it so that it is package data of
``relearn_core`` and travels inside a built wheel. ``$RELEARN_REGISTRY`` names an extra registry of the user's, whose
entries are added to the built-in ones.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

NETWORK_FORMATS = ("onnx", "torchscript")
USER_REGISTRY_ENV = "RELEARN_REGISTRY"


@dataclass(frozen=True)
class PublishedScore:
    """A method's published max F-measure and MAE on one dataset."""

    max_f: float
    mae: float


@dataclass(frozen=True)
class Baseline:
    """A published method whose released saliency maps relearn reads."""

    name: str  #: the ``--base`` name (lower case)
    display: str  #: the name as printed in tables, e.g. "DSS"
    tag: str  #: the paper's label, e.g. "DSS17"
    full_name: str  #: the method's paper title
    authors: str
    venue: str
    year: int
    suffix: str  #: map file name = image stem + suffix + extension
    extension: str
    published: Mapping[str, PublishedScore] = field(default_factory=dict)  #: dataset -> score
    note: str = ""


@dataclass(frozen=True)
class NetworkBase:
    """An exported network the user named as a base (served by the generic ``onnx``/``torchscript`` adapters)."""

    name: str
    format: str  #: "onnx" or "torchscript"
    model: Path  #: absolute path of the model file
    options: Mapping[str, Any] = field(default_factory=dict)  #: input_size, mean, std, channel_order, output, sigmoid
    description: str = ""


@dataclass(frozen=True)
class Registry:
    baselines: tuple[Baseline, ...]
    networks: tuple[NetworkBase, ...]
    published_source: str
    paths: tuple[Path, ...]  #: the files it was read from
    #: the re-learner's default configuration (fields of RelearnConfig, nested as in a --config file); a user
    #: registry's entries are laid over the built-in ones
    relearn: Mapping[str, Any] = field(default_factory=dict)

    def baseline(self, name: str) -> Baseline | None:
        return next((entry for entry in self.baselines if entry.name == name.lower()), None)


def builtin_registry_path() -> Path:
    """The packaged ``registry.yaml`` (beside the sources in a checkout, inside the package in a wheel)."""
    return Path(str(resources.files("relearn_core") / "registry.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "registry file not found") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, "a registry must be a mapping with 'baselines' and/or 'networks'")
    return data


def _require(path: Path, entry: str, values: Mapping, key: str, kind: type):
    if key not in values:
        raise InputError(path, f"entry {entry!r} has no {key!r}")
    value = values[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InputError(path, f"entry {entry!r}: {key!r} must be a {kind.__name__}, not {value!r}")
    return value


def _parse_baseline(path: Path, name: str, values: Any) -> Baseline:
    if not isinstance(values, dict):
        raise InputError(path, f"baseline {name!r} must be a mapping")
    maps = values.get("maps") or {}
    published = {}
    for dataset, score in (values.get("published") or {}).items():
        try:
            published[str(dataset)] = PublishedScore(max_f=float(score["max_f"]), mae=float(score["mae"]))
        except (TypeError, KeyError, ValueError):
            raise InputError(
                path, f"baseline {name!r}: published score for {dataset!r} needs numbers max_f and mae"
            ) from None
    return Baseline(
        name=str(name).lower(),
        display=str(values.get("display", name)),
        tag=str(values.get("tag", "")),
        full_name=_require(path, name, values, "full_name", str),
        authors=str(values.get("authors", "")),
        venue=_require(path, name, values, "venue", str),
        year=_require(path, name, values, "year", int),
        suffix=str(maps.get("suffix", "")),
        extension=str(maps.get("extension", ".png")),
        published=published,
        note=str(values.get("note", "")),
    )


def _parse_network(path: Path, values: Any) -> NetworkBase:
    if not isinstance(values, dict):
        raise InputError(path, f"network entry {values!r} must be a mapping")
    name = _require(path, values.get("name", "?"), values, "name", str)
    fmt = _require(path, name, values, "format", str).lower()
    if fmt not in NETWORK_FORMATS:
        raise InputError(path, f"network {name!r}: format must be one of {', '.join(NETWORK_FORMATS)}, not {fmt!r}")
    model = Path(_require(path, name, values, "model", str)).expanduser()
    if not model.is_absolute():
        model = path.parent / model
    options = {key: value for key, value in values.items() if key not in ("name", "format", "model", "description")}
    return NetworkBase(
        name=name.lower(), format=fmt, model=model, options=options, description=str(values.get("description", ""))
    )


def _parse(path: Path) -> Registry:
    data = _read_yaml(path)
    baselines = data.get("baselines") or {}
    networks = data.get("networks") or []
    if not isinstance(baselines, dict):
        raise InputError(path, "'baselines' must be a mapping of name -> entry")
    if not isinstance(networks, list):
        raise InputError(path, "'networks' must be a list of entries")
    relearn = data.get("relearn") or {}
    if not isinstance(relearn, dict):
        raise InputError(path, "'relearn' must be a mapping of re-learner configuration fields")
    return Registry(
        baselines=tuple(_parse_baseline(path, name, values) for name, values in baselines.items()),
        networks=tuple(_parse_network(path, values) for values in networks),
        published_source=str(data.get("published_source", "")),
        paths=(path,),
        relearn=relearn,
    )


def _version(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


@functools.lru_cache(maxsize=8)
def _load(paths: tuple[Path, ...], versions: tuple[int, ...]) -> Registry:
    """The merged registry of ``paths``; ``versions`` (modification times) make an edited file be read again."""
    parts = [_parse(path) for path in paths]
    merged = Registry(
        baselines=tuple(entry for part in parts for entry in part.baselines),
        networks=tuple(entry for part in parts for entry in part.networks),
        published_source=parts[0].published_source,
        paths=paths,
        relearn={key: value for part in parts for key, value in part.relearn.items()},
    )
    seen: dict[str, Path] = {}
    for part in parts:
        for entry in (*part.baselines, *part.networks):
            if entry.name in seen:
                raise InputError(
                    part.paths[0], f"registry name {entry.name!r} is already defined in {seen[entry.name]}"
                )
            seen[entry.name] = part.paths[0]
    return merged


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """The built-in registry plus ``$RELEARN_REGISTRY`` (or exactly the file ``path`` when given)."""
    if path is not None:
        paths = [Path(path).resolve()]
    else:
        paths = [builtin_registry_path().resolve()]
        user = os.environ.get(USER_REGISTRY_ENV)
        if user:
            paths.append(Path(user).expanduser().resolve())
    return _load(tuple(paths), tuple(_version(path) for path in paths))
