"""GIST + HOG descriptors and the retrieval index, on downscaled real images."""

import logging

import cv2
import numpy as np
import pytest
import torch

from relearn_core.correspondence.retrieval import (
    GIST_ORIENTATIONS,
    RetrievalIndex,
    describe_images,
    descriptor_length,
    gabor_bank,
    gist,
)
from relearn_core.imageio import read_image


@pytest.fixture(scope="module")
def small_images(sod_dir):
    paths = sorted((sod_dir / "images").glob("*.jpg"))[:12]
    images = [read_image(p) for p in paths]
    return [p.stem for p in paths], [
        cv2.resize(i, (i.shape[1] // 3, i.shape[0] // 3), interpolation=cv2.INTER_AREA) for i in images
    ]


def test_descriptor_is_512_gist_values_plus_hog_with_unit_norm(small_images):
    _, images = small_images
    descriptors = describe_images(images[:4])
    assert descriptors.shape == (4, descriptor_length()) and descriptor_length() > 512
    assert np.allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    # both halves weigh the same
    assert np.allclose(np.linalg.norm(descriptors[:, :512], axis=1), np.sqrt(0.5), atol=1e-5)
    # batching does not change a descriptor; grey input gives the same as the RGB it came from
    alone = describe_images([images[2]])[0]
    assert np.allclose(alone, descriptors[2], atol=1e-5)
    grey = cv2.cvtColor(images[2], cv2.COLOR_RGB2GRAY)
    assert np.allclose(describe_images([grey])[0], alone, atol=1e-5)


def test_gabor_bank_is_tuned_to_orientation_and_scale():
    bank = gabor_bank(64)
    assert bank.shape == (32, 64, 64)
    # vertical stripes (intensity varying along x) excite the orientation-0 filters most at the matching scale
    xs = np.arange(64)
    stripes = 128 + 100 * np.sin(2 * np.pi * xs / 64 * 64 * 0.16)[None, :].repeat(64, 0)
    energy = gist(torch.tensor(stripes[None], dtype=torch.float32), bank)[0].reshape(4, GIST_ORIENTATIONS, 16).mean(-1)
    scale, orientation = np.unravel_index(int(energy.argmax()), energy.shape)
    assert orientation == 0 and scale == 1  # 0.16 cycles/px is nearest the second scale's 0.162
    rotated = gist(torch.tensor(stripes.T[None].copy(), dtype=torch.float32), bank)[0].reshape(4, 8, 16).mean(-1)
    assert int(rotated[1].argmax()) == GIST_ORIENTATIONS // 2


def test_neighbours_are_nearest_and_never_the_image_itself(small_images):
    names, images = small_images
    descriptors = describe_images(images)
    hashes = [f"h{i}" for i in range(len(images))]
    index = RetrievalIndex(descriptors, hashes, names)
    # a slightly brightened, re-sized copy of image 3 finds image 3 first
    changed = cv2.resize(np.clip(images[3].astype(int) + 12, 0, 255).astype(np.uint8), (100, 70))
    assert index.neighbours(describe_images([changed])[0], k=3)[0].name == names[3]
    # querying with image 3 itself: never returned, by hash or (another hash, same pixels) by identical descriptor
    found = index.neighbours(descriptors[3], k=5, exclude_hashes=["h3"])
    assert len(found) == 5 and names[3] not in [n.name for n in found]
    assert names[3] not in [n.name for n in index.neighbours(descriptors[3], k=5, exclude_hashes=["other"])]
    distances = [n.distance for n in found]
    assert distances == sorted(distances)
    truth = np.argsort(np.linalg.norm(descriptors - descriptors[3], axis=1))[1:6]
    assert [n.index for n in found] == truth.tolist()


def test_faiss_search_matches_exact_torch_search(small_images):
    names, images = small_images
    descriptors = describe_images(images)
    hashes = [f"h{i}" for i in range(len(images))]
    exact = RetrievalIndex(descriptors, hashes, names)
    large = RetrievalIndex(descriptors, hashes, names, faiss_above=0)
    for row in (0, 5):
        assert [n.index for n in exact.neighbours(descriptors[row], 4, [f"h{row}"])] == [
            n.index for n in large.neighbours(descriptors[row], 4, [f"h{row}"])
        ]


def test_duplicates_and_a_small_pool(small_images, caplog):
    names, images = small_images
    descriptors = describe_images(images[:3])
    # the pool holds image 1 twice (same content hash): it is kept once
    index = RetrievalIndex(
        np.concatenate([descriptors, descriptors[1:2]]), ["a", "b", "c", "b"], ["x", "y", "z", "y-copy"]
    )
    assert len(index) == 3 and index.duplicates == ["y-copy"]
    with caplog.at_level(logging.WARNING, logger="relearn"):
        found = index.neighbours(descriptors[0], k=5, exclude_hashes=["a"])
    assert "only 2 usable" in caplog.text
    caplog.clear()
    assert sorted(n.name for n in found) == ["y", "z"]
    assert len(index.neighbours(descriptors[0], k=2, exclude_hashes=["a"])) == 2
    assert "usable" not in caplog.text
