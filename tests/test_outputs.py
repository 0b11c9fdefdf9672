"""Outputs a user can trust (relearn_core/outputs.py and the commands' use of it): no input written over, maps of other
settings never mixed with new ones, unwritable outputs refused in one line before any work."""

from __future__ import annotations

import errno
import os
import shutil

import pytest
from click.testing import CliRunner

from relearn_core.cli import main
from relearn_core.errors import InputError
from relearn_core.imageio import atomic_write_bytes
from relearn_core.outputs import MANIFEST_NAME, claim_map_folder, probe_writable, refuse_overlap

STEMS = ("100075", "100080", "100098")
UNWRITABLE = "/proc/relearn-test"  # not writable even by root, unlike a chmod-ed folder


pytestmark = pytest.mark.usefixtures("fresh_plugin_manager")


@pytest.fixture
def sod_copy(sod_dir, tmp_path):
    """images/, gt/, and the DSS and Amulet maps of three SOD images, copied (the shared folders stay untouched)."""
    for sub, source in (("images", "images"), ("gt", "gt"), ("dss", "maps/DSS"), ("amulet", "maps/Amulet")):
        (tmp_path / sub).mkdir()
        for stem in STEMS:
            found = next((sod_dir / source).glob(f"{stem}.*"))
            shutil.copy(found, tmp_path / sub)
    return tmp_path


def relearn(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def train_dss(folder, out):
    dss = ["--base", "dss", "--maps", folder / "dss"]
    return relearn("train", *dss, "--images", folder / "images", "--gt", folder / "gt", "--out", out)


def test_train_refuses_an_out_inside_its_training_images_and_leaves_the_image_intact(sod_copy):
    target = sod_copy / "images" / "100075.jpg"
    before = target.read_bytes()
    result = train_dss(sod_copy, target)
    assert result.exit_code == 2
    assert "never writes inside its inputs" in error_line(result)
    assert target.read_bytes() == before


def test_train_refuses_to_replace_a_file_that_is_not_a_checkpoint_unless_told(sod_copy):
    notes = sod_copy / "notes.pt"
    notes.write_text("my notes")
    result = train_dss(sod_copy, notes)
    assert result.exit_code == 2
    assert "not a relearn checkpoint" in error_line(result) and "--overwrite" in result.output
    assert notes.read_text() == "my notes"


def test_predict_resumes_with_the_same_settings_and_stops_on_maps_of_another_base(sod_copy):
    out = sod_copy / "out"
    dss = ["predict", "--base", "dss", "--maps", sod_copy / "dss", "--images", sod_copy / "images", "--out", out]
    assert relearn(*dss).exit_code == 0
    assert (out / MANIFEST_NAME).is_file()
    again = relearn(*dss)
    assert again.exit_code == 0 and "wrote 0 maps" in again.output and "3 were already there" in again.output
    written = (out / "100075.png").read_bytes()
    amulet = ["predict", "--base", "amulet", "--maps", sod_copy / "amulet", "--images", sod_copy / "images"]
    stale = relearn(*amulet, "--out", out)
    assert stale.exit_code == 2
    line = error_line(stale)
    assert "other settings" in line and "'dss' there, 'amulet' now" in line and "--overwrite" in line
    assert (out / "100075.png").read_bytes() == written
    replaced = relearn(*amulet, "--out", out, "--overwrite")
    assert replaced.exit_code == 0 and "wrote 3 maps" in replaced.output
    assert (out / "100075.png").read_bytes() != written
    assert relearn(*amulet, "--out", out).exit_code == 0  # the manifest now says amulet: a rerun resumes


def test_predict_stops_on_a_folder_of_maps_it_has_no_record_of(sod_copy):
    result = relearn(
        "predict", "--base", "amulet", "--maps", sod_copy / "amulet", "--images", sod_copy / "images",
        "--out", sod_copy / "dss",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "3 maps whose settings relearn did not record" in error_line(result)


def test_unwritable_outputs_are_refused_in_one_line_before_any_work(sod_copy, sod_dir):
    result = relearn("predict", "--base", "dss", "--maps", sod_copy / "dss", "--images", sod_copy / "images",
                     "--out", f"{UNWRITABLE}/maps")  # fmt: skip
    assert result.exit_code == 2 and f"{UNWRITABLE}/maps: cannot be written" in error_line(result)
    for option in ("--json", "--per-image", "--curves"):
        result = relearn("eval", "--pred", sod_copy / "dss", "--gt", sod_copy / "gt", "-q", option,
                         f"{UNWRITABLE}/scores")  # fmt: skip
        assert result.exit_code == 2, option
        line = error_line(result)
        assert UNWRITABLE in line and "cannot be written" in line
        assert "max F" not in result.output  # refused before scoring


def test_eval_refuses_to_write_its_json_inside_the_maps_it_scores(sod_copy):
    result = relearn("eval", "--pred", sod_copy / "dss", "--gt", sod_copy / "gt", "--json", sod_copy / "dss" / "s.json")
    assert result.exit_code == 2 and "never writes inside its inputs" in error_line(result)


def test_a_write_that_fails_late_is_one_error_and_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "scores.json"
    target.write_text("old")

    def disk_full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(InputError, match="No space left on device") as caught:
        atomic_write_bytes(target, b"new")
    assert str(target) in str(caught.value)
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["scores.json"]  # no temporary file left


def test_refuse_overlap_and_probe_name_the_path(tmp_path):
    (tmp_path / "images").mkdir()
    refuse_overlap(tmp_path / "out", [tmp_path / "images", None])
    with pytest.raises(InputError, match="one of this command's inputs"):
        refuse_overlap(tmp_path / "images", [tmp_path / "images"])
    probe_writable(tmp_path / "out", folder=True)
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())
    with pytest.raises(InputError, match="is a folder"):
        probe_writable(tmp_path / "out", folder=False)


def test_claim_map_folder_names_every_setting_that_differs(tmp_path):
    assert claim_map_folder(tmp_path / "maps", {"base": "dss", "checkpoint": "abc"}, overwrite=False)
    with pytest.raises(InputError) as caught:
        claim_map_folder(tmp_path / "maps", {"base": "dss", "checkpoint": "def"}, overwrite=False)
    assert "checkpoint 'abc' there, 'def' now" in str(caught.value) and "base" not in str(caught.value)
    assert not claim_map_folder(tmp_path / "maps", {"base": "dss", "checkpoint": "def"}, overwrite=True)


def test_train_names_a_config_file_that_is_not_yaml_in_one_line_before_any_work(sod_copy):
    config = sod_copy / "bad.yaml"
    config.write_text("joint: [unclosed\n")
    dss = ["--base", "dss", "--maps", sod_copy / "dss"]
    out = sod_copy / "model.pt"
    result = relearn(
        "train", *dss, "--images", sod_copy / "images", "--gt", sod_copy / "gt", "--config", config, "--out", out
    )
    assert result.exit_code == 2
    assert error_line(result).endswith(f"{config}: cannot be read as YAML (ParserError)")
    assert not out.exists()
