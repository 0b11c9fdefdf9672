"""`relearn eval` end to end: outputs, the summary, and one line per bad input."""

import csv
import io
import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from relearn_core.cli import main
from relearn_core.evaluation import evaluate
from relearn_core.evaluation.evaluate import SCORE_KEYS, evaluate_folders

STEMS = 6


@pytest.fixture
def folders(sod_dir, tmp_path):
    """Six DSS maps and their SOD masks, copied into fresh folders."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    stems = sorted(path.stem for path in (sod_dir / "gt").glob("*.png"))[:STEMS]
    for stem in stems:
        shutil.copy(sod_dir / "maps" / "DSS" / f"{stem}.png", pred / f"{stem}.png")
        shutil.copy(sod_dir / "gt" / f"{stem}.png", gt / f"{stem}.png")
    return pred, gt, stems


def _run(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)])


def _grey(path):
    return np.asarray(Image.open(path).convert("L"))


def test_eval_writes_summary_json_csv_and_curves(folders, tmp_path):
    pred, gt, stems = folders
    out = tmp_path / "out"
    out.mkdir()
    result = _run(
        "--pred",
        pred,
        "--gt",
        gt,
        "--json",
        out / "s.json",
        "--per-image",
        out / "s.csv",
        "--curves",
        out / "s.npz",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "dataset-level" in result.stdout and "image-level" in result.stdout
    document = json.loads((out / "s.json").read_text())
    report = evaluate_folders(pred, gt, progress=False)
    assert document["count"] == STEMS
    for key in SCORE_KEYS:
        assert document[key] == report.scores[key], key
        assert key in document["definitions"]
    assert f"{report.scores['max_f']:.4f}" in result.stdout
    with open(out / "s.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["stem"] for row in rows] == stems
    assert np.mean([float(row["mae"]) for row in rows]) == pytest.approx(report.scores["mae"], abs=1e-6)
    curves = np.load(out / "s.npz")
    for key in ("thresholds", "precision", "recall", "f_curve", "tpr", "fpr", "f_curve_image", "e_curve"):
        assert curves[key].shape == (256,), key
    assert curves["f_curve"].max() == pytest.approx(document["max_f"])


def test_every_bad_input_gets_one_line_naming_its_file(folders, tmp_path):
    pred, gt, stems = folders
    a, b, c, d, e, f = stems
    # maps without a mask, and a mask without a map
    shutil.copy(pred / f"{a}.png", pred / "orphan_map.png")
    shutil.copy(gt / f"{a}.png", gt / "orphan_mask.png")
    # a corrupt map
    (pred / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    shutil.copy(gt / f"{a}.png", gt / "corrupt.png")
    # a map of NaN (float TIFF)
    Image.fromarray(np.full(_grey(gt / f"{a}.png").shape, np.nan, dtype=np.float32)).save(pred / "nan_map.tif")
    shutil.copy(gt / f"{a}.png", gt / "nan_map.png")
    # a constant map: scored, with a warning
    Image.fromarray(np.full(_grey(gt / f"{a}.png").shape, 77, dtype=np.uint8)).save(pred / "constant.png")
    shutil.copy(gt / f"{a}.png", gt / "constant.png")
    # a map of the wrong size
    Image.open(pred / f"{b}.png").resize((100, 80)).save(pred / f"{b}.png")
    # an RGB mask with equal channels (scored), a colour mask (skipped), 16-bit masks (scored)
    Image.open(gt / f"{c}.png").convert("RGB").save(gt / f"{c}.png")
    colour = np.zeros(_grey(gt / f"{d}.png").shape + (3,), dtype=np.uint8)
    colour[..., 0] = _grey(gt / f"{d}.png")
    Image.fromarray(colour).save(gt / f"{d}.png")
    grey = _grey(gt / f"{e}.png") > 127
    Image.fromarray(grey.astype(np.uint16) * 65535).save(gt / f"{e}.png")
    Image.fromarray(_grey(gt / f"{f}.png").astype(np.uint16)).save(gt / f"{f}.png")
    assert Image.open(gt / f"{e}.png").mode.startswith("I;16")

    result = _run("--pred", pred, "--gt", gt, "--json", tmp_path / "s.json", "--quiet")
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    expected = {
        "orphan_map.png": "without a mask",
        "orphan_mask.png": "without a map",
        "corrupt.png": "cannot be read",
        "nan_map.tif": "NaN",
        "constant.png": "constant",
        f"{b}.png": "--resize",
        f"{c}.png": "RGB mask",
        f"{d}.png": "colour mask",
        f"{e}.png": "16-bit",
        f"{f}.png": "16-bit",
    }
    for name, problem in expected.items():
        matching = [line for line in lines if name in line and problem in line]
        assert len(matching) == 1, (name, lines)
    assert len(lines) == len(expected)
    document = json.loads((tmp_path / "s.json").read_text())
    # scored: a, c (RGB mask), e and f (16-bit masks), constant; skipped: b, d, corrupt, nan_map
    assert document["count"] == 5
    assert len(document["skipped"]) == 4
    assert document["unmatched_maps"] == [str(pred / "orphan_map.png")]


def test_masks_in_other_formats_score_as_their_grey_version(folders, tmp_path):
    pred, gt, stems = folders
    plain = evaluate_folders(pred, gt, progress=False)
    for index, stem in enumerate(stems):
        grey = _grey(gt / f"{stem}.png")
        if index % 3 == 0:
            Image.fromarray(grey).convert("RGB").save(gt / f"{stem}.png")
        elif index % 3 == 1:
            Image.fromarray((grey > 127).astype(np.uint16) * 65535).save(gt / f"{stem}.png")
        else:
            Image.fromarray(grey.astype(np.uint16)).save(gt / f"{stem}.png")
    converted = evaluate_folders(pred, gt, progress=False)
    assert converted.count == STEMS and len(converted.warnings) == STEMS
    assert converted.scores == plain.scores


def test_resize_scores_maps_of_another_size(folders):
    pred, gt, stems = folders
    Image.open(pred / f"{stems[0]}.png").resize((120, 90)).save(pred / f"{stems[0]}.png")
    refused = _run("--pred", pred, "--gt", gt, "--quiet")
    assert refused.exit_code == 0 and f"{stems[0]}.png" in refused.stderr and "--resize" in refused.stderr
    assert f"{STEMS - 1} maps" in refused.stdout
    resized = _run("--pred", pred, "--gt", gt, "--resize", "--quiet")
    assert resized.exit_code == 0 and f"{STEMS} maps" in resized.stdout
    assert "resized from 120x90" in resized.stderr


def test_nothing_to_evaluate_exits_non_zero(folders, tmp_path):
    pred, gt, stems = folders
    for stem in stems:
        (pred / f"{stem}.png").write_bytes(b"garbage")
    result = _run("--pred", pred, "--gt", gt, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("relearn: error: ")
    assert "nothing could be evaluated" in result.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("--pred", empty, "--gt", gt)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"relearn: error: {empty}: no saliency maps (png, jpg, bmp) in this folder"

    result = _run("--pred", pred, "--gt", tmp_path / "missing")
    assert result.exit_code == 2 and "missing: not a folder" in result.stderr


def test_outputs_never_go_into_an_input_folder(folders):
    pred, gt, _ = folders
    before = sorted(path.name for path in pred.iterdir())
    result = _run("--pred", pred, "--gt", gt, "--json", pred / "scores.json", "--quiet")
    assert result.exit_code == 2 and "never writes inside its inputs" in result.stderr
    assert sorted(path.name for path in pred.iterdir()) == before


def test_suffix_matches_maps_named_after_the_method(folders):
    pred, gt, stems = folders
    for stem in stems:
        (pred / f"{stem}.png").rename(pred / f"{stem}_dss.png")
    result = _run("--pred", pred, "--gt", gt, "--suffix", "_dss", "--quiet")
    assert result.exit_code == 0 and f"{STEMS} maps" in result.stdout


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_long_runs_and_never_when_quiet(folders, monkeypatch):
    pred, gt, _ = folders
    for progress, delay, shown in ((True, 0.0, True), (True, 60.0, False), (False, 0.0, False)):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        monkeypatch.setattr(evaluate, "_PROGRESS_DELAY_S", delay)
        evaluate.evaluate_folders(pred, gt, progress=progress)
        assert ("evaluating" in terminal.getvalue()) == shown, (progress, delay)


def test_missing_maps_are_said_on_the_summary_last_line_and_strict_makes_them_an_error(folders):
    pred, gt, stems = folders
    for stem in stems[:3]:
        (pred / f"{stem}.png").unlink()
    result = _run("--pred", pred, "--gt", gt, "--quiet")
    assert result.exit_code == 0
    assert result.stdout.strip().splitlines()[-1].startswith(f"incomplete: 3 of {STEMS} masks have no scored map")
    assert _run("--pred", pred, "--gt", gt, "--quiet", "--strict").exit_code == 1
    for stem in stems[:3]:
        (gt / f"{stem}.png").unlink()
    complete = _run("--pred", pred, "--gt", gt, "--quiet", "--strict")
    assert complete.exit_code == 0 and "incomplete" not in complete.stdout
