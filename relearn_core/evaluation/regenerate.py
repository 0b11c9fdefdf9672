"""The work a comparison table needs before it can be scored (``relearn table``): base maps of the adapters that compute
them, the re-learners (``relearn_core.train``) and the Our(X) maps (``relearn_core.wrap``), and Fig. 11's components.

Everything lands under the output folder and is reused on a rerun, so only missing work is done::

    OUT/maps/<dataset>/<base>/                    maps predicted by a base that computes them
    OUT/maps/<dataset>/Our(<base>)-<key>/         Our(X) maps (key: a hash of everything that fixes the re-learner)
    OUT/maps/<dataset>/ablation/<base>/C<n>-<key>/ Fig. 11's components C2..C5 (C1 is the base, C6 is Our(X))
    OUT/checkpoints/<base>/C<n>-<key>[.fold<k>of<K>].pt

k-fold: when a base's re-learner trains on a dataset of the table, that dataset's images (those with a mask, ids
sorted) are split by :func:`~relearn_core.evaluation.protocol.folds_of` (the protocol of benchmarks/relearn_cv.py); the
Our(X) map of an image of fold k comes from the re-learner trained on the other folds, against a pool of those folds'
images (plus the extra pool). Other datasets are wrapped by a re-learner trained on the whole training dataset. So no
image is ever scored by a model that trained on it.

The trainings and wraps are units of work run by an executor (relearn_core/executors.py): in this process one after
another, each with its images side by side (``--jobs 1``), or ``--jobs N`` at a time in processes or on Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import __version__
from ..errors import InputError, RelearnError
from ..imageio import images_in, list_by_stem, write_map
from ..outputs import claim_map_folder, map_settings
from .protocol import COMPONENTS, FULL, component, folds_of
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

ABLATION_COMPONENTS = tuple(c.name for c in COMPONENTS if c.name != FULL)


@dataclass
class StageCounts:
    """What one stage did, in its unit (images, checkpoints, cells)."""

    unit: str
    computed: int = 0
    reused: int = 0
    skipped: int = 0
    failed: int = 0

    def line(self, stage: str) -> str:
        return (
            f"{stage}: {self.computed} computed, {self.reused} reused, {self.skipped} skipped, "
            f"{self.failed} failed ({self.unit})"
        )


@dataclass
class Preparation:
    """The table's methods once every map exists, and what it took."""

    config: TableConfig  #: ``methods``: each base X, its Our(X) when re-learned, then the config's other methods
    errors: dict[tuple[str, str], str] = field(default_factory=dict)  #: cells whose maps could not be made
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, StageCounts] = field(default_factory=dict)
    ablation: dict[str, MethodSpec] = field(default_factory=dict)  #: component -> its maps per dataset (Fig. 11)


def _merged(base: Mapping, extra: Mapping) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
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
        from ..config import default_config

        spec = self.spec

        def where(path):  # a folder however the config spelled it (relative, with ..)
            return None if path is None else str(Path(path).resolve())

        document = {
            "adapter": self.base.adapter,
            "options": dict(self.base.options),
            "component": self.component,
            "maps": {dataset: where(folder) for dataset, folder in self.base.maps.items()},
            "train": spec.train,
            "images": where(spec.train_images),
            "gt": where(spec.train_gt),
            "train_maps": where(spec.train_maps),
            "folds": spec.folds,
            "seed": spec.seed,
            "pool": [where(p) for p in spec.pool] if self.with_pool else [],
            "config": default_config().with_overrides(self.overrides).to_dict(),
            "checkpoint": where(spec.checkpoint),
            "version": __version__.split(".")[:2],
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
        return (
            out
            / "maps"
            / _file_name(dataset)
            / "ablation"
            / _file_name(self.base.name)
            / f"{self.component}-{self.key}"
        )

    @property
    def method(self) -> str:
        return our_name(self.base.name) if self.component == FULL else f"{self.component} ({self.base.name})"


def relearnings(base: BaseSpec, components=(FULL,)) -> list[Relearning]:
    return [
        Relearning(
            base,
            name,
            base.relearn,
            _merged(base.relearn.overrides, component(name).overrides),
            component(name).extra_pool,
        )
        for name in components
    ]


@dataclass(frozen=True)
class DatasetFiles:
    images: dict[str, Path]  #: by stem
    masks: dict[str, Path]  #: by image stem (the dataset's mask prefix and suffix removed)
    ids: list[str]  #: sorted stems with an image and a mask


def dataset_files(dataset: DatasetSpec) -> DatasetFiles:
    images = list_by_stem(dataset.images)
    masks = list_by_stem(dataset.gt, suffix=dataset.mask_suffix)
    masks = {
        stem[len(dataset.mask_prefix) :]: path for stem, path in masks.items() if stem.startswith(dataset.mask_prefix)
    }
    return DatasetFiles(images, masks, sorted(set(images) & set(masks)))


# --- units of work: one training or one wrap, run by the executor ---------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """What every unit of a table shares: the adapter files to load, the device, the cache folder."""

    adapter_files: tuple[Path, ...]
    device: str
    cache: str | None

    def workspace(self):
        from ..cache import Cache
        from ..workspace import Workspace

        return Workspace(Cache() if self.cache is None else Cache(self.cache), self.device)

    def adapter(self, name: str, options: Mapping[str, Any]):
        from ..base import select_base

        return select_base(name, self.adapter_files, options.get("maps"))


@dataclass(frozen=True)
class TrainUnit:
    adapter: str
    options: Mapping[str, Any]
    images: tuple[Path, ...]
    masks: tuple[tuple[Path, Path], ...]  #: (image, mask) of every training image
    pools: tuple[tuple[Path, ...], ...]
    overrides: Mapping[str, Any]
    checkpoint: Path
    owner: str  #: what it is for, in messages

    weight = 1

    def run(self, settings: RunSettings, progress=None) -> dict:
        """Train the re-learner and write its checkpoint; ``{"error": message}`` when it cannot be."""
        from ..api import train
        from ..checkpoint import save_checkpoint
        from ..config import default_config

        try:
            report = train(
                self.images,
                dict(self.masks),
                settings.adapter(self.adapter, self.options),
                pools=self.pools,
                options=dict(self.options),
                config=default_config().with_overrides(self.overrides),
                workspace=settings.workspace(),
            )
            save_checkpoint(report.relearner, self.checkpoint)
        except RelearnError as exc:
            return {"error": str(exc)}
        return {"base_failures": [str(failure) for failure in report.base_failures]}


@dataclass(frozen=True)
class WrapUnit:
    adapter: str
    options: Mapping[str, Any]
    images: tuple[Path, ...]
    pools: tuple[tuple[Path, ...], ...]
    checkpoint: Path
    out: Path

    @property
    def weight(self) -> int:
        return len(self.images)

    def run(self, settings: RunSettings, progress=None) -> dict:
        """Wrap the images into ``out``; ``{"error": message}`` when it cannot be."""
        from ..api import wrap
        from ..checkpoint import load_checkpoint

        def write(outcome) -> None:
            write_map(self.out / f"{outcome.entry.name}.png", outcome.saliency)

        def advance(stage: str, done: int, total: int) -> None:
            if progress is not None and stage == "wrap":
                progress(1)

        try:
            adapter = settings.adapter(self.adapter, self.options)
            relearner = load_checkpoint(self.checkpoint, adapter.name, settings.device)
            report = wrap(
                self.images,
                relearner,
                adapter,
                pools=self.pools,
                options=dict(self.options),
                workspace=settings.workspace(),
                progress=advance,
                write=write,
            )
        except RelearnError as exc:
            return {"error": str(exc)}
        return {
            "written": len(report.written),
            "kept_base": len(report.kept_base),
            "base_failures": [str(failure) for failure in report.base_failures],
        }


def _run_unit(settings: RunSettings, unit) -> dict:
    return unit.run(settings)


def _run_units(executor, settings: RunSettings, units: list, bar: tqdm) -> list[dict]:
    """Every unit's result, in order: in this process one after another (each its images side by side, the bar
    advancing per image of a wrap), else by the executor (the bar advancing as units finish)."""
    if executor is None:
        results = []
        for unit in units:
            results.append(unit.run(settings, bar.update))
            if isinstance(unit, TrainUnit):
                bar.update(unit.weight)
        return results
    import functools

    results = []
    for unit, result in zip(units, executor.map(functools.partial(_run_unit, settings), units)):
        results.append(result)
        bar.update(unit.weight)
    return results


# --- the stages --------------------------------------------------------------------------------------------------


class _Planner:
    def __init__(
        self,
        config: TableConfig,
        out: Path,
        jobs: int,
        cache: str | None,
        progress: bool,
        ablation: AblationSpec | None,
        executor: str | None,
        overwrite: bool,
    ):
        from ..base import resolve_device

        self.config = config
        self.out = out
        self.jobs = max(1, jobs)
        self.progress = progress
        self.ablation = ablation
        self.device = resolve_device(config.device)
        self.settings = RunSettings(tuple(config.adapter_files), self.device, cache)
        self.executor_kind = executor
        self.overwrite = overwrite
        self._executor = None
        self.prep = Preparation(config)
        self.datasets = [d for d in config.datasets if d.gt.is_dir()]  # build_table reports the others

    @property
    def executor(self):
        """Where units run: None (this process) for one job without a named executor; else processes (or the named
        executor) with ``jobs`` workers."""
        if self._executor is None and (self.jobs > 1 or self.executor_kind not in (None, "threads")):
            from ..executors import make_executor

            kind = self.executor_kind if self.executor_kind not in (None, "threads") else "processes"
            self._executor = make_executor(kind, self.jobs)
        return self._executor

    def bar(self, stage: str, total: int, unit: str) -> tqdm:
        return tqdm(total=total, desc=stage, unit=unit, leave=True, disable=None if self.progress else True)

    def files(self, dataset: DatasetSpec) -> DatasetFiles:
        if dataset.images is None or not dataset.images.is_dir():
            raise InputError(
                dataset.images or dataset.gt.parent,
                f"images of {dataset.name} not found (needed to run a base or re-learn)",
            )
        return dataset_files(dataset)

    # computed base maps ------------------------------------------------------------------------------------------

    def computed_maps_dir(self, base: BaseSpec, dataset: str) -> Path:
        return self.out / "maps" / _file_name(dataset) / _file_name(base.name)

    def base_maps(self) -> None:
        from ..api import predict
        from ..base import BaseMapFailure

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
                adapter = self.settings.adapter(base.adapter, base.options)
                keep = claim_map_folder(folder, map_settings("table", adapter, base.options), self.overwrite)
                done = set(list_by_stem(folder)) if keep and folder.is_dir() else set()
                counts.reused += len(done & set(images))
                missing = [images[stem] for stem in sorted(images) if stem not in done]
                if missing:
                    todo.append((base, dataset, folder, missing))
        with self.bar("base maps", sum(len(item[3]) for item in todo), "image") as bar:
            for base, dataset, folder, missing in todo:
                failures = []
                adapter = self.settings.adapter(base.adapter, base.options)
                for path, outcome in predict(
                    missing, adapter, options=dict(base.options), workspace=self.settings.workspace()
                ):
                    if isinstance(outcome, BaseMapFailure):
                        failures.append(str(outcome))
                        counts.failed += 1
                    else:
                        write_map(folder / f"{Path(path).stem}.png", outcome)
                        counts.computed += 1
                    bar.update(1)
                if failures:
                    self.prep.warnings.append(
                        f"{base.name} on {dataset.name}: the base failed on {len(failures)} images, e.g. {failures[0]}"
                    )
                    if len(failures) == len(missing) and not folder.is_dir():
                        self.prep.errors[(base.name, dataset.name)] = failures[0]

    def base_options(self, base: BaseSpec, datasets: list[str], extra: tuple[Path, ...] = ()) -> dict:
        """The adapter options for running ``base`` on images of ``datasets`` (and of the maps folders ``extra``): a
        maps-based base gets the maps folders of all of them, searched in that order."""
        options = dict(base.options)
        if base.computes:
            return options
        folders = [base.maps[name] for name in datasets if name in base.maps] + list(extra)
        if len(folders) == 1:
            options["maps"] = str(folders[0])
        elif folders:
            options["maps"] = [str(folder) for folder in folders]
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
        train_units, wrap_plan = [], []
        for variant in variants:
            plan = self.plan_variant(variant)
            for unit in plan["train"]:
                if unit.checkpoint.is_file():
                    train_counts.reused += 1
                else:
                    train_units.append(unit)
            wrap_plan += plan["wrap"]
        with self.bar("train", len(train_units), "checkpoint") as bar:
            results = _run_units(self.executor, self.settings, train_units, bar)
        failed_checkpoints = {}
        for unit, result in zip(train_units, results):
            if "error" in result:
                train_counts.failed += 1
                failed_checkpoints[unit.checkpoint] = result["error"]
                self.prep.warnings.append(f"training {unit.owner} failed: {result['error']}")
            else:
                train_counts.computed += 1
                if result["base_failures"]:
                    self.prep.warnings.append(
                        f"training {unit.owner}: the base failed on "
                        f"{len(result['base_failures'])} images (left out), e.g. "
                        f"{result['base_failures'][0]}"
                    )
        wrap_units, wrap_owner = [], []
        for variant, dataset, unit in wrap_plan:
            if unit.checkpoint in failed_checkpoints or not unit.checkpoint.is_file():
                wrap_counts.skipped += unit.weight
                problem = failed_checkpoints.get(unit.checkpoint, f"{unit.checkpoint}: checkpoint not found")
                self.fail(variant, dataset, f"its re-learner could not be trained: {problem}")
                continue
            parts = self.split(unit)
            wrap_units += parts
            wrap_owner += [(variant, dataset)] * len(parts)
        with self.bar("wrap", sum(unit.weight for unit in wrap_units), "image") as bar:
            results = _run_units(self.executor, self.settings, wrap_units, bar)
        for unit, (variant, dataset), result in zip(wrap_units, wrap_owner, results):
            if "error" in result:
                wrap_counts.failed += unit.weight
                self.fail(variant, dataset, result["error"])
                continue
            wrap_counts.computed += result["written"]
            if result["base_failures"]:  # targets without a map show in the table's warnings; pool images here
                self.prep.warnings.append(
                    f"{variant.method} on {dataset}: the base failed on "
                    f"{len(result['base_failures'])} images, e.g. {result['base_failures'][0]}"
                )
        for variant in variants:
            for dataset in self.wanted(variant):
                folder = variant.maps_dir(self.out, dataset.name)
                if (variant.method, dataset.name) not in self.prep.errors and not (
                    folder.is_dir() and any(folder.iterdir())
                ):
                    self.fail(
                        variant,
                        dataset.name,
                        f"no {variant.method} map could be made for {dataset.name} (see the warnings above)",
                    )

    def fail(self, variant: Relearning, dataset: str, problem: str) -> None:
        self.prep.errors.setdefault((variant.method, dataset), problem)

    def wanted(self, variant: Relearning) -> list[DatasetSpec]:
        """The datasets a variant is wrapped on: every one for Our(X), Fig. 11's for a component."""
        if variant.component == FULL:
            return self.datasets
        return [d for d in self.datasets if d.name in self.ablation.datasets]

    def plan_variant(self, variant: Relearning) -> dict:
        """The checkpoints to train and the images to wrap for one variant."""
        spec, base = variant.spec, variant.base
        plan = {"train": [], "wrap": []}
        extra_pools = tuple(tuple(images_in(folder).values()) for folder in variant.pools)
        wrap_counts = self.prep.counts["Our(X) maps"]
        # a given checkpoint is used as it is: its training images are unknown here, so there is no k-fold
        training = self.config.dataset(spec.train) if spec.train and spec.checkpoint is None else None
        full_checkpoint = variant.checkpoint(self.out, None)
        full_pool: tuple[tuple[Path, ...], ...] = ()
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
            all_images = tuple(images[i] for i in ids)
            full_pool = (all_images, *extra_pools)
            full_training = TrainUnit(
                base.adapter,
                options,
                all_images,
                tuple((images[i], masks[i]) for i in ids),
                extra_pools,
                variant.overrides,
                full_checkpoint,
                f"{variant.method} on all of its training set",
            )
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
                if not held:  # a fold whose maps are all there needs no re-learner
                    continue
                checkpoint = variant.checkpoint(self.out, k)
                train_images = tuple(images[i] for i in train_ids)
                plan["train"].append(
                    TrainUnit(
                        base.adapter,
                        options,
                        train_images,
                        tuple((images[i], masks[i]) for i in train_ids),
                        extra_pools,
                        variant.overrides,
                        checkpoint,
                        f"{variant.method} fold {k} of {training.name}",
                    )
                )
                plan["wrap"].append(
                    (
                        variant,
                        training.name,
                        WrapUnit(
                            base.adapter,
                            options,
                            tuple(images[i] for i in held),
                            (train_images, *extra_pools),
                            checkpoint,
                            out_dir,
                        ),
                    )
                )
        elif spec.train_images is not None:
            options = dict(base.options)
            if spec.train_maps is not None:
                options["maps"] = str(spec.train_maps)
            train_images = tuple(images_in(spec.train_images).values())
            masks = list_by_stem(spec.train_gt)
            full_training = TrainUnit(
                base.adapter,
                options,
                train_images,
                tuple((path, masks[path.stem]) for path in train_images if path.stem in masks),
                extra_pools,
                variant.overrides,
                full_checkpoint,
                f"{variant.method} on all of its training set",
            )
            full_pool = (train_images, *extra_pools)
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
            todo = tuple(images[stem] for stem in sorted(images) if stem not in done)
            if not todo:
                continue
            names = [dataset.name] + ([training.name] if training is not None else [])
            extra = (spec.train_maps,) if training is None and spec.train_maps is not None else ()
            options = self.base_options(base, names, extra)
            pools = full_pool or (tuple(images[stem] for stem in sorted(images)), *extra_pools)
            plan["wrap"].append(
                (variant, dataset.name, WrapUnit(base.adapter, options, todo, pools, full_checkpoint, out_dir))
            )
            others += 1
        if others and full_training is not None:
            plan["train"].append(full_training)
        return plan

    def split(self, unit: WrapUnit) -> list[WrapUnit]:
        """A wrap unit cut into one part per worker, so that its images run in parallel."""
        workers = self.executor.workers if self.executor is not None else 1
        if workers <= 1 or unit.weight < 2:
            return [unit]
        parts = min(workers, unit.weight)
        return [replace(unit, images=unit.images[index::parts]) for index in range(parts)]

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
                methods.append(
                    MethodSpec(
                        variant.method, {d.name: variant.maps_dir(self.out, d.name) for d in self.config.datasets}
                    )
                )
        return (*methods, *self.config.methods)


def prepare(
    config: TableConfig,
    out_dir: str | os.PathLike,
    *,
    jobs: int = 1,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    ablation: AblationSpec | None = None,
    executor: str | None = None,
    overwrite: bool = False,
) -> Preparation:
    """Make every map the table needs that is not there yet (base maps, re-learners, Our(X) maps; Fig. 11's
    components when ``ablation`` is given), and return the table's methods.

    A failure is confined to its cells: they carry the problem in ``errors`` and the rest goes on.
    ``cache``: the on-disk cache folder (None: ``$RELEARN_CACHE`` or ``~/.cache/relearn``). A folder of computed
    base maps made with other settings stops the run (relearn_core/outputs.py) unless ``overwrite``; the Our(X)
    folders are named by a hash of their settings.
    """
    out = Path(out_dir)
    planner = _Planner(
        config, out, jobs, None if cache is None else str(cache), progress, ablation, executor, overwrite
    )
    try:
        planner.base_maps()
        planner.relearn()
    finally:
        if planner._executor is not None:
            planner._executor.close()
    prep = planner.prep
    prep.config = replace(config, methods=planner.methods())
    if ablation is not None:
        base = next(b for b in config.bases if b.name == ablation.base)
        prep.ablation["C1"] = next(m for m in prep.config.methods if m.name == base.name)
        for variant in relearnings(base, (*ABLATION_COMPONENTS, FULL)):
            prep.ablation[variant.component] = MethodSpec(
                variant.method, {name: variant.maps_dir(out, name) for name in ablation.datasets}
            )
    return prep
