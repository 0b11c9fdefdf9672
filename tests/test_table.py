"""`relearn table`: cells equal `relearn eval`, missing maps leave empty cells, top three coloured, figures written."""

import csv
import json
import re
import shutil

import pytest
import yaml
from click.testing import CliRunner

from relearn_core.cli import main
from relearn_core.errors import InputError
from relearn_core.evaluation.table import _line_styles, load_config

PER_DATASET = 5


@pytest.fixture(scope="module")
def table_config(sod_dir, tmp_path_factory):
    """Two datasets cut from SOD (disjoint images) and three methods; the YAML config uses relative paths."""
    tmp_path = tmp_path_factory.mktemp("benchmark")
    stems = sorted(path.stem for path in (sod_dir / "gt").glob("*.png"))
    splits = {"SODa": stems[:PER_DATASET], "SODb": stems[PER_DATASET : 2 * PER_DATASET]}
    for dataset, chosen in splits.items():
        for folder, source in (
            ("gt", sod_dir / "gt"),
            ("DSS", sod_dir / "maps" / "DSS"),
            ("Amulet", sod_dir / "maps" / "Amulet"),
        ):
            (tmp_path / dataset / folder).mkdir(parents=True)
            for stem in chosen:
                shutil.copy(source / f"{stem}.png", tmp_path / dataset / folder / f"{stem}.png")
    # Our(DSS): Amulet's maps stand in for it on SODa only; SODb has no folder, so its cell stays empty.
    shutil.copytree(tmp_path / "SODa" / "Amulet", tmp_path / "SODa" / "our_dss")
    config = {
        "datasets": {"SODa": "SODa/gt", "SODb": {"gt": "SODb/gt"}},
        "methods": {
            "DSS": "{dataset}/DSS",
            "Amulet": {"maps": {"SODa": "SODa/Amulet", "SODb": "SODb/Amulet"}},
            "Our(DSS)": "{dataset}/our_dss",
        },
    }
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _eval_json(tmp_path, pred, gt, name):
    out = tmp_path / f"{name}.json"
    result = CliRunner().invoke(main, ["eval", "--pred", str(pred), "--gt", str(gt), "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def table_run(table_config):
    """`relearn table` run once on the benchmark: (CLI result, output folder)."""
    out = table_config.parent / "out"
    result = CliRunner().invoke(
        main, ["table", str(table_config), "--out", str(out), "--metrics", "max_f,mae,auc,s_measure", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return result, out


def test_table_cells_equal_relearn_eval(table_config, table_run, tmp_path):
    result, out = table_run
    root = table_config.parent
    # the missing folder is named in one warning, and the run went on
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(root / "SODb" / "our_dss") in warnings[0]

    with open(out / "table.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["DSS", "Amulet", "Our(DSS)"]
    for dataset in ("SODa", "SODb"):
        for method, folder in (("DSS", "DSS"), ("Amulet", "Amulet")):
            folder_path, gt_path = root / dataset / folder, root / dataset / "gt"
            expected = _eval_json(tmp_path, folder_path, gt_path, f"{dataset}{method}")
            for metric in ("max_f", "mae", "auc", "s_measure"):
                assert float(rows[method][f"{dataset}:{metric}"]) == pytest.approx(expected[metric], abs=1e-6)
    assert rows["Our(DSS)"]["SODb:max_f"] == ""
    assert rows["Our(DSS)"]["SODa:max_f"] != ""

    for name in ("table.md", "table.tex", "scores.json"):
        assert (out / name).stat().st_size > 0
    for dataset in ("SODa", "SODb"):
        for kind in ("pr", "f_threshold"):
            assert (out / "figures" / f"{dataset}_{kind}.png").read_bytes().startswith(b"\x89PNG")
            assert (out / "figures" / f"{dataset}_{kind}.pdf").read_bytes().startswith(b"%PDF")


def test_top_three_of_each_column_are_red_green_blue(table_run):
    _, out = table_run
    with open(out / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    tex_rows = [
        line
        for line in (out / "table.tex").read_text().splitlines()
        if line.split(" & ")[0] in {"DSS", "Amulet", "Our(DSS)"}
    ]
    columns = [key for key in rows[0] if key != "method"]
    for index, column in enumerate(columns):
        values = {row["method"]: round(float(row[column]), 3) for row in rows if row[column]}
        lower_better = column.endswith(":mae")
        order = sorted(set(values.values()), reverse=not lower_better)
        for tex_row in tex_rows:
            cells = tex_row.removesuffix(" \\\\").split(" & ")
            method, cell = cells[0], cells[index + 1]
            if method not in values:
                assert cell == ""
                continue
            colour = re.match(r"\\textcolor\{(\w+)\}\{([0-9.]+)\}", cell)
            assert colour, cell
            rank = order.index(values[method])
            assert colour.group(1) == ("red", "green", "blue")[rank]
            assert float(colour.group(2)) == values[method]
    markdown = (out / "table.md").read_text()
    assert "¹" in markdown and "dataset-level" in markdown


def test_base_dashed_and_our_solid_in_one_colour():
    styles = _line_styles(["DSS", "Amulet", "Our(DSS)", "Our(MDF)"])
    assert styles["DSS"][1] == "--" and styles["Our(DSS)"][1] == "-"
    assert styles["DSS"][0] == styles["Our(DSS)"][0] != styles["Amulet"][0]
    assert styles["Amulet"][1] == "-" and styles["Our(MDF)"][1] == "-"  # no partner: solid


@pytest.mark.parametrize(
    "config, problem",
    [
        ({"datasets": {"A": "gt"}, "methods": {"X": "maps"}, "metrics": ["max_f", "bogus"]}, "unknown metric 'bogus'"),
        ({"datasets": {"A": "gt"}, "methods": {"X": {"maps": "m", "colour": 1}}}, "unknown key 'colour'"),
        ({"datasets": {}, "methods": {"X": "maps"}}, "names no dataset"),
        ({"datasets": {"A": "gt"}, "methods": {"X": {"maps": {"B": "m"}}}}, "unknown dataset 'B'"),
        ({"datasets": {"A": "gt"}, "methods": ["X"]}, "'methods' must be a mapping"),
    ],
)
def test_malformed_configs_name_the_file_and_the_entry(tmp_path, config, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(InputError, match=re.escape(problem)) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_relative_paths_are_read_from_the_config_folder(table_config):
    tmp_path = table_config.parent
    config = load_config(table_config)
    assert [d.gt for d in config.datasets] == [tmp_path / "SODa" / "gt", tmp_path / "SODb" / "gt"]
    assert config.methods[0].maps == {"SODa": tmp_path / "SODa" / "DSS", "SODb": tmp_path / "SODb" / "DSS"}
    assert config.methods[2].base_name == "DSS" and config.metrics == ("max_f", "mae", "auc")
