"""One precision setting (auto | fp32 | bf16 | fp16, irkit.precision) honoured everywhere.

(a) the ``auto`` rule (CPU flags, CUDA, ``IRKIT_PRECISION``), bad settings, ``/proc/cpuinfo``
parsing; (b) bf16 against fp32 on the tiny traffic demo with the committed demo-trained model;
(c) cache keys: a bf16 embedding never answers for an fp32 one; (d) the generic trainer under
bf16: one step, finite loss, float32 weights and optimizer state; (e) ``train clip --precision
bf16`` is open_clip_train's ``amp_bf16``.

bf16 is explicitly asked for here (``auto`` is pinned to fp32 for the suite, tests/conftest.py).
On a CPU without AMX / avx512_bf16 bf16 runs slower than fp32: these tests check correctness,
never speed.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from irkit import precision as precision_module
from irkit.errors import InputError
from irkit.precision import PRECISION_ENV, resolve_precision, resolve_training_precision

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "best-result-review" / "model_fp16.safetensors"


# ------------------------------------------------------------------------------ (a) the auto rule


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """``auto`` decided by the machine, not by the suite's IRKIT_PRECISION=fp32."""
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    return monkeypatch


@pytest.mark.parametrize("flags, expected", [(("amx_bf16",), "bf16"), (("avx512_bf16",), "bf16"),
                                             (("amx_bf16", "avx512_bf16"), "bf16"), ((), "fp32")])
def test_auto_on_cpu_follows_the_bf16_flags(no_env: pytest.MonkeyPatch, flags: tuple, expected: str) -> None:
    no_env.setattr(precision_module, "cpu_bf16_flags", lambda: flags)
    resolved = resolve_precision("auto", "cpu")
    assert (resolved.setting, resolved.name, resolved.device_type) == ("auto", expected, "cpu")
    assert all(flag in resolved.reason for flag in flags)
    assert resolved.describe().startswith(f"precision {expected} (auto: ")
    assert resolved.to_json() == {"setting": "auto", "name": expected, "device": "cpu", "reason": resolved.reason,
                                  "subnormals": "flushed"}
    assert (resolved.autocast_dtype is torch.bfloat16) == (expected == "bf16")


def test_explicit_settings_are_taken_as_asked(no_env: pytest.MonkeyPatch) -> None:
    no_env.setattr(precision_module, "cpu_bf16_flags", lambda: ("amx_bf16",))
    for setting in ("fp32", "bf16", "fp16"):
        assert resolve_precision(setting, "cpu").name == setting
    assert resolve_precision("fp32", "cpu").autocast_dtype is None
    with resolve_precision("bf16", "cpu").autocast():
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_auto_on_cuda_prefers_bf16_then_fp16(no_env: pytest.MonkeyPatch) -> None:
    no_env.setattr(torch.cuda, "is_available", lambda: True)
    no_env.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda").name == "bf16"
    no_env.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda:0").name == "fp16"
    assert resolve_precision("auto", "meta").name == "fp32"  # no rule for other devices


def test_environment_fixes_what_auto_means(no_env: pytest.MonkeyPatch) -> None:
    no_env.setattr(precision_module, "cpu_bf16_flags", lambda: ())
    no_env.setenv(PRECISION_ENV, "bf16")
    resolved = resolve_precision("auto", "cpu")
    assert resolved.name == "bf16" and PRECISION_ENV in resolved.reason
    assert resolve_precision("fp32", "cpu").name == "fp32"  # an explicit setting is not overridden
    no_env.setattr(precision_module, "cpu_bf16_flags", lambda: ("amx_bf16",))
    no_env.setenv(PRECISION_ENV, "fp32")
    assert resolve_precision("auto", "cpu").name == "fp32"
    no_env.setenv(PRECISION_ENV, "fp8")
    with pytest.raises(InputError, match=f"{PRECISION_ENV}='fp8' is not a precision"):
        resolve_precision("auto", "cpu")


def test_unknown_setting_is_one_clear_error() -> None:
    with pytest.raises(InputError, match=r"unknown precision 'fp8' \(expected one of: auto, fp32, bf16, fp16\)"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(InputError, match="unknown precision 'pure_bf16'"):
        resolve_precision("pure_bf16", "cpu")  # weight casting is for loaded models only
    assert resolve_precision("pure_bf16", "cpu", allow_pure=True).name == "pure_bf16"


def test_training_precision_keeps_trained_weights_float32() -> None:
    trained = resolve_training_precision("pure_bf16", "cpu")
    assert trained.name == "bf16" and trained.weights_dtype == torch.float32
    assert resolve_training_precision("fp16", "cpu").name == "fp16"


def test_cli_refuses_an_unknown_precision_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from irkit.cli import main as cli_main

    with pytest.raises(SystemExit) as stop:
        cli_main(["cir", "eval", "--dataset", "cirr", "--root", str(tmp_path), "--method", "image-only",
                  "--precision", "fp8"])
    assert stop.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
    # a bad IRKIT_PRECISION reaches the first resolution: one line, exit 2, before anything is written
    monkeypatch.setenv(PRECISION_ENV, "fp8")
    code = cli_main(["train", "clip", "--train-csv", str(tmp_path / "none.csv"), "--log-dir", str(tmp_path / "log")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "IRKIT_PRECISION='fp8' is not a precision" in err[0], err
    assert not (tmp_path / "log").exists()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    read = precision_module.cpu_bf16_flags.__wrapped__  # the lru_cache'd function itself
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\n"
                       "flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert read(cpuinfo) == ("amx_bf16", "avx512_bf16")  # the first CPU's flags, in CPU_BF16_FLAGS order
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512bw avx512_vnni\n")
    assert read(cpuinfo) == ()  # AVX-512 alone is not bf16 arithmetic
    cpuinfo.write_text("processor\t: 0\n")
    assert read(cpuinfo) == ()
    assert read(tmp_path / "missing") == ()


def test_clip_training_precision_names() -> None:
    from irkit.cli.common import MODEL_PRECISIONS, PRECISION_SETTINGS
    from irkit.cli.train import CLIP_PRECISIONS
    from irkit.precision import MODEL_PRECISION_SETTINGS
    from irkit.train.clip import OPEN_CLIP_TRAIN_PRECISIONS, clip_precision

    assert tuple(PRECISION_SETTINGS) == precision_module.PRECISION_SETTINGS
    assert tuple(MODEL_PRECISIONS) == MODEL_PRECISION_SETTINGS
    assert set(CLIP_PRECISIONS) == set(precision_module.PRECISION_SETTINGS) | set(OPEN_CLIP_TRAIN_PRECISIONS)
    assert CLIP_PRECISIONS[0] == "auto"
    expected = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp", "amp": "amp", "amp_bf16": "amp_bf16",
                "amp_bfloat16": "amp_bf16", "pure_bf16": "pure_bf16", "pure_fp16": "pure_fp16"}
    assert {name: clip_precision(name).open_clip_train_precision() for name in expected} == expected
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        clip_precision("fp8")


# ------------------------------------------------------------------------------ (b) bf16 against fp32


@pytest.fixture(scope="module")
def demo_traffic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from irkit.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, seed=0, scale="tiny", datasets="traffic", workers=1, progress=False)
    return out / "traffic"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def test_bf16_stays_close_to_fp32_on_the_tiny_traffic_demo(demo_traffic: Path) -> None:
    """The demo-trained irkit-tiny (best-result-review) on the tiny demo's test split (40 gallery
    images, 7 queries), encoded in fp32 and in bf16 autocast. Measured on an AVX-512 CPU without
    AMX: cosine of each embedding pair >= 0.99976 (images) / 0.999995 (texts), top-10 overlap 1.0,
    official mAP@10 0.9289 in both (difference 0). Bounds: cosine > 0.995, mean top-10 overlap
    >= 0.8, mAP@10 difference <= 0.05."""
    from irkit.benchmarks.traffic import evaluate_traffic_submission
    from irkit.data.traffic import load_traffic
    from irkit.embeddings import encode_image_files
    from irkit.models import create_model
    from irkit.traffic.inference import infer_traffic

    split = load_traffic(demo_traffic, "test")
    paths = [split.image_dir / name for name in split.gallery]
    encoded, maps = {}, {}
    for name in ("fp32", "bf16"):
        loaded = create_model("irkit-tiny", checkpoint=DEMO_MODEL, precision=name)
        assert loaded.precision == name
        assert all(p.dtype == torch.float32 for p in loaded.model.parameters())  # autocast, not cast weights
        encoded[name] = (encode_image_files(loaded, paths, batch_size=16, num_workers=0),
                         loaded.encode_texts(list(split.queries)))
        submission = infer_traffic(split, loaded, prompt="suffix").submission()
        maps[name] = evaluate_traffic_submission(submission, split.ground_truth, queries=split.queries)
    (images32, texts32), (images16, texts16) = encoded["fp32"], encoded["bf16"]
    assert images32.dtype == images16.dtype == np.float32
    assert not np.array_equal(images32, images16)  # bf16 really ran
    assert _cosines(images32, images16).min() > 0.995
    assert _cosines(texts32, texts16).min() > 0.995
    top32 = np.argsort(-(texts32 @ images32.T), axis=1, kind="stable")[:, :10]
    top16 = np.argsort(-(texts16 @ images16.T), axis=1, kind="stable")[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top32, top16)])
    assert overlap >= 0.8
    assert maps["fp32"]["official_mAP@10"] > 0.5  # a trained model: the bound compares real rankings
    assert abs(maps["fp32"]["official_mAP@10"] - maps["bf16"]["official_mAP@10"]) <= 0.05


# ------------------------------------------------------------------------------ (c) cache keys


def test_embedding_cache_keys_on_the_resolved_precision(demo_traffic: Path, tmp_path: Path) -> None:
    from irkit.embeddings import encode_image_files
    from irkit.models import create_model

    paths = sorted((demo_traffic / "test" / "test_images").glob("*"))[:6]
    cache = tmp_path / "cache"
    fp32 = create_model("irkit-tiny", checkpoint=DEMO_MODEL, precision="fp32")
    bf16 = create_model("irkit-tiny", checkpoint=DEMO_MODEL, precision="bf16")
    first = encode_image_files(fp32, paths, num_workers=0, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 1
    second = encode_image_files(bf16, paths, num_workers=0, cache_dir=cache)
    entries = sorted(cache.glob("*.json"))
    assert len(list(cache.glob("*.npy"))) == 2 == len(entries)  # a second entry: re-encoded, not read
    assert sorted(json.loads(p.read_text())["material"]["precision"] for p in entries) == ["bf16", "fp32"]
    assert not np.array_equal(first, second)
    uncached = encode_image_files(bf16, paths, num_workers=0)
    np.testing.assert_array_equal(second, uncached)
    again = encode_image_files(fp32, paths, num_workers=0, cache_dir=cache)  # each answers from its own entry
    np.testing.assert_array_equal(first, again)


def test_oti_store_is_keyed_by_precision(tmp_path: Path) -> None:
    from irkit.methods.searle import OTIConfig, oti_params, run_oti
    from irkit.methods.textual_inversion import load_phrase_bank
    from irkit.models import create_model

    fp32 = create_model("irkit-tiny", random_init=True, precision="fp32")
    bf16 = create_model("irkit-tiny", random_init=True, precision="bf16")
    bank = load_phrase_bank()
    config = OTIConfig(steps=1, batch_size=2)
    assert oti_params(fp32, config, bank, ["a photo of $"])["precision"] == "fp32"
    assert oti_params(bf16, config, bank, ["a photo of $"])["precision"] == "bf16"
    features = np.random.default_rng(0).normal(size=(2, fp32.embed_dim)).astype(np.float32)
    store = run_oti(fp32, ["a", "b"], features, tmp_path / "oti", config, bank, progress=False)
    assert store.params["precision"] == "fp32"
    with pytest.raises(InputError, match="precision: saved 'fp32', now 'bf16'"):
        run_oti(bf16, ["a", "b"], features, tmp_path / "oti", config, bank, progress=False)


# ------------------------------------------------------------------------------ (d) the trainer under bf16


def test_one_phi_step_under_bf16_keeps_float32_weights(tmp_path: Path) -> None:
    """phi + the frozen text tower (LinCIR's loss shape): the forward pass runs under bf16 autocast,
    the loss is finite, and after the step phi's weights and AdamW state are float32 and changed."""
    from irkit.cir.context import frozen
    from irkit.models import create_model
    from irkit.models.phi import Phi
    from irkit.models.pseudo_token import (
        embed_dim,
        encode_with_pseudo_tokens,
        placeholder_token_id,
        token_width,
        tokenize_prompts,
    )
    from irkit.runs import RunFolder
    from irkit.train.loop import train

    loaded = create_model("irkit-tiny", random_init=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    torch.manual_seed(0)
    phi = Phi(embed_dim(model), token_width(model), dropout=0.0)
    before = {k: v.clone() for k, v in phi.state_dict().items()}
    ids = tokenize_prompts(tokenizer, ["a photo of $", "a red $ on a road"])
    features, target = torch.randn(2, embed_dim(model)), torch.randn(2, embed_dim(model))
    seen: list[tuple[bool, torch.dtype, float]] = []

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        tokens = phi(features[batch])
        predicted = encode_with_pseudo_tokens(model, ids[batch], tokens, placeholder_token_id(tokenizer), "all")
        loss = torch.nn.functional.mse_loss(predicted.float(), target[batch])
        seen.append((torch.is_autocast_enabled("cpu"), tokens.dtype, float(loss.detach())))
        return loss

    optimizer = torch.optim.AdamW(phi.parameters(), lr=1e-3)
    run = RunFolder.create(tmp_path, "phi", {"precision": "bf16"})
    with frozen(model):
        result = train(phi, loss_fn, optimizer, lambda epoch: [torch.arange(2)], run, max_steps=1,
                       precision="bf16", progress=False)
    run.close()
    assert result.precision == "bf16" and result.step == 1
    (autocast_on, token_dtype, loss), = seen
    assert autocast_on and token_dtype == torch.bfloat16 and math.isfinite(loss) and loss > 0
    assert all(p.dtype == torch.float32 for p in phi.parameters())
    state = optimizer.state_dict()["state"]
    assert state and all(v.dtype == torch.float32 for s in state.values() for k, v in s.items() if k != "step")
    assert any(not torch.equal(before[k], v) for k, v in phi.state_dict().items())
    recorded = json.loads((tmp_path / "phi" / "precision.json").read_text())
    assert (recorded["setting"], recorded["name"], recorded["device"]) == ("bf16", "bf16", "cpu")
    assert "precision bf16 (bf16: asked for)" in (tmp_path / "phi" / "out.log").read_text()
    from irkit.runs import load_checkpoint

    checkpoint = load_checkpoint(result.latest_checkpoint)
    assert checkpoint["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in checkpoint["model"].values())


def test_trainer_auto_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from irkit.runs import RunFolder
    from irkit.train.loop import train

    monkeypatch.setenv(PRECISION_ENV, "fp32")
    layer = torch.nn.Linear(3, 1)
    x = torch.randn(4, 3)
    dtypes: list[torch.dtype] = []

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        out = layer(x[batch])
        dtypes.append(out.dtype)
        return out.pow(2).mean()

    run = RunFolder.create(tmp_path, "head", {})
    result = train(layer, loss_fn, torch.optim.SGD(layer.parameters(), lr=0.1), lambda epoch: [torch.arange(4)],
                   run, max_steps=1, progress=False)  # precision="auto"
    run.close()
    assert result.precision == "fp32" and dtypes == [torch.float32]
    assert json.loads((tmp_path / "head" / "precision.json").read_text())["reason"] == f"{PRECISION_ENV} is set"


# ------------------------------------------------------------------------------ (e) train clip


def _caption_csv(folder: Path, n: int = 16) -> Path:
    """Coloured boxes captioned with their colour."""
    from PIL import Image

    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["filepath\ttitle"]
    for i in range(n):
        name = list(colours)[i % len(colours)]
        path = folder / f"box_{i:02d}.png"
        Image.new("RGB", (32, 24) if i % 2 else (24, 32), colours[name]).save(path)
        rows.append(f"{path}\ta {name} box")
    csv_path = folder / "train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def test_clip_auto_resolution(no_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from irkit.train import clip as clip_module
    from irkit.train.clip import ClipTrainConfig, open_clip_argv, resolved_config

    no_env.setattr(clip_module, "training_device", lambda: "cpu")
    config = ClipTrainConfig(train_csv=tmp_path / "train.csv", name="x")
    no_env.setattr(precision_module, "cpu_bf16_flags", lambda: ("amx_bf16",))
    assert resolved_config(config).precision == "amp_bf16"
    no_env.setattr(precision_module, "cpu_bf16_flags", lambda: ())
    assert resolved_config(config).precision == "fp32"
    no_env.setattr(precision_module, "cpu_bf16_flags", lambda: ("amx_bf16",))
    no_env.setenv(PRECISION_ENV, "fp32")
    argv = open_clip_argv(resolved_config(config))
    assert argv[argv.index("--precision") + 1] == "fp32"


def test_train_clip_bf16_is_open_clip_amp_bf16(tmp_path: Path) -> None:
    """``--precision bf16``: params.txt says amp_bf16, precision.json records it, the loss stays
    finite and the trained weights are float32."""
    from irkit.cli import main as cli_main

    csv_path = _caption_csv(tmp_path / "data")
    code = cli_main(["train", "clip", "--train-csv", str(csv_path), "--epochs", "1", "--batch-size", "8",
                     "--workers", "0", "--lr", "1e-3", "--warmup", "1", "--precision", "bf16",
                     "--log-dir", str(tmp_path / "log"), "--name", "bf16"])
    assert code == 0
    run = tmp_path / "log" / "bf16"
    params = dict(line.split(": ", 1) for line in (run / "params.txt").read_text().splitlines() if ": " in line)
    assert params["precision"] == "amp_bf16"
    recorded = json.loads((run / "precision.json").read_text())
    assert (recorded["setting"], recorded["name"], recorded["open_clip_train"]) == ("bf16", "bf16", "amp_bf16")
    log = (run / "out.log").read_text()
    assert "train clip: precision bf16 (bf16: asked for); open_clip_train --precision amp_bf16" in log
    losses = [float(v) for v in re.findall(r"train epoch 1/1 step \d+/\d+: loss ([-+0-9.e]+|nan|inf)",
                                           (run / "out.log").read_text())]
    assert losses and all(math.isfinite(v) for v in losses), losses
    weights = torch.load(run / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# ------------------------------------------------------------------------------ (f) subnormal floats

# Runs in a fresh interpreter: whether torch's worker threads flush depends on what ran before
# them. Prints, after `torch.set_num_threads(2)`: the nonzero count of (subnormal * 1.0) over
# 2**20 elements -- spread over both threads -- and irkit's recorded mode. The subnormal is
# made from its bit pattern (1.5e-39), so no float conversion flushes it on the way in.
_SUBNORMAL_PROBE = """
import sys, torch
if sys.argv[1] == "late":
    torch.set_num_threads(2); (torch.ones(1 << 20) * 2.0).sum()   # the pool starts before irkit
import irkit.precision as precision
torch.set_num_threads(2)
x = torch.full((1 << 20,), 1 << 20, dtype=torch.int32).view(torch.float32)
assert int(x.view(torch.int32)[0]) >> 23 == 0  # exponent bits 0: subnormal (reading it as a float would flush)
print(int((x * 1.0).count_nonzero()), precision.cpu_subnormals())
"""


def _probe(order: str, flush: str | None) -> tuple[int, str, str]:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != precision_module.FLUSH_DENORMAL_ENV}
    if flush is not None:
        env[precision_module.FLUSH_DENORMAL_ENV] = flush
    done = subprocess.run([sys.executable, "-c", _SUBNORMAL_PROBE, order], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    count, mode = done.stdout.split()
    return int(count), mode, done.stderr


def test_subnormals_are_flushed_on_every_thread_by_default() -> None:
    count, mode, _ = _probe("first", None)
    assert (count, mode) == (0, "flushed")


def test_subnormals_kept_when_asked() -> None:
    count, mode, _ = _probe("first", "0")
    assert (count, mode) == (1 << 20, "kept")


def test_pool_started_before_irkit_is_reported_as_partial() -> None:
    """Worker threads started before the import keep IEEE subnormals: about half the probe (the
    main thread's share is flushed); irkit records ``partial`` and says so in one warning."""
    count, mode, stderr = _probe("late", None)
    assert mode == "partial"
    assert 0 < count < 1 << 20
    assert "import irkit.precision before any torch work" in stderr


def test_bad_flush_setting_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(precision_module.FLUSH_DENORMAL_ENV, "maybe")
    with pytest.raises(InputError, match="IRKIT_FLUSH_DENORMAL='maybe': expected 1 .* or 0"):
        precision_module.flush_denormal_wanted()


def test_embedding_cache_keys_on_the_subnormal_mode(tmp_path: Path) -> None:
    """An embedding computed with IEEE subnormals never answers for a flushed one (and back)."""
    import dataclasses

    from PIL import Image

    from irkit.embeddings import encode_image_files
    from irkit.models import create_model

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "a.png")
    flushed = create_model("irkit-tiny", random_init=True, precision="fp32")
    assert flushed.subnormals == "flushed"
    kept = dataclasses.replace(flushed, subnormals="kept")
    cache = tmp_path / "cache"
    encode_image_files(flushed, [tmp_path / "a.png"], num_workers=0, cache_dir=cache)
    encode_image_files(kept, [tmp_path / "a.png"], num_workers=0, cache_dir=cache)
    modes = sorted(json.loads(p.read_text())["material"]["subnormals"] for p in cache.glob("*.json"))
    assert modes == ["flushed", "kept"]


def test_oti_store_is_keyed_by_the_subnormal_mode(tmp_path: Path) -> None:
    import dataclasses

    from irkit.methods.searle import OTIConfig, run_oti
    from irkit.methods.textual_inversion import load_phrase_bank
    from irkit.models import create_model

    flushed = create_model("irkit-tiny", random_init=True, precision="fp32")
    kept = dataclasses.replace(flushed, subnormals="kept")
    bank = load_phrase_bank()
    config = OTIConfig(steps=1, batch_size=2)
    features = np.random.default_rng(0).normal(size=(2, flushed.embed_dim)).astype(np.float32)
    store = run_oti(kept, ["a", "b"], features, tmp_path / "oti", config, bank, progress=False)
    assert store.params["subnormals"] == "kept"
    with pytest.raises(InputError, match="subnormals: saved 'kept', now 'flushed'"):
        run_oti(flushed, ["a", "b"], features, tmp_path / "oti", config, bank, progress=False)
