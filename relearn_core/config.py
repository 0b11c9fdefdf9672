"""Everything that fixes a re-learner: one frozen record, stored in its checkpoint and checked when it is used."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path

from .correspondence.align import AlignParams
from .correspondence.flow import FLOW_GRID, SiftFlowParams
from .correspondence.regions import EDGEBOXES, PROPOSALS, SUPERPIXELS
from .correspondence.retrieval import NEIGHBOURS
from .errors import InputError, RelearnError
from .relearning.features import DEFAULT_BACKBONE, parse_view
from .relearning.joint import JointConfig
from .relearning.pair_filter import FilterConfig


@dataclass(frozen=True)
class CorrespondenceParams:
    """The correspondence stages' settings (paper Section III): retrieval, regions, SIFT Flow, alignment."""

    neighbours: int = NEIGHBOURS
    superpixels: int = SUPERPIXELS
    edge_boxes: int = EDGEBOXES
    proposals: int = PROPOSALS
    edge_method: str = "auto"
    flow_grid: int = FLOW_GRID
    align: AlignParams = AlignParams()
    flow: SiftFlowParams = SiftFlowParams()


@dataclass(frozen=True)
class RelearnConfig:
    """Everything that fixes a re-learner; stored in the checkpoint and checked when it is used."""

    backbone: str = DEFAULT_BACKBONE
    correspondence: CorrespondenceParams = CorrespondenceParams()
    #: "bilevel" (Eq. (1), top-K alternation), "flow" (SIFT Flow matches alone) or "none" (no correspondence: the
    #: re-learner sees each target superpixel alone, the ablation without the paper's inter-image idea)
    alignment: str = "bilevel"
    use_filter: bool = True  #: False: every aligned pair is kept (delta = 1), ablation C2
    #: "fused": the re-learner may correct any superpixel, by as much as its held-out training images allow, on the
    #: base fused with the backbone's own saliency map (when the backbone is a saliency network); "paper": the
    #: paper's join, the base corrected only where the two CRFs leave it unsure
    join: str = "fused"
    #: join "fused": views of each image whose knowledge maps are averaged with its own, "flip" (mirrored) or
    #: "scale=F" (the network's input resized by F): test-time augmentation, one more network pass per view
    knowledge_views: tuple[str, ...] = ()
    #: join "fused": other view sets training may take instead of ``knowledge_views``, e.g. [[flip, scale=1.4]]: the
    #: fusion is fitted over each, and the set whose fused map scores best by ``select`` on the held-out training
    #: images (ties: the earlier, ``knowledge_views`` first) becomes the re-learner's ``knowledge_views``. Each view
    #: costs wrap one more network pass per image, so a choice trades speed for what the held-out images show.
    knowledge_view_choices: tuple[tuple[str, ...], ...] = ()
    #: join "fused": factors the fused map's logit may be scaled by, one chosen with the fusion on held-out training
    #: images by ``select``. Logistic regression makes a calibrated, soft map; a sharper one keeps its ranking (so
    #: max F) and lowers the MAE. Capped so the map written in 8 bits keeps the ranking its curves are drawn from.
    sharpness: tuple[float, ...] = (1.0, 2.0, 4.0)
    min_unsure: float = 0.2  #: with join "paper": a superpixel is re-learned when this share of it is pseudo-GT unsure
    #: how far the correction may go (its logit scaled by s), one chosen with the epoch on held-out training images
    shrinks: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    #: what the epoch and the shrink are chosen by, on the held-out training images' final maps: "max_f-mae" (the
    #: dataset-level max F minus the MAE), "max_f" or "mae"
    select: str = "max_f-mae"
    #: a chosen correction is kept only when at least this share of bootstrap resamples of the held-out training
    #: images scores it above no correction by ``select`` (0: whenever it scores better): a few dozen held-out images
    #: can favour an epoch by luck (the default configuration, registry.yaml, sets 0.95)
    confidence: float = 0.0
    #: neighbours that are labelled training images lend their masks instead of their pseudo-GT (label transfer)
    label_transfer: bool = False
    filter: FilterConfig = FilterConfig()
    joint: JointConfig = JointConfig()

    def __post_init__(self):
        if not self.sharpness or min(self.sharpness) <= 0:
            raise RelearnError(f"sharpness: expected one or more factors above 0, got {list(self.sharpness)}")
        # YAML and checkpoints give lists: tuples keep the record hashable and equal to one built in Python
        object.__setattr__(self, "knowledge_views", tuple(self.knowledge_views))
        object.__setattr__(self, "knowledge_view_choices", tuple(tuple(views) for views in self.knowledge_view_choices))
        for view in {view for views in (self.knowledge_views, *self.knowledge_view_choices) for view in views}:
            parse_view(view)  # a bad name fails when the configuration is read, before any work

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, overrides: Mapping) -> RelearnConfig:
        """A copy with nested fields replaced, e.g. ``{"joint": {"epochs": 10}, "backbone": "vgg16-hed"}``."""

        def merge(base: dict, extra: Mapping, where: str) -> dict:
            for key, value in extra.items():
                if key not in base:
                    raise RelearnError(f"unknown configuration field {where + key!r}; known: {', '.join(base)}")
                base[key] = merge(dict(base[key]), value, f"{where}{key}.") if isinstance(base[key], dict) else value
            return base

        return RelearnConfig.from_dict(merge(self.to_dict(), overrides, ""))

    def with_overrides_from(self, path: str | os.PathLike) -> RelearnConfig:
        """A copy with the fields a YAML file sets (``--config``); a file that cannot be read as YAML is one
        InputError naming it."""
        import yaml

        try:
            overrides = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(path, f"cannot be read as YAML ({type(exc).__name__})") from None
        return self.with_overrides(overrides)

    @classmethod
    def from_dict(cls, values: Mapping) -> RelearnConfig:
        return _dataclass_from_dict(cls, values)


def default_config() -> RelearnConfig:
    """The configuration a re-learner gets when none is given: RelearnConfig's field defaults with the ``relearn:``
    section of registry.yaml (and of ``$RELEARN_REGISTRY``) laid over them, e.g. the backbone."""
    from .registry import load_registry

    registry = load_registry()
    try:
        return RelearnConfig().with_overrides(registry.relearn)
    except RelearnError as exc:
        raise RelearnError(f"{registry.paths[-1]}: 'relearn': {exc}") from None


def _dataclass_from_dict(cls, values: Mapping):
    """Rebuild a (nested) frozen dataclass from ``asdict`` output: nested records by their default's type, lists
    back to tuples where the default is a tuple. Fields absent from ``values`` keep their defaults."""
    known = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise RelearnError(f"unknown configuration fields {sorted(unknown)} for {cls.__name__}")
    built = {}
    for name, value in values.items():
        field_info = known[name]
        default = field_info.default if field_info.default is not MISSING else None
        if default is not None and is_dataclass(default) and isinstance(value, Mapping):
            value = _dataclass_from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        built[name] = value
    return cls(**built)
