"""irkit.models: create irkit-tiny, save/reload checkpoints in every accepted format, clear errors."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

import irkit.models.factory as factory
from irkit.errors import InputError
from irkit.models import CONFIGS_DIR, create_model, read_weights_metadata, save_weights

TINY_CONFIG = json.loads((CONFIGS_DIR / "irkit-tiny.json").read_text())
EMBED_DIM = TINY_CONFIG["embed_dim"]
IMAGE_SIZE = TINY_CONFIG["vision_cfg"]["image_size"]


@pytest.fixture(scope="module")
def source_model():
    """irkit-tiny with seed-1 weights: the weights every checkpoint test saves and reloads."""
    return create_model("irkit-tiny", seed=1, random_init=True)


@pytest.fixture(scope="module")
def probe_pixels() -> torch.Tensor:
    return torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(7))


def image_features(loaded, pixels: torch.Tensor) -> torch.Tensor:
    return loaded.encode_images(pixels)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_create_irkit_tiny_properties(source_model, probe_pixels):
    assert "irkit-tiny" in open_clip.list_models()
    assert source_model.model_name == "irkit-tiny"
    assert source_model.weights_id == "random-init:1"
    assert (source_model.embed_dim, source_model.image_size) == (EMBED_DIM, IMAGE_SIZE)
    assert source_model.transform_name == "square" and not source_model.model.training
    features = image_features(source_model, probe_pixels)
    assert features.shape == (3, EMBED_DIM) and features.dtype == torch.float32
    assert torch.allclose(features.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_encoded_images_can_feed_a_trained_module(source_model, probe_pixels):
    features = source_model.encode_images(probe_pixels)  # e.g. SEARLE's phi takes these as input
    head = torch.nn.Linear(EMBED_DIM, 4)
    head(features).sum().backward()
    assert head.weight.grad is not None and not features.requires_grad


def test_random_init_is_seeded(source_model, probe_pixels):
    same = create_model("irkit-tiny", seed=1, random_init=True)
    other = create_model("irkit-tiny", seed=2, random_init=True)
    assert torch.equal(image_features(same, probe_pixels), image_features(source_model, probe_pixels))
    assert not torch.allclose(image_features(other, probe_pixels), image_features(source_model, probe_pixels))


def test_encode_texts_matches_manual_text_tower(source_model):
    texts = ["a white sedan", "a person with a hat", "a red truck"]
    ours = source_model.encode_texts(texts, batch_size=2)
    tokens = open_clip.get_tokenizer("irkit-tiny")(texts)
    with torch.no_grad():
        manual = F.normalize(source_model.model.encode_text(tokens), dim=-1).numpy()
    assert ours.shape == (3, EMBED_DIM) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, manual, atol=1e-5)


def _state_dict(loaded) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def test_open_clip_train_checkpoint_with_module_prefix_reloads(tmp_path, source_model, probe_pixels):
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run-x",
                "state_dict": {f"module.{k}": v for k, v in _state_dict(source_model).items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}}, path)
    reloaded = create_model("irkit-tiny", checkpoint=path)  # default seed 0: differs unless loaded
    assert reloaded.weights_id == f"sha256:{sha256_of(path)}"
    assert torch.equal(image_features(reloaded, probe_pixels), image_features(source_model, probe_pixels))


def test_raw_state_dict_and_pretrained_path_reload(tmp_path, source_model, probe_pixels):
    path = tmp_path / "weights.pth"
    torch.save(_state_dict(source_model), path)
    via_pretrained = create_model("irkit-tiny", pretrained=str(path))
    assert via_pretrained.weights_id == f"sha256:{sha256_of(path)}"
    assert torch.equal(image_features(via_pretrained, probe_pixels), image_features(source_model, probe_pixels))


def test_safetensors_roundtrip_fp32_and_fp16(tmp_path, source_model, probe_pixels):
    full = save_weights(source_model, tmp_path / "tiny.safetensors")
    half = save_weights(source_model, tmp_path / "tiny-fp16.safetensors", dtype="float16")
    assert read_weights_metadata(full)["model_name"] == "irkit-tiny"
    assert read_weights_metadata(half)["dtype"] == "float16"
    assert half.stat().st_size < 0.55 * full.stat().st_size
    assert half.stat().st_size <= 25 * 2**20
    expected = image_features(source_model, probe_pixels)
    assert torch.equal(image_features(create_model(checkpoint=full), probe_pixels), expected)
    from_half = image_features(create_model(checkpoint=half), probe_pixels)
    assert torch.allclose(from_half, expected, atol=2e-2)
    assert (from_half * expected).sum(-1).min() > 0.999


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(InputError) as info:
        create_model("irkit-tinny")
    message = str(info.value)
    assert "unknown model name 'irkit-tinny'" in message
    assert "irkit-tiny" in message.split("Close matches:")[1]
    assert "open_clip.list_models()" in message


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(InputError, match="checkpoint file not found") as info:
        create_model(checkpoint=tmp_path / "nope.pt")
    assert str(tmp_path / "nope.pt") in str(info.value)


def test_wrong_shape_checkpoint_names_key_and_shapes(tmp_path, source_model):
    state = _state_dict(source_model)
    model_shape = tuple(state["visual.conv1.weight"].shape)
    bad_shape = (model_shape[0] // 2, *model_shape[1:])  # half the output channels
    state["visual.conv1.weight"] = torch.zeros(bad_shape)
    del state["ln_final.bias"]
    path = tmp_path / "bad.pt"
    torch.save({"epoch": 1, "state_dict": state}, path)
    with pytest.raises(InputError) as info:
        create_model(checkpoint=path)
    message = str(info.value)
    assert "does not match model 'irkit-tiny'" in message
    assert f"visual.conv1.weight: checkpoint {bad_shape} vs model {model_shape}" in message
    assert "missing keys [1]: ln_final.bias" in message
    assert str(path) in message


def test_checkpoint_with_pickled_objects_is_refused(tmp_path, source_model):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": _state_dict(source_model), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(InputError, match="weights_only=True"):
        create_model(checkpoint=path)


def test_garbage_checkpoint_files_are_refused(tmp_path):
    for name in ("junk.pt", "junk.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"not a checkpoint at all")
        with pytest.raises(InputError, match="not a readable"):
            create_model(checkpoint=path)


def test_unknown_pretrained_tag_lists_tags():
    with pytest.raises(InputError, match="neither a pretrained tag of model 'RN50'.*openai"):
        create_model("RN50", pretrained="no-such-tag")


def test_pretrained_tag_that_cannot_be_downloaded(monkeypatch):
    def offline_create_model(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': cannot reach the hub")

    monkeypatch.setattr(factory, "_hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(open_clip, "create_model", offline_create_model)
    with pytest.raises(InputError) as info:
        create_model("RN50", pretrained="openai")
    message = str(info.value)
    assert "tag 'openai' could not be obtained" in message
    assert "No network" in message and "--checkpoint" in message


def test_hub_access_switches_hf_offline_mode_when_unreachable(monkeypatch):
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    monkeypatch.setattr(factory, "_hub_reachable", lambda timeout_s=3.0: False)
    with factory._hub_access():
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE == before


def test_other_argument_errors(tmp_path):
    with pytest.raises(InputError, match="unknown transform"):
        create_model(transform="letterbox", random_init=True)
    with pytest.raises(InputError, match="unknown precision"):
        create_model(precision="fp8", random_init=True)
    with pytest.raises(InputError, match="not both"):
        create_model(pretrained="openai", checkpoint=tmp_path / "x.pt")


# one test per config in irkit's registry (timm-style): every registered model is exercised


@pytest.mark.parametrize("config_path", sorted(CONFIGS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_irkit_config_builds_encodes_and_trains(config_path: Path) -> None:
    """Sizes from the JSON itself (not from the factory); unit-norm embeddings of both towers; one
    contrastive training step gives a finite loss and changes the image tower's weights."""
    config = json.loads(config_path.read_text())
    name = config_path.stem
    assert name in open_clip.list_models()
    loaded = create_model(name, random_init=True, seed=0)
    side = config["vision_cfg"]["image_size"]
    assert (loaded.embed_dim, loaded.image_size) == (config["embed_dim"], side)
    pixels = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(0))
    images = loaded.encode_images(pixels)
    texts = loaded.encode_text_tokens(loaded.tokenizer(["a red car", "a person", "a white bus", "a bike"]))
    assert loaded.tokenizer(["x"]).shape == (1, config["text_cfg"]["context_length"])
    for features in (images, texts):
        assert features.shape == (4, config["embed_dim"])
        assert torch.allclose(features.norm(dim=-1), torch.ones(4), atol=1e-5)
    model = loaded.model.train()
    first_weight = next(model.visual.parameters())
    before = first_weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    image_features, text_features, logit_scale = model(pixels, loaded.tokenizer(["a", "b", "c", "d"]))[:3]
    loss = open_clip.ClipLoss()(image_features, text_features, logit_scale)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, first_weight)
