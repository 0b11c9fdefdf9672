"""relearn train + wrap end to end on six downscaled SOD images with their DSS maps, on each executor, bad input."""

import dataclasses
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from relearn_core import __version__
from relearn_core.api import RunReport, prepare_pool, read_entries, train, wrap
from relearn_core.cache import Cache
from relearn_core.checkpoint import load_checkpoint, save_checkpoint
from relearn_core.cli import main
from relearn_core.config import RelearnConfig
from relearn_core.errors import InputError, RelearnError
from relearn_core.executors import LocalExecutor
from relearn_core.imageio import list_by_stem, read_image, read_map, read_mask, write_map
from relearn_core.relearning.pseudo_gt import bilevel_pseudo_gt
from relearn_core.workspace import Workspace

STEMS = ("100075", "100080", "100098", "101085", "101087", "102061")
SMALL = {  # tiny images: few superpixels and a coarse flow keep the test fast; the paper's join (the fused one below)
    "join": "paper",
    "correspondence": {
        "neighbours": 3,
        "superpixels": 60,
        "edge_boxes": 100,
        "proposals": 20,
        "edge_method": "sobel",
        "flow_grid": 64,
        "flow": {"working_size": 64, "levels": 2, "top_iterations": 5, "iterations": 3},
    },
    "filter": {"epochs": 5, "min_positives": 2},
    "joint": {"epochs": 5},
}


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """SIFT Flow's small tensors run several times faster on one thread when the CPU is shared (CI, parallel tests)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny(sod_dir, tmp_path_factory):
    """images/, gt/ and maps/ (DSS) of six SOD images scaled to 96 px on the long side."""
    root = tmp_path_factory.mktemp("tiny")
    for sub in ("images", "gt", "maps"):
        (root / sub).mkdir()
    for stem in STEMS:
        image = Image.open(sod_dir / "images" / f"{stem}.jpg")
        scale = 96 / max(image.size)
        size = (round(image.size[0] * scale), round(image.size[1] * scale))
        image.resize(size, Image.BILINEAR).save(root / "images" / f"{stem}.png")
        Image.open(sod_dir / "gt" / f"{stem}.png").convert("L").resize(size, Image.NEAREST).save(
            root / "gt" / f"{stem}.png"
        )
        Image.open(sod_dir / "maps" / "DSS" / f"{stem}.png").convert("L").resize(size, Image.BILINEAR).save(
            root / "maps" / f"{stem}.png"
        )
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def config():
    return RelearnConfig().with_overrides(SMALL)


def labelled(folder: Path, gt: Path) -> tuple[list[Path], dict[Path, Path]]:
    images = sorted((folder / "images").glob("*.png"))
    return images, {path: gt / path.name for path in images if (gt / path.name).exists()}


def run_train(tiny, config, cache_dir, gt=None, executor=None) -> RunReport:
    images, masks = labelled(tiny, gt or tiny / "gt")
    return train(
        images,
        masks,
        "dss",
        options={"maps": str(tiny / "maps")},
        config=config,
        workspace=Workspace(Cache(cache_dir), executor=executor),
    )


@pytest.fixture(scope="session")
def trained(tiny, config, cache_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "dss.pt"
    report = run_train(tiny, config, cache_dir)
    save_checkpoint(report.relearner, path)
    return path, report


def run_wrap(
    tiny, checkpoint, out, cache_dir, images=None, pools=(), maps=None, executor=None, relearner=None
) -> RunReport:
    """The API's wrap of ``images`` (default: all six), its maps written into ``out``."""
    relearner = relearner or load_checkpoint(checkpoint, "dss")
    images = images or sorted((tiny / "images").glob("*.png"))
    return wrap(
        images,
        relearner,
        "dss",
        pools=pools,
        options={"maps": str(maps or tiny / "maps")},
        workspace=Workspace(Cache(cache_dir), executor=executor),
        write=lambda outcome: write_map(Path(out) / f"{outcome.entry.name}.png", outcome.saliency),
    )


def cli_wrap(tiny, checkpoint, out, *extra):
    wrap_args = [
        "--base",
        "dss",
        "--maps",
        str(tiny / "maps"),
        "--model",
        str(checkpoint),
        "--images",
        str(tiny / "images"),
    ]
    return CliRunner().invoke(main, ["wrap", *wrap_args, "--out", str(out), *extra])


@pytest.fixture(scope="session")
def wrapped(tiny, trained, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ours")
    return out, run_wrap(tiny, trained[0], out, cache_dir)


def test_train_writes_a_checkpoint_for_the_base(trained, config):
    path, report = trained
    relearner = load_checkpoint(path, "dss")
    assert relearner.base == "dss"
    assert relearner.config == config
    assert relearner.summary["targets"] == len(STEMS)
    assert relearner.summary["relearned_superpixels"] > 0
    held = relearner.summary["held_out"]  # one of the six images held out; epoch 0 is the base itself
    assert relearner.summary["validation_images"] == 1 and 0 <= held["epoch"] <= config.joint.epochs
    assert held["after"]["max_f"] - held["after"]["mae"] >= held["before"]["max_f"] - held["before"]["mae"]
    assert relearner.corrects == (held["epoch"] != 0) and relearner.fusion == (1.0, 0.0, 0.0)  # no fusion: paper
    assert report.pool_size == len(STEMS) and not report.missing_gt and not report.base_failures


def test_wrap_changes_only_unsure_pixels_and_keeps_the_base_elsewhere(tiny, wrapped):
    out, report = wrapped
    assert sorted(report.written) == sorted(STEMS)
    changed_somewhere = False
    for stem in STEMS:
        ours = read_map(out / f"{stem}.png")
        image = read_image(tiny / "images" / f"{stem}.png")
        base = read_map(tiny / "maps" / f"{stem}.png")
        assert ours.shape == base.shape == image.shape[:2]
        pseudo = bilevel_pseudo_gt(image, base.astype(np.float32))
        trusted = ~pseudo.unsure
        assert np.abs(ours - base)[trusted].max(initial=0) <= 1 / 255 + 1e-9, stem
        if stem not in report.kept_base:
            changed_somewhere |= bool(np.abs(ours - base).max() > 2 / 255)
    assert changed_somewhere, "the re-learner changed no image at all"


def test_cli_wrap_resumes_and_skips_existing_maps(tiny, trained, wrapped, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RELEARN_CACHE", str(cache_dir))
    out, _ = wrapped
    copy = tmp_path / "out"
    assert cli_wrap(tiny, trained[0], copy, "-q").exit_code == 0
    (copy / f"{STEMS[2]}.png").unlink()  # an interrupted run
    kept = copy / f"{STEMS[0]}.png"
    os.utime(kept, (1, 1))
    result = cli_wrap(tiny, trained[0], copy, "-q")
    assert result.exit_code == 0, result.output
    assert "wrote 1 maps" in result.output and f"{len(STEMS) - 1} were already there" in result.output
    assert kept.stat().st_mtime == 1
    # the pool is all six images, as when nothing was there: the same map
    np.testing.assert_array_equal(read_map(copy / f"{STEMS[2]}.png"), read_map(out / f"{STEMS[2]}.png"))


def test_images_wrapped_side_by_side_give_the_same_maps(tiny, trained, wrapped, tmp_path, monkeypatch):
    """Two threads wrap two images at once, each with torch on one thread: the maps are those of the default run, and
    a lone image (all threads free) gets the map it gets beside others."""
    from relearn_core import api

    seen = []

    def recording(*args, **kwargs):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return relearn_image(*args, **kwargs)

    relearn_image = api.relearn_image
    monkeypatch.setattr(api, "relearn_image", recording)
    torch.set_num_threads(2)
    try:
        report = run_wrap(tiny, trained[0], tmp_path / "out", tmp_path / "cache", executor=LocalExecutor(2))
        assert torch.get_num_threads() == 2
        lone = tiny / "images" / f"{STEMS[4]}.png"
        run_wrap(
            tiny,
            trained[0],
            tmp_path / "lone",
            tmp_path / "cache2",
            images=[lone],
            pools=[sorted((tiny / "images").glob("*.png"))],
        )
    finally:
        torch.set_num_threads(1)
    assert len({thread for thread, _ in seen[: len(STEMS)]}) == 2 and {threads for _, threads in seen} == {1}
    assert sorted(report.written) == sorted(STEMS) and report.kept_base == wrapped[1].kept_base
    for stem in STEMS:
        np.testing.assert_array_equal(read_map(tmp_path / "out" / f"{stem}.png"), read_map(wrapped[0] / f"{stem}.png"))
    np.testing.assert_array_equal(
        read_map(tmp_path / "lone" / f"{STEMS[4]}.png"), read_map(wrapped[0] / f"{STEMS[4]}.png")
    )


def test_training_images_side_by_side_gives_the_same_re_learner(tiny, config, trained, tmp_path):
    report = run_train(tiny, config, tmp_path / "cache", executor=LocalExecutor(2))
    one, two = load_checkpoint(trained[0], "dss"), report.relearner
    assert one.summary == two.summary
    for name, value in one.joint.state_dict().items():
        torch.testing.assert_close(two.joint.state_dict()[name], value, rtol=0, atol=0)


def test_checkpoint_for_another_base_or_version_is_refused(trained, tmp_path):
    path, _ = trained
    with pytest.raises(InputError, match="trained for base 'dss', not 'amulet'"):
        load_checkpoint(path, "amulet")
    payload = torch.load(path, weights_only=True)
    payload["relearn_version"] = "99.0.0"
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    with pytest.raises(InputError, match=f"relearn 99.0.0, incompatible with {__version__}"):
        load_checkpoint(old, "dss")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a relearn checkpoint"):
        load_checkpoint(junk, "dss")


def test_missing_ground_truth_is_skipped_and_listed(tiny, config, cache_dir, tmp_path):
    gt = tmp_path / "gt"
    shutil.copytree(tiny / "gt", gt)
    (gt / f"{STEMS[1]}.png").unlink()
    report = run_train(tiny, config, cache_dir, gt=gt)
    assert report.missing_gt == [STEMS[1]]
    assert report.pool_size == len(STEMS)  # still in the pool
    assert report.relearner.summary["targets"] == len(STEMS) - 1


def test_a_base_failing_on_some_images_is_listed_and_the_others_go_on(tiny, trained, cache_dir, tmp_path):
    maps = tmp_path / "maps"
    shutil.copytree(tiny / "maps", maps)
    (maps / f"{STEMS[3]}.png").unlink()
    report = run_wrap(tiny, trained[0], tmp_path / "out", cache_dir, maps=maps)
    assert [f.image.stem for f in report.base_failures] == [STEMS[3]]
    assert sorted(report.written) == sorted(set(STEMS) - {STEMS[3]})


def test_an_image_with_no_usable_neighbour_keeps_its_base_map(tiny, trained, cache_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="relearn"):
        report = run_wrap(tiny, trained[0], tmp_path / "out", cache_dir, images=[tiny / "images" / f"{STEMS[0]}.png"])
    assert "pool has only 0" in caplog.text
    assert report.kept_base == [STEMS[0]]
    np.testing.assert_array_equal(
        read_map(tmp_path / "out" / f"{STEMS[0]}.png"), read_map(tiny / "maps" / f"{STEMS[0]}.png")
    )


def test_a_pool_that_is_the_image_folder_never_gives_an_image_itself(
    tiny, trained, wrapped, config, cache_dir, tmp_path
):
    images = sorted((tiny / "images").glob("*.png"))
    report = run_wrap(tiny, trained[0], tmp_path / "out", cache_dir, pools=[images])
    assert sorted(report.written) == sorted(STEMS)
    ws = Workspace(Cache(cache_dir))
    entries = read_entries(images, RunReport())
    maps = {e.hash: read_map(tiny / "maps" / f"{e.name}.png").astype(np.float32) for e in entries}
    pool = prepare_pool(ws, entries, maps, config)
    for entry in entries:
        assert entry.name not in [n.name for n, _ in pool.neighbours(ws, entry, config.correspondence.neighbours)]
    for stem in STEMS:  # the same pool as the default: the same maps
        np.testing.assert_array_equal(read_map(tmp_path / "out" / f"{stem}.png"), read_map(wrapped[0] / f"{stem}.png"))


def test_output_folder_may_not_be_an_input_folder(tiny, trained):
    result = cli_wrap(tiny, trained[0], tiny / "images")
    assert result.exit_code == 2 and "never writes over its inputs" in result.output


def test_wrap_stops_on_maps_of_another_checkpoint_and_overwrite_replaces_them(
    tiny, trained, cache_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("RELEARN_CACHE", str(cache_dir))
    out = tmp_path / "ours"
    first = cli_wrap(tiny, trained[0], out, "-q")
    assert first.exit_code == 0, first.output
    other = tmp_path / "other.pt"
    save_checkpoint(dataclasses.replace(load_checkpoint(trained[0], "dss"), shrink=0.5), other)
    stale = cli_wrap(tiny, other, out, "-q")
    assert stale.exit_code == 2
    assert "other settings" in stale.output and "checkpoint" in stale.output and "--overwrite" in stale.output
    replaced = cli_wrap(tiny, other, out, "-q", "--overwrite")
    assert replaced.exit_code == 0 and f"wrote {len(STEMS)} maps" in replaced.output
    resumed = cli_wrap(tiny, other, out, "-q")
    assert resumed.exit_code == 0 and "wrote 0 maps" in resumed.output


def test_wrap_exits_0_when_only_a_pool_image_is_unreadable(tiny, trained, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RELEARN_CACHE", str(cache_dir))
    pool = tmp_path / "pool"
    shutil.copytree(tiny / "images", pool)
    (pool / "broken.png").write_bytes(b"not a picture")
    result = cli_wrap(tiny, trained[0], tmp_path / "ours", "-q", "--pool", str(pool))
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output and f"wrote {len(STEMS)} maps" in result.output


def test_cli_train_and_wrap(tiny, trained, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RELEARN_CACHE", str(cache_dir))
    monkeypatch.setenv("RELEARN_HOME", str(tmp_path / "home"))
    config_file = tmp_path / "small.yaml"
    config_file.write_text(yaml.safe_dump(SMALL))
    runner = CliRunner()
    common = ["--base", "dss", "--maps", str(tiny / "maps"), "--device", "cpu"]
    result = runner.invoke(main, ["wrap", *common, "--images", str(tiny / "images"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "relearn train --base dss" in result.output
    model = tmp_path / "home" / "models" / "dss.pt"
    result = runner.invoke(
        main,
        [
            "train",
            *common,
            "--images",
            str(tiny / "images"),
            "--gt",
            str(tiny / "gt"),
            "--config",
            str(config_file),
            "--out",
            str(model),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "held-out training images" in result.output
    result = runner.invoke(
        main, ["wrap", *common, "--images", str(tiny / "images"), "--out", str(tmp_path / "o"), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "held-out training images" in result.output
    assert sorted(p.stem for p in (tmp_path / "o").glob("*.png")) == sorted(STEMS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("joint: {epoch: 3}\n")
    result = runner.invoke(
        main,
        [
            "train",
            *common,
            "--images",
            str(tiny / "images"),
            "--gt",
            str(tiny / "gt"),
            "--config",
            str(bad),
            "--out",
            str(tmp_path / "x.pt"),
        ],
    )
    assert result.exit_code == 2 and "unknown configuration field 'joint.epoch'" in result.output


def test_training_without_any_labelled_image_says_so(tiny, config, cache_dir, tmp_path):
    empty = tmp_path / "gt"
    empty.mkdir()
    with pytest.raises(RelearnError, match="has both a base map and ground truth"):
        run_train(tiny, config, cache_dir, gt=empty)


def test_the_untrained_re_learner_scores_the_base_maps_own_error_on_held_out_images(tiny, config, cache_dir):
    """Epoch 0 of the epoch choice is the base itself: the held-out scores of the untrained model are the base's."""
    from types import SimpleNamespace

    from relearn_core.evaluation.metrics import MAE, DatasetPR
    from relearn_core.pipeline import prior_logit, target_pairs
    from relearn_core.relearning.joint import JointRelearner, PairBatch
    from relearn_core.training import held_out_maps, written_scores

    ws = Workspace(Cache(cache_dir))
    entries = read_entries([tiny / "images" / f"{stem}.png" for stem in STEMS], RunReport())
    maps = {e.hash: read_map(tiny / "maps" / f"{e.name}.png").astype(np.float32) for e in entries}
    pool = prepare_pool(ws, entries, maps, config)
    parts, groups, ids, images = [], [], [], []
    base_f, base_mae = DatasetPR(), MAE()
    for entry in entries[:3]:
        pairs = target_pairs(ws, entry, maps[entry.hash], pool, config)
        evidence = pairs.evidence
        rows = evidence.relearned(config.min_unsure) & pairs.valid.any(1)
        prior = prior_logit(maps[entry.hash], evidence)[rows]
        parts.append(PairBatch(pairs.cf[rows], pairs.similarity[rows].astype(np.float32), pairs.valid[rows], prior))
        groups.append(np.full(int(rows.sum()), len(images)))
        ids.append(np.flatnonzero(rows))
        gt = read_mask(tiny / "gt" / f"{entry.name}.png")
        images.append(SimpleNamespace(evidence=evidence, start_map=maps[entry.hash], gt=gt))
        written = np.round(maps[entry.hash] * 255).astype(np.uint8)
        base_f.step(written, gt)
        base_mae.step(written, gt)
    batch = PairBatch.joined(parts)
    groups, ids = np.concatenate(groups), np.concatenate(ids)
    assert len(np.unique(groups)) == 3
    untrained = JointRelearner(batch.cf.shape[2], config.joint)
    max_f, mae = written_scores(held_out_maps(untrained, batch, groups, ids, images, config, 1.0))
    assert max_f == pytest.approx(base_f.results()["max_f"], abs=1e-6)
    assert mae == pytest.approx(base_mae.results()["mae"], abs=1e-6)
    # a re-learner that calls every re-learned superpixel background changes the error, the less the more it is shrunk
    with torch.no_grad():
        untrained.prior_bias.fill_(-20.0)
    _, full = written_scores(held_out_maps(untrained, batch, groups, ids, images, config, 1.0))
    _, quarter = written_scores(held_out_maps(untrained, batch, groups, ids, images, config, 0.25))
    assert abs(full - mae) > abs(quarter - mae) > 1e-5


def test_a_re_learner_that_kept_the_base_writes_the_base_maps_and_computes_nothing_else(tiny, trained, tmp_path):
    relearner = load_checkpoint(trained[0], "dss")
    relearner.summary["held_out"] = {**relearner.summary["held_out"], "epoch": 0}
    assert relearner.keeps_base
    report = run_wrap(tiny, None, tmp_path / "out", tmp_path / "cache", relearner=relearner)
    assert sorted(report.written) == sorted(report.kept_base) == sorted(STEMS)
    for stem in STEMS:
        np.testing.assert_array_equal(
            read_map(tmp_path / "out" / f"{stem}.png"), read_map(tiny / "maps" / f"{stem}.png")
        )
    assert not (tmp_path / "cache" / "flow").exists() and set(report.timings.stages) <= {"base"}


@pytest.mark.parametrize("kind", ["processes", "ray"])
def test_processes_and_a_two_worker_ray_give_the_same_re_learner_and_maps(
    kind, tiny, config, trained, wrapped, tmp_path
):
    """The pool's preparation, the training images and the wrap spread over worker processes (a local Ray with two
    workers): the same checkpoint weights and the same maps, byte for byte, as the threads of one process."""
    from relearn_core.executors import make_executor

    executor = make_executor(kind, 2)
    try:
        assert executor.kind == kind and executor.workers == 2
        report = run_train(tiny, config, tmp_path / "cache", executor=executor)
        run_wrap(tiny, None, tmp_path / "out", tmp_path / "cache", executor=executor, relearner=report.relearner)
    finally:
        executor.close()
    reference = load_checkpoint(trained[0], "dss")
    assert report.relearner.summary == reference.summary
    for name, value in reference.joint.state_dict().items():
        torch.testing.assert_close(report.relearner.joint.state_dict()[name], value, rtol=0, atol=0)
    for stem in STEMS:
        assert (tmp_path / "out" / f"{stem}.png").read_bytes() == (wrapped[0] / f"{stem}.png").read_bytes()
    # the stage times of the work done in the workers reach the caller
    assert report.timings.stages["flow"].computed > 0


def test_training_on_several_datasets_uses_each_picture_once(tiny, config, cache_dir, tmp_path):
    """A second dataset holding a re-encoded, rotated copy of a first-dataset image: the copy is left out, listed."""
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "gt").mkdir()
    Image.open(tiny / "images" / f"{STEMS[0]}.png").rotate(90, expand=True).save(
        other / "images" / "copy.jpg", quality=90
    )
    Image.open(tiny / "gt" / f"{STEMS[0]}.png").rotate(90, expand=True).save(other / "gt" / "copy.png")
    first, first_masks = labelled(tiny, tiny / "gt")
    report = train(
        [*first, other / "images" / "copy.jpg"],
        {**first_masks, other / "images" / "copy.jpg": other / "gt" / "copy.png"},
        "dss",
        options={"maps": [str(tiny / "maps"), str(other)]},
        config=config,
        workspace=Workspace(Cache(cache_dir)),
    )
    assert report.duplicates == [str(other / "images" / "copy.jpg")]
    assert report.relearner.summary["targets"] == len(STEMS)
    # the command line pairs each --images with its --gt, and says so when they do not pair
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--base",
            "dss",
            "--maps",
            str(tiny / "maps"),
            "--images",
            str(tiny / "images"),
            "--images",
            str(other / "images"),
            "--gt",
            str(tiny / "gt"),
            "--out",
            str(tmp_path / "m.pt"),
        ],
    )
    assert result.exit_code == 2 and "2 --images folders but 1 --gt folders" in result.output


@pytest.mark.parametrize(("backbone", "loss"), [("handcrafted", "f-mae"), ("u2netp", "l1")])
def test_the_fused_join_learns_a_fusion_and_may_correct_anywhere(backbone, loss, tiny, config, cache_dir, tmp_path):
    """Join "fused": the base is fused with the backbone's own saliency map (U2-Net-p's for the u2netp backbone, none
    for handcrafted: then the base alone is calibrated), the fusion and the shrink are learned on the training images,
    and wrap writes the fused map corrected wherever the re-learner acts, trusted pixels included."""
    from relearn_core.relearning.saliency import fuse

    # the fusion as learned (no sharpening): a crisp start map moves less than 1/255 where the pseudo-GT trusts it
    fused = config.with_overrides({"join": "fused", "backbone": backbone, "joint": {"loss": loss}, "sharpness": [1.0]})
    relearner = run_train(tiny, fused, cache_dir).relearner
    choice = relearner.summary["fusion_held_out"]
    a, b, _ = choice["weights"]  # learned on the training images, kept when the held-out one says it helps
    assert relearner.knowledge == ("u2netp" if backbone == "u2netp" else "")
    assert a > 0 and (b > 0 if backbone == "u2netp" else b == 0)
    assert relearner.fusion == (tuple(choice["weights"]) if choice["kept"] else (1.0, 0.0, 0.0))
    assert relearner.shrink in fused.shrinks or not relearner.corrects
    report = run_wrap(tiny, None, tmp_path / "out", cache_dir, relearner=relearner)
    assert sorted(report.written) == sorted(STEMS)
    from relearn_adapters import u2netp

    from relearn_core.relearning.pseudo_gt import bilevel_pseudo_gt

    changed_where_trusted = 0
    for stem in STEMS:
        image = read_image(tiny / "images" / f"{stem}.png")
        base = read_map(tiny / "maps" / f"{stem}.png").astype(np.float32)
        knowledge = u2netp.predict([image])[0] if backbone == "u2netp" else None
        start = fuse(base, knowledge, relearner.fusion)
        written = read_map(tmp_path / "out" / f"{stem}.png")
        moved = np.abs(written - start) > 1 / 255 + 1e-6
        assert stem not in report.kept_base or not moved.any()
        changed_where_trusted += int((moved & ~bilevel_pseudo_gt(image, base).unsure).sum())
    if relearner.corrects:
        assert changed_where_trusted > 0  # the paper's join would never change these pixels


def test_a_base_is_never_fused_with_its_own_networks_plain_map(tiny, config, cache_dir):
    """U2-Net-p re-learned with the u2netp backbone: its knowledge map is its own map, so the re-learner corrects the
    base itself (the identity fusion) and no fusion is fitted, whatever the held-out images would say; its map over
    knowledge views (test-time augmentation) is new evidence, fused like another network's."""
    from relearn_core.training import IDENTITY_FUSION, objective

    fused = config.with_overrides({"join": "fused", "backbone": "u2netp"})
    images, masks = labelled(tiny, tiny / "gt")
    relearner = train(images, masks, "u2netp", config=fused, workspace=Workspace(Cache(cache_dir))).relearner
    assert relearner.knowledge == "u2netp"
    assert relearner.fusion == IDENTITY_FUSION and "fusion_held_out" not in relearner.summary
    # another base with the same backbone is fused with it (its weights learned, kept or not by the held-out image)
    other = run_train(tiny, fused, cache_dir).relearner
    assert other.summary["fusion_held_out"]["weights"] != list(IDENTITY_FUSION)
    viewed = fused.with_overrides({"knowledge_views": ["flip"]})
    itself = train(images, masks, "u2netp", config=viewed, workspace=Workspace(Cache(cache_dir))).relearner
    assert itself.config.knowledge_views == ("flip",)
    assert itself.summary["fusion_held_out"]["weights"] != list(IDENTITY_FUSION)
    # offered the choice, its plain map (no fusion: the base itself) competes with the base's held-out score
    choosing = fused.with_overrides({"knowledge_view_choices": [["flip"]]})
    chose = train(images, masks, "u2netp", config=choosing, workspace=Workspace(Cache(cache_dir))).relearner
    choice = chose.summary["fusion_held_out"]
    base = objective(choosing, **choice["base"])
    assert choice["by_views"]["none"] == pytest.approx(base)
    assert chose.config.knowledge_views == (("flip",) if choice["by_views"]["flip"] > base else ())


def test_each_re_learner_takes_the_knowledge_views_its_held_out_images_score_best(
    tiny, config, cache_dir, tmp_path, monkeypatch
):
    """With ``knowledge_view_choices`` training fits the fusion over each view set, keeps the one whose fused maps
    score best on its held-out training images, and records it in the re-learner's configuration: wrap then fuses
    the base with the knowledge map over those views."""
    from relearn_core.api import knowledge_maps
    from relearn_core.relearning.saliency import fuse
    from relearn_core.training import objective

    # a weak base (a centre prior, the same for every image): the fusion with U2-Net-p's map pays, and by how much
    # depends on the views
    weak = tmp_path / "weak"
    weak.mkdir()
    for stem in STEMS:
        height, width = read_mask(tiny / "gt" / f"{stem}.png").shape
        rows, columns = np.mgrid[:height, :width]
        centre = np.exp(-(((rows - height / 2) / height) ** 2 + ((columns - width / 2) / width) ** 2) * 4)
        Image.fromarray(np.uint8(255 * (0.2 + 0.6 * centre))).save(weak / f"{stem}.png")
    choosing = config.with_overrides(
        {
            "join": "fused",
            "backbone": "u2netp",
            "knowledge_views": [],
            "knowledge_view_choices": [["flip"], ["scale=0.5"]],
            "joint": {"epochs": 0},  # no correction: wrap writes the start map, the fusion alone
        }
    )
    images, masks = labelled(tiny, tiny / "gt")
    ws = Workspace(Cache(cache_dir))
    relearner = train(images, masks, "dss", options={"maps": str(weak)}, config=choosing, workspace=ws).relearner
    choice = relearner.summary["fusion_held_out"]
    scores = choice["by_views"]
    assert set(scores) == {"none", "flip", "scale=0.5"} and len(set(scores.values())) == 3
    assert choice["kept"] and objective(choosing, **choice["fused"]) == pytest.approx(max(scores.values()))
    assert scores[", ".join(choice["views"]) or "none"] == max(scores.values())
    assert relearner.config.knowledge_views == tuple(choice["views"])
    assert not relearner.corrects
    # the command line's wrap, from the checkpoint: it says which views were chosen, and fuses over them
    model = tmp_path / "choosing.pt"
    save_checkpoint(relearner, model)
    monkeypatch.setenv("RELEARN_CACHE", str(cache_dir))
    result = CliRunner().invoke(
        main,
        ["wrap", "--base", "dss", "--maps", str(weak), "--images", str(tiny / "images"), "--model", str(model)]
        + ["--out", str(tmp_path / "out"), "--device", "cpu", "-q"],
    )
    assert result.exit_code == 0, result.output
    assert f"knowledge views {', '.join(choice['views']) or 'none'} chosen on its" in result.output
    knowledge = knowledge_maps(images, relearner.config, workspace=ws)
    for path in images:
        expected = fuse(read_map(weak / path.name).astype(np.float32), knowledge[path], relearner.fusion)
        assert np.abs(read_map(tmp_path / "out" / path.name) - expected).max() <= 1 / 255 + 1e-6


def test_a_knowledge_view_choice_with_an_unknown_view_fails_when_the_configuration_is_read(config):
    from relearn_core.errors import RelearnError

    with pytest.raises(RelearnError, match="unknown knowledge view 'mirror'"):
        config.with_overrides({"knowledge_view_choices": [["flip"], ["mirror"]]})


def held_out_with_near_truth(tiny: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(base map, a knowledge map close to the truth, mask) of each tiny image, as choose_fusion takes them."""
    held = []
    for stem in STEMS:
        base = read_map(tiny / "maps" / f"{stem}.png").astype(np.float32)
        gt = read_mask(tiny / "gt" / f"{stem}.png")
        held.append((base, np.where(gt, 0.9, 0.1).astype(np.float32), gt))
    return held


def test_the_fusion_is_kept_only_when_the_held_out_images_score_it_above_the_base(tiny, config):
    from relearn_core.training import IDENTITY_FUSION, choose_fusion, sharper

    held = held_out_with_near_truth(tiny)
    trusting = (0.5, 2.0, 0.0)  # leans on a knowledge map that is close to the truth: better than the base
    weights, scores = choose_fusion(trusting, held, config)
    assert scores["kept"] and weights == sharper(trusting, scores["sharpness"])
    softened = (0.2, 0.0, 0.0)  # the base alone, squashed: max F as the base's, MAE worse
    weights, scores = choose_fusion(softened, [(b, None, gt) for b, _, gt in held], config)
    assert weights == IDENTITY_FUSION and not scores["kept"]
    assert scores["fused"]["mae"] > scores["base"]["mae"]
    assert choose_fusion(softened, [], config)[0] == softened  # nothing held out: nothing to judge by


def test_the_fusion_is_sharpened_as_far_as_the_held_out_images_score_it_better(tiny, config):
    """A soft fusion (logistic regression's calibrated map) ranks pixels as its sharper versions do: the held-out
    images choose the sharpness, which keeps max F and lowers the MAE."""
    from relearn_core.errors import RelearnError
    from relearn_core.training import choose_fusion, sharper

    held = held_out_with_near_truth(tiny)
    soft = (0.1, 0.4, 0.0)
    weights, scores = choose_fusion(soft, held, config.with_overrides({"sharpness": [1.0, 2.0, 4.0]}))
    assert scores["sharpness"] == 4.0 and weights == sharper(soft, 4.0) == (0.4, 1.6, 0.0)
    by_sharpness = scores["by_sharpness"]
    assert by_sharpness["4.0"]["mae"] < by_sharpness["2.0"]["mae"] < by_sharpness["1.0"]["mae"]
    assert abs(by_sharpness["4.0"]["max_f"] - by_sharpness["1.0"]["max_f"]) < 0.01
    assert scores["learned"] == list(soft) and scores["kept"]
    # one factor: the fusion as learned
    assert choose_fusion(soft, held, config.with_overrides({"sharpness": [1.0]}))[0] == soft
    with pytest.raises(RelearnError, match="sharpness: expected one or more factors above 0"):
        config.with_overrides({"sharpness": [0.0, 2.0]})


def test_an_image_below_the_minimum_side_is_skipped_by_wrap_with_the_minimum_named(
    tiny, trained, cache_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("RELEARN_CACHE", str(cache_dir))
    images = tmp_path / "images"
    shutil.copytree(tiny / "images", images)
    Image.new("RGB", (10, 10), (200, 40, 40)).save(images / "small.png")
    maps = tmp_path / "maps"
    shutil.copytree(tiny / "maps", maps)
    Image.new("L", (10, 10), 128).save(maps / "small.png")
    common = ["--base", "dss", "--maps", str(maps), "--images", str(images), "-q"]
    predicted = CliRunner().invoke(main, ["predict", *common, "--out", str(tmp_path / "p")])
    assert predicted.exit_code == 0 and (tmp_path / "p" / "small.png").is_file()  # predict takes any size
    wrapped = CliRunner().invoke(main, ["wrap", *common, "--model", str(trained[0]), "--out", str(tmp_path / "o")])
    assert wrapped.exit_code == 1  # a requested map was not written
    assert (
        "too small" in wrapped.output and "small.png: image is 10x10 px; needs at least 32 px a side" in wrapped.output
    )
    assert sorted(p.stem for p in (tmp_path / "o").glob("*.png")) == sorted(STEMS)


def test_the_shipped_u2netp_re_learner_changes_maps_and_never_trained_on_the_readme_examples():
    from relearn_core.checkpoint import SHIPPED_CHECKPOINTS
    from relearn_core.imageio import content_hash, images_in

    relearner = load_checkpoint(SHIPPED_CHECKPOINTS / "u2netp.pt", "u2netp")
    assert not relearner.keeps_base  # the README's main job writes maps of its own, not U2-Net-p's
    trained = {digest for _, digest in relearner.summary["trained_on"]}
    assert len(trained) == 300  # all of SOD, by the README's command
    examples = Path(__file__).resolve().parent.parent / "examples" / "images"
    assert not trained & {content_hash(path) for path in images_in(examples).values()}


def test_a_gain_is_confirmed_when_every_image_gains_and_not_when_one_lucky_image_carries_it(sod_dir):
    """gain_confidence: the share of bootstrap resamples of the held-out images in which the corrected maps score
    above the maps before correction."""
    from relearn_core.training import gain_confidence, written_scores

    stems = sorted(list_by_stem(sod_dir / "gt"))[:12]
    masks = [read_mask(sod_dir / "gt" / f"{stem}.png") for stem in stems]
    dss = [read_map(sod_dir / "maps" / "DSS" / f"{stem}.png") for stem in stems]
    config = RelearnConfig(confidence=0.95)
    # every map moved a third of the way to its mask: better on every image, so on every resample
    closer = [(m + (gt - m) / 3).astype(np.float32) for m, gt in zip(dss, masks)]
    assert gain_confidence(list(zip(dss, masks)), list(zip(closer, masks)), config) == 1.0
    # the worst image made perfect, every other a little worse: better overall, but only resamples that draw the
    # lucky image confirm it
    worst = int(np.argmin([written_scores([pair])[0] for pair in zip(dss, masks)]))
    mixed = [
        gt.astype(np.float32) if i == worst else (m + (~gt - m) * 0.01).astype(np.float32)
        for i, (m, gt) in enumerate(zip(dss, masks))
    ]
    (before_f, before_mae), (after_f, after_mae) = written_scores(zip(dss, masks)), written_scores(zip(mixed, masks))
    assert after_f - after_mae > before_f - before_mae
    assert gain_confidence(list(zip(dss, masks)), list(zip(mixed, masks)), config) < config.confidence


def test_a_correction_the_bootstrap_did_not_confirm_is_reported_with_its_confidence(trained, capsys):
    from relearn_core.cli import _echo_held_out

    relearner = load_checkpoint(trained[0], "dss")
    held = relearner.summary["held_out"]
    relearner.summary["held_out"] = {**held, "epoch": 0, "best_epoch": 3, "confidence": 0.62}
    relearner.config = dataclasses.replace(relearner.config, confidence=0.95)
    assert not relearner.corrects
    _echo_held_out(relearner)
    said = capsys.readouterr().err
    assert "(epoch 3, shrink" in said and "only 62% of bootstrap resamples" in said and "needed: 95%" in said
    assert "writes them as they are" in said


def test_train_says_how_far_the_held_out_images_sharpened_the_fusion(trained, capsys):
    from relearn_core.cli import _echo_held_out
    from relearn_core.training import choose_fusion

    relearner = load_checkpoint(trained[0], "dss")
    learned = (0.3, 0.5, 0.1)
    relearner.fusion, choice = choose_fusion(learned, [], relearner.config)
    relearner.knowledge, relearner.summary["fusion_held_out"] = "u2netp", {**choice, "sharpness": 4.0}
    _echo_held_out(relearner)
    assert "(logit weights 0.30 and 0.50, bias 0.10: the learned fusion sharpened 4x)" in capsys.readouterr().err
    relearner.summary["fusion_held_out"]["sharpness"] = 1.0
    _echo_held_out(relearner)
    said = capsys.readouterr().err
    assert "(logit weights 0.30 and 0.50, bias 0.10)" in said and "sharpened" not in said
