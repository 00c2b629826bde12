"""One entry point for every CLIP backbone irkit uses: :func:`create_model`.

Any open_clip model name works, with weights from (a) nothing — seeded random init, only when
asked for explicitly (``random_init=True``, the CLI's ``--random-init``: e.g. the "before
training" score of a from-scratch run); forgetting the weights is an error, never a silently
random model —, (b) an open_clip ``pretrained`` tag (needs the Hugging Face
Hub or its local cache), (c) a local checkpoint file: an open_clip_train checkpoint
(``{"epoch", "name", "state_dict", ...}``, ``module.`` prefixes allowed), a raw state dict
(.pt/.pth/.bin) or a ``.safetensors`` file. Pickled checkpoints are read with
``torch.load(weights_only=True)`` only. A checkpoint holding NaN/Inf values is refused (naming
the tensor), and :meth:`LoadedModel.encode_texts` refuses non-finite embeddings.

The returned :class:`LoadedModel` carries ``weights_id``, a string naming the weights, which
embedding caches use as part of their key.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional, Sequence, Union

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from irkit.errors import InputError, first_line_of
from irkit.finite import count_non_finite, require_finite
from irkit.io import atomic_path, file_sha256
from irkit.precision import MODEL_PRECISION_SETTINGS, PURE_PRECISIONS, autocast_for, resolve_precision, subnormals_on
from irkit.transforms import TRANSFORM_NAMES, TransformConfig, build_transform

log = logging.getLogger(__name__)

#: precision settings of a loaded model (:mod:`irkit.precision`): auto | fp32 | bf16 | fp16
#: autocast around float32 weights; pure_bf16 | pure_fp16 cast the weights themselves
PRECISIONS = MODEL_PRECISION_SETTINGS
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_STRIP_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 5


@dataclass
class LoadedModel:
    """A CLIP model in eval mode with its tokenizer, transforms and a weights identity.

    ``embed_dim`` is the joint embedding width D; ``image_size`` the square input side S.
    """

    model: torch.nn.Module
    tokenizer: Callable[..., torch.Tensor]
    preprocess: Callable
    train_transform: Callable
    model_name: str
    weights_id: str
    transform_name: str
    image_size: int
    embed_dim: int
    transform_config: TransformConfig = field(repr=False, default=None)  # type: ignore[assignment]
    device: str = "cpu"
    precision: str = "fp32"                  # resolved: fp32 | bf16 | fp16 | pure_bf16 | pure_fp16
    subnormals: str = "flushed"              # irkit.precision.subnormals_on(device): flushed | kept | device
    weights_source: str = ""                 # "checkpoint PATH" / "pretrained tag T" / "random init (seed S)"
    checkpoint_path: Optional[str] = None    # the local weights file, when there is one

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype the image tower expects for its pixel input."""
        return next(self.model.visual.parameters()).dtype

    def encode_images(self, pixel_batch: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` preprocessed pixels -> ``[B, D]`` float32 L2-normalised, no grad.

        (``no_grad`` rather than ``inference_mode``: callers may feed the result to a module
        they train, which inference tensors would refuse.)
        """
        with torch.no_grad(), self.autocast():
            features = self.model.encode_image(pixel_batch.to(self.device, self.input_dtype))
        return F.normalize(features.float(), dim=-1)

    def autocast(self) -> ContextManager[Any]:
        """The forward-pass context of this model's precision (autocast for bf16/fp16)."""
        return autocast_for(self.precision, self.device)

    def encode_text_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, context_length]`` token ids -> ``[B, D]`` float32 L2-normalised, no grad."""
        with torch.no_grad(), self.autocast():
            features = self.model.encode_text(tokens.to(self.device))
        return F.normalize(features.float(), dim=-1)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> ``[N, D]`` float32 L2-normalised numpy array (progress bar for long lists).

        Texts longer than the tokenizer's context are truncated by it: one warning gives their
        count. Non-finite embeddings raise InputError naming the weights.
        """
        if isinstance(texts, str):
            raise TypeError("encode_texts expects a list of strings, got one string")
        texts = list(texts)
        warn_truncated(self.tokenizer, texts, f"model '{self.model_name}'")
        out = np.zeros((len(texts), self.embed_dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="texts", unit="batch", disable=len(texts) <= 4 * batch_size):
            chunk = texts[start:start + batch_size]
            out[start:start + len(chunk)] = self.encode_text_tokens(self.tokenizer(chunk)).cpu().numpy()
        return require_finite(out, "text embeddings",
                              f"model '{self.model_name}' ({self.weights_source or self.weights_id})",
                              path=self.checkpoint_path)


# --------------------------------------------------------------------------- texts

def count_truncated(tokenizer: Callable[..., torch.Tensor], texts: Sequence[str]) -> int:
    """How many of ``texts`` exceed the tokenizer's context (start/end tokens included) and are
    therefore cut by it. open_clip's BPE tokenizer is asked for each text's exact token count;
    other tokenizers count rows that fill the whole context."""
    context = getattr(tokenizer, "context_length", None)
    encode = getattr(tokenizer, "encode", None)
    if not texts:
        return 0
    if context and callable(encode) and getattr(tokenizer, "reduction_fn", None) is None:
        return sum(1 for text in texts if len(encode(text)) + 2 > int(context))
    tokens = tokenizer(list(texts))
    return int((tokens[:, -1] != 0).sum().item())


def warn_truncated(tokenizer: Callable[..., torch.Tensor], texts: Sequence[str], owner: str) -> int:
    """Log one warning with the count of ``texts`` longer than the tokenizer's context; returns it."""
    truncated = count_truncated(tokenizer, texts)
    if truncated:
        context = getattr(tokenizer, "context_length", None)
        log.warning("%d of %d texts are longer than the text context of %s (%s tokens) and were truncated to it",
                    truncated, len(texts), owner, context if context else "its")
    return truncated


# --------------------------------------------------------------------------- model names

def _known_models() -> list[str]:
    return open_clip.list_models()


def check_model_name(model_name: str) -> tuple[Optional[str], str]:
    """Return ``(schema, name)``; unknown built-in names raise InputError with close matches."""
    schema, identifier = open_clip.factory.parse_model_name(model_name)
    if schema == "local-dir":
        folder = Path(identifier)
        if not (folder / "open_clip_config.json").is_file():
            raise InputError(
                "local-dir model folder must contain open_clip_config.json (and the weights file)",
                path=folder, field="model")
        return schema, model_name
    if schema == "hf-hub":
        return schema, model_name
    cleaned = identifier.replace("/", "-")
    known = _known_models()
    if cleaned in known:
        return None, cleaned
    by_lower = {k.lower(): k for k in known}
    close = [by_lower[k] for k in difflib.get_close_matches(cleaned.lower(), list(by_lower), n=5, cutoff=0.5)]
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise InputError(
        f"unknown model name '{model_name}' (expected an open_clip model config name).{hint} "
        "List them with: python -c \"import open_clip; print(open_clip.list_models())\"",
        field="model")


def _offline_hint() -> str:
    return ("No network is available here (only local files can be used); pass a local "
            "checkpoint instead: --checkpoint PATH (open_clip_train .pt, state dict or .safetensors), "
            "or download the weights on a connected machine into the Hugging Face cache.")


def _make_tokenizer(model_name: str) -> Callable[..., torch.Tensor]:
    try:
        return open_clip.get_tokenizer(model_name)
    except Exception as e:  # HF tokenizers need the hub (or its cache) and transformers
        raise InputError(
            f"the tokenizer of model '{model_name}' could not be created ({type(e).__name__}: {e}). "
            "Models with a Hugging Face tokenizer (hf_tokenizer_name / hf-hub:) need the hub or its "
            "local cache and the 'transformers' package; this machine has no network. Use a model "
            "with open_clip's built-in CLIP tokenizer (e.g. irkit-tiny, ViT-B-32).",
            field="model") from None


# --------------------------------------------------------------------------- checkpoints

def _strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state_dict.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (or, legacy, a pickle starting with the PROTO opcode)."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80)


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Read a model state dict from a checkpoint file (CPU tensors).

    Accepts open_clip_train checkpoints (``state_dict`` inside, ``module.`` prefixes), raw
    state dicts and ``.safetensors``. Pickles are read with ``weights_only=True`` only.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("checkpoint file not found (expected an open_clip_train .pt, a state dict "
                         ".pt/.pth/.bin or a .safetensors file)", path=path)
    if not path.is_file():
        raise InputError("checkpoint path is not a file", path=path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            raw: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"not a readable .safetensors file ({e})", path=path) from None
    else:
        if not _looks_like_torch_file(path):
            raise InputError("not a readable PyTorch checkpoint (neither a torch.save zip archive nor a "
                             "pickle)", path=path)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            detail = first_line_of(e)
            raise InputError(
                "checkpoint cannot be read with torch.load(weights_only=True): it holds pickled Python "
                f"objects besides tensors ({detail}). Re-save only its state_dict, or convert it to "
                ".safetensors", path=path) from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise InputError(f"not a readable PyTorch checkpoint ({type(e).__name__}: {first_line_of(e)})",
                             path=path) from None
    if isinstance(raw, dict) and "state_dict" in raw:
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"checkpoint holds {type(raw).__name__}, expected a non-empty state dict "
                         "(parameter name -> tensor)", path=path)
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"state dict entries are not tensors: {', '.join(map(str, bad[:_MAX_LISTED]))}",
                         path=path)
    non_finite = [(k, count_non_finite(v)) for k, v in raw.items() if v.is_floating_point()]
    non_finite = [(k, n) for k, n in non_finite if n]
    if non_finite:
        listed = ", ".join(f"{k} ({n})" for k, n in non_finite[:_MAX_LISTED])
        raise InputError(f"checkpoint holds non-finite values (NaN/Inf) in {len(non_finite)} tensor(s): {listed}; "
                         "expected finite weights (a damaged file or a diverged training run)", path=path)
    return _strip_prefixes(raw)


def read_weights_metadata(path: Union[str, Path]) -> dict[str, str]:
    """Metadata of a ``.safetensors`` file (``{}`` for other formats)."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def _describe_mismatch(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> Optional[str]:
    expected = model.state_dict()
    shape_mismatch = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    parts = []
    for title, items in (("shape mismatches", shape_mismatch), ("missing keys", missing),
                         ("unexpected keys", unexpected)):
        if items:
            more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{title} [{len(items)}]: " + "; ".join(items[:_MAX_LISTED]) + more)
    return " | ".join(parts) if parts else None


def load_weights(model: torch.nn.Module, path: Union[str, Path], model_name: str) -> None:
    """Load a checkpoint file into ``model``; mismatching keys/shapes raise InputError."""
    state_dict = read_state_dict(path)
    expected = model.state_dict()
    for key in ("logit_scale", "logit_bias"):  # scalar vs 1-d, as open_clip tolerates
        if key in state_dict and key in expected and state_dict[key].numel() == expected[key].numel():
            state_dict[key] = state_dict[key].reshape(expected[key].shape)
    mismatch = _describe_mismatch(model, state_dict)
    if mismatch:
        saved_name = read_weights_metadata(path).get("model_name")
        hint = (f" The file's metadata names model '{saved_name}'." if saved_name and saved_name != model_name
                else " Was it trained with a different model config? Pass that --model.")
        raise InputError(f"checkpoint does not match model '{model_name}': {mismatch}.{hint}", path=path)
    model.load_state_dict(state_dict, strict=True)


def save_weights(loaded_or_model: Union[LoadedModel, torch.nn.Module], path: Union[str, Path],
                 dtype: Optional[Union[torch.dtype, str]] = None, model_name: Optional[str] = None) -> Path:
    """Write the model's state dict as ``.safetensors`` (atomically), model name in the metadata.

    ``dtype`` (``torch.float16`` or ``"float16"``) casts floating tensors, halving a demo
    checkpoint's size.
    """
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise InputError(f"unknown dtype '{dtype}' (expected e.g. float16, bfloat16, float32)", field="dtype")
        dtype = getattr(torch, dtype)
    if isinstance(loaded_or_model, LoadedModel):
        model, model_name = loaded_or_model.model, model_name or loaded_or_model.model_name
    else:
        model = loaded_or_model
    if not model_name:
        raise ValueError("save_weights needs model_name when given a bare nn.Module")
    from safetensors.torch import save_file
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous().clone()
    path = Path(path)
    metadata = {"model_name": model_name, "format": "pt", "writer": "irkit",
                "dtype": str(dtype or "as-trained").replace("torch.", "")}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# --------------------------------------------------------------------------- factory

@contextlib.contextmanager
def _quiet_open_clip_init_warning() -> Iterator[None]:
    """Hide open_clip's 'initialized randomly' warning when irkit loads weights right after."""

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    filt = _Filter()
    root.addFilter(filt)
    try:
        yield
    finally:
        root.removeFilter(filt)


HUB_HOST = "huggingface.co"


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub's host name resolves (DNS only; fails fast when offline)."""
    import concurrent.futures
    import socket

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, HUB_HOST, 443).result(timeout=timeout_s)
        return True
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False)


@contextlib.contextmanager
def _hub_access() -> Iterator[None]:
    """Let open_clip use the hub; when it cannot be reached, switch huggingface_hub to offline
    mode so cached files are used at once and missing ones fail at once (instead of retrying
    for a minute)."""
    try:
        from huggingface_hub import constants as hub_constants
    except ImportError:  # open_clip then raises its own clear error
        yield
        return
    previous = hub_constants.HF_HUB_OFFLINE
    if not previous and not _hub_reachable():
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith(CHECKPOINT_SUFFIXES) or os.path.exists(value)


def _embed_dim(model: torch.nn.Module) -> int:
    visual = getattr(model, "visual", None)
    if visual is not None and getattr(visual, "output_dim", None):
        return int(visual.output_dim)
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.Tensor):
        return int(projection.shape[1])
    with torch.inference_mode():
        size = model.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return int(model.encode_image(torch.zeros(1, 3, *size)).shape[-1])


def _weights_id(schema: Optional[str], name: str, pretrained: Optional[str],
                checkpoint: Optional[Path], seed: int) -> str:
    """``sha256:<hex of the checkpoint file>`` / ``pretrained:<tag>`` / ``hf-hub:<id>`` / ``random-init:<seed>``."""
    if checkpoint is not None:
        return f"sha256:{file_sha256(checkpoint)}"
    if schema == "hf-hub":
        return name
    if schema == "local-dir":
        # open_clip has no public resolver for the file a local-dir model loads; its own one is used so
        # that the identity hashes exactly the checkpoint open_clip will read.
        found = open_clip.factory._find_checkpoint_in_dir(Path(name.split(":", 1)[1]))
        return f"sha256:{file_sha256(found)}" if found else f"random-init:{seed}"
    if pretrained:
        return f"pretrained:{pretrained}"
    return f"random-init:{seed}"


#: ``create_model(memory_format=...)``: auto = channels-last for convolutional image towers
MEMORY_FORMATS = ("auto", "contiguous")


def _open_clip_precision(name: str) -> str:
    """open_clip's ``precision`` (weights dtype) for a resolved irkit precision name: weights
    stay float32 under autocast (bf16 / fp16); ``pure_*`` cast them."""
    return name if name in PURE_PRECISIONS else "fp32"


def has_convolutions(module: torch.nn.Module) -> bool:
    """True when ``module`` holds a 2-d convolution other than a ViT's patch embedding (a conv
    whose stride equals its kernel: channels-last gains nothing there)."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d) and tuple(layer.stride) != tuple(layer.kernel_size):
            return True
    return False


def use_channels_last(model: torch.nn.Module) -> bool:
    """Put the image tower of ``model`` in channels-last memory layout when it is convolutional
    (ResNet / ConvNeXt towers: ~1.5x faster training and ~1.7x faster inference on CPU for
    irkit-tiny, ``bench/profile_reproduce.py``); returns whether it did. Values are unchanged up
    to float rounding."""
    visual = getattr(model, "visual", model)
    if not has_convolutions(visual):
        return False
    visual.to(memory_format=torch.channels_last)
    return True


def create_model(
    model_name: str = "irkit-tiny",
    pretrained: Optional[str] = None,
    checkpoint: Optional[Union[str, Path]] = None,
    transform: str = "square",
    device: str = "cpu",
    precision: str = "fp32",
    seed: int = 0,
    random_init: bool = False,
    memory_format: str = "auto",
) -> LoadedModel:
    """Create an open_clip model (eval mode) with tokenizer, transforms and a weights id.

    Weights: ``checkpoint`` (local file) or ``pretrained`` (an open_clip tag, or itself a local
    file path), or — only with ``random_init=True`` — none (random init from ``seed``). Without
    weights and without ``random_init`` an InputError says so: a forgotten ``--checkpoint`` is
    never answered by a random model. ``transform`` is a name from
    :data:`irkit.transforms.TRANSFORM_NAMES`; mean/std/interpolation come from the model.
    ``precision``: a setting of :mod:`irkit.precision` (``auto`` resolves per device; the
    resolved name is ``LoadedModel.precision``). ``memory_format``: ``auto`` puts convolutional
    image towers in channels-last layout (faster on CPU and GPU), ``contiguous`` keeps them.
    """
    resolved_precision = resolve_precision(precision, device, allow_pure=True)
    if memory_format not in MEMORY_FORMATS:
        raise InputError(f"unknown memory format '{memory_format}' (expected one of: {', '.join(MEMORY_FORMATS)})",
                         field="memory_format")
    if transform not in TRANSFORM_NAMES:
        raise InputError(f"unknown transform '{transform}' (expected one of: {', '.join(TRANSFORM_NAMES)})",
                         field="transform")
    if pretrained and checkpoint:
        raise InputError("give either a pretrained tag or a checkpoint path, not both", field="checkpoint")
    if random_init and (pretrained or checkpoint):
        raise InputError("random init was asked for together with weights (--pretrained/--checkpoint); "
                         "expected one of them", field="random_init")
    schema, name = check_model_name(model_name)
    if not (random_init or pretrained or checkpoint or schema in ("hf-hub", "local-dir")):
        raise InputError(
            f"no weights given for model '{name}': expected --checkpoint PATH or --pretrained TAG, or "
            "--random-init to use a randomly initialised model on purpose (random_init=True in Python)",
            field="checkpoint")
    if pretrained and _looks_like_path(str(pretrained)) and schema is None:
        checkpoint, pretrained = pretrained, None
    if checkpoint is not None:
        checkpoint = Path(checkpoint).expanduser()
        if not checkpoint.is_file():
            raise InputError("checkpoint file not found (expected an open_clip_train .pt, a state dict "
                             ".pt/.pth/.bin or a .safetensors file)", path=checkpoint)
    if pretrained and schema is None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if not open_clip.get_pretrained_cfg(name, pretrained):
            raise InputError(
                f"'{pretrained}' is neither a pretrained tag of model '{name}' nor an existing file "
                f"(tags: {', '.join(tags) if tags else 'none'})", field="pretrained")

    needs_hub = schema == "hf-hub" or bool(pretrained)
    try:
        with _hub_access() if needs_hub else contextlib.nullcontext():
            tokenizer = _make_tokenizer(name)
            with torch.random.fork_rng(devices=[]), _quiet_open_clip_init_warning():
                torch.manual_seed(seed)  # random init (and any unloaded parameter) is seeded
                model = open_clip.create_model(name, pretrained=pretrained if schema is None else None,
                                               precision=_open_clip_precision(resolved_precision.name),
                                               device=device)
    except InputError:
        raise
    except Exception as e:
        if not needs_hub:
            raise
        raise InputError(
            f"weights for model '{name}'" + (f" tag '{pretrained}'" if pretrained else "")
            + f" could not be obtained ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            + _offline_hint(), field="pretrained" if pretrained else "model") from None
    weights_id = _weights_id(schema, name, pretrained, checkpoint, seed)
    if checkpoint is not None:
        load_weights(model, checkpoint, name)
    if weights_id.startswith("random-init:"):
        if not random_init:  # a local-dir model folder without a weights file
            raise InputError(f"the model folder of '{model_name}' holds no weights file; expected one, or "
                             "--random-init to use a randomly initialised model on purpose", field="model")
        log.info("model %s: random init from seed %d (asked for)", name, seed)
        source = f"random init (seed {seed})"
    elif checkpoint is not None:
        source = f"checkpoint {checkpoint}"
    elif pretrained:
        source = f"pretrained tag {pretrained}"
    else:
        source = weights_id
    model.eval()
    if memory_format == "auto":
        use_channels_last(model)
    log.info("model %s: %s", name, resolved_precision.describe())

    pp_cfg = open_clip.get_model_preprocess_cfg(model)
    transform_cfg = TransformConfig(
        name=transform, image_size=pp_cfg.get("size", model.visual.image_size),
        mean=pp_cfg.get("mean") or TransformConfig.mean, std=pp_cfg.get("std") or TransformConfig.std,
        interpolation="bilinear" if pp_cfg.get("interpolation") == "bilinear" else "bicubic",
        fill=int(pp_cfg.get("fill_color", 0) or 0),
    )
    return LoadedModel(
        model=model, tokenizer=tokenizer,
        preprocess=build_transform(transform_cfg, is_train=False),
        train_transform=build_transform(transform_cfg, is_train=True),
        model_name=name, weights_id=weights_id, transform_name=transform,
        image_size=transform_cfg.image_size, embed_dim=_embed_dim(model),
        transform_config=transform_cfg, device=str(device), precision=resolved_precision.name,
        subnormals=subnormals_on(device),
        weights_source=source, checkpoint_path=str(checkpoint) if checkpoint is not None else None,
    )
