"""irkit.transforms: hand-worked pixels for square / targetpad, and equality with open_clip."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from irkit.errors import InputError
from irkit.transforms import TransformConfig, build_transform

RED = (255, 0, 0)
# mean 0 / std 1: output values are the pixel values / 255, easy to check by hand
IDENTITY_NORM = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def solid(width: int, height: int, colour=RED, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (width, height), colour)


def pattern(width: int, height: int) -> Image.Image:
    """A non-trivial test image: smooth ramps plus a high-frequency channel."""
    yy, xx = np.mgrid[0:height, 0:width]
    array = np.stack([xx * 255 // width, yy * 255 // height, ((xx + yy) % 17) * 15], -1).astype(np.uint8)
    return Image.fromarray(array)


def is_red(pixel: torch.Tensor) -> bool:
    return torch.allclose(pixel, torch.tensor([1.0, 0.0, 0.0]))


def is_black(pixel: torch.Tensor) -> bool:
    return torch.allclose(pixel, torch.zeros(3))


def test_square_wide_red_image_gets_black_top_and_bottom_rows():
    # 4x2 red -> longest side already 4 -> centred on 4x4: rows 0 and 3 padding, rows 1-2 red
    out = build_transform("square", image_size=4, **IDENTITY_NORM)(solid(4, 2))
    assert out.shape == (3, 4, 4)
    for x in range(4):
        assert is_black(out[:, 0, x]) and is_black(out[:, 3, x])
        assert is_red(out[:, 1, x]) and is_red(out[:, 2, x])


def test_square_tall_image_gets_black_left_and_right_columns():
    out = build_transform("square", image_size=4, **IDENTITY_NORM)(solid(2, 4))
    for y in range(4):
        assert is_black(out[:, y, 0]) and is_black(out[:, y, 3])
        assert is_red(out[:, y, 1]) and is_red(out[:, y, 2])


def test_square_odd_padding_puts_the_extra_row_at_the_bottom():
    # 4x1: 3 rows of padding -> 1 above, 2 below (open_clip's CenterCropOrPad convention)
    out = build_transform("square", image_size=4, **IDENTITY_NORM)(solid(4, 1))
    rows = [is_red(out[:, y, 0]) for y in range(4)]
    assert rows == [False, True, False, False]


def test_square_pads_palette_images_black_after_rgb_conversion():
    palette = Image.new("P", (4, 2), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 0] * 255)  # palette index 0 is red
    out = build_transform("square", image_size=4, **IDENTITY_NORM)(palette)
    assert is_red(out[:, 1, 0]) and is_black(out[:, 0, 0])


def test_square_uses_the_fill_level():
    out = build_transform(TransformConfig("square", 4, (0, 0, 0), (1, 1, 1), fill=255))(solid(4, 2))
    assert torch.allclose(out[:, 0, 0], torch.ones(3))


@pytest.mark.parametrize("size", [(100, 37), (37, 100), (128, 64), (150, 90), (64, 64)])
def test_square_equals_open_clip_longest_pipeline(size):
    image = pattern(*size)
    ours = build_transform("square", image_size=32)(image)
    reference = open_clip.image_transform(32, is_train=False, resize_mode="longest")(image)
    assert ours.shape == reference.shape == (3, 32, 32)
    assert torch.allclose(ours, reference, atol=1e-6)


@pytest.mark.parametrize("size", [(100, 37), (37, 100)])
def test_center_equals_open_clip_default_pipeline(size):
    image = pattern(*size)
    ours = build_transform("center", image_size=32)(image)
    reference = open_clip.image_transform(32, is_train=False)(image)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_targetpad_pads_wide_image_to_ratio_then_centre_crops():
    # 10x4 (ratio 2.5 >= 1.25): short side target 10/1.25 = 8 -> pad int((8-4)/2) = 2 rows above
    # and below -> 10x8; shorter side already 8 (S=8), centre crop drops 1 column each side.
    out = build_transform("targetpad", image_size=8, **IDENTITY_NORM)(solid(10, 4))
    assert out.shape == (3, 8, 8)
    rows = [is_red(out[:, y, 4]) for y in range(8)]
    assert rows == [False, False, True, True, True, True, False, False]
    assert all(is_black(out[:, y, 4]) for y in (0, 1, 6, 7))


def test_targetpad_leaves_images_below_the_ratio_unpadded():
    # 6x5 has ratio 1.2 < 1.25: no padding; resize shorter side 5 -> 5 (S=5), crop 5x5: all red
    out = build_transform("targetpad", image_size=5, **IDENTITY_NORM)(solid(6, 5))
    assert all(is_red(out[:, y, x]) for y in range(5) for x in range(5))


def test_targetpad_differs_from_center_on_very_wide_images():
    # center crops a 40x10 image to its middle (all red); targetpad keeps black bands
    center = build_transform("center", image_size=10, **IDENTITY_NORM)(solid(40, 10))
    targetpad = build_transform("targetpad", image_size=10, **IDENTITY_NORM)(solid(40, 10))
    assert is_red(center[:, 0, 5])
    assert is_black(targetpad[:, 0, 5])


def test_train_square_keeps_letterbox_bands_and_is_seeded():
    transform = build_transform("square", image_size=16, is_train=True, **IDENTITY_NORM)
    image = solid(40, 10)  # padded to 40x40, red band = rows 15..24 of 40
    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(0)
    again = transform(image)
    assert first.shape == (3, 16, 16)
    assert torch.equal(first, again)
    # a crop of >= 90 % area with aspect <= 1.11 starts within the top padding band
    assert is_black(first[:, 0, 8]) and is_red(first[:, 8, 8])


def test_config_validation_errors():
    with pytest.raises(InputError, match="unknown transform 'squares'"):
        TransformConfig("squares", 32)
    with pytest.raises(InputError, match="not square"):
        TransformConfig("square", (32, 48))
    with pytest.raises(InputError, match="needs an image_size"):
        build_transform("square")
    assert TransformConfig("square", (32, 32)).image_size == 32


def test_magiclens_takes_the_largest_centred_square_then_normalises():
    """Hand-worked: a 4 x 7 (h x w) image at size 4 keeps columns 1..4 ((7 - 4) // 2 = 1) unresized;
    a 7 x 4 one keeps rows 1..4; a constant image stays constant after the antialiased resize."""
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, size=(4, 7, 3), dtype=np.uint8)
    mean = np.array([0.48145466, 0.4578275, 0.40821073])  # OpenAI CLIP, as published
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    transform = build_transform("magiclens", image_size=4, interpolation="bilinear")
    expected = (wide[:, 1:5].astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(transform(Image.fromarray(wide)).permute(1, 2, 0).numpy(), expected, atol=1e-6)
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    expected_tall = (tall[1:5].astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(transform(Image.fromarray(tall)).permute(1, 2, 0).numpy(), expected_tall, atol=1e-6)
    grey = Image.new("RGB", (90, 50), (51, 102, 153))
    out = build_transform("magiclens", image_size=8, interpolation="bilinear")(grey)
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), np.broadcast_to((np.array([51, 102, 153]) / 255 - mean)
                                                                             / std, (8, 8, 3)), atol=1e-6)
    assert build_transform("magiclens", image_size=8, is_train=True)(grey).shape == (3, 8, 8)
