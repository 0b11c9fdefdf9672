"""`relearn table` as the paper's comparison (issue 6): datasets with images/ and gt/, bases with their maps, Our(X) by
k-fold re-learning, PySODEvalToolkit configs, published scores, reruns, and the bad inputs. Tiny downscaled SOD
crops."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from relearn_core.cli import main
from relearn_core.errors import InputError
from relearn_core.evaluation.protocol import folds_of
from relearn_core.evaluation.table import load_config

PER_DATASET = 6
SIDE = 96
CHEAP = {  # the cheapest settings the pipeline offers: one neighbour, a one-level coarse flow, few epochs
    "correspondence": {
        "neighbours": 1,
        "superpixels": 40,
        "edge_boxes": 50,
        "proposals": 10,
        "edge_method": "sobel",
        "flow_grid": 48,
        "flow": {
            "working_size": 48,
            "levels": 1,
            "top_radius": 3,
            "top_iterations": 3,
            "iterations": 2,
            "subpixel": False,
        },
    },
    "filter": {"epochs": 3, "min_positives": 2},
    "joint": {"epochs": 3, "neighbours": 1},
}


def _shrink(source: Path, target: Path, size=None, resample=Image.BILINEAR, mode="L"):
    image = Image.open(source).convert(mode)
    if size is None:
        scale = SIDE / max(image.size)
        size = (round(image.size[0] * scale), round(image.size[1] * scale))
    target.parent.mkdir(parents=True, exist_ok=True)
    image.resize(size, resample).save(target)
    return size


@pytest.fixture(scope="module")
def data(sod_dir, tmp_path_factory):
    """SODa and SODb: six disjoint SOD images each, 96 px, as <name>/images, gt, maps/DSS, maps/Amulet (SODa only)."""
    root = tmp_path_factory.mktemp("data")
    stems = sorted(path.stem for path in (sod_dir / "gt").glob("*.png"))
    for index, name in enumerate(("SODa", "SODb")):
        for stem in stems[index * PER_DATASET : (index + 1) * PER_DATASET]:
            size = _shrink(sod_dir / "images" / f"{stem}.jpg", root / name / "images" / f"{stem}.png", mode="RGB")
            _shrink(sod_dir / "gt" / f"{stem}.png", root / name / "gt" / f"{stem}.png", size, Image.NEAREST)
            for method in ("DSS", "Amulet") if name == "SODa" else ("DSS",):
                _shrink(sod_dir / "maps" / method / f"{stem}.png", root / name / "maps" / method / f"{stem}.png", size)
    return root


def _write(path: Path, document) -> Path:
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def _table(config: Path, out: Path, *extra) -> tuple:
    result = CliRunner().invoke(
        main, ["table", str(config), "--out", str(out), "--quiet", "--cache", str(out.parent / "cache"), *extra]
    )
    assert result.exit_code == 0, result.output
    return result, out


def _rows(out: Path) -> dict:
    with open(out / "table.csv") as handle:
        return {row["method"]: row for row in csv.DictReader(handle)}


def _eval(pred: Path, gt: Path, tmp_path: Path, *extra) -> dict:
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        main, ["eval", "--pred", str(pred), "--gt", str(gt), "--json", str(out), "--quiet", *extra]
    )
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


BASES = {"DSS": {}, "Amulet": {}, "Mine": {"adapter": "maps", "maps": "{root}/maps/DSS"}}


@pytest.fixture(scope="module")
def relearned(data, tmp_path_factory):
    """Two datasets, three bases (Amulet has no maps for SODb), Our(DSS) re-learned by 2-fold CV on SODa."""
    work = tmp_path_factory.mktemp("relearned")
    config = _write(
        work / "table.yaml",
        {
            "folders": {"data": str(data)},
            "datasets": {"SODa": {"root": "{data}/SODa"}, "SODb": {"root": "{data}/SODb"}},
            "bases": BASES,
            "relearn": {"variants": ["DSS"], "train": "SODa", "folds": 2, "seed": 0, "config": CHEAP},
        },
    )
    first = _table(config, work / "out", "--metrics", "max_f,mae,auc,s_measure")[0]
    second = _table(config, work / "out", "--metrics", "max_f,mae,auc,s_measure")[0]
    return config, work / "out", first, second


def test_cells_equal_relearn_eval_and_missing_maps_leave_an_empty_cell(data, relearned, tmp_path):
    config, out, first, _ = relearned
    rows = _rows(out)
    assert list(rows) == ["DSS", "Our(DSS)", "Amulet", "Mine"]
    for dataset in ("SODa", "SODb"):
        for method, folder in (("DSS", "DSS"), ("Mine", "DSS"), ("Amulet", "Amulet")):
            if dataset == "SODb" and method == "Amulet":
                assert rows[method][f"{dataset}:max_f"] == ""
                continue
            expected = _eval(data / dataset / "maps" / folder, data / dataset / "gt", tmp_path)
            for metric in ("max_f", "mae", "auc", "s_measure"):
                assert float(rows[method][f"{dataset}:{metric}"]) == pytest.approx(expected[metric], abs=1e-6)
        ours = next((out / "maps" / dataset).glob("Our_DSS_-*"))
        assert len(list(ours.glob("*.png"))) == PER_DATASET
        expected = _eval(ours, data / dataset / "gt", tmp_path)
        assert float(rows["Our(DSS)"][f"{dataset}:max_f"]) == pytest.approx(expected["max_f"], abs=1e-6)
    assert str(data / "SODb" / "maps" / "Amulet") in first.stderr  # the missing folder is named


def test_kfold_no_image_is_scored_by_a_model_trained_on_it(data, relearned):
    from relearn_core.checkpoint import load_checkpoint

    _, out, _, _ = relearned
    ids = sorted(path.stem for path in (data / "SODa" / "gt").glob("*.png"))
    fold = dict(zip(ids, folds_of(len(ids), 2, 0)))
    for k in range(2):
        checkpoint = next((out / "checkpoints" / "DSS").glob(f"C6-*.fold{k}of2.pt"))
        summary = load_checkpoint(checkpoint, "dss").summary
        trained_on = {name for name, _ in summary["trained_on"]}
        assert trained_on == {i for i in ids if fold[i] != k} and summary["targets"] == len(trained_on)
        held = {
            path.stem for path in next((out / "maps" / "SODa").glob("Our_DSS_-*")).glob("*.png") if fold[path.stem] == k
        }
        assert held and not held & trained_on
    # SODb is wrapped by the re-learner trained on all of SODa
    assert len(list((out / "checkpoints" / "DSS").glob("C6-*.pt"))) == 3


def test_a_rerun_reuses_every_map_and_checkpoint(relearned):
    _, _, first, second = relearned
    assert "re-learners: 3 computed, 0 reused" in first.output
    assert f"Our(X) maps: {2 * PER_DATASET} computed, 0 reused" in first.output
    assert "re-learners: 0 computed, 0 reused" in second.output  # nothing left to wrap: no re-learner is needed
    assert f"Our(X) maps: 0 computed, {2 * PER_DATASET} reused" in second.output


def test_latex_has_one_row_per_method_and_balanced_braces(relearned):
    _, out, _, _ = relearned
    tex = (out / "table.tex").read_text()
    rows = [line for line in tex.splitlines() if line.endswith("\\\\") and not line.startswith(("Method", " &"))]
    assert [row.split(" & ")[0] for row in rows] == ["DSS", "Our(DSS)", "Amulet", "Mine"]
    depth = 0
    for char in tex.replace("\\{", "").replace("\\}", ""):
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    for dataset in ("SODa", "SODb"):
        for kind in ("pr", "f_threshold"):
            assert (out / "figures" / f"{dataset}_{kind}.png").read_bytes().startswith(b"\x89PNG")
            assert (out / "figures" / f"{dataset}_{kind}.pdf").stat().st_size > 1000


def test_ablation_draws_the_six_components_of_fig_11(data, tmp_path):
    """A re-learner trained on SODa (outside the table) wraps SODb once per component C2..C6."""
    soda = data / "SODa"
    config = _write(
        tmp_path / "t.yaml",
        {
            "datasets": {"SODb": {"root": str(data / "SODb")}},
            "bases": {"DSS": {}},
            "relearn": {
                "train": {"images": str(soda / "images"), "gt": str(soda / "gt"), "maps": str(soda / "maps" / "DSS")},
                "config": CHEAP,
            },
            "ablation": {"base": "DSS", "datasets": ["SODb"]},
        },
    )
    result, out = _table(config, tmp_path / "out", "--ablation")
    assert "re-learners: 5 computed" in result.output and f"Our(X) maps: {5 * PER_DATASET} computed" in result.output
    rows = [line for line in (out / "ablation.md").read_text().splitlines() if line.startswith("| C")]
    assert [row.split()[1] for row in rows] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert rows[0].split("|")[2].strip() == f"{float(_rows(out)['DSS']['SODb:max_f']):.3f}"  # C1 is the base
    assert rows[5].split("|")[2].strip() == f"{float(_rows(out)['Our(DSS)']['SODb:max_f']):.3f}"  # C6 is Our(X)
    for kind in ("pr", "f_threshold"):
        assert (out / "figures" / f"ablation_{kind}.png").read_bytes().startswith(b"\x89PNG")


def test_wrong_size_maps_for_one_dataset_make_that_cell_an_error(data, tmp_path):
    wrong = tmp_path / "wrong"
    for path in (data / "SODb" / "maps" / "DSS").glob("*.png"):
        _shrink(path, wrong / path.name, (40, 30))
    config = _write(
        tmp_path / "t.yaml",
        {
            "datasets": {"SODa": {"root": str(data / "SODa")}, "SODb": {"root": str(data / "SODb")}},
            "bases": {"DSS": {"maps": {"SODa": str(data / "SODa" / "maps" / "DSS"), "SODb": str(wrong)}}},
        },
    )
    result, out = _table(config, tmp_path / "out")
    rows = _rows(out)
    assert rows["DSS"]["SODb:max_f"] == "" and rows["DSS"]["SODa:max_f"] != ""
    markdown = (out / "table.md").read_text()
    assert "error (1)" in markdown and "map is 40x30" in markdown
    assert "error" in (out / "table.tex").read_text()
    assert "cell DSS on SODb" in result.stderr


def test_pysodevaltoolkit_dataset_and_method_json_are_read_as_they_are(data, tmp_path):
    """Masks named <id>_gt.png and maps named dss_<id>.png, as PySODEvalToolkit's prefix/suffix describe them."""
    masks, maps = tmp_path / "masks", tmp_path / "maps"
    masks.mkdir()
    maps.mkdir()
    for path in (data / "SODa" / "gt").glob("*.png"):
        shutil.copy(path, masks / f"{path.stem}_gt.png")
        shutil.copy(data / "SODa" / "maps" / "DSS" / path.name, maps / f"dss_{path.stem}.png")
    (tmp_path / "datasets.json").write_text(
        json.dumps(
            {
                "SODa": {
                    "image": {"path": str(data / "SODa" / "images"), "suffix": ".png"},
                    "mask": {"path": "masks", "suffix": "_gt.png"},
                }
            }
        )
    )
    (tmp_path / "methods.json").write_text(
        json.dumps(
            {
                "DSS": {
                    "SODa": {"path": "maps", "prefix": "dss_", "suffix": ".png"},
                    "ECSSD": {"path": "elsewhere", "suffix": ".png"},
                }
            }
        )
    )
    config = _write(tmp_path / "t.yaml", {"datasets": "datasets.json", "methods": "methods.json"})
    _, out = _table(config, tmp_path / "out")
    expected = _eval(data / "SODa" / "maps" / "DSS", data / "SODa" / "gt", tmp_path)
    assert float(_rows(out)["DSS"]["SODa:max_f"]) == pytest.approx(expected["max_f"], abs=1e-6)
    assert float(_rows(out)["DSS"]["SODa:mae"]) == pytest.approx(expected["mae"], abs=1e-6)


def test_published_scores_are_printed_beside_the_measured_with_the_difference(data, tmp_path):
    config = _write(
        tmp_path / "t.yaml", {"datasets": {"SOD": {"root": str(data / "SODa")}}, "bases": {"DSS": {}, "Amulet": {}}}
    )
    result, out = _table(config, tmp_path / "out")
    measured = float(_rows(out)["DSS"]["SOD:max_f"])
    line = next(line for line in result.output.splitlines() if line.startswith("DSS on SOD: published"))
    assert "max F 0.844" in line and f"({round(measured - 0.844, 3) + 0.0:+.3f})" in line
    assert "Amulet on SOD" not in result.output  # no published score for Amulet
    assert "| DSS | SOD |" in (out / "table.md").read_text()


def _error(tmp_path, text: str) -> str:
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(InputError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    return message


def test_unknown_key_dataset_or_base_is_an_error_naming_the_line(data, tmp_path):
    head = f"datasets:\n  SODa:\n    root: {data / 'SODa'}\n"
    assert "line 4: the file: unknown key 'colour'" in _error(tmp_path, head + "colour: red\nbases: {DSS: {}}\n")
    message = _error(tmp_path, head + "bases:\n  DSS: {}\n  Nope: {}\n")
    assert "line 6:" in message and "unknown base 'nope'" in message
    message = _error(tmp_path, head + "bases:\n  DSS:\n    maps: {SODa: x, ECSSD: y}\n")
    assert "line 6:" in message and "unknown dataset 'ECSSD'" in message
    message = _error(tmp_path, head + "bases: {DSS: {}}\nrelearn:\n  folds: 2\n  train: ECSSD\n")
    assert "line 7:" in message and "unknown dataset 'ECSSD'" in message
    message = _error(tmp_path, head + "bases:\n  DSS: {relearn: {train: SODa, epochs: 3}}\n")
    assert "line 5:" in message and "unknown key 'epochs'" in message


def test_a_dataset_folder_without_gt_is_an_error_naming_the_line(data, tmp_path):
    shutil.copytree(data / "SODa" / "images", tmp_path / "nogt" / "images")
    message = _error(tmp_path, f"bases: {{DSS: {{}}}}\ndatasets:\n  A:\n    root: {tmp_path / 'nogt'}\n")
    assert "line 3:" in message and "has no ground-truth folder gt/" in message


def test_a_dataset_not_on_disk_is_reported_not_fatal(data, tmp_path):
    config = _write(
        tmp_path / "t.yaml",
        {
            "datasets": {"SODa": {"root": str(data / "SODa")}, "ECSSD": {"root": str(tmp_path / "ECSSD")}},
            "bases": {"DSS": {}},
        },
    )
    result, out = _table(config, tmp_path / "out")
    assert str(tmp_path / "ECSSD" / "gt") in result.stderr
    rows = _rows(out)
    assert rows["DSS"]["SODa:max_f"] != "" and rows["DSS"]["ECSSD:max_f"] == ""
    assert re.search(r"table cells: 1 computed, \d+ reused, 1 skipped, 0 failed", result.output)


def test_the_example_configs_load(data):
    repo = Path(__file__).resolve().parent.parent
    paper = load_config(repo / "examples" / "tables" / "paper.yaml")
    assert [b.name for b in paper.bases] == ["MDF", "DSS", "SRM", "RADF", "RFCN", "BRN", "PAGRN"]
    assert [d.name for d in paper.datasets] == ["ECSSD", "HKU-IS", "PASCAL-S", "SOD", "DUTS-TE"]
    sod = load_config(repo / "examples" / "tables" / "sod.yaml")
    assert sod.datasets[0].gt.is_dir() and sod.datasets[0].images.is_dir()
    assert all(base.relearn is not None and base.relearn.train == "SOD" for base in sod.bases)
    assert sod.bases[0].maps["SOD"].is_dir()


def test_computed_base_maps_of_other_options_stop_the_table_until_overwrite(data, tmp_path):
    def config(options):
        return _write(
            tmp_path / "table.yaml",
            {
                "datasets": {"SODa": {"root": str(data / "SODa")}},
                "bases": {"MB+": {"adapter": "mbplus", "options": options}},
            },
        )

    _, out = _table(config({"max_dim": 64}), tmp_path / "out", "--no-relearn")
    folder = out / "maps" / "SODa" / "MB_"  # the base name made a file name
    before = {path.name: path.read_bytes() for path in folder.glob("*.png")}
    assert len(before) == PER_DATASET
    changed = config({"max_dim": 48})
    result = CliRunner().invoke(
        main, ["table", str(changed), "--out", str(out), "--quiet", "--no-relearn", "--cache", str(tmp_path / "c")]
    )
    assert result.exit_code == 2
    assert "other settings" in result.output and "max_dim" in result.output and "--overwrite" in result.output
    assert {path.name: path.read_bytes() for path in folder.glob("*.png")} == before
    _table(changed, out, "--no-relearn", "--overwrite")
    assert {path.name: path.read_bytes() for path in folder.glob("*.png")} != before
