"""Options shared by every command that loads a CLIP backbone or encodes images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

#: ``irkit.models.PRECISIONS`` (repeated here so ``--help`` needs no torch import; a test checks they agree)
MODEL_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "pure_bf16", "pure_fp16")
#: help of every ``--precision`` option (irkit.precision)
PRECISION_HELP = ("compute precision: auto = bf16 autocast on CPUs with AMX/avx512_bf16 and bf16 GPUs, fp16 AMP "
                  "on older GPUs, else fp32 (the choice is printed and recorded); bf16/fp16 = autocast with "
                  "float32 weights")

#: ``irkit.precision.PRECISION_SETTINGS``: the settings of commands that train or run whole workflows
PRECISION_SETTINGS = ("auto", "fp32", "bf16", "fp16")

SEPARATOR_WORDS = {"tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks (examples stay readable) without reST double
    backticks, and every option's help ends with ``(default: X)`` when its default means
    something: not for required options, flags, None, empty lists or a help text that already
    names its default."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(text.replace("``", ""))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.required or not action.option_strings or action.nargs == 0  # flags: no value to show
                or default is None or default == argparse.SUPPRESS or default == []
                or "default" in text.lower()):
            return text
        shown = {"\t": "tab"}.get(default, default) if isinstance(default, str) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


class IrkitParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter`; sub-command parsers made by
    ``add_subparsers`` are of this class too, so every ``irkit ... --help`` shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("formatter_class") in (None, argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
            kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)


def parse_separator(value: str) -> str:
    """``tab``/``comma``/... or a single literal character (``\\t`` accepted)."""
    value = SEPARATOR_WORDS.get(value.lower(), value.replace("\\t", "\t"))
    if len(value) != 1:
        raise argparse.ArgumentTypeError(
            f"separator {value!r} is not one character; expected tab, comma, semicolon, pipe or one character")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--k 0`` is refused, not answered with empty lists)."""
    return _bounded_int(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (``--num-workers -3`` is refused, not turned into 0)."""
    return _bounded_int(text, 0, "an integer >= 0")


def _bounded_int(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def output_file(text: str) -> Path:
    """argparse type: the path of a file to write; an existing folder there, or an existing file
    among its parents, is refused up front."""
    from irkit.io import check_output_file

    return _checked_path(text, check_output_file)


def output_folder(text: str) -> Path:
    """argparse type: a folder to write into; an existing file there, or among its parents, is refused."""
    from irkit.io import check_output_folder

    return _checked_path(text, check_output_folder)


def _checked_path(text: str, check: Any) -> Path:
    from irkit.errors import InputError

    path = Path(text)
    try:
        check(path)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return path


def device_name(text: str) -> str:
    """argparse type: a torch device that exists here (``cpu``, ``cuda``, ``cuda:1``, ``mps``);
    ``--device cuda`` without a CUDA GPU is refused up front, not after loading the data."""
    value = text.strip().lower()
    if value == "cpu":
        return value
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected cpu, cuda, cuda:<index> or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r} needs a CUDA GPU, but none is available here (torch.cuda.is_available() is False); "
                "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: there are {torch.cuda.device_count()} CUDA device(s) (indices from 0)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} needs Apple's MPS backend, which is not available here; "
                                         "use --device cpu")
    elif device.type not in ("cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}; expected cpu, cuda, cuda:<index> or mps")
    return value


def add_allow_param_change_argument(parser: argparse.ArgumentParser) -> None:
    """``--allow-param-change``: resume a run with hyper-parameters that differ from its params.txt."""
    parser.add_argument("--allow-param-change", action="store_true",
                        help="with --resume: continue even though hyper-parameters differ from the run's "
                             "params.txt (the old file is kept as params_before_resume_<n>.txt)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model/--pretrained|--checkpoint|--random-init/--transform/--device/--precision``."""
    parser.add_argument("--model", default="irkit-tiny", help="any open_clip model name, e.g. ViT-L-14")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", default=None, help="open_clip pretrained tag (or a local weights file)")
    weights.add_argument("--checkpoint", type=Path, default=None,
                         help="local checkpoint: open_clip_train .pt, state dict .pt/.pth/.bin or .safetensors")
    weights.add_argument("--random-init", action="store_true",
                         help="use a randomly initialised model (seed 0) on purpose, e.g. as a before-training "
                              "baseline; without weights and without this flag the command stops")
    parser.add_argument("--transform", default="square", choices=["square", "targetpad", "center", "magiclens"],
                        help="image preprocessing (square = black padding to a square, as published; "
                             "magiclens = MagicLens's largest centred square crop + antialiased resize)")
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="torch device for the model: cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", default="auto", choices=list(MODEL_PRECISIONS),
                        help=PRECISION_HELP + "; pure_bf16/pure_fp16 cast the weights too")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16|fp16`` of a command without the model options (which have their own)."""
    parser.add_argument("--precision", default="auto", choices=list(PRECISION_SETTINGS), help=PRECISION_HELP)


def add_encoding_arguments(parser: argparse.ArgumentParser) -> None:
    """``--batch-size/--num-workers/--cache-dir/--exif-transpose/--max-image-pixels`` of image encoding."""
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per encoding batch")
    parser.add_argument("--num-workers", "--workers", dest="num_workers", type=non_negative_int, default=2,
                        help="image decoding worker processes")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/irkit"),
                        help="embedding cache (default .cache/irkit); 'none' disables it")
    parser.add_argument("--exif-transpose", action=argparse.BooleanOptionalAction, default=None,
                        help="apply the images' EXIF orientation (default: on for user folders, off for the "
                             "published CIR benchmarks, as their published code reads them); part of the cache key")
    parser.add_argument("--max-image-pixels", type=positive_int, default=None,
                        help="refuse images with more pixels (width x height) than this before decoding "
                             "(default 64,000,000 = 8000 x 8000)")


def image_reader(args: argparse.Namespace, exif_default: bool) -> Any:
    """The :class:`irkit.transforms.ImageReader` of :func:`add_encoding_arguments`' options;
    ``exif_default``: the command's default for ``--exif-transpose`` (True for user folders)."""
    from irkit.transforms import DEFAULT_MAX_IMAGE_PIXELS, ImageReader

    exif = getattr(args, "exif_transpose", None)
    limit = getattr(args, "max_image_pixels", None)
    return ImageReader(exif_transpose=exif_default if exif is None else bool(exif),
                       max_pixels=DEFAULT_MAX_IMAGE_PIXELS if limit is None else int(limit))


def load_model(args: argparse.Namespace) -> Any:
    """``irkit.models.create_model`` from the options of :func:`add_model_arguments`."""
    from irkit.models import create_model

    return create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                        transform=args.transform, device=args.device, precision=args.precision,
                        random_init=bool(getattr(args, "random_init", False)))


def cache_dir(args: argparse.Namespace) -> Optional[Path]:
    """The embedding cache folder, or None when ``--cache-dir none``."""
    return None if str(args.cache_dir).lower() == "none" else args.cache_dir


def printed_training_result(described: dict[str, Any]) -> dict[str, Any]:
    """A CIR training command's result line with ``best_value`` (the validation selection
    metric, percent in the run folder) as a fraction in [0, 1], like every printed metric."""
    described = dict(described)
    if described.get("best_value") is not None:
        described["best_value"] = described["best_value"] / 100.0
    described["units"] = "fraction"
    return described


def parse_key_values(items: list[str], flag: str, underscore_keys: bool = False) -> dict[str, Any]:
    """``["a=1", "b=x"]`` (a repeatable ``KEY=VALUE`` option) -> ``{"a": 1, "b": "x"}``; values
    are JSON literals or strings; ``underscore_keys`` turns ``-`` in keys into ``_``."""
    from irkit.errors import InputError
    from irkit.notebook import parse_value

    parsed: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"{flag} {item!r} must look like KEY=VALUE", field=flag.lstrip("-"))
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_") if underscore_keys else key.strip()
        parsed[key] = parse_value(value.strip())
    return parsed
