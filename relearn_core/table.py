"""The comparison tables and curves of the paper (Tables II/III, Figs. 9/10) from folders of maps: ``relearn table``.

A YAML file names each dataset's ground-truth folder and each method's map folders::

    metrics: [max_f, mae, auc]        # optional: any score of `relearn eval` (default max_f, mae, auc)
    resize: false                     # optional: resize maps to their masks instead of skipping them
    datasets:
      SOD: data/SOD/gt                # short for {gt: data/SOD/gt}
      ECSSD: {gt: data/ECSSD/gt}
    methods:
      DSS: data/{dataset}/maps/DSS    # short for {maps: ...}: one folder pattern for every dataset
      Our(DSS):
        maps: {SOD: runs/our_dss/SOD, ECSSD: runs/our_dss/ECSSD}   # or one folder per dataset
        suffix: _our                  # optional: strip from map stems before matching

Relative paths are relative to the YAML file. Each cell is :func:`relearn_core.evaluate.evaluate_folders` on that
method's folder for that dataset, so it equals ``relearn eval`` on the same maps. A method named ``Our(X)`` is drawn
solid in the colour of ``X``, which is then drawn dashed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from tqdm import tqdm

from .errors import InputError, RelearnError
from .evaluate import DEFINITIONS, SCORE_KEYS, EvalReport, evaluate_folders
from .imageio import atomic_write_bytes

DEFAULT_METRICS = ("max_f", "mae", "auc")
LOWER_IS_BETTER = frozenset({"mae"})
METRIC_LABELS = {
    "max_f": "max F", "mean_f": "mean F", "adp_f": "adp F", "max_f_image": "max F (img)",
    "mean_f_image": "mean F (img)", "adp_f_image": "adp F (img)", "mae": "MAE", "auc": "AUC", "s_measure": "S",
    "max_e": "max E", "mean_e": "mean E", "adp_e": "adp E", "weighted_f": "wF",
}
RANK_COLOURS = ("red", "green", "blue")
"""LaTeX colours of the first, second and third value of a column, as in the paper's tables."""

_DATASET_KEYS = frozenset({"gt"})
_METHOD_KEYS = frozenset({"maps", "suffix"})
_TOP_KEYS = frozenset({"metrics", "resize", "datasets", "methods"})
_OUR = re.compile(r"^Our\((?P<base>.+)\)$")


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark dataset: its name and ground-truth folder."""

    name: str
    gt: Path


@dataclass(frozen=True)
class MethodSpec:
    """A method: its name and, per dataset name, the folder of its maps."""

    name: str
    maps: dict[str, Path]
    suffix: str = ""

    @property
    def base_name(self) -> str | None:
        """``X`` for a method named ``Our(X)``, else None."""
        match = _OUR.match(self.name)
        return match.group("base") if match else None


@dataclass(frozen=True)
class TableConfig:
    """A parsed table YAML file."""

    path: Path
    datasets: tuple[DatasetSpec, ...]
    methods: tuple[MethodSpec, ...]
    metrics: tuple[str, ...] = DEFAULT_METRICS
    resize: bool = False

    def with_metrics(self, metrics) -> "TableConfig":
        return replace(self, metrics=_check_metrics(self.path, list(metrics)))


def _check_metrics(path: Path, metrics) -> tuple[str, ...]:
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise InputError(path, "'metrics' must be a non-empty list of score names")
    unknown = [m for m in metrics if m not in SCORE_KEYS]
    if unknown:
        raise InputError(path, f"unknown metric {unknown[0]!r} (known: {', '.join(SCORE_KEYS)})")
    return tuple(metrics)


def _mapping(path: Path, value, where: str, allowed: frozenset[str] | None = None) -> dict:
    """``value`` checked to be a mapping whose keys are all in ``allowed`` (any keys when None)."""
    if not isinstance(value, dict):
        raise InputError(path, f"{where} must be a mapping")
    unknown = [] if allowed is None else sorted(str(key) for key in value if key not in allowed)
    if unknown:
        raise InputError(path, f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return value


def _folder(base: Path, value, path: Path, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, f"{where} must be a folder path")
    folder = Path(os.path.expandvars(os.path.expanduser(value)))
    return folder if folder.is_absolute() else base / folder


def load_config(path: str | os.PathLike) -> TableConfig:
    """Read and check a table YAML file; InputError (naming the file and the entry) when it is malformed."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(path, f"not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be read ({type(exc).__name__})") from None
    document = _mapping(path, document, "the file", _TOP_KEYS)
    base = path.parent

    datasets_entry = _mapping(path, document.get("datasets"), "'datasets'")
    if not datasets_entry:
        raise InputError(path, "'datasets' names no dataset")
    datasets = []
    for name, entry in datasets_entry.items():
        entry = {"gt": entry} if isinstance(entry, str) else entry
        entry = _mapping(path, entry, f"dataset {name!r}", _DATASET_KEYS)
        datasets.append(DatasetSpec(str(name), _folder(base, entry.get("gt"), path, f"dataset {name!r}: 'gt'")))
    names = [dataset.name for dataset in datasets]

    methods_entry = _mapping(path, document.get("methods"), "'methods'")
    if not methods_entry:
        raise InputError(path, "'methods' names no method")
    methods = []
    for name, entry in methods_entry.items():
        entry = {"maps": entry} if isinstance(entry, str) else entry
        entry = _mapping(path, entry, f"method {name!r}", _METHOD_KEYS)
        maps = entry.get("maps")
        where = f"method {name!r}: 'maps'"
        if isinstance(maps, str):
            folders = {dataset: _folder(base, maps.replace("{dataset}", dataset), path, where) for dataset in names}
        else:
            maps = _mapping(path, maps, where, frozenset(names))
            folders = {str(dataset): _folder(base, folder, path, f"{where} {dataset!r}")
                       for dataset, folder in maps.items()}
        suffix = entry.get("suffix", "")
        if not isinstance(suffix, str):
            raise InputError(path, f"method {name!r}: 'suffix' must be a string")
        methods.append(MethodSpec(str(name), folders, suffix))

    resize = document.get("resize", False)
    if not isinstance(resize, bool):
        raise InputError(path, "'resize' must be true or false")
    metrics = _check_metrics(path, document["metrics"]) if "metrics" in document else DEFAULT_METRICS
    return TableConfig(path, tuple(datasets), tuple(methods), metrics, resize)


@dataclass
class TableResult:
    """Every (method, dataset) cell's report (None where the maps were missing) and the warnings met."""

    config: TableConfig
    reports: dict[tuple[str, str], EvalReport | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def score(self, method: str, dataset: str, metric: str) -> float | None:
        report = self.reports.get((method, dataset))
        return report.scores[metric] if report is not None and report.count else None


def build_table(config: TableConfig, *, progress: bool = True, workers: int | None = None) -> TableResult:
    """Evaluate every method on every dataset. A missing or unusable folder leaves its cell empty, with a warning."""
    result = TableResult(config)
    cells = [(method, dataset) for dataset in config.datasets for method in config.methods]
    for method, dataset in tqdm(cells, desc="table", unit="cell", delay=2.0, leave=False,
                                disable=None if progress else True):
        folder = method.maps.get(dataset.name)
        report = None
        if folder is None:
            result.warnings.append(f"{config.path}: method {method.name!r} names no maps folder for {dataset.name}")
        elif not folder.is_dir():
            result.warnings.append(f"{folder}: no maps of {method.name} for {dataset.name} (folder missing); "
                                   "cell left empty")
        else:
            try:
                report = evaluate_folders(folder, dataset.gt, resize=config.resize, suffix=method.suffix,
                                          progress=False, workers=workers)
            except InputError as exc:
                result.warnings.append(f"{exc}; cell of {method.name} on {dataset.name} left empty")
            else:
                skipped = len(report.skipped) + len(report.unmatched_masks)
                if not report.count:
                    result.warnings.append(f"{folder}: no map of {method.name} could be scored on {dataset.name}; "
                                           "cell left empty")
                    report = None
                elif skipped:
                    result.warnings.append(f"{folder}: {method.name} on {dataset.name} scored on {report.count} "
                                           f"images, {skipped} masks have no usable map (relearn eval lists them)")
        result.reports[(method.name, dataset.name)] = report
    return result


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
    header = ["method"] + [f"{dataset} {METRIC_LABELS[metric]}" for dataset, metric in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        row = [method]
        for column in columns:
            value, rank = cells[(method, column)]
            row.append("" if value is None else f"{value:.3f}{_SUPERSCRIPTS.get(rank, '')}")
        lines.append("| " + " | ".join(row) + " |")
    arrows = ", ".join(f"{METRIC_LABELS[m]} {'lower' if m in LOWER_IS_BETTER else 'higher'} is better"
                       for m in result.config.metrics)
    lines += ["", f"¹ ² ³: first, second and third of each column ({arrows}). max F is dataset-level (mean "
                  "precision and recall over images, then F, beta^2 = 0.3), as in the paper."]
    return "\n".join(lines) + "\n"


def csv_table(result: TableResult) -> str:
    """The table as CSV: one row per method, one column per dataset and metric, empty where maps were missing."""
    methods, columns, cells = _grid(result)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method"] + [f"{dataset}:{metric}" for dataset, metric in columns])
    for method in methods:
        writer.writerow([method] + ["" if cells[(method, c)][0] is None else f"{cells[(method, c)][0]:.6f}"
                                    for c in columns])
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                          ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
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
        "Method & " + " & ".join(f"\\multicolumn{{{len(metrics)}}}{{c}}{{{_latex_escape(d)}}}" for d in datasets)
        + " \\\\",
        " & " + " & ".join(_latex_escape(METRIC_LABELS[metric]) + ("$\\downarrow$" if metric in LOWER_IS_BETTER
                                                                  else "$\\uparrow$") for _, metric in columns)
        + " \\\\",
        "\\hline",
    ]
    for method in methods:
        row = [_latex_escape(method)]
        for column in columns:
            value, rank = cells[(method, column)]
            text = "" if value is None else f"{value:.3f}"
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
        drawn = [(name, result.reports[(name, dataset.name)]) for name in methods
                 if result.reports.get((name, dataset.name)) is not None]
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
                    axes.plot(curves["thresholds"] * 255, curves["f_curve"], style, color=colour, label=name,
                              linewidth=1.5)
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
            {"method": method, "dataset": dataset, "maps": str(report.pred_dir) if report else None,
             "count": report.count if report else 0, **(report.scores if report else {})}
            for (method, dataset), report in result.reports.items()
        ],
        "warnings": result.warnings,
    }
    return json.dumps(document, indent=2) + "\n"


def write_table(result: TableResult, out_dir: str | os.PathLike) -> list[Path]:
    """Write table.md, table.csv, table.tex, scores.json and figures/ into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    inputs = {dataset.gt.resolve() for dataset in result.config.datasets}
    inputs |= {folder.resolve() for method in result.config.methods for folder in method.maps.values()}
    if out_dir.resolve() in inputs:
        raise InputError(out_dir, "the output folder must not be an input folder")
    if all(report is None for report in result.reports.values()):
        raise RelearnError(f"{result.config.path}: no cell could be evaluated, nothing written")
    written = []
    for name, text in (("table.md", markdown_table(result)), ("table.csv", csv_table(result)),
                       ("table.tex", latex_table(result)), ("scores.json", scores_json(result))):
        atomic_write_bytes(out_dir / name, text.encode())
        written.append(out_dir / name)
    return written + curve_figures(result, out_dir)
