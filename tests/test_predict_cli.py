"""`relearn predict`, `relearn adapters list/show/new` and the base maps stage (relearn_core/base.py) on SOD files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from relearn_core import plugins
from relearn_core.api import predict
from relearn_core.base import BadOutputError, BaseMapFailure, validate_map
from relearn_core.cache import Cache
from relearn_core.cli import main
from relearn_core.errors import InputError
from relearn_core.imageio import read_map
from relearn_core.workspace import Workspace

COUNT = 5


pytestmark = pytest.mark.usefixtures("fresh_plugin_manager")


@pytest.fixture
def sod_subset(sod_dir, tmp_path):
    """The first COUNT SOD images and their DSS maps, copied (the shared folders are never written to)."""
    images, maps = tmp_path / "images", tmp_path / "dss"
    images.mkdir()
    maps.mkdir()
    stems = sorted(path.stem for path in (sod_dir / "images").glob("*.jpg"))[:COUNT]
    for stem in stems:
        shutil.copy(sod_dir / "images" / f"{stem}.jpg", images)
        shutil.copy(sod_dir / "maps" / "DSS" / f"{stem}.png", maps)
    return images, maps, stems


def relearn(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def adapter_file(folder: Path, body: str) -> Path:
    path = folder / "testing_adapters.py"
    path.write_text(
        "import numpy as np\nfrom relearn_core.hookspecs import AdapterInfo, hookimpl\n" + textwrap.dedent(body)
    )
    return path


BAD_ADAPTERS = """
    KINDS = {
        "badshape": lambda image: np.zeros((3, 3), np.float32),
        "intmap": lambda image: np.zeros(image.shape[:2], np.uint8),
        "nanmap": lambda image: np.full(image.shape[:2], np.nan, np.float32),
        "toobright": lambda image: np.full(image.shape[:2], 2.0, np.float32),
        "listmap": lambda image: np.zeros(image.shape[:2]).tolist(),
    }

    @hookimpl
    def relearn_adapters():
        return [AdapterInfo(name=name, description="returns bad maps") for name in KINDS]

    @hookimpl
    def relearn_predict(adapter, images, names, options):
        return [KINDS[adapter](image) for image in images]
"""

FRAGILE_ADAPTER = """
    @hookimpl
    def relearn_adapters():
        return [AdapterInfo(name="fragile", description="fails on one image", predicts_from="algorithm")]

    @hookimpl
    def relearn_predict(adapter, images, names, options):
        if options.get("log_dir"):  # a folder: a file named by an option would enter the cache key by its content
            with open(f"{options['log_dir']}/calls.log", "a") as log:
                log.write(" ".join(names) + "\\n")
        if str(options.get("fail_on")) in names:
            raise ValueError("cannot handle this one")
        return [image.mean(axis=2).astype(np.float32) / 255 for image in images]
"""


def test_predict_dss_writes_its_published_maps_as_pngs_named_by_image_stem(sod_subset, tmp_path):
    images, maps, stems = sod_subset
    out = tmp_path / "out"
    result = relearn("predict", "--base", "dss", "--maps", maps, "--images", images, "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.glob("*.png")) == [f"{stem}.png" for stem in stems]
    for stem in stems:
        written = Image.open(out / f"{stem}.png")
        assert written.mode == "L"
        np.testing.assert_array_equal(np.asarray(written), np.asarray(Image.open(maps / f"{stem}.png").convert("L")))
    assert f"dss: wrote {COUNT} maps" in result.stdout


def test_predict_resumes_and_keeps_maps_already_written(sod_subset, tmp_path):
    images, maps, stems = sod_subset
    out = tmp_path / "out"
    command = ["predict", "--base", "dss", "--maps", maps, "--images", images, "--out", out]
    assert relearn(*command).exit_code == 0
    from relearn_core.imageio import write_map

    for stem in stems[1:]:  # an interrupted run: one map written, with a mark to see that it is kept
        (out / f"{stem}.png").unlink()
    write_map(out / f"{stems[0]}.png", np.full((7, 9), 0.25))
    result = relearn(*command)
    assert result.exit_code == 0, result.output
    assert f"wrote {COUNT - 1} maps" in result.stdout and "(1 were already there)" in result.stdout
    assert read_map(out / f"{stems[0]}.png").shape == (7, 9)
    again = relearn(*command)
    assert "wrote 0 maps" in again.stdout


def test_maps_folder_missing_some_images_lists_them_and_writes_the_others(sod_subset, tmp_path):
    images, maps, stems = sod_subset
    for stem in stems[1:3]:
        (maps / f"{stem}.png").unlink()
    out = tmp_path / "out"
    result = relearn("predict", "--base", "dss", "--maps", maps, "--images", images, "--out", out)
    assert result.exit_code == 1
    assert f"2 of {COUNT} images failed" in result.stderr
    for stem in stems[1:3]:
        assert f"maps folder has no map for image '{stem}' (expected {stem}.png)" in result.stderr
    assert sorted(path.stem for path in out.glob("*.png")) == [stems[0], *stems[3:]]


def test_registry_suffix_can_be_overridden_for_maps_named_otherwise(sod_subset, tmp_path):
    images, maps, stems = sod_subset
    for path in maps.iterdir():
        path.rename(maps / f"{path.stem}_sal.png")
    out = tmp_path / "out"
    result = relearn(
        "predict", "--base", "maps", "--maps", maps, "--base-option", "suffix=_sal", "--images", images, "--out", out
    )
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == COUNT


def test_unknown_base_lists_close_names_and_exits_2(sod_subset, tmp_path):
    images, maps, _ = sod_subset
    result = relearn("predict", "--base", "dsss", "--maps", maps, "--images", images, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "relearn: error: unknown base 'dsss'; did you mean dss" in result.stderr
    assert not (tmp_path / "out").exists()


def test_maps_base_needs_an_existing_maps_folder(sod_subset, tmp_path):
    images, _, _ = sod_subset
    missing = relearn("predict", "--base", "dss", "--images", images, "--out", tmp_path / "out")
    assert missing.exit_code == 2 and "give their folder with --maps DIR" in missing.stderr
    absent = relearn(
        "predict", "--base", "srm", "--maps", tmp_path / "nowhere", "--images", images, "--out", tmp_path / "out"
    )
    assert absent.exit_code == 2 and f"{tmp_path / 'nowhere'}: maps folder not found" in absent.stderr


def test_output_folder_must_not_be_an_input_folder(sod_subset):
    images, maps, _ = sod_subset
    result = relearn("predict", "--base", "dss", "--maps", maps, "--images", images, "--out", maps)
    assert result.exit_code == 2 and "never writes over its inputs" in result.stderr


def test_adapter_that_raises_on_one_image_names_adapter_and_image_and_others_still_run(sod_subset, tmp_path):
    images, _, stems = sod_subset
    path = adapter_file(tmp_path, FRAGILE_ADAPTER)
    out = tmp_path / "out"
    result = relearn(
        "predict",
        "--base",
        "fragile",
        "--adapter",
        path,
        "--base-option",
        f"fail_on={stems[2]}",
        "--images",
        images,
        "--out",
        out,
        "--no-cache",
        "--device",
        "cpu",
    )
    assert result.exit_code == 1
    assert f"1 of {COUNT} images failed" in result.stderr
    assert (
        f"base 'fragile' failed on {images / (stems[2] + '.jpg')}: ValueError: cannot handle this one" in result.stderr
    )
    assert sorted(p.stem for p in out.glob("*.png")) == [s for s in stems if s != stems[2]]


@pytest.mark.parametrize(
    "name, problem",
    [
        ("badshape", "returned a map of shape (3, 3), expected the image's size"),
        ("intmap", "returned dtype uint8, expected float32 values in [0, 1]"),
        ("nanmap", f"{321 * 481} NaN or infinite values"),
        ("toobright", "returned values in [2, 2], outside [0, 1]"),
        ("listmap", "returned a list, not a numpy array"),
    ],
)
def test_bad_maps_from_an_adapter_are_rejected_naming_it(sod_subset, tmp_path, name, problem):
    images, _, stems = sod_subset
    path = adapter_file(tmp_path, BAD_ADAPTERS)
    out = tmp_path / "out"
    result = relearn(
        "predict", "--base", name, "--adapter", path, "--images", images, "--out", out, "--no-cache", "--device", "cpu"
    )
    assert result.exit_code == 1
    assert f"{COUNT} of {COUNT} images failed" in result.stderr
    assert f"adapter {name!r} returned" in result.stderr and problem in result.stderr
    assert f"for image '{stems[0]}.jpg'" in result.stderr
    assert not out.exists() or not any(out.glob("*.png"))


def predict_base_maps(name, image_paths, options, cache, batch_size=8):
    """Maps by path and the failures, through the Python API."""
    maps, failures = {}, []
    for path, outcome in predict(
        image_paths,
        name,
        options=options,
        batch_size=batch_size,
        workspace=Workspace(cache if cache is not None else Cache(None)),
    ):
        if isinstance(outcome, BaseMapFailure):
            failures.append(outcome)
        else:
            maps[path] = outcome
    return maps, failures


def test_validate_map_accepts_float_maps_and_clips_rounding():
    saliency = np.linspace(-1e-6, 1 + 1e-6, 12).reshape(3, 4)
    checked = validate_map("x", "img.jpg", saliency, (3, 4))
    assert checked.dtype == np.float32 and checked.min() == 0.0 and checked.max() == 1.0
    with pytest.raises(BadOutputError, match="adapter 'x' returned a map of shape \\(4, 3\\)"):
        validate_map("x", "img.jpg", saliency.T, (3, 4))


def test_predict_base_maps_caches_computed_maps_by_image_content(sod_subset, tmp_path):
    images, _, stems = sod_subset
    path = adapter_file(tmp_path, FRAGILE_ADAPTER)
    plugins.load_adapter_file(path)
    log = tmp_path / "calls.log"
    image_paths = sorted(images.iterdir())
    cache = Cache(tmp_path / "cache")
    first, _ = predict_base_maps("fragile", image_paths, {"log_dir": str(tmp_path)}, cache, batch_size=2)
    assert log.read_text().split() == stems
    again, _ = predict_base_maps("fragile", image_paths, {"log_dir": str(tmp_path)}, cache, batch_size=2)
    assert log.read_text().split() == stems  # nothing predicted the second time
    for image in image_paths:
        np.testing.assert_array_equal(first[image], again[image])
        assert first[image].dtype == np.float32
    _, failures = predict_base_maps("fragile", image_paths[:1], {"log_dir": str(tmp_path), "extra": 1}, cache)
    assert log.read_text().split()[-1] == stems[0]  # other options: another cache entry
    assert failures == []


def test_predict_base_maps_isolates_the_failing_image_of_a_batch(sod_subset, tmp_path):
    images, _, stems = sod_subset
    plugins.load_adapter_file(adapter_file(tmp_path, FRAGILE_ADAPTER))
    image_paths = sorted(images.iterdir())
    maps, failures = predict_base_maps("fragile", image_paths, {"fail_on": stems[1]}, None, batch_size=4)
    assert failures == [BaseMapFailure(image_paths[1], "fragile", "ValueError: cannot handle this one")]
    assert sorted(maps) == [p for p in image_paths if p.stem != stems[1]]


def test_unreadable_image_is_a_failure_naming_the_file(tmp_path):
    plugins.load_adapter_file(adapter_file(tmp_path, FRAGILE_ADAPTER))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    _, (failure,) = predict_base_maps("fragile", [broken], {}, None)
    assert failure.image == broken and "cannot be read as an image" in failure.problem


def test_adapters_list_prints_name_source_version_per_line(tmp_path):
    result = relearn("adapters", "list")
    assert result.exit_code == 0
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(rows) == {adapter.name for adapter in plugins.get_adapters()}
    assert rows["dss"].split()[1:4] == ["built-in", "relearn_adapters.maps", plugins.__version__]
    filtered = relearn("adapters", "list", "*r?")
    assert [line.split()[0] for line in filtered.stdout.splitlines()] == [
        name for name in sorted(rows) if len(name) >= 2 and name[-2] == "r"
    ]
    none = relearn("adapters", "list", "nothing*")
    assert none.exit_code == 1 and "no adapter matches 'nothing*'" in none.stderr


def test_adapters_show_gives_paper_source_and_published_scores():
    result = relearn("adapters", "show", "BRN")
    assert result.exit_code == 0
    assert "Detect Globally, Refine Locally" in result.stdout
    assert "built-in relearn_adapters.maps" in result.stdout
    assert "published SOD       max F 0.845  MAE 0.104" in result.stdout
    unknown = relearn("adapters", "show", "pagnr")
    assert unknown.exit_code == 2 and "did you mean pagrn" in unknown.stderr


def test_adapters_new_scaffolds_a_package_whose_test_passes_and_which_predicts(sod_subset, tmp_path):
    images, _, stems = sod_subset
    package = tmp_path / "pkg"
    result = relearn("adapters", "new", "mysal", "--dir", package)
    assert result.exit_code == 0, result.output
    pyproject = (package / "pyproject.toml").read_text()
    assert '[project.entry-points."relearn.adapters"]\nmysal = "relearn_mysal"' in pyproject
    test = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package)],
        capture_output=True,
        text=True,
        cwd=package,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert test.returncode == 0 and "2 passed" in test.stdout, test.stdout + test.stderr
    listed = relearn("adapters", "list", "mysal", "--adapter", package / "relearn_mysal.py")
    assert listed.stdout.split()[:3] == ["mysal", "file", str((package / "relearn_mysal.py").resolve())]
    out = tmp_path / "out"
    predicted = relearn(
        "predict",
        "--base",
        "mysal",
        "--adapter",
        package / "relearn_mysal.py",
        "--images",
        images,
        "--out",
        out,
        "--no-cache",
    )
    assert predicted.exit_code == 0, predicted.output
    assert sorted(p.stem for p in out.glob("*.png")) == stems


def test_adapters_new_refuses_bad_names_and_used_folders(tmp_path):
    bad = relearn("adapters", "new", "My-Sal", "--dir", tmp_path / "a")
    assert bad.exit_code == 2 and "lower-case letters" in bad.stderr
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    used = relearn("adapters", "new", "ok", "--dir", tmp_path / "b")
    assert used.exit_code == 2 and "is not an empty folder" in used.stderr


@pytest.mark.parametrize("base, suffix, kind", [("onnx", ".onnx", "ONNX"), ("torchscript", ".pt", "TorchScript")])
def test_model_file_that_is_not_a_network_is_named(sod_subset, tmp_path, base, suffix, kind):
    images, _, _ = sod_subset
    fake = tmp_path / f"model{suffix}"
    fake.write_text("not a network")
    result = relearn(
        "predict",
        "--base",
        base,
        "--network",
        fake,
        "--images",
        images,
        "--out",
        tmp_path / "out",
        "--no-cache",
        "--device",
        "cpu",
    )
    assert result.exit_code == 2  # found by the adapter's check of its options, before the first image
    assert result.stderr.count("\n") == 1 and str(fake) in result.stderr and kind in result.stderr
    assert not list((tmp_path / "out").glob("*.png"))


def test_dss_maps_through_predict_and_eval_reproduce_the_published_sod_scores(sod_dir, tmp_path):
    """registry.yaml's published DSS scores on SOD (max F 0.844, MAE 0.121) come back from the maps adapter's output."""
    import json

    from relearn_core.registry import load_registry

    out = tmp_path / "dss"
    predicted = relearn(
        "predict", "--base", "dss", "--maps", sod_dir / "maps" / "DSS", "--images", sod_dir / "images", "--out", out
    )
    assert predicted.exit_code == 0, predicted.output
    assert len(list(out.glob("*.png"))) == len(list((sod_dir / "images").glob("*.jpg"))) == 300
    evaluated = relearn("eval", "--pred", out, "--gt", sod_dir / "gt", "--json", tmp_path / "scores.json", "--quiet")
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    published = load_registry().baseline("dss").published["SOD"]
    assert scores["count"] == 300
    assert round(scores["max_f"], 3) == published.max_f
    assert round(scores["mae"], 3) == published.mae


def test_network_named_in_a_user_registry_is_a_base_of_its_own(sod_subset, tmp_path, monkeypatch):
    """registry `networks:` entry -> `--base NAME`, run by the generic torchscript adapter with the entry's options."""
    import torch

    images, _, stems = sod_subset
    darkness = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1)))
    with torch.no_grad():  # logit = 4 - 8 * mean(rgb in [0, 1]): dark pixels are salient
        darkness[0].weight.fill_(-8 / 3)
        darkness[0].bias.fill_(4.0)
    darkness.save(str(tmp_path / "darkness.pt"))
    (tmp_path / "mine.yaml").write_text(
        "networks:\n"
        "  - name: darkness\n    format: torchscript\n    model: darkness.pt\n    description: dark is salient\n"
        "    mean: [0, 0, 0]\n    std: [1, 1, 1]\n    sigmoid: true\n    minmax: false\n"
    )
    monkeypatch.setenv("RELEARN_REGISTRY", str(tmp_path / "mine.yaml"))
    listed = relearn("adapters", "list", "dark*")
    assert listed.stdout.split()[:3] == ["darkness", "built-in", "relearn_adapters.named_networks"]
    out = tmp_path / "out"
    result = relearn("predict", "--base", "darkness", "--images", images, "--out", out, "--no-cache", "--device", "cpu")
    assert result.exit_code == 0, result.output
    for stem in stems:
        image = np.asarray(Image.open(images / f"{stem}.jpg"), dtype=np.float64) / 255
        expected = 1 / (1 + np.exp(-(4 - 8 * image.mean(axis=2))))
        assert np.abs(read_map(out / f"{stem}.png") - expected).max() < 0.02


def test_base_options_decorator_gives_any_command_the_same_base_choice(tmp_path):
    """train and wrap name their base with the same options as predict: the decorator hands over one BaseChoice."""
    import dataclasses

    import click

    from relearn_core.cli import BaseChoice, base_options

    seen = []

    @click.command()
    @base_options
    @click.option("--other", default=1)
    def command(base, other):
        seen.append((base, other))

    result = CliRunner().invoke(
        command,
        [
            "--base",
            "DSS",
            "--maps",
            str(tmp_path),
            "--adapter",
            "a.py",
            "--adapter",
            "b.py",
            "--base-option",
            "input_size=[320, 320]",
            "--base-option",
            "sigmoid=true",
            "--base-option",
            "suffix=",
            "--other",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    ((choice, other),) = seen
    assert other == 3
    assert choice == BaseChoice(
        "DSS",
        tmp_path,
        None,
        (Path("a.py"), Path("b.py")),
        "auto",
        (("input_size", [320, 320]), ("sigmoid", True), ("suffix", "")),
    )
    assert choice.options() == {"input_size": [320, 320], "sigmoid": True, "suffix": "", "maps": str(tmp_path)}
    with pytest.raises(InputError, match="a.py: adapter file not found"):
        choice.adapter()
    assert dataclasses.replace(choice, adapter_files=()).adapter().name == "dss"
    bad = CliRunner().invoke(command, ["--base", "dss", "--base-option", "novalue"])
    assert bad.exit_code == 2 and "expected KEY=VALUE" in bad.output


def test_predict_shows_plain_progress_lines_off_a_terminal_and_none_with_quiet(sod_subset, tmp_path):
    images, maps, _ = sod_subset
    command = ["predict", "--base", "dss", "--maps", maps, "--images", images]
    shown = relearn(*command, "--out", tmp_path / "a")
    assert shown.exit_code == 0 and f"predict dss {COUNT}/{COUNT}" in shown.stderr
    quiet = relearn(*command, "--out", tmp_path / "b", "--quiet")
    assert quiet.exit_code == 0 and "predict dss" not in quiet.stderr
