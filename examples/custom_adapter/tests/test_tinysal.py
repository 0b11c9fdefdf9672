"""The adapter's own test: it trains TinySalNet weights on synthetic images inside the test, then predicts."""

import numpy as np
import pytest
import relearn_tinysal
import torch


def synthetic(count, seed, size=64):
    """Textured grey backgrounds with one bright coloured disc each, and the disc masks."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(count):
        image = rng.normal(110, 20, (size, size, 3)).clip(0, 255)
        radius = rng.uniform(8, 16)
        centre = rng.uniform(radius, size - radius, 2)
        mask = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2
        image[mask] = rng.uniform(180, 255, 3)
        images.append(image.astype(np.uint8))
        masks.append(mask)
    return images, masks


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    images, masks = synthetic(24, seed=0)
    model = relearn_tinysal.train(images, masks, steps=60)
    path = tmp_path_factory.mktemp("tinysal") / "tinysal.pt"
    torch.save(model.state_dict(), path)
    return path


def test_declares_one_adapter():
    assert [info.name for info in relearn_tinysal.relearn_adapters()] == ["tinysal"]


def test_trained_network_finds_the_discs_of_new_images(weights):
    images, masks = synthetic(4, seed=1)
    images[0] = np.ascontiguousarray(np.pad(images[0], ((0, 10), (0, 30), (0, 0)), mode="edge"))  # another size
    masks[0] = np.pad(masks[0], ((0, 10), (0, 30)))
    maps = relearn_tinysal.relearn_predict(
        adapter="tinysal", images=images, names=["a", "b", "c", "d"], options={"weights": str(weights), "device": "cpu"}
    )
    for image, mask, saliency in zip(images, masks, maps):
        assert saliency.shape == image.shape[:2] and saliency.dtype == np.float32
        assert 0.0 <= saliency.min() and saliency.max() <= 1.0
        assert saliency[mask].mean() > saliency[~mask].mean() + 0.5


def test_missing_weights_say_how_to_get_them(tmp_path):
    images, _ = synthetic(1, seed=2)
    with pytest.raises(FileNotFoundError, match="weights=FILE"):
        relearn_tinysal.relearn_predict(
            adapter="tinysal", images=images, names=["a"], options={"weights": str(tmp_path / "none.pt")}
        )
