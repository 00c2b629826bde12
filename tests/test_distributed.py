"""Multi-process runs under torchrun (2 processes, gloo on CPU) against one process.

* ``torchrun -m irkit embed images``: one shard per rank; the merged collection equals a
  one-process run (<= 1e-6, same order); after rank 1 is killed, re-running keeps shard 0
  (not re-embedded: same file, same mtime) and embeds shard 1.
* ``torchrun -m irkit cir train-fusion / train-reranker / train-phi --method lincir`` and
  ``irkit train clip --nproc 2`` end with the weights of one process on the same global batch
  (<= 1e-5) and the same run-folder layout.

The training comparisons swap AdamW for plain SGD in *both* runs (a test-side hook, never in
irkit): Adam's first step is ``lr * sign(g)``, which turns ~1e-9 round-off in gradients that
are exactly zero in theory (attention key biases, softmax-invariant directions) into lr-sized
differences, so Adam cannot show whether the gradients of 1 and 2 processes agree; SGD can.
The CLIP comparison uses a tiny ViT (torch's SyncBatchNorm has no CPU kernel, so a BatchNorm
tower normalises per rank on CPU) and single-colour square images (random crops leave them
unchanged, so per-rank augmentation draws cannot differ).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irkit.cli import main
from irkit.cli.train import relaunch_argv
from irkit.collection import read_embedding_collection
from irkit.distributed import shard_bounds
from irkit.errors import InputError

SRC = Path(__file__).resolve().parents[1] / "src"

# Imported by every Python process of the runs below (PYTHONPATH), torchrun's workers included.
SITECUSTOMIZE = '''
import os
if os.environ.get("IRKIT_TEST_SGD"):
    import torch
    torch.optim.AdamW = lambda params, lr=1e-3, **kwargs: torch.optim.SGD(params, lr=lr)
if os.environ.get("IRKIT_TEST_VIT"):
    import open_clip
    open_clip.add_model_config(os.environ["IRKIT_TEST_VIT"])
if os.environ.get("IRKIT_TEST_KILL_RANK1") and "RANK" in os.environ:  # torchrun's workers, not its agent
    import time
    from pathlib import Path
    import irkit.sharded_embedding as sharded
    original_write_shard = sharded.write_shard

    def write_shard(partial, shard, *args, **kwargs):
        if shard == 1:  # rank 1 dies once rank 0's shard is complete, before writing its own
            while not (Path(partial) / sharded.DONE_DIR / "shard_0.json").exists():
                time.sleep(0.05)
            os._exit(9)
        return original_write_shard(partial, shard, *args, **kwargs)

    sharded.write_shard = write_shard
'''

RUN_COMMANDS = '''
import json, sys
from irkit.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code:
        sys.exit(code)
'''

TINY_VIT = {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def hooks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (folder / "run_commands.py").write_text(RUN_COMMANDS)
    (folder / "test-tiny-vit.json").write_text(json.dumps(TINY_VIT))
    return folder


def _env(hooks: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=os.pathsep.join([str(hooks), str(SRC)]), IRKIT_NUM_THREADS="1", OMP_NUM_THREADS="1",
               **extra)
    return env


def _torchrun(hooks: Path, args: list[str], **extra: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 <args>`` (the README command with N = 2)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, env=_env(hooks, **extra), capture_output=True, text=True, timeout=600)


# --------------------------------------------------------------------------- helpers without processes


@pytest.mark.parametrize("count,shards,expected", [
    (11, 2, [(0, 6), (6, 11)]), (10, 4, [(0, 3), (3, 6), (6, 8), (8, 10)]), (1, 3, [(0, 1), (1, 1), (1, 1)])])
def test_shard_bounds_are_contiguous_and_balanced(count, shards, expected):
    assert [shard_bounds(count, s, shards) for s in range(shards)] == expected
    # the same split as numpy.array_split
    assert [len(part) for part in np.array_split(np.arange(count), shards)] == [b - a for a, b in expected]


def test_nproc_relaunches_the_same_command_under_torchrun():
    argv = ["train", "clip", "--train-csv", "t.csv", "--nproc", "8", "--batch-size", "256", "--nproc=8"]
    assert relaunch_argv(argv, 8) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      "--nproc_per_node", "8", "-m", "irkit", "train", "clip", "--train-csv",
                                      "t.csv", "--batch-size", "256"]


def test_partial_folder_of_another_command_is_refused(tmp_path):
    from irkit.models import create_model
    from irkit.sharded_embedding import embed_images_sharded, partial_folder

    images = _images(tmp_path / "imgs", 3)
    loaded = create_model("irkit-tiny", seed=0, random_init=True)
    out = tmp_path / "coll"
    partial = partial_folder(out)
    (partial).mkdir()
    (partial / "irkit_shard_plan.json").write_text(json.dumps({"format": 1, "shards": 2, "dtype": "float16"}))
    with pytest.raises(InputError, match=r"unfinished sharded embedding of another command \(differs in .*shards"):
        embed_images_sharded(loaded, images, out, num_workers=0, dtype="float32")
    assert not out.exists()


# --------------------------------------------------------------------------- sharded embedding


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:02d}.png"
        Image.new("RGB", (24 + 3 * i, 20 + i), (20 * i % 256, 90, 250 - 15 * i)).save(path)
        paths.append(path)
    return paths


def test_torchrun_embedding_equals_one_process_and_resumes_per_shard(tmp_path, hooks, capsys):
    _images(tmp_path / "imgs", 11)
    options = ["--images", str(tmp_path / "imgs"), "--dtype", "float32", "--batch-size", "4", "--num-workers", "0",
               "--cache-dir", "none", "--random-init"]
    assert main(["embed", "images", *options, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()

    out = tmp_path / "two"
    command = ["-m", "irkit", "embed", "images", *options, "--out", str(out)]
    killed = _torchrun(hooks, command, IRKIT_TEST_KILL_RANK1="1")
    assert killed.returncode != 0 and not out.exists()
    partial = tmp_path / "two.partial"
    assert sorted(p.name for p in (partial / "img_emb").iterdir()) == ["img_emb_0.npy"]
    shard0 = partial / "img_emb" / "img_emb_0.npy"
    before = (shard0.stat().st_mtime_ns, shard0.stat().st_ino)

    resumed = _torchrun(hooks, command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["processes"] == 2
    assert not partial.exists()
    kept = out / "img_emb" / "img_emb_0.npy"
    assert (kept.stat().st_mtime_ns, kept.stat().st_ino) == before  # shard 0 was not embedded again
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy"]
    assert len(np.load(kept)) == 6 and len(np.load(out / "img_emb" / "img_emb_1.npy")) == 5
    assert sorted(p.name for p in out.iterdir()) == ["img_emb", "irkit_collection.json", "metadata"]

    one_emb, one_meta = read_embedding_collection(tmp_path / "one")
    two_emb, two_meta = read_embedding_collection(out)
    assert list(two_meta["image_path"]) == list(one_meta["image_path"])  # same order
    assert list(two_meta["image_name"]) == list(one_meta["image_name"])
    assert two_emb.shape == one_emb.shape == (11, 128)
    assert float(np.abs(two_emb - one_emb).max()) <= 1e-6
    info = json.loads((out / "irkit_collection.json").read_text())
    assert info["count"] == 11 and info["shards"] == 2 and info["weights_id"] == "random-init:0"


# --------------------------------------------------------------------------- training


def _weights(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)[key]
    return {name.removeprefix("module."): value for name, value in state.items()}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _logged_losses(run_dir: Path) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"step \d+/\d+ epoch \d+ loss ([0-9.]+)",
                                                   (run_dir / "out.log").read_text())]


def test_torchrun_head_and_phi_training_equal_one_process(tmp_path, hooks, capsys, monkeypatch):
    from fusion_fixtures import make_demo

    demo = make_demo(tmp_path / "demo")

    def commands(mode: str) -> list[list[str]]:
        common = ["--cache-dir", str(tmp_path / f"cache-{mode}"), "--num-workers", "0", "--seed", "3", "--random-init",
                  "--log-dir", str(tmp_path / mode)]
        heads = ["--dataset", "cirr", "--root", str(demo / "cirr"), "--split", "train", "--steps", "3",
                 "--train-batch-size", "6", *common]
        return [
            # SGD steps large enough to move the weights far beyond the tolerance, small enough that
            # float round-off (summation order across processes) is not amplified past it
            ["cir", "train-fusion", *heads, "--lr", "0.3", "--depth", "1", "--heads", "4", "--val-dataset", "cirr",
             "--val-root", str(demo / "cirr"), "--validate-every", "2", "--name", "fusion"],
            ["cir", "train-reranker", *heads, "--lr", "2", "--depth", "1", "--heads", "4", "--name", "reranker"],
            ["cir", "train-phi", "--method", "lincir", "--captions", str(demo / "captions" / "cirr_train.csv"),
             "--steps", "3", "--train-batch-size", "8", "--lr", "0.05", "--validate-every", "100", *common,
             "--name", "lincir"],
        ]

    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr=1e-3, **kwargs: torch.optim.SGD(params, lr=lr))
    for argv in commands("one"):
        assert main(argv) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    two = _torchrun(hooks, [str(hooks / "run_commands.py"), json.dumps(commands("two"))], IRKIT_TEST_SGD="1")
    assert two.returncode == 0, two.stderr[-3000:]
    printed = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert [Path(p["run_dir"]).name for p in printed] == ["fusion", "reranker", "lincir"]  # rank 0 prints alone

    for name in ("fusion", "reranker", "lincir"):
        one_dir, two_dir = tmp_path / "one" / name, tmp_path / "two" / name
        assert sorted(p.name for p in two_dir.iterdir()) == sorted(p.name for p in one_dir.iterdir())
        assert sorted(p.name for p in (two_dir / "checkpoints").iterdir()) == \
            sorted(p.name for p in (one_dir / "checkpoints").iterdir())
        one, two_weights = _weights(one_dir / "checkpoints" / "latest.pt"), _weights(two_dir / "checkpoints" / "latest.pt")
        assert _max_difference(one, two_weights) <= 1e-5, name
        # the weights moved far more than the tolerance: the comparison is not vacuous
        assert _max_difference(_weights(one_dir / "checkpoints" / "epoch_1.pt"), one) > 1e-3, name
        # The logged loss of 2 processes is the global-batch loss (printed with 5 decimals).
        assert _logged_losses(two_dir) == pytest.approx(_logged_losses(one_dir), abs=2e-5)
        assert "processes: 2" in (two_dir / "params.txt").read_text()
    one_results = [json.loads(l) for l in (tmp_path / "one" / "fusion" / "results.jsonl").read_text().splitlines()]
    two_results = [json.loads(l) for l in (tmp_path / "two" / "fusion" / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two_results] == [r["step"] for r in one_results] == [2, 3]
    for one_record, two_record in zip(one_results, two_results):
        assert two_record == pytest.approx(one_record, abs=1e-6)


def test_train_clip_nproc_2_equals_one_process(tmp_path, hooks):
    folder = tmp_path / "data"
    folder.mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
               "grey": (128, 128, 128), "black": (10, 10, 10), "purple": (120, 60, 200), "orange": (250, 120, 20)}
    rows = ["filepath\ttitle"]
    for i, (name, colour) in enumerate(colours.items()):
        Image.new("RGB", (40, 40), colour).save(folder / f"img_{i}.png")
        rows.append(f"{folder / f'img_{i}.png'}\ta {name} square")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    args = ["-m", "irkit", "train", "clip", "--train-csv", str(folder / "train.csv"), "--model", "test-tiny-vit",
            "--epochs", "2", "--batch-size", "8", "--workers", "0", "--lr", "0.05", "--warmup", "1",
            "--log-dir", str(tmp_path / "log")]
    env = _env(hooks, IRKIT_TEST_SGD="1", IRKIT_TEST_VIT=str(hooks / "test-tiny-vit.json"))
    one = subprocess.run([sys.executable, *args, "--name", "one"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, *args, "--name", "two", "--nproc", "2"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one_dir, two_dir = tmp_path / "log" / "one", tmp_path / "log" / "two"
    assert sorted(p.name for p in two_dir.iterdir()) == sorted(p.name for p in one_dir.iterdir())
    params = (two_dir / "params.txt").read_text()
    assert "world_size: 2" in params and "batch_size: 4" in params and "gather_with_grad: True" in params
    final_one = _weights(one_dir / "checkpoints" / "epoch_2.pt", "state_dict")
    final_two = _weights(two_dir / "checkpoints" / "epoch_2.pt", "state_dict")
    assert _max_difference(final_one, final_two) <= 1e-5
    assert _max_difference(_weights(one_dir / "checkpoints" / "epoch_1.pt", "state_dict"), final_one) > 1e-3
