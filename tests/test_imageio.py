"""Shared image I/O: conversions, one-line errors, atomic writes."""

import os

import numpy as np
import pytest
from PIL import Image

from relearn_core.errors import InputError
from relearn_core.imageio import atomic_write_bytes, images_in, list_by_stem, read_image, read_map, read_mask, write_map


def test_rgba_and_grey_images_become_rgb(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # a transparent pixel is composited on white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 5), 77, np.uint8), "L").save(tmp_path / "g.png")
    image = read_image(tmp_path / "a.png")
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8
    assert tuple(image[1, 1]) == (200, 0, 0) and tuple(image[0, 0]) == (255, 255, 255)
    assert (read_image(tmp_path / "g.png") == 77).all()


def test_sixteen_bit_map_is_scaled_by_its_range(tmp_path):
    values = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "m.png")
    assert np.allclose(read_map(tmp_path / "m.png"), [[0, 32768 / 65535, 1]])
    assert read_mask(tmp_path / "m.png").tolist() == [[False, True, True]]


def test_corrupt_file_and_duplicate_stems_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"bad\.png: cannot be read as an image"):
        read_map(tmp_path / "bad.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "x.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "x.jpg")
    with pytest.raises(InputError, match="two files with the stem 'x'"):
        list_by_stem(tmp_path)


def test_images_in_reads_a_data_set_layout_and_names_an_empty_folder(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "data" / "images" / "a.jpg")
    assert images_in(tmp_path / "data") == {"a": tmp_path / "data" / "images" / "a.jpg"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no images .* in this folder or in an images/ subfolder"):
        images_in(tmp_path / "empty")


def test_atomic_writes_leave_no_temporary_and_usual_permissions(tmp_path):
    target = tmp_path / "out" / "m.png"
    write_map(target, np.linspace(0, 1, 12).reshape(3, 4))
    assert np.allclose(read_map(target), np.linspace(0, 1, 12).reshape(3, 4), atol=1 / 255)
    assert os.listdir(target.parent) == ["m.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(InputError, match="NaN"):
        write_map(tmp_path / "nan.png", np.full((2, 2), np.nan))
    atomic_write_bytes(target, b"replaced")
    assert target.read_bytes() == b"replaced"
