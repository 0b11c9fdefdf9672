"""The comparison tables and curves of the paper (Tables II/III, Figs. 9/10, Fig. 11) from folders of maps:
``relearn table``.

A YAML file names the datasets, the base models and which re-learned variants Our(X) to produce::

    metrics: [max_f, mae, auc]        # optional: any score of `relearn eval` (default max_f, mae, auc)
    resize: false                     # optional: resize maps to their masks instead of skipping them
    folders: {data: ../data}          # optional: names usable as {data} in every path below
    maps: "{root}/maps/{base}"        # optional: where a base's maps are, per dataset (this is the default)
    adapters: [my_adapter.py]         # optional: adapter files (as `--adapter`)
    device: auto                      # optional: cpu, cuda, auto
    datasets:
      SOD: {root: "{data}/SOD"}       # a folder with images/ and gt/
      ECSSD: {root: "{data}/ECSSD", images: images, gt: ground_truth_mask}   # other sub-folder names
      OLD: data/OLD/gt                # short for {gt: data/OLD/gt} (no images: no base is run on it)
    bases:                            # default (no `bases` and no `methods`): the seven baselines of the paper
      DSS: {}                         # the adapter `dss` reading its maps from the `maps` pattern above
      Amulet: "{root}/maps/Amulet"    # short for {maps: ...}; or a folder per dataset: {maps: {SOD: ..., ...}}
      U2-Net-p: {adapter: u2netp}     # an adapter that computes maps: they are predicted into OUT/maps/
    methods:                          # other methods, scored from their maps only
      Mine: {maps: "runs/{dataset}", suffix: _mine, prefix: ""}
    relearn:                          # the Our(X) variants (section absent: none)
      variants: [DSS, U2-Net-p]       # default: every base
      train: SOD                      # a dataset above (k-fold: no image is scored by a model trained on it) or
                                      # {images: DIR, gt: DIR}; a base may override any key in its own `relearn:`
      folds: 5
      seed: 0
      pool: ["{data}/extra/images"]   # extra unlabelled pool folders
      config: {joint: {epochs: 20}}   # overrides of relearn_core.pipeline.RelearnConfig
      checkpoint: null                # a trained checkpoint to use instead of training
    ablation: {base: DSS, datasets: [SOD]}   # Fig. 11's components, drawn with `--ablation`

Relative paths are relative to the YAML file (a dataset's ``images``/``gt`` to its ``root``); ``{dataset}``,
``{base}`` and ``{root}`` are replaced in map paths. ``datasets`` and ``methods`` may instead name a dataset JSON
and a method JSON of PySODEvalToolkit, read as they are (paths in them relative to the JSON file).

Each cell is :func:`relearn_core.evaluation.evaluate.evaluate_folders` on that method's folder for that dataset, so it
equals
``relearn eval`` on the same maps. A method named ``Our(X)`` is drawn solid in the colour of ``X``, drawn dashed.
An unknown key, dataset or base is an error naming the line of the YAML file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from ..errors import InputError, RelearnError
from ..imageio import IMAGE_SUFFIXES, atomic_write_bytes
from ..outputs import refuse_overlap
from .evaluate import DEFINITIONS, SCORE_KEYS, EvalReport, evaluate_folders
from .metrics import SCORES

DEFAULT_METRICS = ("max_f", "mae", "auc")
LOWER_IS_BETTER = frozenset(key for key, score in SCORES.items() if score.lower_is_better)
METRIC_LABELS = {key: score.label for key, score in SCORES.items()}
RANK_COLOURS = ("red", "green", "blue")
"""LaTeX colours of the first, second and third value of a column, as in the paper's tables."""

PAPER_BASES = ("MDF", "DSS", "SRM", "RADF", "RFCN", "BRN", "PAGRN")
"""The seven deep baselines of the paper's Tables II/III: the bases when a config names neither bases nor methods."""
DEFAULT_MAPS = "{root}/maps/{base}"

_TOP_KEYS = frozenset(
    {
        "metrics",
        "resize",
        "datasets",
        "methods",
        "bases",
        "relearn",
        "ablation",
        "adapters",
        "device",
        "folders",
        "maps",
    }
)
_DATASET_KEYS = frozenset({"root", "images", "gt"})
_METHOD_KEYS = frozenset({"maps", "suffix", "prefix"})
_BASE_KEYS = frozenset({"adapter", "maps", "options", "relearn"})
_TRAIN_KEYS = frozenset({"root", "images", "gt", "maps"})
_RELEARN_KEYS = frozenset({"train", "folds", "seed", "pool", "config", "checkpoint"})
_TOP_RELEARN_KEYS = _RELEARN_KEYS | {"variants"}
_ABLATION_KEYS = frozenset({"base", "datasets"})
_PLACEHOLDERS = frozenset({"dataset", "base", "root"})
_OUR = re.compile(r"^Our\((?P<base>.+)\)$")


def our_name(base: str) -> str:
    return f"Our({base})"


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark dataset: its name, ground-truth folder and (for running bases) its images folder."""

    name: str
    gt: Path
    images: Path | None = None
    root: Path | None = None  #: the dataset folder, when the config gave one
    mask_prefix: str = ""
    mask_suffix: str = ""
    line: int = 0  #: its line in the config (0: not from a YAML file)


@dataclass(frozen=True)
class MethodSpec:
    """A method: its name and, per dataset name, the folder of its maps (file stem = prefix + image stem + suffix)."""

    name: str
    maps: dict[str, Path]
    suffix: str = ""
    prefix: str = ""

    @property
    def base_name(self) -> str | None:
        """``X`` for a method named ``Our(X)``, else None."""
        match = _OUR.match(self.name)
        return match.group("base") if match else None


@dataclass(frozen=True)
class RelearnSpec:
    """How one base's re-learner is trained: on a dataset of the table (k-fold) or on a labelled folder."""

    train: str | None = None  #: a dataset of the table: k-fold on it
    train_images: Path | None = None
    train_gt: Path | None = None
    train_maps: Path | None = None  #: the base's maps of the training images (a base that reads maps)
    folds: int = 5
    seed: int = 0
    pool: tuple[Path, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)  #: RelearnConfig overrides
    checkpoint: Path | None = None  #: use this trained checkpoint instead of training


@dataclass(frozen=True)
class BaseSpec:
    """A base model X of the table: its adapter, its maps per dataset (maps-based adapters) and its re-learning."""

    name: str  #: the table's row name
    adapter: str
    maps: dict[str, Path]  #: per dataset; empty for an adapter that computes its maps
    computes: bool  #: the adapter predicts maps from images (else it reads ``maps``)
    options: Mapping[str, Any] = field(default_factory=dict)
    relearn: RelearnSpec | None = None  #: None: no Our(X)
    line: int = 0


@dataclass(frozen=True)
class AblationSpec:
    """Fig. 11: the components C1..C6 of one base's re-learning, curves averaged over some datasets."""

    base: str
    datasets: tuple[str, ...]


@dataclass(frozen=True)
class TableConfig:
    """A parsed table config."""

    path: Path
    datasets: tuple[DatasetSpec, ...]
    methods: tuple[MethodSpec, ...]
    metrics: tuple[str, ...] = DEFAULT_METRICS
    resize: bool = False
    bases: tuple[BaseSpec, ...] = ()
    ablation: AblationSpec | None = None
    adapter_files: tuple[Path, ...] = ()
    device: str = "auto"

    def with_metrics(self, metrics) -> TableConfig:
        return replace(self, metrics=_check_metrics(_Source(self.path), list(metrics)))

    def dataset(self, name: str) -> DatasetSpec:
        return next(dataset for dataset in self.datasets if dataset.name == name)


class _Source:
    """A config file and the line of each of its keys, so that an error names the line."""

    def __init__(self, path: Path, lines: Mapping[tuple, int] | None = None, base: Path | None = None):
        self.path = path
        self.lines = dict(lines or {})
        self.base = base if base is not None else Path(os.path.abspath(path.parent))

    def line(self, keys) -> int:
        keys = tuple(str(key) for key in keys)
        while keys:
            if keys in self.lines:
                return self.lines[keys]
            keys = keys[:-1]
        return 0

    def error(self, keys, problem: str) -> InputError:
        line = self.line(keys)
        return InputError(self.path, f"line {line}: {problem}" if line else problem)


def _key_lines(node, prefix: tuple = ()) -> dict[tuple, int]:
    """The line (1-based) of every mapping key and sequence item of a composed YAML document, by its key path."""
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*prefix, str(index))
            lines[key] = item.start_mark.line + 1
            lines.update(_key_lines(item, key))
    return lines


def _check_metrics(source: _Source, metrics) -> tuple[str, ...]:
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise source.error(("metrics",), "'metrics' must be a non-empty list of score names")
    unknown = [m for m in metrics if m not in SCORE_KEYS]
    if unknown:
        index = metrics.index(unknown[0])
        raise source.error(("metrics", index), f"unknown metric {unknown[0]!r} (known: {', '.join(SCORE_KEYS)})")
    return tuple(metrics)


def _mapping(
    source: _Source, value, keys: tuple, where: str, allowed: frozenset[str] | None = None, what: str = "key"
) -> dict:
    """``value`` checked to be a mapping whose keys are all in ``allowed`` (any keys when None)."""
    if not isinstance(value, dict):
        raise source.error(keys, f"{where} must be a mapping")
    unknown = [] if allowed is None else [str(key) for key in value if str(key) not in allowed]
    if unknown:
        raise source.error(
            (*keys, unknown[0]),
            f"{where}: unknown {what} {unknown[0]!r} (known: {', '.join(sorted(allowed)) or 'none'})",
        )
    return {str(key): item for key, item in value.items()}


class _Paths:
    """Path strings of the config: ``{name}`` of ``folders`` and placeholders replaced, ``~`` and ``$VAR`` expanded,
    relative paths made absolute."""

    def __init__(self, source: _Source, folders: Mapping[str, str]):
        self.source = source
        self.folders = dict(folders)

    def resolve(self, value, keys: tuple, where: str, relative_to: Path | None = None, **placeholders) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise self.source.error(keys, f"{where} must be a folder path")

        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name in placeholders and placeholders[name] is not None:
                return str(placeholders[name])
            if name in self.folders:
                return self.folders[name]
            known = sorted(set(self.folders) | {key for key, val in placeholders.items() if val is not None})
            raise self.source.error(keys, f"{where}: unknown placeholder {{{name}}} (known here: {', '.join(known)})")

        text = re.sub(r"\{([A-Za-z_][A-Za-z0-9_-]*)\}", substitute, value)
        folder = Path(os.path.expandvars(os.path.expanduser(text)))
        folder = (
            folder if folder.is_absolute() else (relative_to if relative_to is not None else self.source.base) / folder
        )
        return Path(os.path.normpath(folder))


def _read_yaml(path: Path) -> tuple[Any, _Source]:
    try:
        text = path.read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(path, f"not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be read ({type(exc).__name__})") from None
    return document, _Source(path, _key_lines(node) if node is not None else {})


def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON at line {exc.lineno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be read ({type(exc).__name__})") from None
    if not isinstance(document, dict):
        raise InputError(path, "a PySODEvalToolkit config must be a JSON object")
    return document


def _split_suffix(suffix: str) -> str:
    """A PySODEvalToolkit ``suffix`` (file-name ending, extension included) as the part of the stem it adds."""
    for extension in IMAGE_SUFFIXES:
        if suffix.lower().endswith(extension):
            return suffix[: -len(extension)]
    return suffix


def _pysod_entry(path: Path, entry, where: str) -> tuple[Path, str, str]:
    """(folder, stem prefix, stem suffix) of a PySODEvalToolkit ``{"path", "prefix", "suffix"}`` entry."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise InputError(path, f'{where} needs a "path" (a folder)')
    unknown = sorted(set(entry) - {"path", "prefix", "suffix"})
    if unknown:
        raise InputError(path, f"{where}: unknown key {unknown[0]!r} (known: path, prefix, suffix)")
    folder = Path(os.path.expandvars(os.path.expanduser(entry["path"])))
    folder = folder if folder.is_absolute() else path.parent / folder
    return folder, str(entry.get("prefix") or ""), _split_suffix(str(entry.get("suffix") or ""))


def pysod_datasets(path: Path) -> tuple[DatasetSpec, ...]:
    """The datasets of a PySODEvalToolkit dataset JSON: ``{NAME: {"image": {...}, "mask": {"path", "prefix",
    "suffix"}}}``."""
    datasets = []
    for name, entry in _read_json(path).items():
        if not isinstance(entry, dict) or "mask" not in entry:
            raise InputError(path, f'dataset {name!r} needs a "mask" entry')
        unknown = sorted(set(entry) - {"image", "mask"})
        if unknown:
            raise InputError(path, f"dataset {name!r}: unknown key {unknown[0]!r} (known: image, mask)")
        gt, prefix, suffix = _pysod_entry(path, entry["mask"], f'dataset {name!r} "mask"')
        images = _pysod_entry(path, entry["image"], f'dataset {name!r} "image"')[0] if "image" in entry else None
        datasets.append(DatasetSpec(str(name), gt, images, None, prefix, suffix))
    return tuple(datasets)


def pysod_methods(path: Path, datasets: list[str]) -> tuple[MethodSpec, ...]:
    """The methods of a PySODEvalToolkit method JSON: ``{METHOD: {DATASET: {"path", "prefix", "suffix"}}}``; datasets
    not in the table are ignored, as PySODEvalToolkit evaluates the datasets both files name."""
    methods = []
    for name, entry in _read_json(path).items():
        if not isinstance(entry, dict):
            raise InputError(path, f'method {name!r} must map dataset names to {{"path", "prefix", "suffix"}}')
        maps, affixes = {}, set()
        for dataset, spec in entry.items():
            folder, prefix, suffix = _pysod_entry(path, spec, f"method {name!r} dataset {dataset!r}")
            if dataset in datasets:
                maps[str(dataset)] = folder
                affixes.add((prefix, suffix))
        if len(affixes) > 1:
            raise InputError(
                path, f"method {name!r}: one prefix and suffix for all datasets is supported, found {sorted(affixes)}"
            )
        prefix, suffix = affixes.pop() if affixes else ("", "")
        methods.append(MethodSpec(str(name), maps, suffix, prefix))
    return tuple(methods)


def _datasets(source: _Source, paths: _Paths, entries) -> tuple[DatasetSpec, ...]:
    if isinstance(entries, str):
        return pysod_datasets(paths.resolve(entries, ("datasets",), "'datasets'"))
    entries = _mapping(source, entries, ("datasets",), "'datasets'")
    if not entries:
        raise source.error(("datasets",), "'datasets' names no dataset")
    datasets = []
    for name, entry in entries.items():
        keys = ("datasets", name)
        where = f"dataset {name!r}"
        entry = {"gt": entry} if isinstance(entry, str) else entry
        entry = _mapping(source, entry, keys, where, _DATASET_KEYS)
        root = paths.resolve(entry["root"], (*keys, "root"), f"{where}: 'root'") if "root" in entry else None
        if root is None and "gt" not in entry:
            raise source.error(keys, f"{where} needs 'root' (a folder with images/ and gt/) or 'gt'")
        gt = paths.resolve(entry.get("gt", "gt"), (*keys, "gt"), f"{where}: 'gt'", relative_to=root)
        images = None
        if root is not None or "images" in entry:
            images = paths.resolve(
                entry.get("images", "images"), (*keys, "images"), f"{where}: 'images'", relative_to=root
            )
        if root is not None and root.is_dir() and not gt.is_dir():
            shown = gt.relative_to(root) if gt.is_relative_to(root) else gt
            raise source.error(keys, f"{where}: {root} has no ground-truth folder {shown}/")
        datasets.append(DatasetSpec(name, gt, images, root, line=source.line(keys)))
    return tuple(datasets)


def _map_folders(source: _Source, paths: _Paths, value, keys: tuple, where: str, datasets, base: str) -> dict:
    """A method's or base's maps folder per dataset, from one pattern or a mapping dataset -> folder."""
    names = [dataset.name for dataset in datasets]
    if isinstance(value, str):
        return {
            dataset.name: paths.resolve(
                value, keys, where, dataset=dataset.name, base=base, root=dataset.root or dataset.gt.parent
            )
            for dataset in datasets
        }
    value = _mapping(source, value, keys, where, frozenset(names), what="dataset")
    return {
        dataset: paths.resolve(
            folder,
            (*keys, dataset),
            f"{where} {dataset!r}",
            dataset=dataset,
            base=base,
            root=(lambda d: d.root or d.gt.parent)(datasets[names.index(dataset)]),
        )
        for dataset, folder in value.items()
    }


def _affix(source: _Source, entry: dict, key: str, keys: tuple, where: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise source.error((*keys, key), f"{where}: {key!r} must be a string")
    return value


def _methods(source: _Source, paths: _Paths, entries, datasets) -> tuple[MethodSpec, ...]:
    if isinstance(entries, str):
        return pysod_methods(paths.resolve(entries, ("methods",), "'methods'"), [d.name for d in datasets])
    entries = _mapping(source, entries, ("methods",), "'methods'")
    methods = []
    for name, entry in entries.items():
        keys = ("methods", name)
        where = f"method {name!r}"
        entry = {"maps": entry} if isinstance(entry, str) else entry
        entry = _mapping(source, entry, keys, where, _METHOD_KEYS)
        if "maps" not in entry:
            raise source.error(keys, f"{where} needs 'maps'")
        folders = _map_folders(source, paths, entry["maps"], (*keys, "maps"), f"{where}: 'maps'", datasets, name)
        methods.append(
            MethodSpec(
                name,
                folders,
                _affix(source, entry, "suffix", keys, where),
                _affix(source, entry, "prefix", keys, where),
            )
        )
    return tuple(methods)


def _int(source: _Source, value, keys: tuple, where: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise source.error(keys, f"{where} must be an integer >= {minimum}")
    return value


def _relearn_spec(
    source: _Source, paths: _Paths, entry: dict, keys: tuple, where: str, datasets, base: str
) -> RelearnSpec:
    names = [dataset.name for dataset in datasets]
    spec = RelearnSpec()
    if "train" in entry:
        train = entry["train"]
        tkeys = (*keys, "train")
        if isinstance(train, str):
            if train not in names:
                raise source.error(tkeys, f"{where}: 'train': unknown dataset {train!r} (known: {', '.join(names)})")
            spec = replace(spec, train=train)
        else:
            train = _mapping(source, train, tkeys, f"{where}: 'train'", _TRAIN_KEYS)
            root = (
                paths.resolve(train["root"], (*tkeys, "root"), f"{where}: 'train' 'root'") if "root" in train else None
            )
            images = paths.resolve(
                train.get("images", "images"), (*tkeys, "images"), f"{where}: 'train' 'images'", relative_to=root
            )
            gt = paths.resolve(train.get("gt", "gt"), (*tkeys, "gt"), f"{where}: 'train' 'gt'", relative_to=root)
            same = [d.name for d in datasets if d.images is not None and d.images.resolve() == images.resolve()]
            # a training folder that is a dataset of the table is that dataset: it gets the k-fold protocol
            maps = (
                paths.resolve(train["maps"], (*tkeys, "maps"), f"{where}: 'train' 'maps'", relative_to=root, base=base)
                if "maps" in train
                else None
            )
            spec = (
                replace(spec, train=same[0])
                if same
                else replace(spec, train_images=images, train_gt=gt, train_maps=maps)
            )
    if "folds" in entry:
        spec = replace(spec, folds=_int(source, entry["folds"], (*keys, "folds"), f"{where}: 'folds'", 2))
    if "seed" in entry:
        spec = replace(spec, seed=_int(source, entry["seed"], (*keys, "seed"), f"{where}: 'seed'", 0))
    if "pool" in entry:
        pool = entry["pool"]
        pool = [pool] if isinstance(pool, str) else pool
        if not isinstance(pool, list):
            raise source.error((*keys, "pool"), f"{where}: 'pool' must be a folder or a list of folders")
        spec = replace(
            spec,
            pool=tuple(
                paths.resolve(folder, (*keys, "pool", index), f"{where}: 'pool'") for index, folder in enumerate(pool)
            ),
        )
    if "config" in entry:
        overrides = _mapping(source, entry["config"] or {}, (*keys, "config"), f"{where}: 'config'")
        from ..config import default_config

        try:
            default_config().with_overrides(overrides)
        except (RelearnError, TypeError) as exc:
            raise source.error((*keys, "config"), f"{where}: 'config': {exc}") from None
        spec = replace(spec, overrides=overrides)
    if entry.get("checkpoint") is not None:
        checkpoint = entry["checkpoint"]
        if not isinstance(checkpoint, str):
            raise source.error((*keys, "checkpoint"), f"{where}: 'checkpoint' must be a file path")
        spec = replace(spec, checkpoint=paths.resolve(checkpoint, (*keys, "checkpoint"), f"{where}: 'checkpoint'"))
    return spec


def _bases(source: _Source, paths: _Paths, document: dict, datasets) -> tuple[BaseSpec, ...]:
    from .. import plugins

    pattern = document.get("maps", DEFAULT_MAPS)
    if "bases" in document:
        entries = _mapping(source, document["bases"], ("bases",), "'bases'")
    elif "methods" in document:
        entries = {}
    else:
        entries = {name: {} for name in PAPER_BASES}
    shared_relearn = None
    if document.get("relearn") is not None:
        shared_relearn = _mapping(source, document["relearn"], ("relearn",), "'relearn'", _TOP_RELEARN_KEYS)
    variants = list(entries)
    if shared_relearn is not None and "variants" in shared_relearn:
        variants = shared_relearn["variants"]
        if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
            raise source.error(("relearn", "variants"), "'relearn': 'variants' must be a list of base names")
        for index, name in enumerate(variants):
            if name not in entries:
                raise source.error(
                    ("relearn", "variants", index),
                    f"'relearn': 'variants': unknown base {name!r} (bases: {', '.join(entries)})",
                )
    bases = []
    for name, entry in entries.items():
        keys = ("bases", name)
        where = f"base {name!r}"
        entry = {} if entry is None else {"maps": entry} if isinstance(entry, str) else entry
        entry = _mapping(source, entry, keys, where, _BASE_KEYS)
        adapter_name = entry.get("adapter", name.lower())
        if not isinstance(adapter_name, str):
            raise source.error((*keys, "adapter"), f"{where}: 'adapter' must be an adapter name")
        try:
            adapter = plugins.get_adapter(adapter_name)
        except RelearnError as exc:
            raise source.error((*keys, "adapter") if "adapter" in entry else keys, f"base {name!r}: {exc}") from None
        computes = adapter.info.predicts_from != "maps"
        maps = {}
        if not computes:
            value = entry.get("maps", pattern)
            mkeys = (*keys, "maps") if "maps" in entry else ("maps",)
            maps = _map_folders(source, paths, value, mkeys, f"{where}: 'maps'", datasets, name)
        options = _mapping(source, entry.get("options") or {}, (*keys, "options"), f"{where}: 'options'")
        relearn = None
        own = entry.get("relearn")
        if (
            own is not False
            and (shared_relearn is not None or own is not None)
            and (name in variants or own is not None)
        ):
            merged = {k: v for k, v in (shared_relearn or {}).items() if k != "variants"}
            own_keys = (*keys, "relearn")
            if own is not None:
                merged.update(_mapping(source, own, own_keys, f"{where}: 'relearn'", _RELEARN_KEYS))
            relearn = _relearn_spec(
                source, paths, merged, own_keys if own else ("relearn",), f"{where}: 'relearn'", datasets, name
            )
            if relearn.train is None and relearn.train_images is None and relearn.checkpoint is None:
                raise source.error(
                    own_keys if own else ("relearn",),
                    f"{where}: 'relearn' needs 'train' (a dataset or {{images, gt}}) or 'checkpoint'",
                )
        bases.append(BaseSpec(name, adapter.name, maps, computes, options, relearn, source.line(keys)))
    return tuple(bases)


def _ablation(source: _Source, value, bases, datasets) -> AblationSpec | None:
    if value is None or value is False:
        return None
    variants = [base.name for base in bases if base.relearn is not None]
    names = [dataset.name for dataset in datasets]
    entry = {} if value is True else _mapping(source, value, ("ablation",), "'ablation'", _ABLATION_KEYS)
    base = entry.get("base", variants[0] if variants else None)
    if base not in variants:
        raise source.error(
            ("ablation", "base") if "base" in entry else ("ablation",),
            f"'ablation': 'base' must be a base with re-learning (one of: {', '.join(variants) or 'none'})",
        )
    chosen = entry.get("datasets", names)
    if not isinstance(chosen, list):
        raise source.error(("ablation", "datasets"), "'ablation': 'datasets' must be a list of dataset names")
    for index, name in enumerate(chosen):
        if name not in names:
            raise source.error(
                ("ablation", "datasets", index), f"'ablation': unknown dataset {name!r} (known: {', '.join(names)})"
            )
    return AblationSpec(base, tuple(chosen))


def load_config(path: str | os.PathLike) -> TableConfig:
    """Read and check a table config; InputError naming the file, the line and the entry when it is malformed."""
    from .. import plugins

    path = Path(path)
    document, source = _read_yaml(path)
    document = _mapping(source, document, (), "the file", _TOP_KEYS)
    folders = _mapping(source, document.get("folders") or {}, ("folders",), "'folders'")
    clash = sorted(set(folders) & _PLACEHOLDERS)
    if clash:
        raise source.error(("folders", clash[0]), f"'folders': {clash[0]!r} is a reserved placeholder")
    paths = _Paths(source, {})
    paths.folders = {
        name: str(paths.resolve(value, ("folders", name), f"'folders' {name!r}")) for name, value in folders.items()
    }

    adapter_files = document.get("adapters") or []
    if not isinstance(adapter_files, list):
        raise source.error(("adapters",), "'adapters' must be a list of Python files")
    adapter_files = tuple(
        paths.resolve(file, ("adapters", index), "'adapters'") for index, file in enumerate(adapter_files)
    )
    for index, file in enumerate(adapter_files):
        try:
            plugins.load_adapter_file(file)
        except RelearnError as exc:
            raise source.error(("adapters", index), str(exc)) from None

    if "datasets" not in document:
        raise source.error((), "the file names no 'datasets'")
    datasets = _datasets(source, paths, document["datasets"])
    methods = _methods(source, paths, document["methods"], datasets) if "methods" in document else ()
    bases = _bases(source, paths, document, datasets)
    if not methods and not bases:
        raise source.error(("methods",) if "methods" in document else ("bases",), "the file names no method or base")
    names = [base.name for base in bases] + [our_name(b.name) for b in bases if b.relearn] + [m.name for m in methods]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise source.error(("methods", duplicate), f"method {duplicate!r} is named twice")

    resize = document.get("resize", False)
    if not isinstance(resize, bool):
        raise source.error(("resize",), "'resize' must be true or false")
    device = document.get("device", "auto")
    if not isinstance(device, str):
        raise source.error(("device",), "'device' must be cpu, cuda, cuda:N or auto")
    metrics = _check_metrics(source, document["metrics"]) if "metrics" in document else DEFAULT_METRICS
    ablation = _ablation(source, document.get("ablation"), bases, datasets)
    return TableConfig(path, datasets, methods, metrics, resize, bases, ablation, adapter_files, device)


def default_ablation(config: TableConfig) -> AblationSpec:
    """Fig. 11 when ``--ablation`` is given and the config has no `ablation:` section: the first re-learned base."""
    variants = [base.name for base in config.bases if base.relearn is not None]
    if not variants:
        raise InputError(config.path, "--ablation needs a base with re-learning (a 'relearn' section)")
    return AblationSpec(variants[0], tuple(dataset.name for dataset in config.datasets))


@dataclass
class TableResult:
    """Every (method, dataset) cell's report (None where empty), the cells that failed and why, the warnings met."""

    config: TableConfig
    reports: dict[tuple[str, str], EvalReport | None] = field(default_factory=dict)
    errors: dict[tuple[str, str], str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def score(self, method: str, dataset: str, metric: str) -> float | None:
        report = self.reports.get((method, dataset))
        return report.scores[metric] if report is not None and report.count else None


def evaluate_cell(
    method: MethodSpec, dataset: DatasetSpec, resize: bool = False, workers: int | None = None
) -> EvalReport:
    """One cell: ``relearn eval`` of the method's maps for the dataset."""
    return evaluate_folders(
        method.maps[dataset.name],
        dataset.gt,
        resize=resize,
        suffix=method.suffix,
        prefix=method.prefix,
        gt_prefix=dataset.mask_prefix,
        gt_suffix=dataset.mask_suffix,
        progress=False,
        workers=workers,
    )


def build_table(
    config: TableConfig,
    *,
    progress: bool = True,
    workers: int | None = None,
    errors: Mapping[tuple[str, str], str] | None = None,
) -> TableResult:
    """Evaluate every method on every dataset.

    A missing maps folder leaves its cell empty, with a warning; maps that cannot be scored (wrong size, unreadable,
    no map at all) make the cell an error that names the problem; ``errors`` are cells already known to have failed
    (their maps could not be made). The rest of the table is produced in every case.
    """
    result = TableResult(config)
    result.errors.update(errors or {})
    usable = []
    for dataset in config.datasets:
        if dataset.gt.is_dir():
            usable.append(dataset)
        else:
            result.warnings.append(f"{dataset.gt}: ground truth of {dataset.name} not found; its cells are empty")
    cells = [
        (method, dataset)
        for dataset in usable
        for method in config.methods
        if (method.name, dataset.name) not in result.errors
    ]
    for method, dataset in tqdm(cells, desc="evaluate", unit="cell", leave=False, disable=None if progress else True):
        folder = method.maps.get(dataset.name)
        report = None
        if folder is None:
            result.warnings.append(f"{config.path}: method {method.name!r} names no maps folder for {dataset.name}")
        elif not folder.is_dir():
            result.warnings.append(
                f"{folder}: no maps of {method.name} for {dataset.name} (folder missing); cell left empty"
            )
        else:
            try:
                report = evaluate_cell(method, dataset, config.resize, workers)
            except InputError as exc:
                result.errors[(method.name, dataset.name)] = str(exc)
            else:
                skipped = len(report.skipped) + len(report.unmatched_masks)
                if not report.count:
                    first = report.skipped[0] if report.skipped else f"no map matches a mask of {dataset.gt}"
                    result.errors[(method.name, dataset.name)] = (
                        f"{folder}: no map could be scored ({skipped} masks without a usable map; {first})"
                    )
                    report = None
                elif skipped:
                    result.warnings.append(
                        f"{folder}: {method.name} on {dataset.name} scored on {report.count} "
                        f"images, {skipped} masks have no usable map (relearn eval lists them)"
                    )
        result.reports[(method.name, dataset.name)] = report
    for (method, dataset), problem in result.errors.items():
        result.reports[(method, dataset)] = None
        result.warnings.append(f"cell {method} on {dataset}: {problem}")
    return result


@dataclass(frozen=True)
class PublishedRow:
    """A base's measured scores on a dataset beside the scores published for it (registry.yaml)."""

    method: str
    dataset: str
    measured_max_f: float | None
    published_max_f: float
    measured_mae: float | None
    published_mae: float

    def differences(self) -> tuple[float | None, float | None]:
        """measured - published, at the published precision (3 decimals; + 0.0 turns -0.0 into 0.0)."""
        return (
            None if self.measured_max_f is None else round(self.measured_max_f - self.published_max_f, 3) + 0.0,
            None if self.measured_mae is None else round(self.measured_mae - self.published_mae, 3) + 0.0,
        )


def published_rows(result: TableResult) -> list[PublishedRow]:
    """Each base of the registry with published scores on a dataset of the table (names compared case-insensitively)."""
    from ..registry import load_registry

    registry = load_registry()
    adapters = {base.name: base.adapter for base in result.config.bases}
    rows = []
    for method in result.config.methods:
        if method.base_name is not None:
            continue
        baseline = registry.baseline(adapters.get(method.name, method.name))
        if baseline is None:
            continue
        published = {name.lower(): score for name, score in baseline.published.items()}
        for dataset in result.config.datasets:
            score = published.get(dataset.name.lower())
            if score is None:
                continue
            rows.append(
                PublishedRow(
                    method.name,
                    dataset.name,
                    result.score(method.name, dataset.name, "max_f"),
                    score.max_f,
                    result.score(method.name, dataset.name, "mae"),
                    score.mae,
                )
            )
    return rows


def published_markdown(rows: list[PublishedRow], source: str = "") -> str:
    """The measured scores of each base beside the published ones, with the difference (measured - published)."""
    if not rows:
        return ""

    def number(value, signed=False):
        return "" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")

    lines = [
        "| method | dataset | max F measured | max F published | difference | MAE measured | MAE published "
        "| difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        diff_f, diff_mae = row.differences()
        lines.append(
            f"| {row.method} | {row.dataset} | {number(row.measured_max_f)} | {row.published_max_f:.3f} | "
            f"{number(diff_f, True)} | {number(row.measured_mae)} | {row.published_mae:.3f} | "
            f"{number(diff_mae, True)} |"
        )
    note = (
        "A difference beyond about 0.005 suggests the maps are not the authors' (or another ground truth "
        "or evaluation was used)."
    )
    return "\n".join(lines) + f"\n\nPublished: {source or 'registry.yaml'}. {note}\n"


def _ranks(values: list[float | None], metric: str) -> list[int | None]:
    """Dense rank (1 = best) of each value as printed (3 decimals); None for an empty cell."""
    shown = [None if value is None else round(value, 3) for value in values]
    distinct = sorted({value for value in shown if value is not None}, reverse=metric not in LOWER_IS_BETTER)
    return [None if value is None else distinct.index(value) + 1 for value in shown]


def _columns(result: TableResult) -> list[tuple[str, str]]:
    return [(dataset.name, metric) for dataset in result.config.datasets for metric in result.config.metrics]


def _grid(result: TableResult) -> tuple[list[str], list[tuple[str, str]], dict]:
    """Rows (method names), columns (dataset, metric), and for each cell its (value, rank)."""
    methods = [method.name for method in result.config.methods]
    columns = _columns(result)
    cells = {}
    for column in columns:
        values = [result.score(method, column[0], column[1]) for method in methods]
        for method, value, rank in zip(methods, values, _ranks(values, column[1])):
            cells[(method, column)] = (value, rank)
    return methods, columns, cells


_SUPERSCRIPTS = {1: "¹", 2: "²", 3: "³"}


def markdown_table(result: TableResult) -> str:
    """The table in Markdown: the top three of each column marked ¹ ² ³ (red, green, blue in the LaTeX version)."""
    methods, columns, cells = _grid(result)
    notes = {cell: index + 1 for index, cell in enumerate(sorted(result.errors))}
    header = ["method"] + [f"{dataset} {METRIC_LABELS[metric]}" for dataset, metric in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        row = [method]
        for column in columns:
            value, rank = cells[(method, column)]
            if (method, column[0]) in result.errors:
                row.append(f"error ({notes[(method, column[0])]})")
            else:
                row.append("" if value is None else f"{value:.3f}{_SUPERSCRIPTS.get(rank, '')}")
        lines.append("| " + " | ".join(row) + " |")
    arrows = ", ".join(
        f"{METRIC_LABELS[m]} {'lower' if m in LOWER_IS_BETTER else 'higher'} is better" for m in result.config.metrics
    )
    lines += [
        "",
        f"¹ ² ³: first, second and third of each column ({arrows}). max F is dataset-level (mean "
        "precision and recall over images, then F, beta^2 = 0.3), as in the paper.",
    ]
    if notes:
        lines += ["", "Cells that could not be scored:", ""]
        lines += [
            f"{number}. {method} on {dataset}: {result.errors[(method, dataset)]}"
            for (method, dataset), number in notes.items()
        ]
    return "\n".join(lines) + "\n"


def csv_table(result: TableResult) -> str:
    """The table as CSV: one row per method, one column per dataset and metric, empty where maps were missing."""
    methods, columns, cells = _grid(result)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method"] + [f"{dataset}:{metric}" for dataset, metric in columns])
    for method in methods:
        writer.writerow(
            [method] + ["" if cells[(method, c)][0] is None else f"{cells[(method, c)][0]:.6f}" for c in columns]
        )
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("^", r"\^{}"),
    ):
        text = text.replace(char, escaped)
    return text


def latex_table(result: TableResult) -> str:
    """The table as a LaTeX tabular (needs ``\\usepackage{xcolor}``), top three of each column in red, green, blue."""
    methods, columns, cells = _grid(result)
    metrics = result.config.metrics
    datasets = [dataset.name for dataset in result.config.datasets]
    lines = [
        "% relearn table: needs \\usepackage{xcolor}; top three of each column in red, green, blue",
        "\\begin{tabular}{l" + "c" * len(columns) + "}",
        "\\hline",
        "Method & "
        + " & ".join(f"\\multicolumn{{{len(metrics)}}}{{c}}{{{_latex_escape(d)}}}" for d in datasets)
        + " \\\\",
        " & "
        + " & ".join(
            _latex_escape(METRIC_LABELS[metric]) + ("$\\downarrow$" if metric in LOWER_IS_BETTER else "$\\uparrow$")
            for _, metric in columns
        )
        + " \\\\",
        "\\hline",
    ]
    for method in methods:
        row = [_latex_escape(method)]
        for column in columns:
            value, rank = cells[(method, column)]
            text = "error" if (method, column[0]) in result.errors else "" if value is None else f"{value:.3f}"
            if rank is not None and rank <= len(RANK_COLOURS):
                text = f"\\textcolor{{{RANK_COLOURS[rank - 1]}}}{{{text}}}"
            row.append(text)
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _line_styles(methods: list[str]) -> dict[str, tuple[str, str]]:
    """Colour and line style per method: ``X`` and ``Our(X)`` share a colour, X dashed and Our(X) solid."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors if len(methods) <= 10 else colormaps["tab20"].colors
    bases = {name: (_OUR.match(name).group("base") if _OUR.match(name) else name) for name in methods}
    groups = list(dict.fromkeys(bases.values()))
    improved = {bases[name] for name in methods if _OUR.match(name) and bases[name] in methods}
    styles = {}
    for name in methods:
        colour = palette[groups.index(bases[name]) % len(palette)]
        dashed = name in improved  # a base with its Our(X) beside it
        styles[name] = (colour, "--" if dashed else "-")
    return styles


def _save_figure(figure, stem: Path) -> list[Path]:
    written = []
    for extension in ("png", "pdf"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=extension, dpi=150, bbox_inches="tight")
        path = stem.with_suffix(f".{extension}")
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def curve_figures(result: TableResult, out_dir: Path) -> list[Path]:
    """Per dataset: PR curves and F-measure-vs-threshold curves (dataset-level), PNG and PDF."""
    from matplotlib.figure import Figure

    methods = [method.name for method in result.config.methods]
    styles = _line_styles(methods)
    written = []
    for dataset in result.config.datasets:
        drawn = [
            (name, result.reports[(name, dataset.name)])
            for name in methods
            if result.reports.get((name, dataset.name)) is not None
        ]
        if not drawn:
            continue
        for kind in ("pr", "f_threshold"):
            figure = Figure(figsize=(5, 4))
            axes = figure.subplots()
            for name, report in drawn:
                colour, style = styles[name]
                curves = report.curves
                if kind == "pr":
                    axes.plot(curves["recall"], curves["precision"], style, color=colour, label=name, linewidth=1.5)
                else:
                    axes.plot(
                        curves["thresholds"] * 255, curves["f_curve"], style, color=colour, label=name, linewidth=1.5
                    )
            if kind == "pr":
                axes.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1))
            else:
                axes.set(xlabel="Threshold", ylabel="F-measure", xlim=(0, 255), ylim=(0, 1))
            axes.set_title(dataset.name)
            axes.grid(True, linewidth=0.3)
            axes.legend(fontsize="small", loc="lower left")
            written += _save_figure(figure, out_dir / "figures" / f"{_file_name(dataset.name)}_{kind}")
    return written


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def scores_json(result: TableResult) -> str:
    """Every score of every cell (not only the table's metrics), with the definitions."""
    document = {
        "metrics": list(result.config.metrics),
        "definitions": DEFINITIONS,
        "cells": [
            {
                "method": method,
                "dataset": dataset,
                "maps": str(report.pred_dir) if report else None,
                "count": report.count if report else 0,
                **(report.scores if report else {}),
            }
            for (method, dataset), report in result.reports.items()
        ],
        "errors": [
            {"method": method, "dataset": dataset, "problem": problem}
            for (method, dataset), problem in result.errors.items()
        ],
        "published": [
            {**row.__dict__, "max_f_difference": row.differences()[0], "mae_difference": row.differences()[1]}
            for row in published_rows(result)
        ],
        "warnings": result.warnings,
    }
    return json.dumps(document, indent=2) + "\n"


def write_table(result: TableResult, out_dir: str | os.PathLike) -> list[Path]:
    """Write table.md, table.csv, table.tex, scores.json and figures/ into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    inputs = [dataset.gt for dataset in result.config.datasets]
    inputs += [folder for method in result.config.methods for folder in method.maps.values()]
    refuse_overlap(out_dir, inputs)
    written = []
    published = published_rows(result)
    markdown = markdown_table(result)
    if published:
        from ..registry import load_registry

        markdown += "\n## Measured beside published\n\n" + published_markdown(
            published, load_registry().published_source
        )
    for name, text in (
        ("table.md", markdown),
        ("table.csv", csv_table(result)),
        ("table.tex", latex_table(result)),
        ("scores.json", scores_json(result)),
    ):
        atomic_write_bytes(out_dir / name, text.encode())
        written.append(out_dir / name)
    return written + curve_figures(result, out_dir)


COMPONENT_LABELS = {
    "C1": "C1 base",
    "C2": "C2 re-learning, no pair filter",
    "C3": "C3 + pair filter, M = 1",
    "C4": "C4 + M = 5, joint classifier",
    "C5": "C5 + larger pool",
    "C6": "C6 + bi-level alignment (full)",
}


def ablation_figures(
    components: Mapping[str, MethodSpec],
    config: TableConfig,
    datasets: tuple[str, ...],
    out_dir: str | os.PathLike,
    workers: int | None = None,
) -> tuple[list[Path], list[str]]:
    """Fig. 11: PR and F-measure-vs-threshold curves of the components C1..C6, averaged over ``datasets`` (the mean
    of each dataset's dataset-level curve), PNG and PDF, plus ``ablation.md`` with the averaged scores."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    warnings, averaged, scores = [], {}, {}
    for component, method in components.items():
        reports = []
        for name in datasets:
            dataset = config.dataset(name)
            folder = method.maps.get(name)
            if folder is None or not folder.is_dir():
                warnings.append(f"ablation {component} on {name}: no maps ({folder})")
                continue
            try:
                report = evaluate_cell(method, dataset, config.resize, workers)
            except InputError as exc:
                warnings.append(f"ablation {component} on {name}: {exc}")
                continue
            if report.count:
                reports.append(report)
        if len(reports) == len(datasets):
            averaged[component] = {
                key: np.mean([r.curves[key] for r in reports], 0)
                for key in ("precision", "recall", "f_curve", "thresholds")
            }
            scores[component] = {key: float(np.mean([r.scores[key] for r in reports])) for key in ("max_f", "mae")}
    if not averaged:
        return [], warnings + ["ablation: no component could be scored on every dataset; Fig. 11 not drawn"]
    colours = colormaps["tab10"].colors
    written = []
    title = f"{components['C1'].name} on {', '.join(datasets)}"
    for kind in ("pr", "f_threshold"):
        figure = Figure(figsize=(5, 4))
        axes = figure.subplots()
        for index, (component, curves) in enumerate(averaged.items()):
            x, y = (
                (curves["recall"], curves["precision"])
                if kind == "pr"
                else (curves["thresholds"] * 255, curves["f_curve"])
            )
            axes.plot(x, y, "-", color=colours[index], label=COMPONENT_LABELS.get(component, component), linewidth=1.5)
        if kind == "pr":
            axes.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1))
        else:
            axes.set(xlabel="Threshold", ylabel="F-measure", xlim=(0, 255), ylim=(0, 1))
        axes.set_title(title, fontsize="small")
        axes.grid(True, linewidth=0.3)
        axes.legend(fontsize="x-small", loc="lower left")
        written += _save_figure(figure, out_dir / "figures" / f"ablation_{kind}")
    lines = [
        f"# Component evaluation (Fig. 11): {title}",
        "",
        "Scores averaged over the datasets (dataset-level max F, MAE).",
        "",
        "| component | max F | MAE |",
        "|---|---|---|",
    ]
    lines += [f"| {COMPONENT_LABELS.get(c, c)} | {s['max_f']:.3f} | {s['mae']:.3f} |" for c, s in scores.items()]
    atomic_write_bytes(out_dir / "ablation.md", ("\n".join(lines) + "\n").encode())
    return written + [out_dir / "ablation.md"], warnings
