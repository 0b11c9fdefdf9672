"""The correspondence stage runner: bad input, the pool, caching and resuming, on small real images."""

import shutil

import numpy as np
import pytest
from PIL import Image

from relearn_core.cache import Cache
from relearn_core.correspondence.correspondence_builder import (
    CorrespondenceBuilder,
    CorrespondenceParams,
    read_entry,
    read_pool,
)
from relearn_core.errors import InputError
from relearn_core.correspondence.flow import SiftFlowParams

# small everything, so that a full run takes seconds: the stages are the real ones
FAST = CorrespondenceParams(
    neighbours=2, superpixels=60, edge_boxes=200, proposals=20, edge_method="sobel", flow_grid=48,
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


def test_pool_skips_unreadable_tiny_and_duplicate_files(folders, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.new("RGB", (20, 20)).save(extra / "tiny.png")
    first = sorted(folders.iterdir())[0]
    shutil.copy(first, extra / "copy.png")
    with pytest.warns(UserWarning, match="3 pool files skipped"):
        pool = read_pool([folders, extra])
    assert len(pool.entries) == 5
    reasons = {path.name: reason for path, reason in pool.skipped}
    assert set(reasons) == {"broken.jpg", "tiny.png", "copy.png"}
    assert "duplicate" in reasons["copy.png"] and "32 px" in reasons["tiny.png"]
    with pytest.raises(InputError, match="does not exist"):
        read_pool([tmp_path / "missing"])
    # a data set folder (images/ inside) is read through its images/
    (tmp_path / "dataset" / "images").mkdir(parents=True)
    shutil.copy(first, tmp_path / "dataset" / "images" / first.name)
    assert [e.name for e in read_pool([tmp_path / "dataset"]).entries] == [first.stem]


def test_builder_caches_every_stage_and_resumes(folders, tmp_path):
    pool = read_pool([folders]).entries
    cache = Cache(tmp_path / "cache")
    builder = CorrespondenceBuilder(pool, cache, FAST)
    target = pool[0]
    pairs = builder.correspondences(target)
    assert len(pairs) == 2 and all(p.neighbour.hash != target.hash for p in pairs)
    target_sp = builder.superpixels(target)
    for pair in pairs:
        neighbour_sp = builder.superpixels(pair.neighbour)
        matches = pair.alignment.superpixel_matches
        assert len(matches) > 0
        assert matches[:, 0].max() < target_sp.count and matches[:, 1].max() < neighbour_sp.count
        assert len(pair.alignment.proposal_matches) > 0
        assert np.all(np.isfinite(pair.alignment.superpixel_distances))
    assert builder.computed["flow"] == 2 and builder.computed["align"] == 2
    assert len(builder.seconds["flow"]) == 2 and min(builder.seconds["flow"].values()) > 0

    # a second run (a new process would do the same) computes nothing and gives the same result
    again = CorrespondenceBuilder(pool, cache, FAST)
    repeat = again.correspondences(target)
    assert not again.computed
    assert again.seconds["flow"] == builder.seconds["flow"]  # compute times are kept in the entries
    for first, second in zip(pairs, repeat):
        assert np.array_equal(first.alignment.superpixel_matches, second.alignment.superpixel_matches)

    # an interrupted run: one flow entry missing -> only that pair's flow is computed again
    flow_entries = sorted((tmp_path / "cache" / "flow").glob("*.npz"))
    assert len(flow_entries) == 2
    flow_entries[0].unlink()
    resumed = CorrespondenceBuilder(pool, cache, FAST)
    resumed.correspondences(target)
    assert resumed.computed["flow"] == 1 and "superpixels" not in resumed.computed
    # a damaged flow entry (a disk error, a killed copy) is computed again, alone
    flow_entries[1].write_bytes(b"not an npz")
    mended = CorrespondenceBuilder(pool, cache, FAST)
    again_pairs = mended.correspondences(target)
    assert mended.computed["flow"] == 1 and len(again_pairs) == 2
    # no temporary files left behind
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_pool_smaller_than_k_warns_and_uses_what_there_is(folders, tmp_path):
    pool = read_pool([folders]).entries[:2]
    builder = CorrespondenceBuilder(pool, Cache(None), CorrespondenceParams(**{**FAST.__dict__, "neighbours": 5}))
    with pytest.warns(UserWarning, match="only 1 usable"):
        pairs = builder.correspondences(pool[0])
    assert [p.neighbour.name for p in pairs] == [pool[1].name]
    # a pool holding only the target itself gives no pairs, and says so
    lonely = CorrespondenceBuilder(pool[:1], Cache(None), FAST)
    with pytest.warns(UserWarning, match="only 0 usable"):
        assert lonely.correspondences(pool[0]) == []
