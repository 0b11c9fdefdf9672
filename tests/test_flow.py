"""SIFT Flow on real SOD images: accuracy on known warps, the role of the smoothness term, batching, bad input."""

import cv2
import numpy as np
import pytest
import torch
from flow_accuracy import flow_energy, warp_epe, warp_matrix, winner_take_all_flow

from relearn_core.correspondence import flow
from relearn_core.errors import RelearnError
from relearn_core.imageio import read_image

FAST = flow.SiftFlowParams(working_size=160)
SMALL = flow.SiftFlowParams(working_size=96, top_radius=4, top_iterations=10, iterations=4)


@pytest.fixture(scope="module")
def image(sod_dir):
    """A real SOD image (a bear in grass before a blurred, nearly textureless background), long side 240 px."""
    picture = read_image(sod_dir / "images" / "100080.jpg")
    scale = 240 / max(picture.shape[:2])
    return cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def other_image(sod_dir):
    picture = read_image(sod_dir / "images" / "100075.jpg")
    return cv2.resize(picture, (200, 134), interpolation=cv2.INTER_AREA)


def sift_flow(target, neighbour, params=flow.SiftFlowParams()):
    return flow.sift_flow_batch([target], [neighbour], params)[0]


def _warp(picture, kind, amount):
    matrix = warp_matrix(kind, amount, picture.shape)
    height, width = picture.shape[:2]
    return cv2.warpAffine(picture, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_shift_and_scale_end_point_errors_meet_the_targets(image):
    errors = warp_epe(image, warps={"shift_10": ("shift", 10.0), "scale_1.1": ("scale", 1.1)})
    assert errors["shift_10"] < 1.0
    assert errors["scale_1.1"] < 2.0


def test_flow_of_an_image_with_itself_is_zero(other_image):
    field = sift_flow(other_image, other_image, FAST)
    assert field.flow.shape == (*other_image.shape[:2], 2) and field.flow.dtype == np.float32
    assert field.cost.shape == other_image.shape[:2] and field.cost.dtype == np.float32
    assert np.abs(field.flow).mean() < 0.05
    assert field.cost.max() < 1e-3


def test_flow_is_in_the_neighbours_original_pixels(other_image):
    """A neighbour that is the target enlarged 1.5 times: target pixel x matches neighbour pixel 1.5 (x + 0.5) - 0.5."""
    bigger = cv2.resize(other_image, (300, 201), interpolation=cv2.INTER_LINEAR)
    field = sift_flow(other_image, bigger, FAST)
    height, width = other_image.shape[:2]
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    truth = np.stack([1.5 * (xs + 0.5) - 0.5 - xs, (201 / 134) * (ys + 0.5) - 0.5 - ys], axis=-1)
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(field.flow[inner] - truth[inner]).mean() < 1.0


def test_smoothness_gives_a_lower_energy_and_a_better_flow_than_matching_each_pixel_alone(image):
    shifted = _warp(image, "shift", 6.0)
    params = flow.SiftFlowParams(working_size=128)
    with torch.no_grad():
        target, neighbour = flow.pair_descriptors([image], [shifted], params)
        _, chosen = flow.solve_flow(target, neighbour, params)
        alone = winner_take_all_flow(target, neighbour, params, radius=6)
        energy_chosen = flow_energy(target, neighbour, chosen, params)
        energy_alone = flow_energy(target, neighbour, alone, params)
    assert energy_chosen.item() < energy_alone.item()
    truth = 6.0 * 128 / max(image.shape[:2])  # the shift in working pixels, on both axes
    margin = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    error_chosen = (chosen[margin].float() - truth).abs().mean()
    error_alone = (alone[margin].float() - truth).abs().mean()
    assert error_chosen < error_alone


def test_batched_pairs_equal_pairs_one_at_a_time(image, other_image):
    shifted = _warp(image, "shift", 5.0)
    other_scaled = _warp(other_image, "scale", 0.9)
    batched = flow.sift_flow_batch([image, other_image, image], [shifted, other_scaled, other_scaled[:120]], SMALL)
    alone = [
        sift_flow(image, shifted, SMALL),
        sift_flow(other_image, other_scaled, SMALL),
        sift_flow(image, other_scaled[:120], SMALL),
    ]
    for together, single in zip(batched, alone):
        assert np.isfinite(together.flow).all() and np.isfinite(together.cost).all()
        np.testing.assert_allclose(together.flow, single.flow, atol=1e-3)
        np.testing.assert_allclose(together.cost, single.cost, atol=1e-3)


def test_dense_sift_is_unit_norm_and_moves_with_the_image(image):
    grey = torch.from_numpy(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255)[None, None]
    descriptors = flow.dense_sift(grey, cell_size=4)
    assert descriptors.shape == (1, 128, *image.shape[:2])
    norms = descriptors.norm(dim=1)
    assert float(norms.max()) <= 1.0 + 1e-5 and float(norms.median()) > 0.99
    moved = flow.dense_sift(torch.roll(grey, shifts=(3, 5), dims=(2, 3)), cell_size=4)
    interior = (slice(None), slice(None), slice(20, -20), slice(20, -20))
    assert torch.allclose(torch.roll(descriptors, shifts=(3, 5), dims=(2, 3))[interior], moved[interior], atol=1e-5)


def test_images_too_small_give_a_one_line_error(image):
    with pytest.raises(RelearnError) as caught:
        sift_flow(image, image[:20, :40])
    message = str(caught.value)
    assert "\n" not in message and "neighbour" in message and "too small" in message
    with pytest.raises(RelearnError, match="targets but"):
        flow.sift_flow_batch([image], [image, image])


@pytest.mark.parametrize("truncation", [10.0, float("inf")])
def test_fused_cpu_data_cost_equals_the_torch_version(image, truncation):
    """The CPU kernel and the device-generic torch code give the same costs, off-image matches included."""
    with torch.no_grad():
        target, neighbour = flow.pair_descriptors([image], [_warp(image, "scale", 1.1)], SMALL)
        _, chosen = flow.solve_flow(target, neighbour, SMALL)
    centre = chosen + torch.randint(-3, 4, chosen.shape, generator=torch.Generator().manual_seed(0))
    fused = flow._data_cost(target, neighbour, centre, 2, truncation)
    generic = flow._data_cost_torch(target, neighbour, centre, 2, truncation)
    assert fused.shape == generic.shape == (5, 5, 1, *target.shape[-2:])
    assert bool(torch.isfinite(fused).all())
    torch.testing.assert_close(fused, generic, rtol=1e-5, atol=1e-4)


def test_cpu_belief_propagation_equals_the_torch_version(image, monkeypatch):
    """The CPU kernel and the device-generic torch code pass the same messages: the same beliefs (to float32
    round-off) and the same flows, on real image crops, at a level whose window centres differ between many
    neighbours (messages shifted between windows) and through the whole coarse-to-fine solve."""
    crops = [image[20:200, 10:150], _warp(image, "scale", 1.1)[30:210, 15:155]]  # 180 x 140 px
    with torch.no_grad():
        target, neighbour = flow.pair_descriptors([crops[0], crops[1]], [crops[1], crops[0]], SMALL)
        fused_flow, fused_integer = flow.solve_flow(target, neighbour, SMALL)
        centre = fused_integer + torch.randint(-2, 3, fused_integer.shape, generator=torch.Generator().manual_seed(0))
        cost = flow._data_cost(target, neighbour, centre, 2, SMALL.t)
        fused = flow._belief_propagation(cost, centre, 2, SMALL, 5)
        generic = flow._belief_propagation_torch(cost, centre, 2, SMALL, 5)
        monkeypatch.setattr(flow, "_belief_propagation", flow._belief_propagation_torch)
        generic_flow, generic_integer = flow.solve_flow(target, neighbour, SMALL)
    assert (centre[..., 1:] != centre[..., :-1]).float().mean() > 0.3
    for fused_layer, generic_layer in zip(fused, generic):
        assert fused_layer.shape == generic_layer.shape == (5, 2, *target.shape[-2:])
        torch.testing.assert_close(fused_layer, generic_layer, rtol=1e-6, atol=1e-5)
    assert torch.equal(flow._decode(cost, fused, centre, 2)[1], flow._decode(cost, generic, centre, 2)[1])
    assert torch.equal(fused_integer, generic_integer)
    torch.testing.assert_close(fused_flow, generic_flow, rtol=0, atol=1e-6)
