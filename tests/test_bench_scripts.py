"""Smoke tests of the bench scripts (bench/bench_embed.py, profile_reproduce.py, bench_precision.py)
at tiny sizes: output format and values that can be checked independently."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_script(name: str):
    """Import ``bench/<name>.py`` as a module (bench/ is not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_traffic(tmp_path_factory) -> Path:
    from irkit.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, seed=0, scale="tiny", datasets="traffic", workers=1, progress=False)
    return out / "traffic"


# ------------------------------------------------------------------------------ bench_embed


def test_flop_count_of_a_known_layer() -> None:
    bench = load_script("bench_embed")
    layer = torch.nn.Linear(64, 32)
    assert bench.count_flops(layer, torch.zeros(8, 64)) == 2 * 8 * 64 * 32
    conv = torch.nn.Conv2d(3, 4, kernel_size=2, stride=2, bias=False)  # 4x4 output positions
    assert bench.count_flops(conv, torch.zeros(1, 3, 8, 8)) == 2 * 4 * 3 * 2 * 2 * 16


def test_stage_shares_add_up_to_the_wall_time() -> None:
    bench = load_script("bench_embed")
    shares = bench.stage_shares({"decode_ms": 2.0, "transform_ms": 4.0, "forward_ms": 10.0, "forward_fp32_ms": 10.0},
                                irkit_ms_per_image=10.0, workers=2)
    assert shares["decode"] == pytest.approx(0.1) and shares["forward"] == pytest.approx(0.5)
    assert shares["overhead"] == pytest.approx(0.2)
    assert bench.busy_workers(images=5, batch_size=4, workers=8) == 2


def test_bench_embed_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from irkit.embeddings import encode_image_files
    from irkit.models import create_model

    bench = load_script("bench_embed")
    out = tmp_path / "embed.json"
    assert bench.main(["--models", "irkit-tiny", "--images", "8", "--batch-size", "4", "--repeats", "1",
                       "--probe-size", "128", "--num-workers", "2", "--stages", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"irkit-tiny: irkit/plain ratio \d+\.\d\dx, share of bf16 probe \d+%", lines[-1])
    assert any(line.startswith("1-min load average at start") for line in lines)
    assert any("decode (PIL open + RGB)" in line for line in lines)
    results = json.loads(out.read_text())
    model = results["models"][0]
    assert model["equality"]["equal"] and model["equality"]["max_abs_diff"] <= 1e-4
    ratio = model["irkit_images_per_s"] / model["plain_images_per_s"]
    assert lines[-1].split("ratio ")[1].startswith(f"{ratio:.2f}x")
    assert model["share_of_bf16_probe"] == pytest.approx(model["achieved_gflops"] / results["probes_gflops"]["bf16"])
    assert sum(model["stage_shares_of_irkit"].values()) == pytest.approx(1.0)

    # the plain loop itself agrees with irkit's encoder on the same files
    paths = bench.generate_images(tmp_path, 3)
    loaded = create_model("irkit-tiny", random_init=True, precision="fp32", memory_format="contiguous")
    np.testing.assert_allclose(bench.plain_loop(loaded, paths, 2),
                               encode_image_files(loaded, paths, batch_size=2, num_workers=0), atol=1e-5)


# ------------------------------------------------------------------------------ profile_reproduce


def test_optimizer_groups_follow_open_clip_train() -> None:
    profile = load_script("profile_reproduce")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    groups = profile.make_optimizer(model, lr=1e-3, wd=0.1).param_groups
    no_decay, decay = groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])]  # only the matrix decays
    assert len(no_decay["params"]) == 3  # linear bias, norm weight and bias


def test_profile_reproduce_smoke(demo_traffic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = load_script("profile_reproduce")
    assert profile.main(["--root", str(demo_traffic), "--steps", "1", "--batch-size", "4", "--workers", "1",
                         "--compare-steps", "1", "--images", "6", "--embed-batch-size", "3",
                         "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "profile_reproduce.json").read_text())
    table = (tmp_path / "profile_reproduce.md").read_text()
    assert table in printed
    for row in ("| data wait |", "| forward |", "| backward |", "| optimizer |", "| logging |",
                "| **sum of stages** |", "| **wall** |"):
        assert row in table
    training = results["training"]
    assert training["sum_of_stages_per_step"] == pytest.approx(sum(training["seconds_per_step"].values()))
    assert training["sum_of_stages_per_step"] <= training["wall_per_step"] * 1.001
    assert set(results["variants"]["seconds_per_step_best"]) == {
        "fp32/contiguous", "fp32/channels_last", "bf16/contiguous", "bf16/channels_last"}  # irkit-tiny is convolutional
    assert results["embedding"]["images"] == 6


def test_profile_reproduce_bad_root_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = load_script("profile_reproduce")
    assert profile.main(["--root", str(tmp_path / "missing"), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


# ------------------------------------------------------------------------------ bench_precision


def test_overlap_and_cosine_helpers() -> None:
    precision = load_script("bench_precision")
    first = [[str(i) for i in range(10)], [str(i) for i in range(10)]]
    second = [[str(i) for i in range(5, 15)], [str(i) for i in range(10)]]
    assert precision.top_overlap(first, second) == pytest.approx((0.5 + 1.0) / 2)
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert precision.mean_row_cosine(a, b) == pytest.approx((1 / np.sqrt(2) + 1.0) / 2)


def test_bench_precision_smoke(demo_traffic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from irkit.models import create_model, save_weights

    precision = load_script("bench_precision")
    checkpoint = save_weights(create_model("irkit-tiny", random_init=True), tmp_path / "model.safetensors")
    assert precision.main(["--traffic-root", str(demo_traffic), "--checkpoint", str(checkpoint), "--limit", "12",
                           "--prompt", "none", "--num-workers", "0", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    (result,) = json.loads((tmp_path / "bench_precision.json").read_text())["benchmarks"]
    assert (tmp_path / "bench_precision.md").read_text() in printed
    official = result["metrics"]["official_mAP@10"]
    assert official["difference"] == pytest.approx(official["bf16"] - official["fp32"])
    assert 0.0 <= result["top10_overlap"] <= 1.0
    assert 0.99 < result["gallery_cosine"] < 1.0  # bf16 really ran: close to, but not exactly, fp32
    assert "| traffic test | official_mAP@10 |" in printed


# ------------------------------------------------------------------------------ bench_subnormals


def test_bench_subnormals_summary_from_hand_values() -> None:
    bench = load_script("bench_subnormals")
    runs = {"trained": {"flushed": [{"ms_per_step": 100.0}, {"ms_per_step": 120.0}, {"ms_per_step": 90.0}],
                        "kept": [{"ms_per_step": 150.0}, {"ms_per_step": 140.0}, {"ms_per_step": 400.0}]}}
    summary = bench.summarise(runs)  # medians 100 and 150
    assert summary["trained"] == {"flushed_ms": 100.0, "kept_ms": 150.0, "kept_over_flushed": 1.5}
    assert bench.lines(summary) == ["trained: flushed 100 ms/step, kept 150 ms/step, kept/flushed 1.50x"]


def test_bench_subnormals_smoke(demo_traffic: Path, tmp_path: Path) -> None:
    """Two child processes per set of weights, each in the mode it was asked for (a child that
    ran in the other mode stops the bench); the last lines follow the documented format."""
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH / "bench_subnormals.py"), "--root", str(demo_traffic),
                           "--steps", "1", "--repeats", "1", "--batch-size", "4", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-2:]
    for weights, line in zip(("trained", "random"), last):
        assert re.fullmatch(rf"{weights}: flushed \d+ ms/step, kept \d+ ms/step, kept/flushed \d+\.\d\dx", line)
    saved = json.loads((tmp_path / "bench_subnormals.json").read_text())
    assert {r["subnormals"] for r in saved["runs"]["trained"]["flushed"]} == {"flushed"}
    assert {r["subnormals"] for r in saved["runs"]["trained"]["kept"]} == {"kept"}
    for weights in ("trained", "random"):
        losses = [r["loss"] for mode in ("flushed", "kept") for r in saved["runs"][weights][mode]]
        assert all(np.isfinite(losses))
    assert (tmp_path / "bench_subnormals.md").read_text().startswith("# Training step, subnormals flushed vs kept")
