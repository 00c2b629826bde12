"""Image preprocessing: ``square`` letterbox, SEARLE's ``targetpad``, open_clip's ``center`` and ``magiclens``.

Every transform maps a PIL image to a float tensor ``[3, S, S]`` (S = the model's input
size), normalised with the model's mean/std. They are built from one small config,
:class:`TransformConfig`, so a cache key can name exactly what produced an embedding.

Names (docs/methods.md A.3 and B):

- ``square``: letterbox. The longest side is scaled to S (aspect kept) and the image is
  centred on an S x S canvas of ``fill`` (black). This is exactly open_clip's inference
  pipeline with ``image_resize_mode="longest"`` (tests prove pixel equality). The published
  traffic script pads to a square *before* resizing; the geometry is the same, only the one
  or two border pixels differ (resizing first keeps black from bleeding into the image edge).
- ``targetpad``: SEARLE's. If ``max(w, h) / min(w, h) >= 1.25`` the image is padded (black,
  centred) towards aspect 1.25, then the shorter side is resized to S and the centre S x S
  crop is taken.
- ``center``: open_clip's default: resize the shorter side to S, centre crop S x S.
- ``magiclens``: MagicLens's published preprocessing (docs/methods.md §D): the largest centred
  square crop (offset ``(long - short) // 2``), then an antialiased bilinear resize to S x S of
  the [0, 1] pixels (torch's antialiased ``interpolate``, within ~1e-5 of ``jax.image.resize``),
  then mean/std. Pass ``interpolation="bilinear"``. (The published evaluation script instead
  divides by the image maximum and resizes without cropping: a different protocol.)

Training variants (``is_train=True``) keep the same padding geometry (done at full resolution)
and add one light augmentation: a random resized crop covering 90-100 % of the area with
aspect ratio 0.9-1.11. No flips and no colour jitter: captions name colours and sides
("white SUV", "on the left"), which those augmentations would falsify.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from irkit.errors import InputError

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)

TRANSFORM_NAMES = ("square", "targetpad", "center", "magiclens")
TARGETPAD_RATIO = 1.25
TRAIN_CROP_SCALE = (0.9, 1.0)
TRAIN_CROP_RATIO = (0.9, 1.0 / 0.9)

_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
_PIL_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


@dataclass(frozen=True)
class TransformConfig:
    """Everything that determines a preprocessing pipeline (like open_clip's PreprocessCfg).

    ``image_size`` is the square model input side S in pixels; ``mean``/``std`` are per-channel
    values for inputs scaled to [0, 1]; ``fill`` is the padding grey level (0-255).
    """

    name: str = "square"
    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    interpolation: str = "bicubic"
    fill: int = 0

    def __post_init__(self) -> None:
        if self.name not in TRANSFORM_NAMES:
            raise InputError(
                f"unknown transform '{self.name}' (expected one of: {', '.join(TRANSFORM_NAMES)})",
                field="transform",
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise InputError(
                f"unknown interpolation '{self.interpolation}' (expected bicubic or bilinear)",
                field="interpolation",
            )
        object.__setattr__(self, "image_size", _square_side(self.image_size))
        object.__setattr__(self, "mean", _three_floats(self.mean, "mean"))
        object.__setattr__(self, "std", _three_floats(self.std, "std"))
        if not 0 <= int(self.fill) <= 255:
            raise InputError(f"fill must be a grey level 0-255, got {self.fill}", field="fill")
        object.__setattr__(self, "fill", int(self.fill))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (used in cache keys)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def _square_side(image_size: Union[int, Sequence[int]]) -> int:
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2 or int(image_size[0]) != int(image_size[1]):
            raise InputError(
                f"image size {tuple(image_size)} is not square; irkit's transforms expect a square "
                "model input (H == W)", field="image_size")
        image_size = image_size[0]
    side = int(image_size)
    if side <= 0:
        raise InputError(f"image size must be positive, got {image_size}", field="image_size")
    return side


def _three_floats(values: Union[float, Sequence[float]], field: str) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        values = (values,) * 3
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise InputError(f"{field} needs 3 values (R, G, B), got {len(values)}", field=field)
    return values  # type: ignore[return-value]


#: Modes whose values exceed 8 bits: PIL's ``convert("RGB")`` clips them to 255 (a 16-bit PNG
#: would come out white), so :func:`to_rgb` rescales them first.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. High-bit-depth grey images are scaled to 8 bits, not clipped:
    ``I;16*`` by 255/65535; ``I`` (32-bit integers) by 255/65535 when a value exceeds 255, else
    kept; ``F`` (floats) from [0, 1] when no value exceeds 1, else from [0, 255], clipped."""
    if image.mode == "RGB":
        return image
    if image.mode not in HIGH_BIT_DEPTH_MODES:
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
        scale = 255.0 / 65535.0
    elif image.mode == "F" and peak <= 1.0:
        scale = 255.0
    else:
        scale = 1.0
    eight_bit = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit, "L").convert("RGB")


#: Default pixel limit of :class:`ImageReader` (width x height): 64 megapixels, e.g. 8000 x 8000.
#: Above it an image is refused before decoding (a decoded 64 MP RGB image already holds 192 MB,
#: and resizing it needs a few copies, per worker process).
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


@dataclass(frozen=True)
class ImageReader:
    """How an image file becomes an 8-bit RGB PIL image, before any transform.

    ``exif_transpose``: apply the EXIF orientation tag (``ImageOps.exif_transpose``), as photo
    viewers do. On for user folders (collections, traffic, training); off for the published
    CIR benchmarks, whose published code opens images with plain PIL (``BENCHMARK_READER``).
    ``max_pixels``: width x height above which a file is refused before it is decoded.
    Both change the pixels, so both are part of every embedding cache key (:meth:`to_dict`).
    """

    exif_transpose: bool = True
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels <= 0:
            raise InputError(f"the image pixel limit must be a positive integer, got {self.max_pixels!r}",
                             field="max_image_pixels")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (used in cache keys and run parameters)."""
        return {"exif_transpose": bool(self.exif_transpose), "max_pixels": int(self.max_pixels)}

    def prepare(self, image: Image.Image, path: Optional[Union[str, os.PathLike]] = None) -> Image.Image:
        """An opened (not yet decoded) ``image`` -> 8-bit RGB: pixel limit checked first (PIL
        knows the size before decoding), then the EXIF orientation (when on), then :func:`to_rgb`."""
        width, height = image.size
        if width * height > self.max_pixels:
            raise InputError(
                f"image is {width} x {height} = {width * height:,} pixels, over the limit of "
                f"{self.max_pixels:,}; expected a smaller image (raise the limit with --max-image-pixels)",
                path=path)
        if self.exif_transpose:
            image = ImageOps.exif_transpose(image)
        return to_rgb(image)

    def check_header(self, path: Union[str, os.PathLike]) -> tuple[int, int]:
        """``(width, height)`` of the image file at ``path`` from its header alone (nothing is
        decoded); over the pixel limit: :class:`InputError` naming the file. A file PIL cannot
        identify raises PIL's own error (callers word it)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the header only: no bomb yet
            try:
                with Image.open(path) as image:
                    width, height = image.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        if width * height > self.max_pixels:
            raise InputError(
                f"image is {width} x {height} = {width * height:,} pixels, over the limit of "
                f"{self.max_pixels:,}; expected a smaller image (raise the limit with --max-image-pixels)",
                path=path)
        return width, height

    def open(self, path: Union[str, os.PathLike]) -> Image.Image:
        """Read the image file at ``path`` -> 8-bit RGB (decoded; the file is closed).

        Over the pixel limit: :class:`InputError` naming the file, never PIL's decompression-bomb
        warning or error (its own limit is lifted to ours when ours is higher).
        """
        if Image.MAX_IMAGE_PIXELS is not None and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = self.max_pixels  # PIL would refuse what the user allowed
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    rgb = self.prepare(image, path)
                    rgb.load()
                    return rgb
        except Image.DecompressionBombError as e:
            raise InputError(f"image is over the pixel limit of {self.max_pixels:,} ({e}); expected a smaller "
                             "image (raise the limit with --max-image-pixels)", path=path) from None


#: The reader for user folders (collections, traffic, training): EXIF orientation applied.
USER_FOLDER_READER = ImageReader(exif_transpose=True)
#: The reader for the published CIR benchmarks (CIRR, FashionIQ, CIRCO, GeneCIS): plain PIL
#: open + RGB as their published code does, no EXIF orientation.
BENCHMARK_READER = ImageReader(exif_transpose=False)


def _pad_centred(image: Image.Image, width: int, height: int, fill: int) -> Image.Image:
    """Paste ``image`` centred on a ``width x height`` canvas of grey ``fill``.

    Centring follows open_clip's CenterCropOrPad: the odd pixel goes to the right/bottom.
    """
    w, h = image.size
    if (w, h) == (width, height):
        return image
    canvas = Image.new("RGB", (width, height), (fill, fill, fill))
    canvas.paste(image, ((width - w) // 2, (height - h) // 2))
    return canvas


class Letterbox:
    """Scale the longest side to ``size`` (aspect kept), centre on a ``size x size`` canvas."""

    def __init__(self, size: int, interpolation: str = "bicubic", fill: int = 0) -> None:
        self.size, self.interpolation, self.fill = size, interpolation, fill

    def __call__(self, image: Image.Image) -> Image.Image:
        image = to_rgb(image)
        w, h = image.size
        scale = max(w, h) / self.size  # same rounding as open_clip's ResizeKeepRatio(longest=1)
        new_w, new_h = max(1, round(w / scale)), max(1, round(h / scale))
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), _PIL_RESAMPLE[self.interpolation])
        return _pad_centred(image, self.size, self.size, self.fill)

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size}, interpolation={self.interpolation}, fill={self.fill})"


class PadToSquare:
    """Pad (no resize) to a square of side ``max(w, h)``, image centred on ``fill``."""

    def __init__(self, fill: int = 0) -> None:
        self.fill = fill

    def __call__(self, image: Image.Image) -> Image.Image:
        image = to_rgb(image)
        side = max(image.size)
        return _pad_centred(image, side, side, self.fill)

    def __repr__(self) -> str:
        return f"PadToSquare(fill={self.fill})"


class TargetPad:
    """SEARLE's targetpad: if ``max(w,h)/min(w,h) >= ratio``, pad (centred) towards aspect ``ratio``.

    The padded extent is ``max(w, h) / ratio`` along the short side (SEARLE pads the same
    integer amount on both sides: ``int((max/ratio - short) / 2)``).
    """

    def __init__(self, ratio: float = TARGETPAD_RATIO, fill: int = 0) -> None:
        self.ratio, self.fill = ratio, fill

    def __call__(self, image: Image.Image) -> Image.Image:
        image = to_rgb(image)
        w, h = image.size
        if max(w, h) / min(w, h) < self.ratio:
            return image
        target_short = max(w, h) / self.ratio
        pad_x = max(int((target_short - w) / 2), 0)
        pad_y = max(int((target_short - h) / 2), 0)
        return _pad_centred(image, w + 2 * pad_x, h + 2 * pad_y, self.fill)

    def __repr__(self) -> str:
        return f"TargetPad(ratio={self.ratio}, fill={self.fill})"


def largest_centred_square(image: Image.Image) -> Image.Image:
    """The largest centred square of ``image`` (RGB), offset ``(long - short) // 2`` as MagicLens crops."""
    image = to_rgb(image)
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


class LargestSquareResize:
    """MagicLens's geometry on a ``[3, H, W]`` float tensor in [0, 1]: the largest centred square
    crop, then an antialiased bilinear resize to ``[3, size, size]``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        _, h, w = pixels.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = pixels[:, top:top + side, left:left + side]
        if side == self.size:
            return square
        return torch.nn.functional.interpolate(square[None], size=(self.size, self.size), mode="bilinear",
                                               align_corners=False, antialias=True)[0]

    def __repr__(self) -> str:
        return f"LargestSquareResize(size={self.size})"


def build_transform(
    cfg: Union[TransformConfig, str] = "square",
    image_size: Optional[Union[int, Sequence[int]]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    is_train: bool = False,
    interpolation: str = "bicubic",
    fill: int = 0,
) -> Callable[[Image.Image], torch.Tensor]:
    """Build the PIL image -> ``[3, S, S]`` float tensor pipeline.

    ``cfg`` is a :class:`TransformConfig` or a transform name (then ``image_size`` is required
    and ``mean``/``std`` default to OpenAI CLIP's).
    """
    cfg = make_transform_config(cfg, image_size, mean, std, interpolation, fill)
    size, resample = cfg.image_size, _INTERPOLATIONS[cfg.interpolation]
    steps: list[Callable] = []
    if is_train:
        if cfg.name == "square":
            steps.append(PadToSquare(cfg.fill))
        elif cfg.name == "magiclens":
            steps.append(largest_centred_square)
        elif cfg.name == "targetpad":
            steps.append(TargetPad(TARGETPAD_RATIO, cfg.fill))
        else:
            steps.append(to_rgb)
        steps.append(T.RandomResizedCrop(size, scale=TRAIN_CROP_SCALE, ratio=TRAIN_CROP_RATIO,
                                         interpolation=resample))
    elif cfg.name == "magiclens":
        return T.Compose([to_rgb, T.ToTensor(), LargestSquareResize(size), T.Normalize(mean=cfg.mean, std=cfg.std)])
    elif cfg.name == "square":
        steps.append(Letterbox(size, cfg.interpolation, cfg.fill))
    else:
        if cfg.name == "targetpad":
            steps.append(TargetPad(TARGETPAD_RATIO, cfg.fill))
        else:
            steps.append(to_rgb)
        steps += [T.Resize(size, interpolation=resample), T.CenterCrop(size)]
    steps += [T.ToTensor(), T.Normalize(mean=cfg.mean, std=cfg.std)]
    return T.Compose(steps)


def make_transform_config(
    cfg: Union[TransformConfig, str],
    image_size: Optional[Union[int, Sequence[int]]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    interpolation: str = "bicubic",
    fill: int = 0,
) -> TransformConfig:
    """Return ``cfg`` itself, or a :class:`TransformConfig` built from a name and the values."""
    if isinstance(cfg, TransformConfig):
        return cfg
    if image_size is None:
        raise InputError(f"transform '{cfg}' needs an image_size", field="image_size")
    return TransformConfig(
        name=str(cfg), image_size=image_size,  # type: ignore[arg-type]
        mean=tuple(mean) if mean is not None else OPENAI_DATASET_MEAN,  # type: ignore[arg-type]
        std=tuple(std) if std is not None else OPENAI_DATASET_STD,  # type: ignore[arg-type]
        interpolation=interpolation, fill=fill,
    )
