"""High-bit-depth and other image modes reach the model as the image, never clipped to white."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from irkit.embeddings import encode_image_files
from irkit.models import create_model
from irkit.transforms import to_rgb


def _gradient16() -> np.ndarray:
    return (np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)  # 0 .. 61425


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(_gradient16()).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
        rgb = np.asarray(to_rgb(image))
    expected = np.rint(_gradient16().astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert rgb.shape == (64, 64, 3) and (rgb == expected[..., None]).all()
    with Image.open(path) as image:  # what a plain convert("RGB") gives: clipped, nearly all white
        assert (np.asarray(image.convert("RGB")) == 255).mean() > 0.9


@pytest.mark.parametrize("mode, values, expected", [
    ("I", np.array([[0, 300, 65535]], np.int32), np.array([[0, 1, 255]], np.uint8)),  # 16-bit range
    ("I", np.array([[0, 100, 255]], np.int32), np.array([[0, 100, 255]], np.uint8)),  # 8-bit range
    ("F", np.array([[0.0, 0.5, 1.0]], np.float32), np.array([[0, 128, 255]], np.uint8)),
    ("F", np.array([[0.0, 100.0, 300.0]], np.float32), np.array([[0, 100, 255]], np.uint8)),
])
def test_integer_and_float_modes(mode, values, expected):
    image = Image.fromarray(values, mode)
    assert image.mode == mode
    assert (np.asarray(to_rgb(image))[..., 0] == expected).all()


def test_a_16_bit_png_embeds_as_its_8_bit_version(tmp_path):
    loaded = create_model("irkit-tiny", seed=0, random_init=True)
    Image.fromarray(_gradient16()).save(tmp_path / "g16.png")
    eight = np.rint(_gradient16().astype(np.float64) * 255 / 65535).astype(np.uint8)
    Image.fromarray(eight).convert("RGB").save(tmp_path / "g8.png")
    Image.new("RGB", (64, 64), (255, 255, 255)).save(tmp_path / "white.png")
    e16, e8, white = encode_image_files(loaded, [tmp_path / n for n in ("g16.png", "g8.png", "white.png")],
                                        num_workers=0)
    np.testing.assert_allclose(e16, e8, atol=1e-6)
    assert not np.allclose(e16, white, atol=1e-4)  # not the (nearly) white image a clipped convert gives
