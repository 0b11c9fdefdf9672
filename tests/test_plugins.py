"""The plugin manager, the registry, and third-party adapters installed with pip (examples/custom_adapter)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import relearn_adapters

from relearn_core import __version__, plugins
from relearn_core.errors import InputError, RelearnError
from relearn_core.registry import builtin_registry_path, load_registry

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "custom_adapter"
RELEARN = Path(sys.executable).parent / "relearn"


pytestmark = pytest.mark.usefixtures("fresh_plugin_manager")


def write_plugin(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text("from relearn_core.hookspecs import AdapterInfo, BackboneInfo, hookimpl\n" + textwrap.dedent(body))
    return path


def pip_install_target(source: Path, target: Path) -> None:
    """A real (non-editable) pip install of ``source`` into the folder ``target``, built from a copy of it."""
    build = target.parent / f"{source.name}-src"
    shutil.copytree(source, build, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(build),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def run_with_path(args, pythonpath: Path, cwd: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=environment, timeout=300)


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """examples/custom_adapter installed with pip into a folder that is put on PYTHONPATH."""
    target = tmp_path_factory.mktemp("site") / "target"
    pip_install_target(EXAMPLE, target)
    return target


# --- built-in adapters ---


def test_builtin_modules_register_every_registry_baseline_and_the_generic_maps_adapter():
    adapters = {adapter.name: adapter for adapter in plugins.get_adapters()}
    expected = {"maps"} | {baseline.name for baseline in load_registry().baselines}
    assert expected <= set(adapters)
    for name in expected:
        assert adapters[name].source == plugins.PluginSource(plugins.BUILT_IN, "relearn_adapters.maps", __version__)
        assert adapters[name].info.predicts_from == "maps"
    assert "relearn_adapters.maps" in relearn_adapters.BUILTIN_MODULES
    dss = adapters["dss"].info
    assert (dss.venue, dss.year, dss.options["suffix"]) == ("CVPR", 2017, "")


def test_list_adapters_filters_with_wildcards():
    names = [adapter.name for adapter in plugins.get_adapters()]
    assert [a.name for a in plugins.list_adapters("p*")] == [n for n in names if n.startswith("p")]
    assert {a.name for a in plugins.list_adapters(["dss", "s?m"])} == {"dss", "srm"}
    assert "dss" not in {a.name for a in plugins.list_adapters("*", exclude="d*")}
    assert plugins.list_adapters("no-such-*") == []


def test_unknown_base_lists_the_close_names():
    with pytest.raises(plugins.UnknownNameError, match=r"unknown base 'dsss'; did you mean .*\bdss\b"):
        plugins.get_adapter("dsss")
    with pytest.raises(plugins.UnknownNameError) as raised:
        plugins.get_adapter("zzzzzz")
    assert "did you mean" not in str(raised.value)


# --- adapter files (--adapter FILE) ---


def test_adapter_file_is_registered_with_its_source_and_version(tmp_path):
    path = write_plugin(
        tmp_path,
        "halfgrey",
        """
        __version__ = "2.5"

        @hookimpl
        def relearn_adapters():
            return [AdapterInfo(name="halfgrey", description="0.5 everywhere", predicts_from="algorithm")]

        @hookimpl
        def relearn_predict(adapter, images, names, options):
            import numpy as np
            return [np.full(image.shape[:2], 0.5, np.float32) for image in images]
    """,
    )
    loaded = plugins.load_adapter_file(path)
    assert [adapter.name for adapter in loaded] == ["halfgrey"]
    adapter = plugins.get_adapter("HalfGrey")
    assert adapter.source == plugins.PluginSource(plugins.FILE, str(path.resolve()), "2.5")
    assert plugins.load_adapter_file(path) == loaded  # loading the same file twice registers it once
    image = np.zeros((5, 7, 3), np.uint8)
    (saliency,) = plugins.predict(adapter, [image], ["x"], {})
    assert saliency.shape == (5, 7)


def test_two_adapters_with_one_name_is_an_error_naming_both_sources(tmp_path):
    path = write_plugin(
        tmp_path,
        "impostor",
        """
        @hookimpl
        def relearn_adapters():
            return [AdapterInfo(name="DSS", description="another dss")]
    """,
    )
    with pytest.raises(plugins.DuplicateAdapterError) as raised:
        plugins.load_adapter_file(path)
    message = str(raised.value)
    assert "'dss'" in message and "built-in relearn_adapters.maps" in message and str(path.resolve()) in message
    assert plugins.get_adapter("dss").source.kind == plugins.BUILT_IN  # the clashing file was not kept


def test_predict_goes_only_to_the_plugin_that_declared_the_adapter(tmp_path):
    """A plugin that answers relearn_predict for every name cannot take over another adapter."""
    path = write_plugin(
        tmp_path,
        "greedy",
        """
        @hookimpl
        def relearn_adapters():
            return [AdapterInfo(name="greedy", description="answers everything")]

        @hookimpl
        def relearn_predict(adapter, images, names, options):
            import numpy as np
            return [np.ones(image.shape[:2], np.float32) for image in images]
    """,
    )
    plugins.load_adapter_file(path)
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    from relearn_core.imageio import write_map

    write_map(maps_dir / "a.png", np.zeros((4, 6)))
    (saliency,) = plugins.predict(
        plugins.get_adapter("dss"), [np.zeros((4, 6, 3), np.uint8)], ["a"], {"maps": str(maps_dir)}
    )
    assert saliency.max() == 0.0


@pytest.mark.parametrize(
    "body, problem",
    [
        ("def broken(:\n", "cannot be loaded: SyntaxError"),
        ("raise ImportError('needs package foo')\n", "cannot be loaded: ImportError: needs package foo"),
        ("x = 1\n", "defines no relearn hooks"),
        ("@hookimpl\ndef relearn_predcit(adapter):\n    return None\n", "relearn_predcit"),
    ],
)
def test_bad_adapter_files_are_refused_with_the_reason(tmp_path, body, problem):
    path = write_plugin(tmp_path, "bad", body)
    with pytest.raises(RelearnError, match=re.escape(problem)) as raised:
        plugins.load_adapter_file(path)
    assert "bad.py" in str(raised.value)


def test_adapter_file_must_exist_and_be_python(tmp_path):
    with pytest.raises(InputError, match="adapter file not found"):
        plugins.load_adapter_file(tmp_path / "missing.py")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x01")
    with pytest.raises(InputError, match="must be a Python file"):
        plugins.load_adapter_file(tmp_path / "model.onnx")


def test_adapter_returning_something_else_than_adapterinfo_is_named(tmp_path):
    path = write_plugin(
        tmp_path,
        "sloppy",
        """
        @hookimpl
        def relearn_adapters():
            return ["sloppy"]
    """,
    )
    with pytest.raises(
        RelearnError, match=r"relearn_adapters of file .*sloppy.py returned 'sloppy', not a AdapterInfo"
    ):
        plugins.load_adapter_file(path)


def test_backbones_are_collected_and_dispatched_by_name(tmp_path):
    path = write_plugin(
        tmp_path,
        "pools",
        """
        import torch.nn.functional as F

        @hookimpl
        def relearn_backbones():
            return [BackboneInfo(name="pool2", description="two average pools", channels=(3, 3)),
                    BackboneInfo(name="pool1", description="declares one map, returns two", channels=(3,))]

        @hookimpl
        def relearn_extract_features(backbone, images, device):
            half = F.avg_pool2d(images, 2)
            return [half, F.avg_pool2d(half, 2)]
    """,
    )
    import torch

    plugins.load_adapter_file(path)
    assert {"pool1", "pool2"} <= {backbone.name for backbone in plugins.get_backbones()}
    features = plugins.extract_features("pool2", torch.ones(2, 3, 8, 8), "cpu")
    assert [tuple(f.shape) for f in features] == [(2, 3, 4, 4), (2, 3, 2, 2)]
    with pytest.raises(RelearnError, match="returned 2 feature maps, its BackboneInfo lists 1"):
        plugins.extract_features("pool1", torch.ones(1, 3, 8, 8), "cpu")
    with pytest.raises(plugins.UnknownNameError, match="did you mean pool2"):
        plugins.extract_features("pool3", torch.ones(1, 3, 8, 8), "cpu")


def test_hook_calls_are_traced_when_asked(monkeypatch, capsys):
    monkeypatch.setenv("RELEARN_TRACE_HOOKS", "1")
    plugins.get_adapters()
    traced = capsys.readouterr().err
    assert re.search(r"relearn hook: relearn_adapters\(\) -> plugins \[relearn_adapters\.maps\]", traced)
    assert re.search(r"relearn hook: relearn_adapters returned list in [\d.]+ ms", traced)
    plugins.reset()
    monkeypatch.setenv("RELEARN_TRACE_HOOKS", "0")
    plugins.get_adapters()
    assert "relearn hook" not in capsys.readouterr().err


# --- the relearn.adapters entry-point group: the example package, installed with pip ---


def test_installed_example_is_found_through_its_entry_point(installed_example, tmp_path):
    result = run_with_path([str(RELEARN), "adapters", "list", "tiny*"], installed_example, tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.split()[:5] == ["tinysal", "entry", "point", "relearn-tinysal:tinysal", "0.1.0"]


def test_installed_example_predicts_maps_with_relearn_predict(installed_example, tmp_path, sod_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    import relearn_tinysal
    import torch

    torch.manual_seed(0)
    torch.save(relearn_tinysal.TinySalNet().state_dict(), tmp_path / "tinysal.pt")
    images = tmp_path / "images"
    images.mkdir()
    stems = sorted(path.stem for path in (sod_dir / "images").glob("*.jpg"))[:3]
    for stem in stems:
        shutil.copy(sod_dir / "images" / f"{stem}.jpg", images)
    out = tmp_path / "out"
    result = run_with_path(
        [
            str(RELEARN),
            "predict",
            "--base",
            "tinysal",
            "--base-option",
            f"weights={tmp_path / 'tinysal.pt'}",
            "--images",
            str(images),
            "--out",
            str(out),
            "--no-cache",
            "--device",
            "cpu",
        ],
        installed_example,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    from PIL import Image

    for stem in stems:
        written = Image.open(out / f"{stem}.png")
        assert written.mode == "L" and written.size == Image.open(images / f"{stem}.jpg").size


def test_example_package_passes_its_own_tests(installed_example, tmp_path):
    result = run_with_path(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        installed_example,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_relearn_adapters_coexists_with_a_top_level_adapters_package(tmp_path):
    """AdapterHub installs a top-level ``adapters`` package; relearn's own is ``relearn_adapters``: no clash."""
    hub = tmp_path / "hub" / "adapters"
    hub.mkdir(parents=True)
    (hub / "__init__.py").write_text("ADAPTERHUB = True\n")
    check = (
        "import importlib.util, sys\n"
        "import adapters, relearn_adapters\n"
        "from relearn_core import plugins\n"
        "assert adapters.ADAPTERHUB and adapters.__file__.startswith(sys.argv[1]), adapters.__file__\n"
        "assert 'dss' in [a.name for a in plugins.get_adapters()]\n"
        "print(relearn_adapters.__name__, adapters.__name__)\n"
    )
    result = run_with_path([sys.executable, "-c", check, str(hub.parent)], hub.parent, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["relearn_adapters", "adapters"]
    alone = run_with_path(
        [sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('adapters'))"], tmp_path, tmp_path
    )
    assert alone.stdout.strip() == "None", "relearn must not install a top-level package called adapters"


# --- registry.yaml ---


def published_table() -> dict[str, dict[str, tuple[float, float]]]:
    """The max F / MAE table of ../shared/reference/published-baselines.md, keyed by lower-case method name."""
    text = (REPO.parent / "shared" / "reference" / "published-baselines.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    datasets = [cell.strip() for cell in lines[0].strip("|").split("|")][1:]
    table = {}
    for line in lines[2:]:
        method, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = re.search(r"\((\w+)\)", method).group(1) if "(" in method else method
        table[name.lower()] = {
            dataset: tuple(float(value) for value in cell.split("/"))
            for dataset, cell in zip(datasets, cells)
            if cell != "-"
        }
    return table


def test_registry_lists_the_seven_baselines_plus_amulet_and_picanet():
    registry = load_registry()
    assert [b.display for b in registry.baselines] == [
        "MDF",
        "DSS",
        "SRM",
        "RADF",
        "RFCN",
        "BRN",
        "PAGRN",
        "Amulet",
        "PiCANet",
    ]
    for baseline in registry.baselines:
        assert baseline.full_name and baseline.authors and baseline.venue and 2009 < baseline.year < 2020
        assert baseline.extension == ".png"


def test_registry_published_scores_are_exactly_those_of_the_reference_table():
    table = published_table()
    registry = load_registry()
    for baseline in registry.baselines:
        published = {dataset: (score.max_f, score.mae) for dataset, score in baseline.published.items()}
        assert published == table.get(baseline.name, {}), baseline.name
    assert set(table) <= {baseline.name for baseline in registry.baselines}


def test_user_registry_adds_named_networks(tmp_path, monkeypatch):
    user = tmp_path / "mine.yaml"
    user.write_text(
        "networks:\n  - name: MyNet\n    format: ONNX\n    model: nets/my.onnx\n"
        "    input_size: [320, 320]\n    sigmoid: true\n"
    )
    monkeypatch.setenv("RELEARN_REGISTRY", str(user))
    registry = load_registry()
    (network,) = registry.networks
    assert (network.name, network.format, network.model) == ("mynet", "onnx", tmp_path / "nets" / "my.onnx")
    assert network.options == {"input_size": [320, 320], "sigmoid": True}
    assert registry.baseline("dss") is not None

    user.write_text("networks:\n  - name: dss\n    format: onnx\n    model: x.onnx\n")
    os.utime(user, ns=(0, 0))  # a new modification time, whatever the clock's resolution
    with pytest.raises(InputError, match="registry name 'dss' is already defined"):
        load_registry()


def test_the_registry_sets_the_re_learners_defaults_and_a_user_registry_lays_its_own_over_them(tmp_path, monkeypatch):
    from relearn_core.config import RelearnConfig, default_config

    defaults = {"backbone": "u2netp", "knowledge_views": ["flip"], "confidence": 0.95}
    assert load_registry().relearn == defaults
    assert default_config() == RelearnConfig().with_overrides(defaults)
    user = tmp_path / "mine.yaml"
    user.write_text("relearn:\n  backbone: handcrafted\n  joint: {loss: l1}\n")
    monkeypatch.setenv("RELEARN_REGISTRY", str(user))
    config = default_config()
    assert (config.backbone, config.joint.loss, config.join) == ("handcrafted", "l1", "fused")
    user.write_text("relearn:\n  joint: {epoch: 3}\n")
    os.utime(user, ns=(0, 0))
    with pytest.raises(RelearnError, match=r"mine.yaml: 'relearn': unknown configuration field 'joint.epoch'"):
        default_config()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("networks:\n  - name: n\n    format: caffe\n    model: m\n", "format must be one of onnx, torchscript"),
        ("networks:\n  - name: n\n    format: onnx\n", "entry 'n' has no 'model'"),
        ("baselines:\n  x: {venue: CVPR, year: 2017}\n", "entry 'x' has no 'full_name'"),
        ("baselines: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_registry_entries_are_named(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(problem)) as raised:
        load_registry(path)
    assert str(path) in str(raised.value)


def test_registry_is_inside_a_built_wheel(tmp_path):
    """A non-editable install carries registry.yaml as package data of relearn_core (the link is materialised)."""
    source = tmp_path / "relearn-src"
    source.mkdir()
    for name in ("pyproject.toml", "registry.yaml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    (source / "README.md").touch()
    for package in ("relearn_core", "adapters"):
        shutil.copytree(REPO / package, source / package, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "target"
    pip_install_target(source, target)
    check = (
        "from relearn_core.registry import builtin_registry_path, load_registry\n"
        "path = builtin_registry_path()\n"
        "print(path.is_symlink(), path.resolve())\n"
        "print(len(load_registry().baselines))\n"
    )
    result = run_with_path([sys.executable, "-c", check], target, tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == f"False {target / 'relearn_core' / 'registry.yaml'}"
    assert int(second) == len(load_registry().baselines)
    assert builtin_registry_path().resolve() == REPO / "registry.yaml"  # the source tree reads the root file


def fake_installed_distribution(site: Path, entry_points: str, modules: dict[str, str]) -> None:
    """A distribution as pip leaves it (a dist-info folder with METADATA and entry_points.txt) plus its modules."""
    info = site / "relearn_fake-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: relearn-fake\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[relearn.adapters]\n{entry_points}\n")
    for name, text in modules.items():
        (site / f"{name}.py").write_text(
            "from relearn_core.hookspecs import AdapterInfo, hookimpl\n" + textwrap.dedent(text)
        )


def test_entry_point_clashing_with_a_builtin_names_both_sources(tmp_path, monkeypatch):
    fake_installed_distribution(
        tmp_path,
        "fake = relearn_fake_dss",
        {
            "relearn_fake_dss": """
        @hookimpl
        def relearn_adapters():
            return [AdapterInfo(name="dss", description="my own dss")]
    """
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(plugins.DuplicateAdapterError) as raised:
        plugins.get_adapters()
    message = str(raised.value)
    assert "two adapters named 'dss'" in message
    assert "built-in relearn_adapters.maps" in message and "entry point relearn-fake:fake" in message


def test_entry_point_that_cannot_be_imported_is_named(tmp_path, monkeypatch):
    fake_installed_distribution(tmp_path, "gone = relearn_no_such_module_xyz", {})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        RelearnError,
        match=r"entry point 'gone' \(relearn_no_such_module_xyz\) of the installed package relearn-fake "
        r"cannot be loaded: ModuleNotFoundError",
    ):
        plugins.get_adapters()


def test_entry_point_adapter_reports_its_distribution_version(tmp_path, monkeypatch):
    fake_installed_distribution(
        tmp_path,
        "fake = relearn_fake_ok",
        {
            "relearn_fake_ok": """
        @hookimpl
        def relearn_adapters():
            return [AdapterInfo(name="fakeok", description="fine")]
    """
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugins.get_adapter("fakeok").source == plugins.PluginSource(plugins.ENTRY_POINT, "relearn-fake:fake", "1.2")


def test_a_saliency_backbone_sees_its_input_size_and_gives_its_own_map_from_the_features_pass(tmp_path):
    """A backbone with ``input_size`` gets every image at exactly that size; with ``saliency_logit`` the features pass
    also returns its map: the sigmoid of that channel, min-max normalised, at the image's size."""
    path = write_plugin(
        tmp_path,
        "brightness",
        """
        @hookimpl
        def relearn_backbones():
            return [BackboneInfo(name="brightness", description="the red channel as a logit", channels=(1,),
                                 saliency_logit=(0, 0), input_size=(16, 24))]

        @hookimpl
        def relearn_extract_features(backbone, images, device):
            if tuple(images.shape[-2:]) != (16, 24):
                raise ValueError(f"input of {tuple(images.shape)}, not the declared input_size")
            return [images[:, :1] * 8 - 4]
    """,
    )
    from relearn_core.records import Superpixels
    from relearn_core.relearning.features import superpixel_features

    plugins.load_adapter_file(path)
    image = np.zeros((30, 40, 3), np.uint8)
    image[:, 20:, 0] = 255  # the right half is red: salient for this backbone
    labels = np.zeros((30, 40), np.int32)
    labels[:, 20:] = 1
    (found,) = superpixel_features([image], [Superpixels(labels, 2)], "brightness")
    assert found.saliency.shape == (30, 40) and found.saliency.dtype == np.float16
    assert found.saliency[:, :18].max() == 0.0 and found.saliency[:, 22:].min() == 1.0  # min-max normalised
    (plain,) = superpixel_features([image], [Superpixels(labels, 2)], "handcrafted")
    assert plain.saliency is None
