"""The ``relearn`` command line: a thin shell over the Python API in the stage modules."""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from . import __version__
from .errors import RelearnError


def reports_errors(command):
    """Turn a RelearnError into one line on stderr and exit status 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RelearnError as exc:
            click.echo(f"relearn: error: {exc}", err=True)
            sys.exit(2)

    return wrapper


class _Messages(logging.Handler):
    """What relearn's stages and adapters tell the user (the ``relearn`` logger): one clean line each, on stderr, each
    distinct message once per command."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text not in self.seen:
            self.seen.add(text)
            warning = "warning: " if record.levelno >= logging.WARNING else ""
            click.echo(f"relearn: {warning}{text}", err=True)


def _quiet(quiet: bool) -> None:
    """--quiet: the stages' warnings still show, their notes do not."""
    logging.getLogger("relearn").setLevel(logging.WARNING if quiet else logging.INFO)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relearn")
def main():
    """relearn: make a salient object detection model better by multiple instance joint re-learning."""
    logger = logging.getLogger("relearn")
    for handler in [h for h in logger.handlers if isinstance(h, _Messages)]:
        logger.removeHandler(handler)
    logger.addHandler(_Messages())
    logger.setLevel(logging.INFO)


# --- base models (adapters): the options every command that names a base shares, `adapters`, `predict` ---


@dataclass(frozen=True)
class BaseChoice:
    """The base model named on the command line by the options of :func:`base_options`."""

    name: str
    maps: Path | None = None
    network: Path | None = None
    adapter_files: tuple[Path, ...] = ()
    device: str = "auto"
    extra: tuple[tuple[str, object], ...] = ()

    def adapter(self):
        """Load the ``--adapter`` files and find the base (RelearnError when it is unknown or lacks its maps)."""
        from .base import select_base

        return select_base(self.name, self.adapter_files, self.maps)

    def options(self) -> dict:
        """The user's options for the adapter: ``--maps``, ``--network`` (option ``model``), every ``--base-option``."""
        chosen = dict(self.extra)
        if self.maps is not None:
            chosen["maps"] = str(self.maps)
        if self.network is not None:
            chosen["model"] = str(self.network)
        return chosen


def _parse_base_option(ctx, param, values):
    import yaml

    parsed = []
    for text in values:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{text!r}: expected KEY=VALUE", ctx=ctx, param=param)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return tuple(parsed)


EXECUTOR = click.option(
    "--executor",
    type=click.Choice(["threads", "processes", "ray"]),
    default=None,
    help="Where the work runs (default $RELEARN_EXECUTOR, else threads): threads of this "
    "process, processes, or a Ray cluster ($RAY_ADDRESS, else a local one).",
)
WORKERS = click.option(
    "--workers",
    "executor_workers",
    type=click.IntRange(min=1),
    default=None,
    help="Images worked on at once (default: the CPU cores; one on a GPU).",
)


def _workspace(device: str, no_cache: bool, executor: str | None, workers: int | None):
    from .cache import Cache
    from .executors import make_executor
    from .workspace import Workspace

    return Workspace(Cache(None) if no_cache else Cache(), device, make_executor(executor, workers, device))


OVERWRITE = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace what --out holds although it was made with other settings (or is not relearn's).",
)


ADAPTER_FILES = click.option(
    "--adapter",
    "adapter_files",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Load adapters from this Python file (repeatable).",
)


def base_options(command):
    """Add --base, --maps, --network, --adapter, --device and --base-option to a command; it receives
    ``base: BaseChoice``."""

    @functools.wraps(command)
    def wrapper(*args, base, maps, network, adapter_files, device, base_option, **kwargs):
        choice = BaseChoice(base, maps, network, tuple(adapter_files), device, base_option)
        return command(*args, base=choice, **kwargs)

    decorators = [
        click.option(
            "--base", required=True, metavar="NAME", help="Base model (adapter); see `relearn adapters list`."
        ),
        click.option("--maps", type=click.Path(path_type=Path), help="Folder of the base's precomputed maps."),
        click.option(
            "--network", type=click.Path(path_type=Path), help="Network file, for the onnx / torchscript bases."
        ),
        ADAPTER_FILES,
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto."),
        click.option(
            "--base-option",
            "base_option",
            multiple=True,
            metavar="KEY=VALUE",
            callback=_parse_base_option,
            help="An option of the adapter (repeatable; the value is read as YAML).",
        ),
    ]
    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper


@main.group()
def adapters():
    """Base models: list them, show one, scaffold a new one."""


@adapters.command("list")
@click.argument("pattern", required=False, default="*")
@ADAPTER_FILES
@reports_errors
def adapters_list(pattern, adapter_files):
    """List adapters whose name matches PATTERN (wildcards * ? [..]): name, source, version, description."""
    from . import plugins

    for path in adapter_files:
        plugins.load_adapter_file(path)
    found = plugins.list_adapters(pattern)
    if not found:
        click.echo(f"relearn: no adapter matches {pattern!r}", err=True)
        sys.exit(1)
    name_width = max(len(adapter.name) for adapter in found)
    source_width = max(len(str(adapter.source)) for adapter in found)
    for adapter in found:
        version = adapter.source.version or "-"
        click.echo(
            f"{adapter.name:<{name_width}}  {str(adapter.source):<{source_width}}  {version:<8}  "
            f"{adapter.info.description}"
        )


@adapters.command("show")
@click.argument("name")
@ADAPTER_FILES
@reports_errors
def adapters_show(name, adapter_files):
    """Everything known about the adapter NAME (and its published scores when registry.yaml has them)."""
    from . import plugins
    from .registry import load_registry

    for path in adapter_files:
        plugins.load_adapter_file(path)
    adapter = plugins.get_adapter(name)
    info = adapter.info
    rows = [
        ("name", info.name),
        ("description", info.description),
        ("paper", info.paper),
        ("venue", " ".join(str(part) for part in (info.venue, info.year) if part)),
        ("predicts from", info.predicts_from),
        ("source", str(adapter.source)),
        ("version", adapter.source.version or "-"),
    ]
    rows += [(f"option {key}", repr(value)) for key, value in info.options.items()]
    registry = load_registry()
    entry = registry.baseline(info.name)
    if entry is not None:
        rows += [
            (f"published {dataset}", f"max F {score.max_f:.3f}  MAE {score.mae:.3f}")
            for dataset, score in entry.published.items()
        ]
        if entry.published:
            rows.append(("scores from", registry.published_source))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        if value:
            click.echo(f"{label:<{width}}  {value}")


@adapters.command("new")
@click.argument("name")
@click.option(
    "--dir", "folder", required=True, type=click.Path(path_type=Path), help="Folder to create the package in."
)
@reports_errors
def adapters_new(name, folder):
    """Scaffold an installable adapter package NAME in --dir: pyproject with the entry point, hook module, test."""
    from .scaffold import scaffold_adapter

    for path in scaffold_adapter(name, folder):
        click.echo(f"wrote {path}")
    click.echo(f"next: pip install -e {folder} && pytest {folder} && relearn adapters list {name}")


@main.command()
@base_options
@click.option("--images", "images_dir", required=True, type=click.Path(path_type=Path), help="Folder of images.")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for the maps (PNG, image stems)."
)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Images per adapter call.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the on-disk cache of computed maps.")
@EXECUTOR
@WORKERS
@OVERWRITE
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@reports_errors
def predict(base, images_dir, out_dir, batch_size, no_cache, executor, executor_workers, overwrite, quiet):
    """Write the base model's saliency maps of the images as 8-bit PNGs named by image stem.

    Maps already in --out are kept when they were made with the same settings (an interrupted run resumes).
    Images that fail are listed at the end and the exit status is 1.
    """
    _quiet(quiet)
    from .api import predict as predict_maps
    from .base import BaseMapFailure, resolve_device
    from .imageio import images_in, write_map
    from .outputs import claim_map_folder, map_settings, probe_writable, refuse_overlap

    adapter = base.adapter()
    images = images_in(images_dir)
    refuse_overlap(out_dir, [images_dir, base.maps, base.network])
    probe_writable(out_dir, folder=True)
    keep = claim_map_folder(out_dir, map_settings("predict", adapter, base.options()), overwrite)
    todo = [path for stem, path in images.items() if not (keep and (Path(out_dir) / f"{stem}.png").exists())]
    failures: list[BaseMapFailure] = []
    device = resolve_device(base.device)
    outcomes = predict_maps(
        todo,
        adapter,
        options=base.options(),
        batch_size=batch_size,
        workspace=_workspace(device, no_cache, executor, executor_workers),
    )
    progress = StageProgress(quiet)
    try:
        for count, (path, outcome) in enumerate(outcomes, 1):
            if isinstance(outcome, BaseMapFailure):
                failures.append(outcome)
            else:
                write_map(Path(out_dir) / f"{path.stem}.png", outcome)
            progress(f"predict {adapter.name}", count, len(todo))
    finally:
        progress.close()
    done = len(todo) - len(failures)
    click.echo(f"{adapter.name}: wrote {done} maps to {out_dir} ({len(images) - len(todo)} were already there)")
    if failures:
        click.echo(f"relearn: {len(failures)} of {len(todo)} images failed:", err=True)
        by_problem: dict[str, list] = {}
        for failure in failures:
            by_problem.setdefault(failure.problem, []).append(failure)
        for problem, group in by_problem.items():
            if len(group) == 1:
                click.echo(f"  {group[0]}", err=True)
            else:  # one line per distinct problem, e.g. a model file that cannot be loaded fails every image alike
                names = ", ".join(failure.image.name for failure in group)
                click.echo(f"  base {adapter.name!r} failed on {len(group)} images ({names}): {problem}", err=True)
        sys.exit(1)


# --- evaluation: `eval` and `table` ---


@main.command("eval")
@click.option("--pred", "pred_dir", required=True, type=click.Path(path_type=Path), help="Folder of saliency maps.")
@click.option(
    "--gt",
    "gt_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of ground-truth masks, matched to the maps by file stem.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every score, its definition and the input problems as JSON.",
)
@click.option(
    "--per-image",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write one CSV row of scores per image.",
)
@click.option(
    "--curves",
    "curves_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the PR, ROC, F- and E-vs-threshold curves as .npz.",
)
@click.option("--suffix", default="", help="Strip this from map stems before matching (maps named <id>_dss.png: _dss).")
@click.option("--resize", is_flag=True, help="Resize maps to their mask's size instead of skipping them.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads reading and scoring maps.")
@click.option(
    "--strict", is_flag=True, help="Exit 1 when any mask has no scored map or any pair was skipped (for scripts)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@reports_errors
def eval_command(pred_dir, gt_dir, json_path, csv_path, curves_path, suffix, resize, workers, strict, quiet):
    """Score saliency maps against masks: max/mean/adaptive F (dataset- and image-level), MAE, AUC, S, E, weighted F.

    Unreadable files, maps or masks without a partner, colour masks and size mismatches are reported one line each
    and skipped; the exit status is 2 when no pair could be scored.
    """
    _quiet(quiet)
    from .evaluation.evaluate import (
        evaluate_folders,
        format_summary,
        write_curves,
        write_json,
        write_per_image_csv,
    )
    from .outputs import probe_writable, refuse_overlap

    for path in (json_path, csv_path, curves_path):
        if path is not None:
            refuse_overlap(path, [pred_dir, gt_dir])
            probe_writable(path, folder=False)
    report = evaluate_folders(pred_dir, gt_dir, resize=resize, suffix=suffix, progress=not quiet, workers=workers)
    for line in report.messages():
        click.echo(f"relearn: {line}", err=True)
    if not report.count:
        raise RelearnError(
            f"{pred_dir}: nothing could be evaluated against {gt_dir} "
            f"({len(report.skipped)} pairs skipped, {len(report.unmatched_maps)} maps without mask)"
        )
    click.echo(format_summary(report))
    for path, write in ((json_path, write_json), (csv_path, write_per_image_csv), (curves_path, write_curves)):
        if path is not None:
            write(report, path)
            click.echo(f"wrote {path}")
    if strict and (report.skipped or report.unmatched_masks or report.unmatched_maps):
        sys.exit(1)


@main.command("table")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for table.md/.csv/.tex, scores.json, figures/, and the maps, checkpoints it makes.",
)
@click.option(
    "--metrics",
    default=None,
    metavar="LIST",
    help="Comma-separated scores for the columns (default: the config's, else max_f,mae,auc).",
)
@click.option(
    "--ablation",
    is_flag=True,
    help="Also train and draw Fig. 11's components C1..C6 (the config's "
    "`ablation:` base and datasets, else the first re-learned base).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Re-learners trained and wrapped at once (in processes, or on Ray with --executor ray).",
)
@click.option("--no-relearn", is_flag=True, help="Leave out the Our(X) variants: score the bases and methods only.")
@EXECUTOR
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache folder (default $RELEARN_CACHE or ~/.cache/relearn).",
)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads reading and scoring maps.")
@OVERWRITE
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@reports_errors
def table_command(config, out_dir, metrics, ablation, jobs, no_relearn, executor, cache_dir, workers, overwrite, quiet):
    """The paper's comparison from a YAML CONFIG: tables (Markdown, CSV, LaTeX) and PR / F-vs-threshold figures.

    Trains the re-learners that have no checkpoint and wraps the images that have no Our(X) map (k-fold on a dataset
    used for training), then scores every cell. Missing maps leave a cell empty; maps that cannot be scored make the
    cell an error; the rest of the table is produced. Only missing work is done on a rerun.
    """
    _quiet(quiet)
    import dataclasses

    from .evaluation.regenerate import StageCounts, prepare
    from .evaluation.table import (
        ablation_figures,
        build_table,
        default_ablation,
        load_config,
        published_rows,
        write_table,
    )

    table_config = load_config(config)
    if metrics:
        table_config = table_config.with_metrics([name.strip() for name in metrics.split(",") if name.strip()])
    if no_relearn:
        table_config = dataclasses.replace(
            table_config, bases=tuple(dataclasses.replace(base, relearn=None) for base in table_config.bases)
        )
    components = (table_config.ablation or default_ablation(table_config)) if ablation else None
    preparation = prepare(
        table_config,
        out_dir,
        jobs=jobs,
        cache=cache_dir,
        progress=not quiet,
        ablation=components,
        executor=executor,
        overwrite=overwrite,
    )
    result = build_table(preparation.config, progress=not quiet, workers=workers, errors=preparation.errors)
    for line in preparation.warnings + result.warnings:
        click.echo(f"relearn: warning: {line}", err=True)
    written = write_table(result, out_dir)
    if components is not None:
        figures, notes = ablation_figures(
            preparation.ablation, preparation.config, components.datasets, out_dir, workers
        )
        written += figures
        for line in notes:
            click.echo(f"relearn: warning: {line}", err=True)
    for path in written:
        click.echo(f"wrote {path}")
    for row in published_rows(result):
        diff_f, diff_mae = row.differences()
        measured = (
            "not measured"
            if row.measured_max_f is None
            else f"max F {row.measured_max_f:.3f} ({diff_f:+.3f}), MAE {row.measured_mae:.3f} ({diff_mae:+.3f})"
        )
        click.echo(
            f"{row.method} on {row.dataset}: published max F {row.published_max_f:.3f}, MAE "
            f"{row.published_mae:.3f}; measured {measured}"
        )
    cells = StageCounts("cells")
    cells.computed = sum(report is not None for report in result.reports.values())
    cells.failed = len(result.errors)
    cells.skipped = len(preparation.config.methods) * len(preparation.config.datasets) - cells.computed - cells.failed
    click.echo(
        "summary: "
        + "; ".join(counts.line(stage) for stage, counts in [*preparation.counts.items(), ("table cells", cells)])
    )


# --- re-learning: `train` and `wrap` (relearn_core/api.py) ---


class StageProgress:
    """``progress(stage, done, total)`` of the API shown as one bar per stage on a terminal (with an ETA), and as a
    plain line per tenth of a stage elsewhere; nothing with ``--quiet``."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.terminal = sys.stderr.isatty()
        self.bars: dict = {}
        self.shown: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet or total <= 0:
            return
        if self.terminal:
            from tqdm import tqdm

            bar = self.bars.get(stage)
            if bar is None:
                bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="item", file=sys.stderr, leave=True)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()
            return
        tenth = done * 10 // total
        if tenth > self.shown.get(stage, -1) or done == total:
            self.shown[stage] = tenth
            click.echo(f"{stage} {done}/{total}", err=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _echo_run_report(report, what: str) -> None:
    if report.unreadable:
        click.echo(f"relearn: {len(report.unreadable)} images skipped (unreadable, or too small):", err=True)
        for path, problem in report.unreadable:
            click.echo(f"  {path}: {problem}", err=True)
    if report.duplicates:
        click.echo(
            f"relearn: {len(report.duplicates)} images are copies of others (used once): "
            f"{', '.join(report.duplicates)}",
            err=True,
        )
    if report.base_failures:
        click.echo(f"relearn: the base failed on {len(report.base_failures)} images (left out):", err=True)
        for failure in report.base_failures:
            click.echo(f"  {failure}", err=True)
    if report.missing_gt:
        click.echo(
            f"relearn: {len(report.missing_gt)} training images have no ground truth (skipped as targets, "
            f"kept in the pool): {', '.join(report.missing_gt)}",
            err=True,
        )
    pool = f"; pool of {report.pool_size} images" if report.pool_size else ""
    click.echo(f"{what}{pool}; time by stage, {report.timings.summary()}")


def _labelled(images_dir: Path, gt_dir: Path) -> tuple[list[Path], dict[Path, Path]]:
    """The images of a folder and the masks of a folder matched to them by file stem."""
    from .imageio import images_in, list_by_stem

    images = images_in(images_dir)
    masks = list_by_stem(gt_dir)
    return list(images.values()), {path: masks[stem] for stem, path in images.items() if stem in masks}


@main.command("train")
@base_options
@click.option(
    "--images",
    "images_dirs",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder of training images (repeatable: several datasets, each with its --gt, in the same order).",
)
@click.option(
    "--gt",
    "gt_dirs",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder of the masks of the --images folder at the same place (same stems).",
)
@click.option(
    "--pool",
    "pools",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Extra unlabelled pool images (folder, repeatable); the training images are always in the pool.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Checkpoint to write (.pt).",
)
@click.option(
    "--backbone",
    default=None,
    help="Feature backbone (default: registry.yaml's relearn: section; handcrafted needs no weights, vgg16-hed is "
    "the paper's, u2netp carries U2-Net-p's saliency knowledge; a+b joins two).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML overriding fields of the re-learner's configuration (see relearn_core.config.RelearnConfig).",
)
@click.option("--no-cache", is_flag=True, help="Do not read or write the on-disk cache.")
@EXECUTOR
@WORKERS
@OVERWRITE
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@reports_errors
def train_command(
    base,
    images_dirs,
    gt_dirs,
    pools,
    out_path,
    backbone,
    config_path,
    no_cache,
    executor,
    executor_workers,
    overwrite,
    quiet,
):
    """Train a re-learner for a base model on labelled images (one or several datasets: their union, each picture
    once); write one checkpoint file."""
    _quiet(quiet)

    from .api import train
    from .base import resolve_device
    from .checkpoint import is_checkpoint, save_checkpoint
    from .config import default_config
    from .errors import InputError
    from .imageio import images_in
    from .outputs import probe_writable, refuse_overlap

    refuse_overlap(out_path, [*images_dirs, *gt_dirs, *pools, base.maps, base.network, config_path])
    if out_path.exists() and not overwrite and not is_checkpoint(out_path):
        raise InputError(out_path, "exists and is not a relearn checkpoint: give another --out, or --overwrite")
    probe_writable(out_path, folder=False)
    config = default_config()
    if config_path is not None:
        config = config.with_overrides_from(config_path)
    if backbone:
        config = config.with_overrides({"backbone": backbone})
    device = resolve_device(base.device)
    if len(images_dirs) != len(gt_dirs):
        raise RelearnError(
            f"{len(images_dirs)} --images folders but {len(gt_dirs)} --gt folders: give one --gt for "
            "each --images, in the same order"
        )
    images, masks = [], {}
    for images_dir, gt_dir in zip(images_dirs, gt_dirs):
        found, matched = _labelled(images_dir, gt_dir)
        images += found
        masks.update(matched)
    progress = StageProgress(quiet)
    try:
        report = train(
            images,
            masks,
            base.adapter(),
            pools=[list(images_in(p).values()) for p in pools],
            options=base.options(),
            config=config,
            workspace=_workspace(device, no_cache, executor, executor_workers),
            progress=progress,
        )
    finally:
        progress.close()
    save_checkpoint(report.relearner, out_path)
    _echo_run_report(report, f"wrote {out_path}")
    _echo_held_out(report.relearner)


def _echo_held_out(relearner) -> None:
    """What the held-out training images said of the re-learner (the choices of relearn_core/training.py)."""
    held = relearner.summary.get("held_out")
    if held is None:
        return
    images = relearner.summary.get("validation_images", 0)
    a, b, c = relearner.fusion
    views = relearner.config.knowledge_views
    knowledge = f"{relearner.knowledge}'s maps" + (f" over views {', '.join(views)}" if views else "")
    choice = relearner.summary.get("fusion_held_out") or {}
    sharpness = choice.get("sharpness", 1.0)
    start = (
        "the base maps"
        if relearner.fusion == (1.0, 0.0, 0.0)
        else (
            f"the base fused with {knowledge} (logit weights {a:.2f} and {b:.2f}, bias {c:.2f}"
            + (f": the learned fusion sharpened {sharpness:g}x)" if sharpness != 1.0 else ")")
        )
    )
    before, after = held["before"], held["after"]
    if "by_views" in choice:
        scored = ", ".join(
            f"{name} {score:.4f}" if score is not None else f"{name} not fused"
            for name, score in choice["by_views"].items()
        )
        click.echo(
            f"relearn: knowledge views {', '.join(views) or 'none'} chosen on its {images} held-out training images "
            f"(their start maps by {relearner.config.select}: {scored})",
            err=True,
        )
    if choice.get("kept") is False:
        fused, alone = choice["fused"], choice["base"]
        click.echo(
            f"relearn: on its {images} held-out training images the base fused with {knowledge} "
            f"(max F {fused['max_f']:.4f}, MAE {fused['mae']:.4f}) did not beat the base alone (max F "
            f"{alone['max_f']:.4f}, MAE {alone['mae']:.4f}): it corrects the base's own maps",
            err=True,
        )
    if not relearner.corrects and "best_epoch" in held:
        click.echo(
            f"relearn: on its {images} held-out training images the re-learner (epoch {held['best_epoch']}, shrink "
            f"{held['shrink']:g}) brought {start} from max F {before['max_f']:.4f} / MAE {before['mae']:.4f} to "
            f"{after['max_f']:.4f} / {after['mae']:.4f}, but only {held['confidence']:.0%} of bootstrap resamples "
            f"of them confirm the gain (needed: {relearner.config.confidence:.0%}): this re-learner writes them as "
            "they are",
            err=True,
        )
    elif not relearner.corrects:
        click.echo(
            f"relearn: on its {images} held-out training images no correction made {start} better (max F "
            f"{before['max_f']:.4f}, MAE {before['mae']:.4f}): this re-learner writes them as they are",
            err=True,
        )
    else:
        click.echo(
            f"relearn: on its {images} held-out training images the re-learner (epoch {held['epoch']}, shrink "
            f"{held['shrink']:g}) brings {start} from max F {before['max_f']:.4f} / MAE {before['mae']:.4f} to "
            f"{after['max_f']:.4f} / {after['mae']:.4f}",
            err=True,
        )


@main.command("wrap")
@base_options
@click.option(
    "--model",
    "checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Re-learner checkpoint (default: $RELEARN_HOME/models/<base>.pt, else the one shipped for the base).",
)
@click.option("--images", "images_dir", required=True, type=click.Path(path_type=Path), help="Folder of images.")
@click.option(
    "--pool",
    "pools",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Pool images (folder, repeatable); default: the other input images.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the Our(X) maps.",
)
@click.option("--no-cache", is_flag=True, help="Do not read or write the on-disk cache.")
@EXECUTOR
@WORKERS
@OVERWRITE
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@reports_errors
def wrap_command(base, checkpoint, images_dir, pools, out_dir, no_cache, executor, executor_workers, overwrite, quiet):
    """Write Our(X) maps: the base model's maps re-learned against a pool (PNG, image stems).

    Maps already in --out are kept when they were made with the same settings (an interrupted run resumes).
    Images with no usable neighbour keep their base map.
    """
    _quiet(quiet)
    from .api import wrap
    from .base import resolve_device
    from .checkpoint import default_checkpoint, load_checkpoint
    from .imageio import content_hash, images_in, write_map
    from .outputs import claim_map_folder, map_settings, probe_writable, refuse_overlap

    adapter = base.adapter()
    out_dir = Path(out_dir)
    checkpoint = checkpoint if checkpoint is not None else default_checkpoint(adapter.name)
    refuse_overlap(out_dir, [images_dir, *pools, base.maps, base.network, checkpoint])
    device = resolve_device(base.device)
    relearner = load_checkpoint(checkpoint, adapter.name, device)
    images = images_in(images_dir)
    probe_writable(out_dir, folder=True)
    settings = map_settings(
        "wrap",
        adapter,
        base.options(),
        checkpoint=content_hash(checkpoint),
        config=relearner.config.to_dict(),
        pools=[str(Path(p).resolve()) for p in pools] or "the input images",
    )
    keep = claim_map_folder(out_dir, settings, overwrite)
    _echo_held_out(relearner)
    done = [stem for stem in images if keep and (out_dir / f"{stem}.png").exists()]
    todo = [path for stem, path in images.items() if stem not in done]
    # without --pool the other input images are the pool, those already wrapped included
    pool_images = [list(images_in(p).values()) for p in pools] or [list(images.values())]
    progress = StageProgress(quiet)
    try:
        report = wrap(
            todo,
            relearner,
            adapter,
            pools=pool_images,
            options=base.options(),
            workspace=_workspace(device, no_cache, executor, executor_workers),
            progress=progress,
            write=lambda outcome: write_map(out_dir / f"{outcome.entry.name}.png", outcome.saliency),
        )
    finally:
        progress.close()
    why = "the re-learner does not correct" if not relearner.corrects else "no usable neighbour or nothing to correct"
    _echo_run_report(
        report,
        f"{adapter.name}: wrote {len(report.written)} maps to {out_dir} "
        f"({len(report.kept_base)} kept the map before correction: {why}; "
        f"{len(done)} were already there)",
    )
    requested = {str(path) for path in todo}
    failed = [path for path, _ in report.unreadable if path in requested]
    failed += [str(failure.image) for failure in report.base_failures if str(failure.image) in requested]
    if failed:  # a pool image that fails is reported, but every requested map was written
        sys.exit(1)
