"""Vision projector, published structure (docs/methods.md §E), against the published flax code.

Goldens in tests/goldens/projector/ (see tests/goldens/README.md): the published ResidualMLP
(VisionProjector_ZSCIR, ``ResidualMLP(expansion_rate=16, n=4)``) run at D=32 on fixed inputs,
once with random parameters (non-zero biases) and once with the fork's own ``PRNGKey(0)`` init.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from irkit.errors import InputError
from irkit.methods.fusion import MagicLensMethod
from irkit.models.flax_msgpack import read_flax_msgpack, read_flax_msgpack_bytes
from irkit.models.fusion import FusionConfig, MagicLensFusion
from irkit.models.projector import (VisionProjector, load_flax_projector_params, published_prngkey0_params,
                                    published_prngkey0_projector)

GOLDENS = Path(__file__).parent / "goldens" / "projector"
RANDOM = GOLDENS / "residual_mlp_random_d32.msgpack"
PRNGKEY0 = GOLDENS / "residual_mlp_prngkey0_d32.msgpack"
IO = np.load(GOLDENS / "residual_mlp_io_d32.npz", allow_pickle=False)
HAS_JAX = importlib.util.find_spec("jax") is not None and importlib.util.find_spec("flax") is not None


def _published(params_file: Path) -> VisionProjector:
    projector = VisionProjector(32, style="published", zero_init=False).eval()
    return load_flax_projector_params(projector, read_flax_msgpack(params_file), str(params_file))


def _numpy_residual_mlp(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """A second formula, in float64 numpy: x + MLP4(MLP3(MLP2(MLP1(x)))), tanh GELU."""
    def gelu_tanh(v):
        return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    h = x.astype(np.float64)
    for i in range(4):
        p = f"params/MLP_{i}/"
        h = gelu_tanh(h @ params[p + "Dense_0/kernel"] + params[p + "Dense_0/bias"])
        h = h @ params[p + "Dense_1/kernel"] + params[p + "Dense_1/bias"]
    return x + h


def test_flax_msgpack_reader_gives_the_published_tree():
    params = read_flax_msgpack(RANDOM)
    assert sorted(params) == sorted(f"params/MLP_{i}/Dense_{j}/{leaf}" for i in range(4) for j in (0, 1)
                                    for leaf in ("kernel", "bias"))
    assert params["params/MLP_0/Dense_0/kernel"].shape == (32, 512)
    assert params["params/MLP_3/Dense_1/kernel"].shape == (512, 32)
    assert params["params/MLP_2/Dense_0/bias"].dtype == np.float32
    # The numpy formula on these params reproduces the published outputs (reader + golden agree).
    np.testing.assert_allclose(_numpy_residual_mlp(params, IO["inputs"]), IO["outputs_random"], rtol=1e-5, atol=1e-5)


def test_published_projector_equals_the_published_residual_mlp():
    projector = _published(RANDOM)
    x = torch.from_numpy(IO["inputs"])
    with torch.no_grad():
        out = projector(x).numpy()
    assert np.abs(out - IO["outputs_random"]).max() <= 1e-5
    # The irkit structure (a residual per block, exact GELU) on the same weights is NOT the published one.
    irkit = VisionProjector(32, style="irkit").eval()
    with torch.no_grad():
        for i, (block, mlp) in enumerate(zip(irkit.blocks, projector.mlps)):
            block.mlp.fc1.load_state_dict(mlp.fc1.state_dict())
            block.mlp.fc2.load_state_dict(mlp.fc2.state_dict())
        assert np.abs(irkit(x).numpy() - IO["outputs_random"]).max() > 1e-2


def test_prngkey0_golden_loads_and_matches_the_fork_outputs():
    projector = _published(PRNGKEY0)
    with torch.no_grad():
        out = projector(torch.from_numpy(IO["inputs"])).numpy()
    assert np.abs(out - IO["outputs_prngkey0"]).max() <= 1e-5
    params = read_flax_msgpack(PRNGKEY0)
    # Flax's init: zero biases, LeCun-normal kernels (truncated normal, std 1/sqrt(fan_in)).
    assert all(not v.any() for k, v in params.items() if k.endswith("bias"))
    kernel = params["params/MLP_0/Dense_0/kernel"]
    assert abs(kernel.std() - 1 / math.sqrt(32)) < 0.1 / math.sqrt(32)
    assert np.abs(kernel).max() <= 2 / math.sqrt(32) / 0.8796256 + 1e-6


def test_published_dropout_acts_in_training_only():
    projector = _published(RANDOM)
    x = torch.from_numpy(IO["inputs"])
    projector.train()
    torch.manual_seed(0)
    out = projector(x)
    dropped = out == 0
    assert 0.3 < dropped.float().mean() < 0.7  # rate 0.5, around the residual sum
    expected = torch.from_numpy(IO["outputs_random"]) * 2  # inverted dropout scales kept values by 1/(1-0.5)
    torch.testing.assert_close(out[~dropped], expected[~dropped], rtol=1e-5, atol=1e-5)


def test_published_identity_start_and_flax_init():
    torch.manual_seed(0)
    projector = VisionProjector(32, style="published", zero_init=True).eval()
    x = torch.from_numpy(IO["inputs"])
    torch.testing.assert_close(projector(x), x)
    assert projector.mlps[-1].fc2.weight.abs().sum() == 0
    assert projector.mlps[0].fc2.weight.abs().sum() > 0
    assert all(not m.fc1.bias.any() for m in projector.mlps)  # flax: zero biases
    weight = projector.mlps[0].fc1.weight  # [16D, D]: LeCun normal over fan_in = D
    assert abs(weight.std().item() - 1 / math.sqrt(32)) < 0.1 / math.sqrt(32)
    # One step of training moves the output off the identity (the zero layer gets a gradient).
    optimiser = torch.optim.SGD(projector.parameters(), lr=0.1)
    (projector(x) - 1).pow(2).sum().backward()
    assert projector.mlps[-1].fc2.weight.grad.abs().sum() > 0
    optimiser.step()
    assert not torch.allclose(projector(x), x)


def test_wrong_or_truncated_projector_files_are_one_clear_line(tmp_path):
    data = RANDOM.read_bytes()
    truncated = tmp_path / "truncated.msgpack"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.msgpack") as info:
        read_flax_msgpack(truncated)
    assert "\n" not in str(info.value)
    params = read_flax_msgpack(RANDOM)
    del params["params/MLP_2/Dense_1/bias"]
    with pytest.raises(InputError, match="missing leaf 'MLP_2/Dense_1/bias'"):
        load_flax_projector_params(VisionProjector(32, style="published"), params, "p.msgpack")
    with pytest.raises(InputError, match=r"leaf 'MLP_0/Dense_0/kernel' has shape \[32, 512\]; expected \[64, 1024\]"):
        load_flax_projector_params(VisionProjector(64, style="published"), read_flax_msgpack(RANDOM), "p.msgpack")
    with pytest.raises(InputError, match="style 'published'"):
        load_flax_projector_params(VisionProjector(32), read_flax_msgpack(RANDOM))
    unknown_ext = msgpack.packb({"a": msgpack.ExtType(7, b"x")})
    with pytest.raises(InputError, match="unknown msgpack extension type 7"):
        read_flax_msgpack_bytes(unknown_ext, "x.msgpack")


def test_old_fusion_configs_load_as_the_irkit_projector():
    old = {"embed_dim": 16, "depth": 4, "num_heads": 2, "mlp_ratio": 4.0, "dropout": 0.0, "projector": True,
           "projector_depth": 4, "projector_ratio": 16, "projector_zero_init": True, "projector_trainable": True,
           "init_temperature": 0.07}  # a config saved before projector_style existed
    config = FusionConfig.from_dict(old)
    assert config.projector_style == "irkit"
    assert len(MagicLensFusion(config).projector.blocks) == 4
    published = MagicLensFusion(FusionConfig(embed_dim=16, num_heads=2, projector=True, projector_style="published"))
    assert sorted({k.split(".")[1] for k in published.state_dict() if k.startswith("projector.")}) == ["mlps"]
    with pytest.raises(InputError, match="projector style"):
        MagicLensFusion(FusionConfig(embed_dim=16, num_heads=2, projector=True, projector_style="nope"))


def test_method_option_loads_a_published_projector_file():
    model = MagicLensFusion(FusionConfig(embed_dim=32, num_heads=4)).eval()
    method = MagicLensMethod(model=model, projector=str(RANDOM))
    x = torch.from_numpy(IO["inputs"])
    with torch.no_grad():
        torch.testing.assert_close(method.model.project_images(x), torch.from_numpy(IO["outputs_random"]),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="projector='nope'"):
        MagicLensMethod(model=model, projector="nope")


@pytest.mark.skipif(HAS_JAX, reason="jax is installed: the no-jax message does not apply")
def test_prngkey0_mode_without_jax_says_to_install_the_extra():
    with pytest.raises(InputError, match=r"pip install 'irkit\[jax\]'") as info:
        published_prngkey0_params(32)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not HAS_JAX, reason="optional extra irkit[jax] (jax + flax) not installed; the committed "
                                        "PRNGKey(0) golden is checked by test_prngkey0_golden_loads_... instead")
def test_prngkey0_mode_with_jax_recreates_the_fork_projector():
    golden = {k[len("params/"):]: v for k, v in read_flax_msgpack(PRNGKEY0).items()}
    mine = published_prngkey0_params(32)
    assert sorted(mine) == sorted(golden)
    for name, value in golden.items():  # bit-equal with jax 0.4.34; newer jax differs by <= 1 ulp on a few values
        np.testing.assert_allclose(mine[name], value, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        out = published_prngkey0_projector(32)(torch.from_numpy(IO["inputs"])).numpy()
    assert np.abs(out - IO["outputs_prngkey0"]).max() <= 1e-5
