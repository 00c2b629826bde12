"""Every published CIR artefact format loads unchanged, and a malicious pickle inside any of
them never runs (docs/formats.md §8).

Files are written here exactly as the published code writes them (torch.save / pickle.dump of
the same objects), from modules built independently of irkit.
"""

from __future__ import annotations

import pathlib
import pickle

import pytest
import torch
from torch import nn

from irkit.errors import InputError
from irkit.methods.searle import (OTITokens, SearleOTI, load_published_oti_folder, read_image_names_pickle,
                                  train_phi_searle)
from irkit.models.combiner import Combiner, CombinerConfig, load_published_combiner
from irkit.models.phi import Phi

D, W = 16, 12


class MarkerPayload:
    """Unpickling this creates ``path``: evidence that pickle code ran."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _published_phi(d: int, w: int) -> nn.Sequential:
    """SEARLE / LinCIR phi: Linear(d,4d) GELU Dropout Linear(4d,4d) GELU Dropout Linear(4d,w)."""
    return nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(0.5), nn.Linear(4 * d, 4 * d), nn.GELU(),
                         nn.Dropout(0.5), nn.Linear(4 * d, w)).eval()


def _phi_state(reference: nn.Sequential) -> dict[str, torch.Tensor]:
    return {f"layers.{k}": v for k, v in reference.state_dict().items()}


def _assert_one_line_refusal(info: pytest.ExceptionInfo, path: pathlib.Path, marker: pathlib.Path) -> None:
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert not marker.exists()


# --------------------------------------------------------------------------- phi


@pytest.mark.parametrize("layout", ["searle-hub", "searle-training", "lincir"])
def test_published_phi_files_load(tmp_path, layout):
    torch.manual_seed(0)
    reference = _published_phi(D, W)
    path = tmp_path / "phi.pt"
    if layout == "searle-hub":  # SEARLE / SEARLE-XL release: {"Phi": state_dict}
        torch.save({"Phi": _phi_state(reference)}, path)
    elif layout == "searle-training":  # SEARLE train_phi.save_checkpoint, with a pathlib path inside
        optimiser = torch.optim.AdamW(reference.parameters())
        torch.save({"epoch": 3, "Phi": _phi_state(reference), "optimizer": optimiser.state_dict(),
                    "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                               "growth_interval": 2000, "_growth_tracker": 0},
                    "training_path": pathlib.Path("/data/phi_models/exp")}, path)
    else:  # LinCIR train_phi.save_phi: {"epoch", "Phi"}
        torch.save({"epoch": 11, "Phi": _phi_state(reference)}, path)
    phi = Phi.from_checkpoint(path, D, W)
    x = torch.randn(4, D)
    with torch.no_grad():
        assert torch.equal(phi(x), reference(x))


def test_malicious_phi_file_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "phi.pt"
    torch.save({"epoch": 1, "Phi": _phi_state(_published_phi(D, W)), "training_path": MarkerPayload(marker)}, path)
    with pytest.raises(InputError, match="refused to unpickle the global") as info:
        Phi.from_checkpoint(path, D, W)
    _assert_one_line_refusal(info, path, marker)


# --------------------------------------------------------------------------- SEARLE OTI folders


def _write_published_oti(folder: pathlib.Path, names: list[str], width: int = W) -> tuple[torch.Tensor, torch.Tensor]:
    """As SEARLE's oti_inversion.save_experiment writes it."""
    folder.mkdir(parents=True)
    ema, last = torch.randn(len(names), width), torch.randn(len(names), width)
    with open(folder / "image_names.pkl", "wb+") as f:
        pickle.dump(names, f)
    torch.save(last, folder / "oti_pseudo_tokens.pt")
    torch.save(ema, folder / "ema_oti_pseudo_tokens.pt")
    (folder / "hyperparameters.json").write_text('{"clip_model_name": "ViT-B/32", "top_k": 15}')
    return ema, last


def test_published_oti_folder_loads(tmp_path):
    names = ["dev-190-0-img0", "dev-2-1-img1", "train-10-3-img0"]
    ema, last = _write_published_oti(tmp_path / "oti", names)
    tokens = OTITokens.load(tmp_path / "oti")  # the same entry point as `--method-checkpoint <folder>`
    assert tokens.ids == names
    assert torch.equal(tokens.tokens, ema) and torch.equal(tokens.last_tokens, last)
    assert tokens.params["hyperparameters"]["clip_model_name"] == "ViT-B/32"
    assert torch.equal(tokens.lookup(["train-10-3-img0", "dev-190-0-img0"]), ema[[2, 0]])
    # phi distillation needs image embeddings, which the published folder does not hold.
    with pytest.raises(InputError, match="holds no image embeddings"):
        train_phi_searle(None, tokens, None)


def test_published_oti_folder_through_the_searle_oti_method(tmp_path):
    from irkit.models import create_model
    from irkit.models.pseudo_token import token_width

    loaded = create_model("irkit-tiny", seed=0, random_init=True)
    width = token_width(loaded.model)
    ema, _ = _write_published_oti(tmp_path / "oti", ["r0", "r1"], width)
    ctx = type("Ctx", (), {"loaded": loaded})()
    method = SearleOTI(checkpoint=tmp_path / "oti")  # = --method searle-oti --method-checkpoint <folder>
    assert torch.equal(method.reference_tokens(ctx, None, ["r1"]), ema[[1]])
    _write_published_oti(tmp_path / "wide", ["r0"], width + 4)
    with pytest.raises(InputError, match=f"OTI tokens are {width + 4} wide"):
        SearleOTI(checkpoint=tmp_path / "wide").reference_tokens(ctx, None, ["r0"])


def test_published_oti_folder_errors_are_one_line(tmp_path):
    _write_published_oti(tmp_path / "short", ["a", "b"])
    torch.save(torch.randn(3, W), tmp_path / "short" / "ema_oti_pseudo_tokens.pt")
    with pytest.raises(InputError, match="3 token rows but 2 image names"):
        load_published_oti_folder(tmp_path / "short")
    _write_published_oti(tmp_path / "ints", ["a"])
    with open(tmp_path / "ints" / "image_names.pkl", "wb") as f:
        pickle.dump(["a", 3], f)
    with pytest.raises(InputError, match="found a list holding a int"):
        read_image_names_pickle(tmp_path / "ints" / "image_names.pkl")
    (tmp_path / "missing").mkdir()
    torch.save(torch.randn(1, W), tmp_path / "missing" / "ema_oti_pseudo_tokens.pt")
    with pytest.raises(InputError, match="image_names.pkl is missing"):
        OTITokens.load(tmp_path / "missing")


def test_malicious_oti_names_never_run(tmp_path):
    folder = tmp_path / "oti"
    _write_published_oti(folder, ["a", "b"])
    marker = tmp_path / "ran"
    names_file = folder / "image_names.pkl"
    with open(names_file, "wb") as f:
        pickle.dump(["a", MarkerPayload(marker)], f)
    with pytest.raises(InputError, match="refused global") as info:
        OTITokens.load(folder)
    _assert_one_line_refusal(info, names_file, marker)
    # Every pickle protocol, and a payload at the top level.
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with open(names_file, "wb") as f:
            pickle.dump(MarkerPayload(marker), f, protocol=protocol)
        with pytest.raises(InputError, match="refused global"):
            read_image_names_pickle(names_file)
        assert not marker.exists()


def test_malicious_oti_token_file_never_runs(tmp_path):
    folder = tmp_path / "oti"
    _write_published_oti(folder, ["a", "b"])
    marker = tmp_path / "ran"
    torch.save({"tokens": torch.randn(2, W), "x": MarkerPayload(marker)}, folder / "ema_oti_pseudo_tokens.pt")
    with pytest.raises(InputError, match="refused to unpickle the global") as info:
        OTITokens.load(folder)
    _assert_one_line_refusal(info, folder / "ema_oti_pseudo_tokens.pt", marker)


# --------------------------------------------------------------------------- CLIP4Cir Combiner


class PublishedCombiner(nn.Module):
    """The CLIP4Cir Combiner's parameter layout, written from methods.md §F (not irkit's class)."""

    def __init__(self, d: int, p: int, h: int) -> None:
        super().__init__()
        self.text_projection_layer = nn.Linear(d, p)
        self.image_projection_layer = nn.Linear(d, p)
        self.combiner_layer = nn.Linear(2 * p, h)
        self.output_layer = nn.Linear(h, d)
        self.dynamic_scalar = nn.Sequential(nn.Linear(2 * p, h), nn.ReLU(), nn.Dropout(0.5), nn.Linear(h, 1),
                                            nn.Sigmoid())

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        raw = torch.cat([torch.relu(self.text_projection_layer(text)), torch.relu(self.image_projection_layer(image))], -1)
        lam = self.dynamic_scalar(raw)
        out = self.output_layer(torch.relu(self.combiner_layer(raw))) + lam * text + (1 - lam) * image
        return out / out.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("wrapped", [True, False])
def test_published_combiner_file_loads(tmp_path, wrapped):
    torch.manual_seed(0)
    reference = PublishedCombiner(8, 20, 24).eval()
    path = tmp_path / "combiner.pt"
    torch.save({"epoch": 5, "Combiner": reference.state_dict()} if wrapped else reference.state_dict(), path)
    model = load_published_combiner(path)
    assert isinstance(model, Combiner) and not model.training
    assert (model.config.clip_feature_dim, model.config.projection_dim, model.config.hidden_dim) == (8, 20, 24)
    image, text = torch.randn(3, 8), torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.combine_features(image, text), reference.combine(image, text))


def test_combiner_errors_and_malicious_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"epoch": 1, "CLIP": {"visual.proj": torch.zeros(2)}}, path)
    with pytest.raises(InputError, match="not a CLIP4Cir Combiner checkpoint"):
        load_published_combiner(path)
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "Combiner": Combiner(CombinerConfig(4, 8, 8)).state_dict(), "x": MarkerPayload(marker)},
               evil)
    with pytest.raises(InputError, match="refused to unpickle the global") as info:
        load_published_combiner(evil)
    _assert_one_line_refusal(info, evil, marker)
