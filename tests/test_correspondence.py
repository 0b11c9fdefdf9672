"""The correspondence stages through the stage runner: bad input, the pool, caching and resuming, on small real
images."""

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from relearn_core.api import RunReport, read_entries
from relearn_core.cache import Cache
from relearn_core.config import CorrespondenceParams
from relearn_core.correspondence.flow import SiftFlowParams
from relearn_core.correspondence.regions import superpixels_for
from relearn_core.correspondence.retrieval import RetrievalIndex, descriptors_for
from relearn_core.errors import InputError
from relearn_core.imageio import images_in
from relearn_core.pipeline import Pool, correspondences
from relearn_core.records import read_entry
from relearn_core.workspace import Workspace

# small everything, so that a full run takes seconds: the stages are the real ones
FAST = CorrespondenceParams(
    neighbours=2,
    superpixels=60,
    edge_boxes=200,
    proposals=20,
    edge_method="sobel",
    flow_grid=48,
    flow=SiftFlowParams(working_size=48, levels=2, top_radius=3, radius=2, top_iterations=4, iterations=2),
)


@pytest.fixture(scope="module")
def folders(sod_dir, tmp_path_factory):
    """Five downscaled SOD images as targets' pool, written as PNG, plus an unreadable file and a duplicate."""
    root = tmp_path_factory.mktemp("pool")
    for path in sorted((sod_dir / "images").glob("*.jpg"))[:5]:
        image = Image.open(path).convert("RGB")
        image.resize((image.width // 5, image.height // 5), Image.BILINEAR).save(root / f"{path.stem}.png")
    return root


def test_tiny_grey_and_rgba_images(tmp_path):
    Image.new("RGB", (31, 80)).save(tmp_path / "tiny.png")
    with pytest.raises(InputError, match=r"tiny\.png.*at least 32 px"):
        read_entry(tmp_path / "tiny.png")
    Image.new("L", (40, 40), 100).save(tmp_path / "grey.png")
    Image.new("RGBA", (40, 40), (10, 20, 30, 255)).save(tmp_path / "alpha.png")
    grey, alpha = read_entry(tmp_path / "grey.png"), read_entry(tmp_path / "alpha.png")
    assert grey.image.shape == alpha.image.shape == (40, 40, 3)
    assert np.all(grey.image == 100) and np.all(alpha.image == (10, 20, 30))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match="broken.jpg"):
        read_entry(tmp_path / "broken.jpg")


def pool_of(ws, entries):
    return Pool(
        entries, {}, RetrievalIndex(descriptors_for(ws, entries), [e.hash for e in entries], [e.name for e in entries])
    )


def test_pool_skips_unreadable_tiny_and_duplicate_files(folders, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.new("RGB", (20, 20)).save(extra / "tiny.png")
    first = sorted(folders.iterdir())[0]
    shutil.copy(first, extra / "copy.png")
    report = RunReport()
    entries = read_entries([*images_in(folders).values(), *images_in(extra).values()], report)
    assert len(entries) == 5
    reasons = {path.split("/")[-1]: reason for path, reason in report.unreadable}
    assert set(reasons) == {"broken.jpg", "tiny.png"} and "32 px" in reasons["tiny.png"]
    assert [path.split("/")[-1] for path in report.duplicates] == ["copy.png"]
    with pytest.raises(InputError, match="not a folder"):
        images_in(tmp_path / "missing")
    # a data set folder (images/ inside) is read through its images/
    (tmp_path / "dataset" / "images").mkdir(parents=True)
    shutil.copy(first, tmp_path / "dataset" / "images" / first.name)
    assert list(images_in(tmp_path / "dataset")) == [first.stem]


def test_every_stage_is_cached_and_an_interrupted_run_resumes(folders, tmp_path):
    entries = read_entries(images_in(folders).values(), RunReport())
    cache = Cache(tmp_path / "cache")
    ws = Workspace(cache)
    target = entries[0]
    with ws.measure() as timings:
        pairs = correspondences(ws, target, pool_of(ws, entries), FAST)
    assert len(pairs) == 2 and all(p.neighbour.hash != target.hash for p in pairs)
    target_sp = superpixels_for(ws, target, FAST.superpixels)
    for pair in pairs:
        neighbour_sp = superpixels_for(ws, pair.neighbour, FAST.superpixels)
        matches = pair.alignment.superpixel_matches
        assert len(matches) > 0
        assert matches[:, 0].max() < target_sp.count and matches[:, 1].max() < neighbour_sp.count
        assert len(pair.alignment.proposal_matches) > 0
        assert np.all(np.isfinite(pair.alignment.superpixel_distances))
    flow, align = timings.stages["flow"], timings.stages["align"]
    assert (flow.computed, flow.cached, align.computed) == (2, 0, 2) and flow.computed_seconds > 0

    # a second run (a new process would do the same) computes nothing, gives the same result, and reports the
    # compute time stored with the entries apart from the time spent now
    again = Workspace(cache)
    with again.measure() as repeated:
        repeat = correspondences(again, target, pool_of(again, entries), FAST)
    assert all(times.computed == 0 for name, times in repeated.stages.items() if name != "search")
    assert repeated.stages["flow"].cached == 2
    assert repeated.stages["flow"].cached_seconds == pytest.approx(flow.computed_seconds)
    for first, second in zip(pairs, repeat):
        assert np.array_equal(first.alignment.superpixel_matches, second.alignment.superpixel_matches)

    # an interrupted run: one flow entry missing -> only that pair's flow is computed again
    flow_entries = sorted((tmp_path / "cache" / "flow").glob("*.npz"))
    assert len(flow_entries) == 2
    flow_entries[0].unlink()
    resumed = Workspace(cache)
    with resumed.measure() as timings:
        correspondences(resumed, target, pool_of(resumed, entries), FAST)
    assert timings.stages["flow"].computed == 1 and timings.stages["superpixels"].computed == 0
    # a damaged flow entry (a disk error, a killed copy) is computed again, alone
    flow_entries[1].write_bytes(b"not an npz")
    mended = Workspace(cache)
    with mended.measure() as timings:
        again_pairs = correspondences(mended, target, pool_of(mended, entries), FAST)
    assert timings.stages["flow"].computed == 1 and len(again_pairs) == 2
    # no temporary files left behind
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_pool_smaller_than_k_warns_and_uses_what_there_is(folders, tmp_path, caplog):
    entries = read_entries(images_in(folders).values(), RunReport())[:2]
    ws = Workspace(Cache(None))
    params = CorrespondenceParams(**{**FAST.__dict__, "neighbours": 5})
    with caplog.at_level(logging.WARNING, logger="relearn"):
        pairs = correspondences(ws, entries[0], pool_of(ws, entries), params)
    assert "only 1 usable" in caplog.text
    assert [p.neighbour.name for p in pairs] == [entries[1].name]
    # a pool holding only the target itself gives no pairs, and says so
    with caplog.at_level(logging.WARNING, logger="relearn"):
        assert correspondences(ws, entries[0], pool_of(ws, entries[:1]), FAST) == []
    assert "only 0 usable" in caplog.text
