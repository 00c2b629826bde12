"""Published MagicLens checkpoints (``magic_lens_clip_{base,large}.pkl``) in irkit (docs/methods.md §D).

File format (docs/formats.md §8): a pickle whose single object is a ``bytes`` payload, the flax
msgpack of ``{"params": {"clip": ..., "multimodal_encoder": ..., "contrastive_multimodal_pooler":
...}}``; every leaf is flax's ndarray msgpack extension (type code 1, data = msgpack
``[shape, dtype name, raw bytes]``). It is read WITHOUT executing pickle code: the unpickler
refuses every global, so only plain values (the bytes) can come out; the msgpack is decoded by
:mod:`irkit.models.flax_msgpack` (no jax needed).

Mapping (kernels are ``[in, out]``, torch ``Linear`` weights ``[out, in]``):

* ``clip``: scenic's OpenAI-layout CLIP (``vit_b16`` / ``vit_l14``) onto open_clip's
  ``ViT-B-16-quickgelu`` / ``ViT-L-14-quickgelu`` state dict (other sizes onto an open_clip
  ``CLIP`` built from the leaf shapes). Attention ``query/key/value/kernel [W, H, W/H]`` ->
  ``in_proj_weight [3W, W]``, ``out/kernel [H, W/H, W]`` -> ``out_proj.weight``, ``conv1/kernel
  [p, p, 3, W]`` -> ``[W, 3, p, p]``; ``proj`` and ``text_projection`` keep their orientation.
* ``multimodal_encoder`` + ``contrastive_multimodal_pooler``: onto
  :class:`~irkit.models.fusion.MagicLensFusion`. MagicLens's LayerNorm applies ``1 + scale``,
  so ``weight = 1 + scale``; ``{query,key,value}/w [D, H, D/H]`` -> ``weight [D, D]`` (transposed),
  ``post/w [D, H, D/H]`` (D first) -> ``proj.weight [D, D]`` as is; ``per_dim_scale`` is kept raw.

The text tower of the published model masks keys whose token id is 0 (``ids > 0`` AND causal), so
the real token ``!`` (id 0) is invisible to the other positions; :class:`MagicLensCLIP` does
the same (``mask_zero_ids=True``, the default) or open_clip's causal-only mask (False).
Images go through the ``magiclens`` transform (:mod:`irkit.transforms`).
"""

from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import open_clip
import torch
from torch import nn

from irkit.errors import InputError
from irkit.io import file_sha256
from irkit.models.factory import LoadedModel
from irkit.models.flax_msgpack import read_flax_msgpack_bytes
from irkit.models.fusion import FusionConfig, MagicLensFusion
from irkit.transforms import TransformConfig, build_transform

#: open_clip configs of the published sizes (scenic ``vit_b16`` / ``vit_l14``, QuickGELU).
PUBLISHED_CLIP_MODELS = {"base": "ViT-B-16-quickgelu", "large": "ViT-L-14-quickgelu"}
TOP_LEVEL = ("clip", "multimodal_encoder", "contrastive_multimodal_pooler")

LeafTable = dict[str, tuple[int, ...]]


# --------------------------------------------------------------------------- reading the file


class _BytesOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global: no class, function or reduce target can be loaded,
    so nothing in the file runs; plain values (the checkpoint's single ``bytes``) still load."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def read_pickled_payload(path: Union[str, Path]) -> bytes:
    """The ``bytes`` object of a published MagicLens ``.pkl``, read without executing pickle code."""
    path = Path(path)
    if not path.is_file():
        raise InputError("MagicLens checkpoint file not found (expected magic_lens_clip_{base,large}.pkl)",
                         path=path)
    try:
        with open(path, "rb") as f:
            payload = _BytesOnlyUnpickler(f).load()
    except pickle.UnpicklingError as e:
        detail = str(e).splitlines()[0] if str(e) else "unpickling error"
        if detail.startswith("refused global"):
            raise InputError(f"not a MagicLens checkpoint: the pickle refers to Python code ({detail}); a "
                             "published checkpoint holds only a bytes payload, and nothing in this file was run",
                             path=path) from None
        raise InputError(f"not a MagicLens checkpoint: the pickle is truncated or corrupt ({detail})",
                         path=path) from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError) as e:
        raise InputError(f"not a MagicLens checkpoint: the pickle is truncated or corrupt ({type(e).__name__})",
                         path=path) from None
    if not isinstance(payload, bytes):
        raise InputError(f"not a MagicLens checkpoint: the pickle holds {type(payload).__name__}, expected the "
                         "bytes of a flax msgpack parameter tree", path=path)
    return payload


def read_magiclens_params(path: Union[str, Path]) -> dict[str, np.ndarray]:
    """Every leaf of a published MagicLens checkpoint, ``"clip/visual/conv1/kernel" -> array``
    (names relative to ``params``), decoded without jax (:mod:`irkit.models.flax_msgpack`) and
    without executing pickle code."""
    path = Path(path)
    payload = read_pickled_payload(path)
    try:
        flat = read_flax_msgpack_bytes(payload, path)
    except InputError as e:
        if "truncated or corrupt" in e.detail:
            raise
        raise InputError(f"not a MagicLens checkpoint: its payload is not a complete flax msgpack tree "
                         f"({e.detail})", path=path) from None
    del payload
    params = {name[len("params/"):]: value for name, value in flat.items() if name.startswith("params/")}
    if not params:
        raise InputError("not a MagicLens checkpoint: the msgpack tree has no 'params' mapping", path=path)
    return params


# --------------------------------------------------------------------------- sizes from the leaves


@dataclass(frozen=True)
class MagicLensSizes:
    """What a checkpoint's leaf shapes say: the fusion width/heads/depth and the CLIP towers'
    open_clip config (``clip_config``: ``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``)."""

    embed_dim: int
    num_heads: int
    depth: int
    clip_config: dict[str, Any]

    @property
    def published_size(self) -> Optional[str]:
        """``"base"`` / ``"large"`` when the towers equal that published size's open_clip config."""
        for size, name in PUBLISHED_CLIP_MODELS.items():
            reference = open_clip.get_model_config(name)
            if reference is not None and _same_clip(reference, self.clip_config):
                return size
        return None

    @property
    def clip_model_name(self) -> str:
        size = self.published_size
        return PUBLISHED_CLIP_MODELS[size] if size else "magiclens-clip-custom"


def _same_clip(reference: dict[str, Any], derived: dict[str, Any]) -> bool:
    if int(reference["embed_dim"]) != derived["embed_dim"] or not reference.get("quick_gelu"):
        return False
    for tower in ("vision_cfg", "text_cfg"):
        ref = dict(reference[tower])
        if tower == "vision_cfg":
            ref.setdefault("head_width", 64)
        else:
            ref.setdefault("heads", 8)
        for key, value in derived[tower].items():
            if key in ref and ref[key] != value:
                return False
    return True


def _count_layers(params: dict[str, np.ndarray], prefix: str, path: Path) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)/")
    found = {int(m.group(1)) for name in params if (m := pattern.match(name))}
    if not found:
        raise InputError(f"not a MagicLens checkpoint: missing leaves {prefix}0/...", path=path)
    return max(found) + 1


def _shape(params: dict[str, np.ndarray], name: str, ndim: int, path: Path) -> tuple[int, ...]:
    if name not in params:
        raise InputError(f"not a MagicLens checkpoint: missing leaf {name}", path=path)
    shape = tuple(params[name].shape)
    if len(shape) != ndim:
        raise InputError(f"leaf {name}: shape {list(shape)}, expected {ndim} dimensions", path=path)
    return shape


def infer_sizes(params: dict[str, np.ndarray], path: Union[str, Path] = "<checkpoint>") -> MagicLensSizes:
    """The model sizes the leaf shapes imply (every leaf is then checked by :func:`expected_leaves`)."""
    path = Path(path)
    dim, = _shape(params, "multimodal_encoder/x_layers_0/layer_norm/scale", 1, path)
    _, heads, _ = _shape(params, "multimodal_encoder/x_layers_0/self_attention/query/w", 3, path)
    depth = _count_layers(params, "multimodal_encoder/x_layers_", path)
    patch, _, _, v_width = _shape(params, "clip/visual/conv1/kernel", 4, path)
    positions, _ = _shape(params, "clip/visual/positional_embedding", 2, path)
    grid = math.isqrt(max(positions - 1, 0))
    _, v_heads, _ = _shape(params, "clip/visual/transformer/resblocks_0/attn/query/kernel", 3, path)
    _, embed = _shape(params, "clip/visual/proj/kernel", 2, path)
    vocab, t_width = _shape(params, "clip/text/token_embedding/embedding", 2, path)
    context, _ = _shape(params, "clip/text/positional_embedding", 2, path)
    _, t_heads, _ = _shape(params, "clip/text/transformer/resblocks_0/attn/query/kernel", 3, path)
    if heads == 0 or v_heads == 0 or t_heads == 0 or v_width % v_heads:
        raise InputError("not a MagicLens checkpoint: attention leaves with zero heads", path=path)
    clip_config = {
        "embed_dim": int(embed), "quick_gelu": True,
        "vision_cfg": {"image_size": int(grid * patch), "layers": _count_layers(
            params, "clip/visual/transformer/resblocks_", path), "width": int(v_width), "patch_size": int(patch),
            "head_width": int(v_width // v_heads)},
        "text_cfg": {"context_length": int(context), "vocab_size": int(vocab), "width": int(t_width),
                     "heads": int(t_heads), "layers": _count_layers(params, "clip/text/transformer/resblocks_", path)},
    }
    return MagicLensSizes(embed_dim=int(dim), num_heads=int(heads), depth=depth, clip_config=clip_config)


# --------------------------------------------------------------------------- the mapping

Convert = Callable[..., np.ndarray]


@dataclass(frozen=True)
class LeafTarget:
    """One torch state-dict entry made from checkpoint leaves."""

    module: str  # "clip" or "fusion"
    key: str
    sources: tuple[str, ...]
    convert: Convert


def _plain(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return x.T


def _one_plus(x: np.ndarray) -> np.ndarray:
    return 1.0 + x


def _heads_in_to_linear(w: np.ndarray) -> np.ndarray:
    """``[D_in, H, h]`` kernel -> torch ``[H*h, D_in]`` weight."""
    return w.reshape(w.shape[0], -1).T


def _heads_bias(b: np.ndarray) -> np.ndarray:
    return b.reshape(-1)


def _qkv_weight(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.concatenate([_heads_in_to_linear(w) for w in (q, k, v)], axis=0)


def _qkv_bias(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.concatenate([b.reshape(-1) for b in (q, k, v)])


def _heads_out_to_linear(w: np.ndarray) -> np.ndarray:
    """flax attention ``out/kernel [H, h, D]`` -> torch ``[D, H*h]``."""
    return w.reshape(-1, w.shape[-1]).T


def _post_to_linear(w: np.ndarray) -> np.ndarray:
    """MagicLens ``post/w [D, H, h]`` (D first) -> torch ``[D, H*h]``."""
    return w.reshape(w.shape[0], -1)


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """flax ``[p, p, C_in, C_out]`` -> torch ``[C_out, C_in, p, p]``."""
    return w.transpose(3, 2, 0, 1)


def expected_leaves(sizes: MagicLensSizes) -> tuple[LeafTable, list[LeafTarget]]:
    """Every leaf a checkpoint of these sizes holds (name -> shape) and the torch entries made from them."""
    leaves: LeafTable = {}
    targets: list[LeafTarget] = []

    def leaf(name: str, shape: tuple[int, ...]) -> str:
        leaves[name] = tuple(int(s) for s in shape)
        return name

    def target(module: str, key: str, convert: Convert, *sources: str) -> None:
        targets.append(LeafTarget(module, key, tuple(sources), convert))

    def flax_ln(src: str, dst: str, width: int, module: str = "clip", convert: Convert = _plain) -> None:
        target(module, f"{dst}.weight", convert, leaf(f"{src}/scale", (width,)))
        target(module, f"{dst}.bias", _plain, leaf(f"{src}/bias", (width,)))

    def clip_blocks(src: str, dst: str, width: int, heads: int, layers: int) -> None:
        head = width // heads
        for i in range(layers):
            s, d = f"{src}/resblocks_{i}", f"{dst}.resblocks.{i}"
            flax_ln(f"{s}/ln_1", f"{d}.ln_1", width)
            flax_ln(f"{s}/ln_2", f"{d}.ln_2", width)
            qkv = [leaf(f"{s}/attn/{p}/kernel", (width, heads, head)) for p in ("query", "key", "value")]
            target("clip", f"{d}.attn.in_proj_weight", _qkv_weight, *qkv)
            qkv_b = [leaf(f"{s}/attn/{p}/bias", (heads, head)) for p in ("query", "key", "value")]
            target("clip", f"{d}.attn.in_proj_bias", _qkv_bias, *qkv_b)
            target("clip", f"{d}.attn.out_proj.weight", _heads_out_to_linear,
                   leaf(f"{s}/attn/out/kernel", (heads, head, width)))
            target("clip", f"{d}.attn.out_proj.bias", _plain, leaf(f"{s}/attn/out/bias", (width,)))
            target("clip", f"{d}.mlp.c_fc.weight", _transpose, leaf(f"{s}/mlp/c_fc/kernel", (width, 4 * width)))
            target("clip", f"{d}.mlp.c_fc.bias", _plain, leaf(f"{s}/mlp/c_fc/bias", (4 * width,)))
            target("clip", f"{d}.mlp.c_proj.weight", _transpose, leaf(f"{s}/mlp/c_proj/kernel", (4 * width, width)))
            target("clip", f"{d}.mlp.c_proj.bias", _plain, leaf(f"{s}/mlp/c_proj/bias", (width,)))

    cfg = sizes.clip_config
    vis, txt, embed = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
    width, patch = vis["width"], vis["patch_size"]
    positions = (vis["image_size"] // patch) ** 2 + 1
    target("clip", "visual.conv1.weight", _conv_kernel, leaf("clip/visual/conv1/kernel", (patch, patch, 3, width)))
    target("clip", "visual.class_embedding", _plain, leaf("clip/visual/class_embedding", (width,)))
    target("clip", "visual.positional_embedding", _plain,
           leaf("clip/visual/positional_embedding", (positions, width)))
    flax_ln("clip/visual/ln_pre", "visual.ln_pre", width)
    clip_blocks("clip/visual/transformer", "visual.transformer", width, width // vis["head_width"], vis["layers"])
    flax_ln("clip/visual/ln_post", "visual.ln_post", width)
    target("clip", "visual.proj", _plain, leaf("clip/visual/proj/kernel", (width, embed)))

    t_width = txt["width"]
    target("clip", "token_embedding.weight", _plain,
           leaf("clip/text/token_embedding/embedding", (txt["vocab_size"], t_width)))
    target("clip", "positional_embedding", _plain,
           leaf("clip/text/positional_embedding", (txt["context_length"], t_width)))
    clip_blocks("clip/text/transformer", "transformer", t_width, txt["heads"], txt["layers"])
    flax_ln("clip/text/ln_final", "ln_final", t_width)
    target("clip", "text_projection", _plain, leaf("clip/text/text_projection/kernel", (t_width, embed)))
    target("clip", "logit_scale", _plain, leaf("clip/logit_scale", ()))

    dim, heads = sizes.embed_dim, sizes.num_heads
    head = dim // heads
    for i in range(sizes.depth):
        s, d = f"multimodal_encoder/x_layers_{i}", f"blocks.{i}"
        flax_ln(f"{s}/layer_norm", f"{d}.norm1", dim, "fusion", _one_plus)
        for src, dst in (("query", "q"), ("key", "k"), ("value", "v")):
            target("fusion", f"{d}.attn.{dst}.weight", _heads_in_to_linear,
                   leaf(f"{s}/self_attention/{src}/w", (dim, heads, head)))
            target("fusion", f"{d}.attn.{dst}.bias", _heads_bias, leaf(f"{s}/self_attention/{src}/b", (heads, head)))
        target("fusion", f"{d}.attn.proj.weight", _post_to_linear,
               leaf(f"{s}/self_attention/post/w", (dim, heads, head)))
        target("fusion", f"{d}.attn.proj.bias", _plain, leaf(f"{s}/self_attention/post/b", (dim,)))
        flax_ln(f"{s}/ff_layer/layer_norm", f"{d}.norm2", dim, "fusion", _one_plus)
        for n, (fan_in, fan_out) in ((1, (dim, 4 * dim)), (2, (4 * dim, dim))):
            target("fusion", f"{d}.mlp.fc{n}.weight", _transpose,
                   leaf(f"{s}/ff_layer/ffn_layer{n}/linear/w", (fan_in, fan_out)))
            target("fusion", f"{d}.mlp.fc{n}.bias", _plain, leaf(f"{s}/ff_layer/ffn_layer{n}/bias/b", (fan_out,)))
    pool, pool_head = "contrastive_multimodal_pooler", 4 * dim // heads
    target("fusion", "pool.query", _plain, leaf(f"{pool}/pooling_attn_query", (1, dim)))
    for src, dst in (("query", "q"), ("key", "k"), ("value", "v")):
        target("fusion", f"pool.attn.{dst}.weight", _heads_in_to_linear,
               leaf(f"{pool}/pool_attn/{src}/w", (dim, heads, pool_head)))
        target("fusion", f"pool.attn.{dst}.bias", _heads_bias, leaf(f"{pool}/pool_attn/{src}/b", (heads, pool_head)))
    target("fusion", "pool.attn.proj.weight", _post_to_linear, leaf(f"{pool}/pool_attn/post/w", (dim, heads, pool_head)))
    target("fusion", "pool.attn.proj.bias", _plain, leaf(f"{pool}/pool_attn/post/b", (dim,)))
    target("fusion", "pool.attn.per_dim_scale", _plain,
           leaf(f"{pool}/pool_attn/per_dim_scale/per_dim_scale", (pool_head,)))
    flax_ln(f"{pool}/pool_attn_ln", "pool.norm", dim, "fusion", _one_plus)
    return leaves, targets


def check_leaves(params: dict[str, np.ndarray], expected: LeafTable, path: Union[str, Path] = "<checkpoint>") -> None:
    """:class:`InputError` naming the first (in name order, as flax writes them) missing or
    mismatched leaf (with both shapes), or the first leaf the model has no place for."""
    for name, shape in sorted(expected.items()):
        if name not in params:
            raise InputError(f"MagicLens checkpoint is missing leaf {name} (expected shape {list(shape)})", path=path)
        if tuple(params[name].shape) != shape:
            raise InputError(f"MagicLens checkpoint leaf {name} has shape {list(params[name].shape)}, expected "
                             f"{list(shape)}", path=path)
    extra = sorted(set(params) - set(expected))
    if extra:
        raise InputError(f"MagicLens checkpoint has unexpected leaf {extra[0]} (+{len(extra) - 1} more): "
                         "not the published model's layout", path=path)


def convert_params(params: dict[str, np.ndarray], sizes: MagicLensSizes,
                   path: Union[str, Path] = "<checkpoint>") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(open_clip state dict, MagicLensFusion state dict)`` from checked checkpoint leaves (float32)."""
    expected, targets = expected_leaves(sizes)
    check_leaves(params, expected, path)
    out: dict[str, dict[str, torch.Tensor]] = {"clip": {}, "fusion": {}}
    for t in targets:
        value = t.convert(*(np.asarray(params[s], dtype=np.float32) for s in t.sources))
        # one writable float32 copy per entry (the decoded leaves are read-only views of the file's bytes)
        out[t.module][t.key] = torch.from_numpy(np.array(value, dtype=np.float32, order="C", copy=True))
    return out["clip"], out["fusion"]


# --------------------------------------------------------------------------- the models


class MagicLensCLIP(nn.Module):
    """An open_clip ``CLIP`` whose ``encode_text`` uses the published MagicLens text mask.

    ``mask_zero_ids=True``: a key position attends only if its token id is > 0 (and causally), as
    the published text tower does, so the real token with id 0 (``!`` inside a punctuation run)
    is hidden from the other positions. False: open_clip's causal-only mask. ``encode_image`` and
    every other attribute are the wrapped model's.
    """

    def __init__(self, clip: nn.Module, mask_zero_ids: bool = True) -> None:
        super().__init__()
        self.clip = clip
        self.mask_zero_ids = mask_zero_ids

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``[B, 3, S, S]`` pixels -> ``[B, D]``."""
        return self.clip.encode_image(image, normalize=normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, D]`` (EOT = argmax id pooled)."""
        if not self.mask_zero_ids:
            return self.clip.encode_text(text, normalize=normalize)
        clip = self.clip
        dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(text).to(dtype) + clip.positional_embedding.to(dtype)
        length = text.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=text.device).tril()
        allowed = causal[None] & (text > 0)[:, None, :]  # [B, L(query), L(key)]
        # A finite minimum, as flax uses: a row with no allowed key becomes uniform, not NaN.
        mask = torch.zeros(allowed.shape, dtype=dtype, device=text.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        heads = clip.transformer.resblocks[0].attn.num_heads
        x = clip.transformer(x, attn_mask=mask.repeat_interleave(heads, dim=0))
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        x = x @ clip.text_projection
        return nn.functional.normalize(x, dim=-1) if normalize else x


@dataclass
class MagicLensCheckpoint:
    """A converted published checkpoint: the fusion head and the CLIP backbone it was trained with."""

    fusion: MagicLensFusion
    backbone: LoadedModel
    sizes: MagicLensSizes


def magiclens_transform_config(image_size: int) -> TransformConfig:
    """The published preprocessing at side ``image_size`` (largest centred square crop,
    antialiased bilinear resize, [0, 1], CLIP mean/std)."""
    return TransformConfig(name="magiclens", image_size=image_size, interpolation="bilinear")


def looks_like_magiclens_checkpoint(path: Union[str, Path]) -> bool:
    """Whether ``path`` is to be read as a published MagicLens pickle (``.pkl``, or a pickle that is
    not a torch zip archive) rather than an irkit head checkpoint."""
    import zipfile

    path = Path(path)
    if path.suffix == ".pkl":
        return True
    if not path.is_file() or zipfile.is_zipfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def load_magiclens_checkpoint(path: Union[str, Path], mask_zero_ids: bool = True,
                              device: str = "cpu") -> MagicLensCheckpoint:
    """Read ``magic_lens_clip_{base,large}.pkl`` (or a smaller model in the same layout) into
    irkit: :class:`MagicLensFusion` (published config: logit caps, LayerNorm 1 + scale) and a
    :class:`LoadedModel` of the CLIP towers (open_clip ``ViT-B-16-quickgelu`` /
    ``ViT-L-14-quickgelu``, :class:`MagicLensCLIP` text mask, ``magiclens`` transform).

    Wrong or truncated files raise :class:`InputError` naming the first missing/mismatched leaf.
    """
    path = Path(path)
    params = read_magiclens_params(path)
    sizes = infer_sizes(params, path)
    if sizes.embed_dim % sizes.num_heads:
        raise InputError(f"MagicLens checkpoint width {sizes.embed_dim} is not divisible by its "
                         f"{sizes.num_heads} heads", path=path)
    clip_state, fusion_state = convert_params(params, sizes, path)
    del params

    fusion = MagicLensFusion(FusionConfig(embed_dim=sizes.embed_dim, num_heads=sizes.num_heads, depth=sizes.depth))
    fusion_state["logit_scale"] = fusion.logit_scale.detach().clone()  # training-only; not in the file
    fusion.load_state_dict(fusion_state, strict=True)
    fusion.eval()

    cfg = sizes.clip_config
    clip = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=dict(cfg["vision_cfg"]),
                          text_cfg=dict(cfg["text_cfg"]), quick_gelu=True)
    missing = sorted(set(clip.state_dict()) - set(clip_state))
    if missing:  # a bug of this mapping, not of the file
        raise RuntimeError(f"MagicLens mapping leaves open_clip entries unset: {missing[:5]}")
    clip.load_state_dict(clip_state, strict=True)
    wrapped = MagicLensCLIP(clip, mask_zero_ids=mask_zero_ids).to(device).eval()

    transform_cfg = magiclens_transform_config(cfg["vision_cfg"]["image_size"])
    name = sizes.clip_model_name + ("@magiclens" if mask_zero_ids else "@magiclens-causal-mask")
    backbone = LoadedModel(
        model=wrapped, tokenizer=open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"]),
        preprocess=build_transform(transform_cfg, is_train=False),
        train_transform=build_transform(transform_cfg, is_train=True),
        model_name=name, weights_id=f"magiclens-pkl:sha256:{file_sha256(path)}", transform_name="magiclens",
        image_size=transform_cfg.image_size, embed_dim=int(cfg["embed_dim"]), transform_config=transform_cfg,
        device=str(device), precision="fp32",
    )
    return MagicLensCheckpoint(fusion=fusion.to(device), backbone=backbone, sizes=sizes)
