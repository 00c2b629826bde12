"""Published MagicLens checkpoints: golden outputs of the published code, leaf coverage of the
real base/large layouts, safe reading (no pickle code runs) and one-line errors.

The fixtures under tests/goldens/magiclens/ were written by the published MagicLens + scenic CLIP
code (tests/goldens/README.md says exactly how): a tiny model's checkpoint in the published
format, its inputs, its ``multimodal_embed_norm`` outputs, and the leaf trees of base / large.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from irkit.errors import InputError
from irkit.models.fusion import FusionConfig, MagicLensFusion
from irkit.models.magiclens_checkpoint import (
    PUBLISHED_CLIP_MODELS,
    MagicLensCLIP,
    expected_leaves,
    infer_sizes,
    load_magiclens_checkpoint,
    read_magiclens_params,
)

GOLDENS = Path(__file__).parent / "goldens" / "magiclens"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny_pkl(tmp_path_factory) -> Path:
    """The published-format tiny checkpoint (stored gzipped; the loader reads the plain .pkl)."""
    path = tmp_path_factory.mktemp("magiclens") / "magic_lens_clip_tiny.pkl"
    with gzip.open(GOLDENS / "magiclens_tiny.pkl.gz") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDENS / "magiclens_tiny_io.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def converted(tiny_pkl):
    return load_magiclens_checkpoint(tiny_pkl)


def _encode(checkpoint, golden, fusion=None):
    """Published-pipeline outputs through irkit: (pixels, image embeds, text embeds, queries, targets)."""
    backbone, fusion = checkpoint.backbone, fusion or checkpoint.fusion
    texts = [str(t) for t in golden["texts"]]
    with torch.no_grad():
        text = backbone.model.encode_text(backbone.tokenizer(texts))
        pixels = [backbone.preprocess(Image.fromarray(golden[f"image_{i}"])) for i in range(3)]
        image = backbone.model.encode_image(torch.stack(pixels))
        queries = torch.stack([fusion(image[i:i + 1].expand(len(texts), -1), text) for i in range(3)])
        targets = fusion.encode_targets(image, text[texts.index("")])
    return pixels, image, text, queries, targets


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_tiny_model_equals_the_published_code(converted, golden):
    texts = [str(t) for t in golden["texts"]]
    assert "" in texts and any("!" in t for t in texts)
    # The tokenizer gives the published tokenizer's ids (a '!' inside '!~' is id 0).
    ids = converted.backbone.tokenizer(texts).numpy()
    np.testing.assert_array_equal(ids, golden["token_ids"])
    assert (ids[:, 1:] == 0).any(axis=1).all() and (ids[3, 1:12] == 0).any()

    pixels, image, text, queries, targets = _encode(converted, golden)
    for i, p in enumerate(pixels):  # largest centred square crop, antialiased resize, CLIP norm
        assert _max_diff(p.permute(1, 2, 0), golden[f"pixels_{i}"]) <= TOLERANCE
    assert _max_diff(image, golden["clip_image_embed"]) <= TOLERANCE
    assert _max_diff(text, golden["clip_text_embed"]) <= TOLERANCE
    assert _max_diff(queries, golden["query_embed_norm"]) <= TOLERANCE  # image + text queries
    assert _max_diff(targets, golden["target_embed_norm"]) <= TOLERANCE  # empty-instruction targets


def test_the_golden_detects_each_published_detail(converted, golden):
    """Without the encoder's logit cap, or with open_clip's causal-only text mask, irkit would
    not match: the golden comparison above can fail on each."""
    uncapped = MagicLensFusion(FusionConfig(**{**converted.fusion.config.to_dict(), "encoder_logit_cap": None}))
    uncapped.load_state_dict(converted.fusion.state_dict())
    uncapped.eval()
    *_, queries, _ = _encode(converted, golden, fusion=uncapped)
    assert _max_diff(queries, golden["query_embed_norm"]) > 10 * TOLERANCE

    causal = MagicLensCLIP(converted.backbone.model.clip, mask_zero_ids=False)
    with torch.no_grad():
        text = causal.encode_text(torch.from_numpy(golden["token_ids"]).long()).numpy()
    ids = golden["token_ids"]
    zero_inside = [(ids[row, 1:int(ids[row].argmax())] == 0).any() for row in range(len(ids))]
    assert any(zero_inside) and not all(zero_inside)
    for row, hidden_token in enumerate(zero_inside):  # texts without an id-0 token: identical
        diff = _max_diff(text[row], golden["clip_text_embed"][row])
        assert (diff > 10 * TOLERANCE) if hidden_token else (diff <= TOLERANCE), row


def _shape_only(shape) -> np.ndarray:
    """A float32 array of ``shape`` that allocates one value (stride 0 everywhere)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=tuple(shape), strides=(0,) * len(shape))


@pytest.mark.parametrize("size", ["base", "large"])
def test_every_leaf_of_the_real_sizes_maps_onto_open_clip_and_the_fusion_module(size):
    tree = json.loads((GOLDENS / f"magiclens_{size}_leaves.json").read_text())
    assert len(tree) == {"base": 474, "large": 666}[size]
    params = {name: _shape_only(shape) for name, (shape, _) in tree.items()}
    sizes = infer_sizes(params)
    assert sizes.published_size == size and sizes.clip_model_name == PUBLISHED_CLIP_MODELS[size]
    assert (sizes.embed_dim, sizes.num_heads, sizes.depth) == {"base": (512, 8, 4), "large": (768, 16, 4)}[size]
    leaves, targets = expected_leaves(sizes)
    assert {k: list(v) for k, v in leaves.items()} == {k: shape for k, (shape, _) in tree.items()}

    cfg = open_clip.get_model_config(PUBLISHED_CLIP_MODELS[size])
    with torch.device("meta"):
        clip = open_clip.CLIP(**cfg)
        fusion = MagicLensFusion(FusionConfig(embed_dim=sizes.embed_dim, num_heads=sizes.num_heads))
    wanted = {"clip": {k: tuple(v.shape) for k, v in clip.state_dict().items()},
              "fusion": {k: tuple(v.shape) for k, v in fusion.state_dict().items() if k != "logit_scale"}}
    made: dict[str, dict[str, tuple]] = {"clip": {}, "fusion": {}}
    for t in targets:
        made[t.module][t.key] = tuple(t.convert(*(params[s] for s in t.sources)).shape)
    assert made == wanted
    assert sum(np.prod(s, dtype=np.int64) for s, _ in tree.values()) == {"base": 166_433_025,
                                                                         "large": 465_417_665}[size]


# --------------------------------------------------------------------------- safe reading, one-line errors


class _RunsCode:
    """A pickle payload whose reduce would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from irkit.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """Tiny demo CIRR (10 val queries)."""
    from irkit.data.demo import generate_demo

    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, seed=0, scale="tiny", datasets=("cirr",), workers=1, progress=False)
    return root / "cirr"


def test_a_malicious_pickle_never_runs(tmp_path, demo_root, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "magic_lens_clip_base.pkl"
    evil.write_bytes(pickle.dumps(_RunsCode(marker)))
    # The file really runs code when unpickled the ordinary way (in another process) ...
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(evil)!r}, 'rb'))"], check=True)
    assert marker.exists()
    marker.unlink()
    # ... but irkit's loader refuses it with one line, and nothing runs,
    with pytest.raises(InputError) as err:
        read_magiclens_params(evil)
    message = str(err.value)
    assert "\n" not in message and str(evil) in message and "system" in message
    assert not marker.exists()
    # ... also through the method and the CLI (one line on stderr, non-zero exit).
    code, _, stderr = _cli(capsys, "cir", "eval", "--dataset", "cirr", "--root", demo_root, "--split", "val",
                           "--method", "magiclens", "--method-checkpoint", evil, "--random-init", "--num-workers", 0)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code != 0 and not marker.exists()
    assert len(lines) == 1 and "refers to Python code" in lines[0], stderr[-2000:]


def test_published_checkpoint_through_the_library_and_the_cli(tiny_pkl, converted, demo_root, tmp_path, capsys):
    from irkit.benchmarks.spec import benchmark_of
    from irkit.cir.context import CIRContext
    from irkit.cir.evaluate import load_cir_splits
    from irkit.cir.registry import create_method
    from irkit.models import create_model

    split = load_cir_splits("cirr", demo_root, "val")[0]
    # The context's backbone (irkit-tiny) is NOT what encodes: the checkpoint's own towers are.
    ctx = CIRContext(create_model("irkit-tiny", seed=0, random_init=True), cache_dir=tmp_path / "cache", num_workers=0)
    method = create_method("magiclens", checkpoint=tiny_pkl)
    queries = method.query_embeddings(ctx, split)
    gallery = method.gallery_embeddings(ctx, split)

    backbone, fusion = converted.backbone, converted.fusion
    texts = [benchmark_of(split).query_text(q) for q in split.queries]
    with torch.no_grad():
        def image_embeds(ids):
            pixels = torch.stack([backbone.preprocess(Image.open(split.image_path(i))) for i in ids])
            return backbone.model.encode_image(pixels)

        text = backbone.model.encode_text(backbone.tokenizer(texts))
        expected_q = fusion(image_embeds([q.reference for q in split.queries]), text)
        expected_g = fusion.encode_targets(image_embeds(split.gallery), backbone.model.encode_text(
            backbone.tokenizer([""]))[0])
    assert _max_diff(queries, expected_q) <= TOLERANCE and _max_diff(gallery, expected_g) <= TOLERANCE

    code, out, err = _cli(capsys, "cir", "eval", "--dataset", "cirr", "--root", demo_root, "--split", "val",
                          "--method", "magiclens", "--method-checkpoint", tiny_pkl, "--cache-dir", tmp_path / "cache",
                          "--num-workers", 0)
    assert code == 0, err[-2000:]
    metrics = json.loads(out)
    assert metrics["method"] == "magiclens" and 0 <= metrics["R@1"] <= metrics["R@10"] <= 1
    # No backbone weights given: the checkpoint's own towers are the context's backbone, and the
    # printed recall is the one of the embeddings checked above, ranked by the CIRR protocol.
    from irkit.cir.protocol import evaluate_embeddings

    expected = evaluate_embeddings(split, queries, gallery)
    assert metrics["R@1"] == pytest.approx(expected["R@1"] / 100, abs=1e-6)

    # The text-mask option: open_clip's causal mask, under another backbone identity (cache key).
    causal = create_method("magiclens", checkpoint=tiny_pkl, mask_zero_ids=False).published_backbone
    assert causal.model.mask_zero_ids is False and method.published_backbone.model.mask_zero_ids is True
    assert causal.model_name != method.published_backbone.model_name
    assert causal.weights_id == method.published_backbone.weights_id


def _repacked(tiny_pkl: Path, out: Path, edit) -> Path:
    """The tiny checkpoint with its msgpack tree edited (extensions kept as raw bytes)."""
    with open(tiny_pkl, "rb") as f:
        payload = pickle.load(f)  # our own fixture file: a bytes object
    tree = msgpack.unpackb(payload, ext_hook=lambda code, data: msgpack.ExtType(code, data), raw=False)
    edit(tree["params"])
    out.write_bytes(pickle.dumps(msgpack.packb(tree, use_bin_type=True)))
    return out


def test_truncated_or_wrong_files_name_the_first_bad_leaf(tiny_pkl, tmp_path):
    def drop_pooler_ln(params):
        del params["contrastive_multimodal_pooler"]["pool_attn_ln"]["scale"]

    missing = _repacked(tiny_pkl, tmp_path / "missing.pkl", drop_pooler_ln)
    with pytest.raises(InputError, match=r"missing leaf contrastive_multimodal_pooler/pool_attn_ln/scale "
                                         r"\(expected shape \[64\]\)") as err:
        load_magiclens_checkpoint(missing)
    assert "\n" not in str(err.value)

    def drop_last_text_layer(params):
        del params["clip"]["text"]["transformer"]["resblocks_1"]["mlp"]

    with pytest.raises(InputError, match=r"missing leaf clip/text/transformer/resblocks_1/mlp/c_fc/bias"):
        load_magiclens_checkpoint(_repacked(tiny_pkl, tmp_path / "missing2.pkl", drop_last_text_layer))

    def swap_shape(params):
        block = params["multimodal_encoder"]["x_layers_2"]["ff_layer"]
        block["ffn_layer1"]["bias"]["b"] = params["multimodal_encoder"]["x_layers_2"]["layer_norm"]["bias"]

    with pytest.raises(InputError, match=r"leaf multimodal_encoder/x_layers_2/ff_layer/ffn_layer1/bias/b has shape "
                                         r"\[64\], expected \[256\]"):
        load_magiclens_checkpoint(_repacked(tiny_pkl, tmp_path / "shape.pkl", swap_shape))

    raw = tiny_pkl.read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as err:
        load_magiclens_checkpoint(cut)
    assert "\n" not in str(err.value) and str(cut) in str(err.value)

    with open(tiny_pkl, "rb") as f:
        payload = pickle.load(f)
    short = tmp_path / "short_payload.pkl"
    short.write_bytes(pickle.dumps(payload[: len(payload) - 1000]))
    with pytest.raises(InputError, match="not a complete flax msgpack tree"):
        load_magiclens_checkpoint(short)

    not_bytes = tmp_path / "list.pkl"
    not_bytes.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(InputError, match="holds list"):
        load_magiclens_checkpoint(not_bytes)


def test_converted_fusion_uses_one_plus_scale_and_the_published_config(tiny_pkl, converted):
    params = read_magiclens_params(tiny_pkl)
    fusion = converted.fusion
    assert fusion.config.encoder_logit_cap == 50.0 and fusion.config.init == "published"
    np.testing.assert_allclose(fusion.blocks[1].norm2.weight.detach().numpy(),
                               1.0 + params["multimodal_encoder/x_layers_1/ff_layer/layer_norm/scale"])
    post = params["multimodal_encoder/x_layers_0/self_attention/post/w"]  # [D, H, D/H], D first
    np.testing.assert_array_equal(fusion.blocks[0].attn.proj.weight.detach().numpy(), post.reshape(64, 64))
    assert fusion.blocks[0].norm1.eps == 1e-6
