"""The work a comparison table needs before it can be scored (``relearn table``): base maps of the adapters that compute
them, the re-learners (``relearn train``) and the Our(X) maps (``relearn wrap``), and Fig. 11's components.

Everything lands under the output folder and is reused on a rerun, so only missing work is done::

    OUT/maps/<dataset>/<base>/                    maps predicted by a base that computes them
    OUT/maps/<dataset>/Our(<base>)-<key>/         Our(X) maps (key: a hash of everything that fixes the re-learner)
    OUT/maps/<dataset>/ablation/<base>/C<n>-<key>/ Fig. 11's components C2..C5 (C1 is the base, C6 is Our(X))
    OUT/checkpoints/<base>/C<n>-<key>[.fold<k>of<K>].pt
    OUT/work/                                     folders of links that give train/wrap each fold's images

k-fold: when a base's re-learner trains on a dataset of the table, that dataset's images (those with a mask, ids
sorted) are split by ``np.random.RandomState(seed).permutation``, the image at position p in fold p mod k (the protocol
of benchmarks/relearn_cv.py); the Our(X) map of an image of fold k comes from the re-learner trained on the other folds,
against a pool of those folds' images (plus the extra pool). Other datasets are wrapped by a re-learner trained on the
whole training dataset. So no image is ever scored by a model that trained on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from tqdm import tqdm

from ..errors import InputError, RelearnError
from ..imageio import list_by_stem, write_map
from .table import (
    AblationSpec,
    BaseSpec,
    DatasetSpec,
    MethodSpec,
    RelearnSpec,
    TableConfig,
    _file_name,
    our_name,
)

FULL = "C6"
ABLATION_COMPONENTS = ("C2", "C3", "C4", "C5")
"""Fig. 11 (and benchmarks/relearn_cv.py): C1 the base; C2 re-learning without the pair filter, SIFT Flow matches, no
extra pool; C3 with the filter and one classifier (M = 1); C4 with M = 5 and the joint classifier; C5 C4 with the extra
pool; C6 C5 with the bi-level alignment of Eq. (1): the full method, Our(X)."""
_COMPONENT_CHANGES: dict[str, tuple[dict, bool]] = {  # component -> (overrides on top of the base's, extra pool used)
    "C2": ({"alignment": "flow", "use_filter": False}, False),
    "C3": ({"alignment": "flow", "joint": {"neighbours": 1}}, False),
    "C4": ({"alignment": "flow"}, False),
    "C5": ({"alignment": "flow"}, True),
    FULL: ({}, True),
}


@dataclass
class StageCounts:
    """What one stage did, in its unit (images, checkpoints, cells)."""

    unit: str
    computed: int = 0
    reused: int = 0
    skipped: int = 0
    failed: int = 0

    def line(self, stage: str) -> str:
        return (f"{stage}: {self.computed} computed, {self.reused} reused, {self.skipped} skipped, "
                f"{self.failed} failed ({self.unit})")


@dataclass
class Preparation:
    """The table's methods once every map exists, and what it took."""

    config: TableConfig  #: ``methods``: each base X, its Our(X) when re-learned, then the config's other methods
    errors: dict[tuple[str, str], str] = field(default_factory=dict)  #: cells whose maps could not be made
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, StageCounts] = field(default_factory=dict)
    ablation: dict[str, MethodSpec] = field(default_factory=dict)  #: component -> its maps per dataset (Fig. 11)


def folds_of(count: int, folds: int, seed: int) -> np.ndarray:
    """Fold of each of ``count`` sorted ids: its position in RandomState(seed).permutation(count), mod ``folds``."""
    fold = np.empty(count, np.int64)
    fold[np.random.RandomState(seed).permutation(count)] = np.arange(count) % folds
    return fold


def _merged(base: Mapping, extra: Mapping) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


@dataclass(frozen=True)
class Relearning:
    """One re-learned variant of a base (Our(X) or an ablation component): what fixes it, and where its files go."""

    base: BaseSpec
    component: str
    spec: RelearnSpec
    overrides: Mapping[str, Any]
    with_pool: bool

    @property
    def key(self) -> str:
        """A short hash of everything that fixes the re-learner, so a changed config never reuses stale files."""
        from .. import __version__
        from ..pipeline import RelearnConfig

        spec = self.spec

        def where(path):  # a folder however the config spelled it (relative, with ..)
            return None if path is None else str(Path(path).resolve())

        document = {
            "adapter": self.base.adapter, "options": dict(self.base.options), "component": self.component,
            "maps": {dataset: where(folder) for dataset, folder in self.base.maps.items()},
            "train": spec.train, "images": where(spec.train_images), "gt": where(spec.train_gt),
            "train_maps": where(spec.train_maps), "folds": spec.folds,
            "seed": spec.seed, "pool": [where(p) for p in spec.pool] if self.with_pool else [],
            "config": RelearnConfig().with_overrides(self.overrides).to_dict(), "checkpoint": where(spec.checkpoint), "version": __version__.split(".")[:2],
        }
        return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:8]

    @property
    def pools(self) -> tuple[Path, ...]:
        return self.spec.pool if self.with_pool else ()

    def checkpoint(self, out: Path, fold: int | None) -> Path:
        if self.spec.checkpoint is not None:
            return self.spec.checkpoint
        suffix = "" if fold is None else f".fold{fold}of{self.spec.folds}"
        return out / "checkpoints" / _file_name(self.base.name) / f"{self.component}-{self.key}{suffix}.pt"

    def maps_dir(self, out: Path, dataset: str) -> Path:
        if self.component == FULL:
            return out / "maps" / _file_name(dataset) / f"{_file_name(our_name(self.base.name))}-{self.key}"
        return out / "maps" / _file_name(dataset) / "ablation" / _file_name(self.base.name) / f"{self.component}-{self.key}"

    @property
    def method(self) -> str:
        return our_name(self.base.name) if self.component == FULL else f"{self.component} ({self.base.name})"


def relearnings(base: BaseSpec, components=(FULL,)) -> list[Relearning]:
    return [Relearning(base, component, base.relearn, _merged(base.relearn.overrides, _COMPONENT_CHANGES[component][0]),
                       _COMPONENT_CHANGES[component][1]) for component in components]


def _link_folder(folder: Path, files: list[Path], stems: list[str] | None = None) -> Path:
    """``folder`` rebuilt to hold exactly ``files`` (symbolic links, copies where links are refused), under their own
    names or, when given, ``stems`` (with their extensions)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for index, path in enumerate(files):
        target = folder / (path.name if stems is None else stems[index] + path.suffix)
        try:
            target.symlink_to(path.resolve())
        except OSError:
            shutil.copy2(path, target)
    return folder


@dataclass(frozen=True)
class DatasetFiles:
    images: dict[str, Path]  #: by stem
    masks: dict[str, Path]  #: by image stem (the dataset's mask prefix and suffix removed)
    ids: list[str]  #: sorted stems with an image and a mask


def dataset_files(dataset: DatasetSpec) -> DatasetFiles:
    images = list_by_stem(dataset.images)
    masks = list_by_stem(dataset.gt, suffix=dataset.mask_suffix)
    masks = {stem[len(dataset.mask_prefix):]: path for stem, path in masks.items() if stem.startswith(dataset.mask_prefix)}
    return DatasetFiles(images, masks, sorted(set(images) & set(masks)))


# --- work units, run in this process or in worker processes (--jobs) -------------------------------------------


@dataclass(frozen=True)
class TrainUnit:
    adapter: str
    adapter_files: tuple[Path, ...]
    options: Mapping[str, Any]
    images: Path
    gt: Path
    pools: tuple[Path, ...]
    overrides: Mapping[str, Any]
    checkpoint: Path
    device: str
    cache: str | None


@dataclass(frozen=True)
class WrapUnit:
    adapter: str
    adapter_files: tuple[Path, ...]
    options: Mapping[str, Any]
    images: Path
    pools: tuple[Path, ...]
    checkpoint: Path
    out: Path
    device: str
    cache: str | None
    count: int  #: images to wrap


def _adapter(unit):
    from ..base import select_base

    return select_base(unit.adapter, unit.adapter_files, unit.options.get("maps"))


def _cache(unit):
    from ..cache import Cache

    return Cache() if unit.cache is None else Cache(unit.cache)


def run_train(unit: TrainUnit) -> dict:
    """Train one re-learner; ``{"error": message}`` when it cannot be."""
    from ..pipeline import RelearnConfig, train

    try:
        config = RelearnConfig().with_overrides(unit.overrides)
        report = train(_adapter(unit), unit.images, unit.gt, unit.checkpoint, unit.pools, options=dict(unit.options),
                       config=config, device=unit.device, cache=_cache(unit))
    except RelearnError as exc:
        return {"error": str(exc)}
    return {"base_failures": [str(failure) for failure in report.base_failures]}


def run_wrap(unit: WrapUnit, progress: Callable[[str], None] = lambda message: None) -> dict:
    """Wrap one folder of images into ``unit.out``; ``{"error": message}`` when it cannot be."""
    from ..pipeline import load_checkpoint, wrap

    try:
        adapter = _adapter(unit)
        relearner = load_checkpoint(unit.checkpoint, adapter.name, unit.device)
        report = wrap(adapter, relearner, unit.images, unit.out, unit.pools, options=dict(unit.options),
                      device=unit.device, cache=_cache(unit), progress=progress)
    except RelearnError as exc:
        return {"error": str(exc)}
    return {"written": len(report.written), "kept_base": len(report.kept_base),
            "base_failures": [str(failure) for failure in report.base_failures]}


def _run_units(function, units: list, jobs: int, bar: tqdm, weight: Callable[[Any], int],
               inline_progress: bool = False) -> list[dict]:
    """Run ``function`` on every unit (in ``jobs`` processes when more than one), advancing ``bar`` as they finish."""
    if jobs <= 1 or len(units) <= 1:
        results = []
        for unit in units:
            if inline_progress:
                result = function(unit, lambda message: bar.update(1) if message.startswith("wrap ") else None)
            else:
                result = function(unit)
                bar.update(weight(unit))
            results.append(result)
        return results
    import multiprocessing

    results: list[dict | None] = [None] * len(units)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_setup) as pool:
        futures = {pool.submit(function, unit): index for index, unit in enumerate(units)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                results[index] = future.result()
            except Exception as exc:  # a crashed worker fails its unit only
                results[index] = {"error": f"{type(exc).__name__}: {exc}"}
            bar.update(weight(units[index]))
    return results


def _worker_setup() -> None:
    """One torch thread per worker: N workers on N cores, not N x N threads."""
    import torch

    torch.set_num_threads(1)


# --- the stages --------------------------------------------------------------------------------------------------


class _Planner:
    def __init__(self, config: TableConfig, out: Path, jobs: int, cache: str | None, progress: bool,
                 ablation: AblationSpec | None):
        from ..base import resolve_device

        self.config = config
        self.out = out
        self.jobs = max(1, jobs)
        self.cache = cache
        self.progress = progress
        self.ablation = ablation
        self.device = resolve_device(config.device)
        self.prep = Preparation(config)
        self.datasets = [d for d in config.datasets if d.gt.is_dir()]  # build_table reports the others

    def bar(self, stage: str, total: int, unit: str) -> tqdm:
        return tqdm(total=total, desc=stage, unit=unit, leave=True, disable=None if self.progress else True)

    def files(self, dataset: DatasetSpec) -> DatasetFiles:
        if dataset.images is None or not dataset.images.is_dir():
            raise InputError(dataset.images or dataset.gt.parent, f"images of {dataset.name} not found "
                                                                  "(needed to run a base or re-learn)")
        return dataset_files(dataset)

    # computed base maps ------------------------------------------------------------------------------------------

    def computed_maps_dir(self, base: BaseSpec, dataset: str) -> Path:
        return self.out / "maps" / _file_name(dataset) / _file_name(base.name)

    def base_maps(self) -> None:
        from ..base import iter_base_maps, BaseMapFailure
        from ..cache import Cache

        counts = self.prep.counts.setdefault("base maps", StageCounts("images"))
        todo = []
        for base in self.config.bases:
            if not base.computes:
                continue
            for dataset in self.datasets:
                try:
                    images = self.files(dataset).images
                except InputError as exc:
                    self.prep.errors[(base.name, dataset.name)] = str(exc)
                    continue
                folder = self.computed_maps_dir(base, dataset.name)
                done = set(list_by_stem(folder)) if folder.is_dir() else set()
                counts.reused += len(done & set(images))
                missing = [images[stem] for stem in sorted(images) if stem not in done]
                if missing:
                    todo.append((base, dataset, folder, missing))
        with self.bar("base maps", sum(len(item[3]) for item in todo), "image") as bar:
            for base, dataset, folder, missing in todo:
                failures = []
                cache = Cache() if self.cache is None else Cache(self.cache)
                for path, outcome in iter_base_maps(base.adapter, missing, dict(base.options), self.device, cache):
                    if isinstance(outcome, BaseMapFailure):
                        failures.append(str(outcome))
                        counts.failed += 1
                    else:
                        write_map(folder / f"{Path(path).stem}.png", outcome)
                        counts.computed += 1
                    bar.update(1)
                if failures:
                    self.prep.warnings.append(f"{base.name} on {dataset.name}: the base failed on {len(failures)} "
                                              f"images, e.g. {failures[0]}")
                    if len(failures) == len(missing) and not folder.is_dir():
                        self.prep.errors[(base.name, dataset.name)] = failures[0]

    def base_options(self, base: BaseSpec, datasets: list[str], extra: tuple[Path, ...] = ()) -> dict:
        """The adapter options for running ``base`` on images of ``datasets`` (and of the maps folders ``extra``): a
        maps-based base gets one folder with the maps of all of them (links), or its own folder when there is one."""
        options = dict(base.options)
        if base.computes:
            return options
        folders = [base.maps[name] for name in datasets if name in base.maps] + list(extra)
        if len(folders) == 1:
            options["maps"] = str(folders[0])
        elif folders:
            files = {}
            for folder in reversed(folders):  # the first dataset's file wins a name clash
                if folder.is_dir():
                    files.update({path.name: path for path in folder.iterdir() if path.is_file()})
            view = self.out / "work" / "maps" / _file_name(base.name) / "+".join(
                _file_name(d) for d in [*datasets, *(f"extra{i}" for i in range(len(extra)))])
            options["maps"] = str(_link_folder(view, list(files.values())))
        return options

    # re-learning -----------------------------------------------------------------------------------------------

    def variants(self) -> list[Relearning]:
        found = []
        for base in self.config.bases:
            if base.relearn is None:
                continue
            components = [FULL]
            if self.ablation is not None and self.ablation.base == base.name:
                components = [*ABLATION_COMPONENTS, FULL]
            found += relearnings(base, components)
        return found

    def relearn(self) -> None:
        variants = self.variants()
        if not variants:
            return
        train_counts = self.prep.counts.setdefault("re-learners", StageCounts("checkpoints"))
        wrap_counts = self.prep.counts.setdefault("Our(X) maps", StageCounts("images"))
        train_units, train_owner, wrap_plan = [], [], []
        for variant in variants:
            plan = self.plan_variant(variant)
            for unit, owner in plan["train"]:
                if unit.checkpoint.is_file():
                    train_counts.reused += 1
                else:
                    train_units.append(unit)
                    train_owner.append(owner)
            wrap_plan += plan["wrap"]
        with self.bar("train", len(train_units), "checkpoint") as bar:
            results = _run_units(run_train, train_units, self.jobs, bar, lambda unit: 1)
        failed_checkpoints = {}
        for unit, owner, result in zip(train_units, train_owner, results):
            if "error" in result:
                train_counts.failed += 1
                failed_checkpoints[unit.checkpoint] = result["error"]
                self.prep.warnings.append(f"training {owner} failed: {result['error']}")
            else:
                train_counts.computed += 1
                if result["base_failures"]:
                    self.prep.warnings.append(f"training {owner}: the base failed on {len(result['base_failures'])} "
                                              f"images (left out), e.g. {result['base_failures'][0]}")
        wrap_units, wrap_owner = [], []
        for variant, dataset, unit in wrap_plan:
            if unit.checkpoint in failed_checkpoints or not unit.checkpoint.is_file():
                wrap_counts.skipped += unit.count
                problem = failed_checkpoints.get(unit.checkpoint, f"{unit.checkpoint}: checkpoint not found")
                self.fail(variant, dataset, f"its re-learner could not be trained: {problem}")
                continue
            wrap_units += self.split(unit, variant, dataset)
            wrap_owner += [(variant, dataset)] * (len(wrap_units) - len(wrap_owner))
        with self.bar("wrap", sum(unit.count for unit in wrap_units), "image") as bar:
            results = _run_units(run_wrap, wrap_units, self.jobs, bar, lambda unit: unit.count, inline_progress=True)
        for unit, (variant, dataset), result in zip(wrap_units, wrap_owner, results):
            if "error" in result:
                wrap_counts.failed += unit.count
                self.fail(variant, dataset, result["error"])
                continue
            wrap_counts.computed += result["written"]
            if result["base_failures"]:  # targets without a map show in the table's warnings; pool images here
                self.prep.warnings.append(f"{variant.method} on {dataset}: the base failed on "
                                          f"{len(result['base_failures'])} images, e.g. {result['base_failures'][0]}")
        for variant in variants:
            for dataset in self.wanted(variant):
                folder = variant.maps_dir(self.out, dataset.name)
                if (variant.method, dataset.name) not in self.prep.errors and not (folder.is_dir() and any(folder.iterdir())):
                    self.fail(variant, dataset.name, f"no {variant.method} map could be made for {dataset.name}"
                                                     " (see the warnings above)")

    def fail(self, variant: Relearning, dataset: str, problem: str) -> None:
        self.prep.errors.setdefault((variant.method, dataset), problem)

    def wanted(self, variant: Relearning) -> list[DatasetSpec]:
        """The datasets a variant is wrapped on: every one for Our(X), Fig. 11's for a component."""
        if variant.component == FULL:
            return self.datasets
        return [d for d in self.datasets if d.name in self.ablation.datasets]

    def plan_variant(self, variant: Relearning) -> dict:
        """The checkpoints to train and the folders to wrap for one variant."""
        spec, base = variant.spec, variant.base
        plan = {"train": [], "wrap": []}
        common = dict(adapter=base.adapter, adapter_files=self.config.adapter_files, device=self.device, cache=self.cache)
        work = self.out / "work" / _file_name(base.name) / f"{variant.component}-{variant.key}"
        wrap_counts = self.prep.counts["Our(X) maps"]
        # a given checkpoint is used as it is: its training images are unknown here, so there is no k-fold
        training = self.config.dataset(spec.train) if spec.train and spec.checkpoint is None else None
        full_checkpoint = variant.checkpoint(self.out, None)
        full_pool: tuple[Path, ...] = ()
        wanted = self.wanted(variant)
        full_training = None
        if training is not None:
            try:
                found = self.files(training)
            except InputError as exc:
                for dataset in wanted:
                    self.fail(variant, dataset.name, str(exc))
                return plan
            images, masks, ids = found.images, found.masks, found.ids
            options = self.base_options(base, [training.name])
            folder = work / _file_name(training.name) / "all"
            all_images = _link_folder(folder / "images", [images[i] for i in ids])
            all_gt = _link_folder(folder / "gt", [masks[i] for i in ids], ids)
            full_pool = (all_images, *variant.pools)
            full_training = TrainUnit(options=options, images=all_images, gt=all_gt, pools=variant.pools,
                                      overrides=variant.overrides, checkpoint=full_checkpoint, **common)
            fold = dict(zip(ids, folds_of(len(ids), spec.folds, spec.seed)))
            if training.name not in {dataset.name for dataset in wanted}:
                ids = []  # an ablation component not drawn on its training dataset: no fold to re-learn
            out_dir = variant.maps_dir(self.out, training.name)
            done = set(list_by_stem(out_dir)) if out_dir.is_dir() else set()
            wrap_counts.reused += len(done & set(ids))
            if ids:
                wrap_counts.skipped += len(set(images) - set(ids))  # an image without a mask has no fold
            for k in range(spec.folds if ids else 0):
                train_ids = [i for i in ids if fold[i] != k]
                held = [i for i in ids if fold[i] == k and i not in done]
                folder = work / _file_name(training.name) / f"fold{k}of{spec.folds}"
                train_images = _link_folder(folder / "train" / "images", [images[i] for i in train_ids])
                train_gt = _link_folder(folder / "train" / "gt", [masks[i] for i in train_ids], train_ids)
                checkpoint = variant.checkpoint(self.out, k)
                if held:  # a fold whose maps are all there needs no re-learner
                    plan["train"].append((TrainUnit(options=options, images=train_images, gt=train_gt,
                                                    pools=variant.pools, overrides=variant.overrides,
                                                    checkpoint=checkpoint, **common),
                                          f"{variant.method} fold {k} of {training.name}"))
                    held_dir = _link_folder(folder / "held", [images[i] for i in held])
                    plan["wrap"].append((variant, training.name, WrapUnit(
                        options=options, images=held_dir, pools=(train_images, *variant.pools), checkpoint=checkpoint,
                        out=out_dir, count=len(held), **common)))
        elif spec.train_images is not None:
            options = dict(base.options)
            if spec.train_maps is not None:
                options["maps"] = str(spec.train_maps)
            full_training = TrainUnit(options=options, images=spec.train_images, gt=spec.train_gt, pools=variant.pools,
                                      overrides=variant.overrides, checkpoint=full_checkpoint, **common)
            full_pool = (spec.train_images, *variant.pools)
        others = 0  # datasets wrapped by the re-learner trained on the whole training set
        for dataset in wanted:
            if training is not None and dataset.name == training.name:
                continue
            try:
                images = self.files(dataset).images
            except InputError as exc:
                self.fail(variant, dataset.name, str(exc))
                continue
            out_dir = variant.maps_dir(self.out, dataset.name)
            done = set(list_by_stem(out_dir)) if out_dir.is_dir() else set()
            wrap_counts.reused += len(done & set(images))
            todo = [images[stem] for stem in sorted(images) if stem not in done]
            if not todo:
                continue
            names = [dataset.name] + ([training.name] if training is not None else [])
            extra = (spec.train_maps,) if training is None and spec.train_maps is not None else ()
            options = self.base_options(base, names, extra)
            pools = full_pool or (dataset.images, *variant.pools)
            folder = _link_folder(work / _file_name(dataset.name) / "todo", todo)
            plan["wrap"].append((variant, dataset.name, WrapUnit(options=options, images=folder, pools=pools,
                                                                 checkpoint=full_checkpoint, out=out_dir,
                                                                 count=len(todo), **common)))
            others += 1
        if others and full_training is not None:
            plan["train"].append((full_training, f"{variant.method} on all of its training set"))
        return plan

    def split(self, unit: WrapUnit, variant: Relearning, dataset: str) -> list[WrapUnit]:
        """A wrap unit cut into ``jobs`` parts (folders of links) so its images run in parallel."""
        if self.jobs <= 1 or unit.count < 2:
            return [unit]
        files = sorted(unit.images.iterdir())
        parts = min(self.jobs, len(files))
        units = []
        for index in range(parts):
            chunk = files[index::parts]
            folder = _link_folder(unit.images.parent / f"{unit.images.name}.part{index}", chunk)
            units.append(replace(unit, images=folder, count=len(chunk)))
        return units

    # the table's methods ---------------------------------------------------------------------------------------

    def methods(self) -> tuple[MethodSpec, ...]:
        methods = []
        for base in self.config.bases:
            if base.computes:
                folders = {d.name: self.computed_maps_dir(base, d.name) for d in self.config.datasets}
                methods.append(MethodSpec(base.name, folders))
            else:
                from ..base import adapter_options
                from ..plugins import get_adapter

                options = adapter_options(get_adapter(base.adapter), base.options, "cpu")
                methods.append(MethodSpec(base.name, dict(base.maps), str(options.get("suffix") or "")))
            if base.relearn is not None:
                variant = relearnings(base)[0]
                methods.append(MethodSpec(variant.method, {d.name: variant.maps_dir(self.out, d.name)
                                                           for d in self.config.datasets}))
        return (*methods, *self.config.methods)


def prepare(config: TableConfig, out_dir: str | os.PathLike, *, jobs: int = 1, cache: str | os.PathLike | None = None,
            progress: bool = True, ablation: AblationSpec | None = None) -> Preparation:
    """Make every map the table needs that is not there yet (base maps, re-learners, Our(X) maps; Fig. 11's
    components when ``ablation`` is given), and return the table's methods.

    A failure is confined to its cells: they carry the problem in ``errors`` and the rest goes on.
    ``cache``: the on-disk cache folder (None: ``$RELEARN_CACHE`` or ``~/.cache/relearn``).
    """
    out = Path(out_dir)
    planner = _Planner(config, out, jobs, None if cache is None else str(cache), progress, ablation)
    planner.base_maps()
    planner.relearn()
    prep = planner.prep
    prep.config = replace(config, methods=planner.methods())
    if ablation is not None:
        base = next(b for b in config.bases if b.name == ablation.base)
        prep.ablation["C1"] = next(m for m in prep.config.methods if m.name == base.name)
        for variant in relearnings(base, (*ABLATION_COMPONENTS, FULL)):
            prep.ablation[variant.component] = MethodSpec(
                variant.method, {name: variant.maps_dir(out, name) for name in ablation.datasets})
    return prep
