"""Every class of bad command-line input ends in ONE line and a non-zero exit, names the file /
line / field and what was expected, prints no traceback and leaves no run folder behind.

Each :class:`Case` starts from a valid tiny set-up, breaks one thing and states the exact
behaviour: exit code, the text of the one error line, the paths that must not exist afterwards.
Flows that need several commands (a training that fails after its folder exists and is rerun, a
resume with changed hyper-parameters, the umask, ``--overwrite``) are the tests after the table.

Malicious checkpoints are pickles whose ``__reduce__`` creates a marker folder when unpickled;
every such case runs with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (which makes a plain
``torch.load`` execute the payload, see :func:`test_the_payload_is_live_under_the_variable`).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from PIL import Image

from irkit.cli import main

MARKER = "PWNED"  # created by the malicious pickles' payload when they are unpickled
TINY = "irkit-tiny"


# --------------------------------------------------------------------------- fixtures


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def write_evil(path: Path, marker: Path, shape: str = "train") -> Path:
    """A torch.save file shaped like a checkpoint, one of whose values is the payload."""
    if shape == "train":  # open_clip_train checkpoint
        obj = {"epoch": 1, "state_dict": {"w": torch.zeros(1)}, "optimizer": Payload(marker)}
    else:  # irkit head / phi checkpoint
        obj = {"model": {"w": torch.zeros(1)}, "extra": Payload(marker), "step": 1}
    torch.save(obj, path)
    return path


def write_image(path: Path, colour=(200, 30, 30), size=(24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def write_train_csv(folder: Path, n: int = 4, broken: Optional[Callable[[Path], None]] = None) -> Path:
    """A tab-separated filepath/title CSV of ``n`` real images; ``broken(path_of_row_2)`` may spoil one."""
    rows = ["filepath\ttitle"]
    colours = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30)]
    for i in range(n):
        image = write_image(folder / f"img_{i}.png", colours[i % 4], (24, 16) if i % 2 else (16, 24))
        rows.append(f"{image}\ta box of colour {i % 4}")
    if broken is not None:
        broken(folder / "img_1.png")  # the image on CSV line 3
    csv_path = folder / "train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """irkit-tiny weights as .safetensors, made with open_clip directly (so no command below runs on
    random weights, and the file does not depend on irkit's factory)."""
    import open_clip
    from safetensors.torch import save_file

    import irkit.models  # noqa: F401  (registers irkit-tiny's config with open_clip)

    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def cirr_demo(tmp_path_factory) -> Path:
    """Tiny generated CIRR (images, captions) shared by the CIR cases."""
    from irkit.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, seed=0, scale="tiny", datasets=["cirr"], progress=False)
    return out


@dataclass
class Env:
    """What a case's ``build`` gets: a fresh folder, monkeypatch and the shared fixtures."""

    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    weights: Path
    demo: Path


@dataclass
class Case:
    """``build(env)`` returns the argv that must fail with ``code`` and one line holding ``expect``."""

    build: Callable[[Env], list]
    code: int
    expect: tuple[str, ...]
    absent: tuple[str, ...] = ()        # paths (relative to env.tmp) that must not exist afterwards
    after: Optional[Callable[[Env], None]] = None  # further checks on the file system


def run_cli(argv: list) -> tuple[int, str, str]:
    """``irkit ARGV`` in this process: (exit code, stdout, stderr); argparse errors exit through SystemExit."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, expected_code: int, expect: tuple[str, ...]) -> str:
    assert code == expected_code, err
    assert "Traceback" not in err, err
    error_lines = [line for line in err.splitlines() if line.startswith("irkit") and "error:" in line]
    assert len(error_lines) == 1, err
    line = error_lines[0]
    assert err.rstrip().endswith(line), err  # nothing after the error line
    for text in expect:
        assert text in line, line
    return line


# --------------------------------------------------------------------------- builders


def _train_clip(*extra, csv: Optional[Callable[[Path], Path]] = None, name: str = "run"):
    def build(env: Env) -> list:
        csv_path = (csv or (lambda tmp: write_train_csv(tmp / "data")))(env.tmp)
        return ["train", "clip", "--train-csv", csv_path, "--epochs", "1", "--batch-size", "2", "--workers", "0",
                "--log-dir", env.tmp / "log", "--name", name, *[a(env) if callable(a) else a for a in extra]]
    return build


def _symlinked_text(image: Path) -> None:
    text = image.with_name("notes.txt")
    text.write_text("not an image\n")
    image.unlink()
    image.symlink_to(text)


def _existing_run(with_checkpoint: bool = True, evil: bool = False):
    """log/run as open_clip_train leaves it (params.txt, out.log, checkpoints/epoch_1.pt)."""
    def make(env: Env) -> Path:
        run = env.tmp / "log" / "run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "out.log").write_text("")
        (run / "params.txt").write_text("lr: 0.001\n")
        if with_checkpoint:
            if evil:
                write_evil(run / "checkpoints" / "epoch_1.pt", env.tmp / MARKER)
            else:
                torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(1)}, "optimizer": {}},
                           run / "checkpoints" / "epoch_1.pt")
        return run
    return make


def _with(setup: Callable[[Env], object], build: Callable[[Env], list]):
    def combined(env: Env) -> list:
        setup(env)
        return build(env)
    return combined


def _phi(method: str, source: Callable[[Env], list]):
    def build(env: Env) -> list:
        return ["cir", "train-phi", "--method", method, *source(env), "--checkpoint", env.weights, "--steps", "2",
                "--train-batch-size", "2", "--log-dir", env.tmp / "log", "--name", "phi", "--num-workers", "0",
                "--cache-dir", "none"]
    return build


def _text_file(name: str, text: str):
    def make(env: Env) -> Path:
        path = env.tmp / name
        path.write_text(text)
        return path
    return make


def _enospc(env: Env) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), kwargs.get("dir"))
    env.monkeypatch.setattr(tempfile, "mkstemp", full)


def _no_gpu(env: Env) -> None:
    env.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _reproduce_run(folder: Path, metrics_text: str) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(metrics_text)
    (folder / "params.txt").write_text("model: irkit-tiny\n")


GOOD_METRICS = json.dumps({"trained": {"official_mAP@10": 12.5, "mean_rank": 3.0},
                           "training": {"final_checkpoint": "none.pt"}}, indent=1)


def _best(metrics_text: str, *extra):
    def build(env: Env) -> list:
        _reproduce_run(env.tmp / "runs" / "a", GOOD_METRICS)
        _reproduce_run(env.tmp / "runs" / "b", metrics_text)
        return ["batch", "best", env.tmp / "runs", "--out", env.tmp / "review", *extra]
    return build


def _evil_env(env: Env) -> None:
    env.monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def _evil(env: Env, shape: str = "train") -> Path:
    _evil_env(env)
    return write_evil(env.tmp / "evil.pt", env.tmp / MARKER, shape)


def _search(*extra):
    def build(env: Env) -> list:
        return ["embed", "search", "--collection", env.tmp / "none", "--query", "a red car",
                *[a(env) if callable(a) else a for a in extra]]
    return build


def _cir_eval_with(method: str):
    def build(env: Env) -> list:
        evil = _evil(env, "head")
        return ["cir", "eval", "--dataset", "cirr", "--root", env.demo / "cirr", "--split", "val", "--method", method,
                "--method-checkpoint", evil, "--checkpoint", env.weights, "--num-workers", "0", "--cache-dir", "none"]
    return build


def _submit_into_used_folder(env: Env) -> list:
    out = env.tmp / "submission"
    out.mkdir()
    (out / "test1_pred_ranks_recall.json").write_text('{"kept": true}')
    return ["cir", "submit", "--dataset", "cirr", "--root", env.demo / "cirr", "--split", "test1",
            "--method", "image-only", "--checkpoint", env.weights, "--out", out, "--num-workers", "0",
            "--cache-dir", "none"]


def _submission_untouched(env: Env) -> None:
    out = env.tmp / "submission"
    assert sorted(p.name for p in out.iterdir()) == ["test1_pred_ranks_recall.json"]  # the subset file neither
    assert (out / "test1_pred_ranks_recall.json").read_text() == '{"kept": true}'


def _marker_absent(env: Env) -> None:
    assert not (env.tmp / MARKER).exists(), "the pickled payload ran"


def _params_untouched(env: Env) -> None:
    assert (env.tmp / "log" / "run" / "params.txt").read_text() == "lr: 0.001\n"


CASES = {
    # ---- 1. train clip validates everything before its run folder exists
    "train-clip-unknown-model": Case(
        _train_clip("--model", "nope-clip"), 2,
        ("field 'model'", "unknown model name 'nope-clip'", "expected an open_clip model config name"),
        absent=("log/run",)),
    "train-clip-unknown-pretrained-tag": Case(
        _train_clip("--pretrained", "laion2b_s34b_b79k"), 2,
        ("field 'pretrained'", "'laion2b_s34b_b79k' is neither a pretrained tag of model 'irkit-tiny'"),
        absent=("log/run",)),
    "train-clip-pretrained-missing-file": Case(
        _train_clip("--pretrained", lambda env: env.tmp / "gone.pt"), 2,
        ("gone.pt", "field 'pretrained'", "pretrained checkpoint file not found"), absent=("log/run",)),
    "train-clip-pretrained-not-a-checkpoint": Case(
        _train_clip("--pretrained", _text_file("notes.pt", "hello\n")), 2,
        ("notes.pt", "not a readable PyTorch checkpoint"), absent=("log/run",)),
    "train-clip-resume-missing-file": Case(
        _train_clip("--resume", lambda env: env.tmp / "gone.pt"), 2,
        ("gone.pt", "resume checkpoint not found"), absent=("log/run",)),
    "train-clip-resume-without-optimizer": Case(
        _train_clip("--resume", lambda env: (torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(1)}},
                                                        env.tmp / "half.pt"), env.tmp / "half.pt")[1]), 2,
        ("half.pt", "training checkpoint lacks optimizer", "expected the keys epoch, state_dict and optimizer"),
        absent=("log/run",)),
    "train-clip-resume-not-a-dict": Case(
        _train_clip("--resume", lambda env: (torch.save([torch.zeros(1)], env.tmp / "list.pt"),
                                             env.tmp / "list.pt")[1]), 2,
        ("list.pt", "checkpoint holds list; expected a dict"), absent=("log/run",)),
    "train-clip-resume-latest-without-checkpoints": Case(
        _with(_existing_run(with_checkpoint=False), _train_clip("--resume", "latest")), 2,
        ("run: cannot resume: no checkpoints/epoch_<n>.pt in this run",), after=_params_untouched),
    "train-clip-resume-file-into-existing-run": Case(
        _with(_existing_run(), _train_clip("--resume", lambda env: env.tmp / "log" / "run" / "checkpoints" /
                                           "epoch_1.pt")), 2,
        ("resuming from a checkpoint file starts a new run folder, and this one exists",),
        after=_params_untouched),
    "train-clip-existing-run": Case(
        _with(_existing_run(), _train_clip()), 2,
        ("run folder already exists; choose another --name, or resume it with --resume latest",),
        after=_params_untouched),
    "train-clip-symlink-to-non-image": Case(
        _train_clip(csv=lambda tmp: write_train_csv(tmp / "data", broken=_symlinked_text)), 2,
        ("train.csv, line 3, field 'filepath'", "img_1.png (a link to", "notes.txt) is not an image file",
         "expected an image PIL can read"), absent=("log/run",)),
    "train-clip-image-over-the-pixel-limit": Case(
        _train_clip("--max-image-pixels", "1000", csv=lambda tmp: write_train_csv(
            tmp / "data", broken=lambda p: write_image(p, (9, 9, 9), (50, 40)))),
        2, ("train.csv, line 3, field 'filepath'",
            "img_1.png: image is 50 x 40 = 2,000 pixels, over the limit of 1,000"),
        absent=("log/run",)),
    "train-clip-missing-image": Case(
        _train_clip(csv=lambda tmp: write_train_csv(tmp / "data", broken=lambda p: p.unlink())), 2,
        ("train.csv, line 3, field 'filepath'", "img_1.png"), absent=("log/run",)),
    "train-clip-empty-image-file": Case(
        _train_clip(csv=lambda tmp: write_train_csv(tmp / "data", broken=lambda p: p.write_bytes(b""))), 2,
        ("train.csv, line 3, field 'filepath'", "is not an image file"), absent=("log/run",)),
    # ---- 2. CIR trainers read their inputs before their run folder exists
    "train-phi-empty-captions": Case(
        _phi("lincir", lambda env: ["--captions", _text_file("captions.txt", "\n\n")(env)]), 2,
        ("captions.txt",), absent=("log/phi",)),
    "train-phi-missing-captions": Case(
        _phi("lincir", lambda env: ["--captions", env.tmp / "gone.txt"]), 2, ("gone.txt",), absent=("log/phi",)),
    "train-phi-captions-wrong-separator": Case(
        _phi("lincir", lambda env: ["--captions", _text_file("c.csv", "filepath,title\na.png,a red car\n")(env)]), 2,
        ("c.csv", "line 1", "comma-separated"), absent=("log/phi",)),
    "train-phi-missing-oti-folder": Case(
        _phi("searle", lambda env: ["--oti", env.tmp / "no-oti"]), 2, ("no-oti",), absent=("log/phi",)),
    "train-combiner-missing-root": Case(
        lambda env: ["cir", "train-combiner", "--dataset", "cirr", "--root", env.tmp / "no-cirr", "--checkpoint",
                     env.weights, "--log-dir", env.tmp / "log", "--name", "comb", "--cache-dir", "none"], 2,
        ("no-cirr",), absent=("log/comb",)),
    # ---- 3. OS errors and output paths: one line each
    "disk-full-on-write": Case(
        _with(_enospc, lambda env: ["cir", "phrases", "--out", env.tmp / "phrases.tsv"]), 1,
        ("No space left on device (ENOSPC)", "the disk is full; free space or write somewhere else"),
        absent=("phrases.tsv",)),
    "disk-full-creating-a-run-folder": Case(
        _with(_enospc, _phi("lincir", lambda env: ["--captions", env.demo / "captions" / "cirr_train.csv"])), 1,
        ("log/phi: No space left on device (ENOSPC)",), absent=("log/phi",)),
    "out-file-is-a-folder": Case(
        lambda env: ["cir", "phrases", "--out", env.tmp], 2,
        ("argument --out:", "is a folder; expected the path of a file to write")),
    "out-file-under-a-file": Case(
        lambda env: ["cir", "phrases", "--out", _text_file("plain.txt", "x")(env) / "phrases.tsv"], 2,
        ("argument --out:", "plain.txt is a file, not a folder")),
    "out-folder-is-a-file": Case(
        lambda env: ["embed", "images", "--images", env.tmp, "--out", _text_file("taken", "x")(env)], 2,
        ("argument --out:", "taken: is a file; expected a folder to write into")),
    "log-dir-under-a-file": Case(
        _train_clip("--log-dir", lambda env: _text_file("plain.txt", "x")(env) / "log"), 2,
        ("argument --log-dir:", "plain.txt is a file, not a folder")),
    "device-cuda-without-gpu": Case(
        _with(_no_gpu, _search("--device", "cuda")), 2,
        ("argument --device:", "'cuda' needs a CUDA GPU, but none is available here", "use --device cpu")),
    "device-unknown": Case(
        _search("--device", "tpu"), 2, ("argument --device:", "'tpu'", "expected cpu, cuda, cuda:<index> or mps")),
    "batch-best-malformed-metrics": Case(
        _best('{\n "trained": {"official_mAP@10": 1.0,}\n}'), 2,
        ("runs/b/metrics.json, line 2: malformed JSON",), absent=("review",)),
    "batch-best-metrics-not-an-object": Case(
        _best("[1, 2]"), 2, ("runs/b/metrics.json: holds a JSON list; expected an object",), absent=("review",)),
    "batch-best-unknown-metric": Case(
        _best(GOOD_METRICS, "--metric", "R@99"), 2,
        ("metrics.json, field 'trained': no metric 'R@99'; expected one of: mean_rank, official_mAP@10",),
        absent=("review",)),
    "batch-best-metric-not-a-number": Case(
        _best(GOOD_METRICS.replace("12.5", '"high"')), 2,
        ("runs/b/metrics.json, field 'trained.official_mAP@10': metric 'official_mAP@10' is 'high'; "
         "expected a number",), absent=("review",)),
    # ---- 4. malicious pickles never run, with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
    "evil-checkpoint": Case(
        _search("--checkpoint", lambda env: _evil(env)), 2,
        ("evil.pt", "weights_only=True", "refused to unpickle the global posix.mkdir"), after=_marker_absent),
    "evil-pretrained-file": Case(
        _search("--pretrained", lambda env: _evil(env)), 2,
        ("evil.pt", "refused to unpickle the global posix.mkdir"), after=_marker_absent),
    "evil-pretrained-train-clip": Case(
        _train_clip("--pretrained", lambda env: _evil(env)), 2,
        ("evil.pt", "refused to unpickle the global posix.mkdir"), absent=("log/run",), after=_marker_absent),
    "evil-resume-file": Case(
        _train_clip("--resume", lambda env: _evil(env)), 2,
        ("evil.pt", "torch.load(weights_only=True)", "refused to unpickle the global posix.mkdir"), absent=("log/run",),
        after=_marker_absent),
    "evil-resume-latest": Case(
        _with(_evil_env, _with(_existing_run(evil=True), _train_clip("--resume", "latest"))), 2,
        ("epoch_1.pt", "refused to unpickle the global posix.mkdir"), after=_marker_absent),
    "evil-method-checkpoint-phi": Case(
        _cir_eval_with("searle"), 2, ("evil.pt", "refused to unpickle the global posix.mkdir"), after=_marker_absent),
    "evil-method-checkpoint-combiner": Case(
        _cir_eval_with("combiner"), 2, ("evil.pt", "refused to unpickle the global posix.mkdir"), after=_marker_absent),
    "evil-method-checkpoint-fusion-head": Case(
        _cir_eval_with("magiclens"), 2, ("evil.pt", "refused to unpickle the global posix.mkdir"),
        after=_marker_absent),
    # ---- 7. cir submit keeps existing submission files
    "submit-over-an-existing-submission-file": Case(
        _submit_into_used_folder, 2,
        ("submission/test1_pred_ranks_recall.json: submission file exists (test1_pred_ranks_recall.json); "
         "expected a new file: choose another --out, or pass --overwrite to replace it",),
        after=_submission_untouched),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_cli_input_is_one_line(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request) -> None:
    needs_demo = case.build in (_submit_into_used_folder,) or any(
        word in request.node.callspec.id for word in ("method-checkpoint", "run-folder"))
    env = Env(tmp=tmp_path, monkeypatch=monkeypatch, weights=request.getfixturevalue("tiny_weights"),
              demo=request.getfixturevalue("cirr_demo") if needs_demo else tmp_path / "no-demo")
    argv = case.build(env)
    code, _, err = run_cli(argv)
    assert_one_line_error(code, err, case.code, case.expect)
    for relative in case.absent:
        assert not (tmp_path / relative).exists(), f"{relative} was left behind"
    if case.after is not None:
        case.after(env)


def test_the_payload_is_live_under_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: with the variable set, a plain torch.load DOES run the payload, so the cases
    above (marker absent) would fail if any path loaded without an explicit weights_only=True."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = write_evil(tmp_path / "evil.pt", tmp_path / MARKER)
    with pytest.warns(UserWarning):
        torch.load(path)
    assert (tmp_path / MARKER).is_dir()


def test_open_clip_trains_resume_read_is_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one load open_clip_train makes itself (``pt_load``, for ``--resume``) is replaced for the
    run, so even a file that passed no irkit check cannot run code."""
    from irkit.errors import InputError
    from irkit.train.clip import ClipTrainConfig, _patched_open_clip_train

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    evil = write_evil(tmp_path / "evil.pt", tmp_path / MARKER)
    with _patched_open_clip_train(ClipTrainConfig(train_csv=tmp_path / "t.csv")) as oct_main:
        with pytest.raises(InputError, match="refused to unpickle the global posix.mkdir"):
            oct_main.pt_load(str(evil), map_location="cpu")
    assert not (tmp_path / MARKER).exists()
    import open_clip_train.main as oct_main_module
    from open_clip_train.file_utils import pt_load

    assert oct_main_module.pt_load is pt_load  # restored after the run


# --------------------------------------------------------------------------- flows (several commands each)


def _truncate(image: Path) -> None:
    """Keep the header (PIL identifies it) but cut the pixel data: decoding fails during training."""
    Image.new("RGB", (64, 64), (10, 200, 90)).save(image.with_suffix(".tmp.png"))
    data = image.with_suffix(".tmp.png").read_bytes()
    image.with_suffix(".tmp.png").unlink()
    image.write_bytes(data[: len(data) // 2])


def test_train_clip_failure_is_recorded_and_the_name_reusable(tmp_path: Path) -> None:
    """A training that fails after open_clip_train made the folder: one line, exit 1, ``FAILED`` in
    the folder; the same --name then runs (the failed attempt moved to ``run.failed-1``); resuming
    it with changed hyper-parameters is refused, listing them, and leaves params.txt as it was."""
    log = tmp_path / "log"
    common = ["train", "clip", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--lr", "1e-3",
              "--warmup", "1", "--log-dir", log, "--name", "run"]
    bad_csv = write_train_csv(tmp_path / "bad", broken=_truncate)
    code, _, err = run_cli([*common, "--train-csv", bad_csv])
    line = assert_one_line_error(code, err, 1, ("training failed (", "OSError", f"{log / 'run'} is marked FAILED",
                                                "rerun with the same --name to start again"))
    marker = log / "run" / "FAILED"
    assert marker.is_file(), line
    assert marker.read_text().splitlines()[0].startswith("OSError: ")
    assert "Traceback (most recent call last)" in marker.read_text()

    good_csv = write_train_csv(tmp_path / "good")
    code, out, err = run_cli([*common, "--train-csv", good_csv])
    assert code == 0, err
    assert json.loads(out)["final_checkpoint"] == str(log / "run" / "checkpoints" / "epoch_1.pt")
    assert not (log / "run" / "FAILED").exists()
    assert (log / "run.failed-1" / "FAILED").is_file()  # the failed attempt is kept, not overwritten

    params_before = (log / "run" / "params.txt").read_text()
    assert "lr: 0.001\n" in params_before and "epochs: 1\n" in params_before
    code, _, err = run_cli([*common[:-4], "--log-dir", log, "--name", "run", "--train-csv", good_csv,
                            "--resume", "latest"] + ["--lr", "0.01"])
    assert_one_line_error(code, err, 2, ("params.txt: resuming with changed hyper-parameters (lr: 0.001 -> 0.01)",
                                         "--allow-param-change"))
    assert (log / "run" / "params.txt").read_text() == params_before
    assert not list((log / "run").glob("params_before_resume_*"))


def _lincir(env_tmp: Path, demo: Path, weights: Path, *extra) -> list:
    return ["cir", "train-phi", "--method", "lincir", "--captions", demo / "captions" / "cirr_train.csv",
            "--checkpoint", weights, "--steps", "2", "--train-batch-size", "4", "--log-dir", env_tmp / "log",
            "--name", "phi", "--num-workers", "0", "--cache-dir", "none", *extra]


def test_train_phi_failure_rerun_and_changed_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    tiny_weights: Path, cirr_demo: Path) -> None:
    """cir train-phi: a failure inside training marks the folder FAILED (one line, exit 1); the same
    --name runs again; --resume latest with another --lr is refused unless --allow-param-change;
    more --steps is let through; both keep the old params.txt as params_before_resume_<n>.txt."""
    import irkit.workflows.cir as workflows

    real_train_phi = workflows.train_phi

    def failing(*args, **kwargs):
        raise RuntimeError("simulated failure\nsecond line")

    monkeypatch.setattr(workflows, "train_phi", failing)
    code, _, err = run_cli(_lincir(tmp_path, cirr_demo, tiny_weights))
    assert_one_line_error(code, err, 1, ("training failed (RuntimeError: simulated failure)", "is marked FAILED"))
    assert (tmp_path / "log" / "phi" / "FAILED").read_text().startswith("RuntimeError: simulated failure\n")
    assert "run failed: simulated failure" in (tmp_path / "log" / "phi" / "out.log").read_text()
    assert "run failed" not in err  # the console has the command's one line only

    monkeypatch.setattr(workflows, "train_phi", real_train_phi)
    code, out, err = run_cli(_lincir(tmp_path, cirr_demo, tiny_weights))
    assert code == 0, err
    assert (tmp_path / "log" / "phi.failed-1" / "FAILED").is_file()
    run = tmp_path / "log" / "phi"
    original = (run / "params.txt").read_text()
    assert "learning_rate: 0.0001\n" in original

    code, _, err = run_cli(_lincir(tmp_path, cirr_demo, tiny_weights, "--resume", "latest", "--lr", "0.001"))
    assert_one_line_error(code, err, 2, ("phi/params.txt: resuming with changed hyper-parameters "
                                         "(learning_rate: 0.0001 -> 0.001)",))
    assert (run / "params.txt").read_text() == original

    # Training longer is a change a resume may make without the flag; it is recorded all the same.
    code, out, err = run_cli(_lincir(tmp_path, cirr_demo, tiny_weights, "--resume", "latest", "--steps", "3"))
    assert code == 0, err
    assert json.loads(out)["latest_checkpoint"].endswith("latest.pt")
    assert (run / "params_before_resume_1.txt").read_text() == original
    longer = original.replace("steps: 2\n", "steps: 3\n")
    assert longer != original and (run / "params.txt").read_text() == longer
    assert "resumed with changed hyper-parameters: steps: 2 -> 3" in (run / "out.log").read_text()

    code, _, err = run_cli(_lincir(tmp_path, cirr_demo, tiny_weights, "--resume", "latest", "--steps", "3",
                                   "--lr", "0.001", "--allow-param-change"))
    assert code == 0, err
    assert (run / "params_before_resume_2.txt").read_text() == longer
    assert (run / "params.txt").read_text() == longer.replace("learning_rate: 0.0001\n", "learning_rate: 0.001\n")
    assert "resumed with changed hyper-parameters: learning_rate: 0.0001 -> 0.001" in (run / "out.log").read_text()


def test_failed_run_with_checkpoints_is_continued_not_replaced(tmp_path: Path) -> None:
    """A FAILED run that holds checkpoints keeps its name: a new run is refused (one line), and a
    resume clears the mark."""
    from irkit.errors import InputError, RunFailed
    from irkit.runs import RunFolder

    run = RunFolder.create(tmp_path, "r", {"lr": 1})
    with pytest.raises(RunFailed, match=r"training failed \(ValueError: bad step\)"):
        with run.failure_recorded():
            run.save_checkpoint({"step": 1}, epoch=1)
            raise ValueError("bad step")
    with pytest.raises(InputError, match=r"this run failed earlier \(ValueError: bad step\) after writing "
                                         r"checkpoints; continue it with --resume latest"):
        RunFolder.create(tmp_path, "r", {"lr": 1})
    resumed = RunFolder.open_existing(tmp_path / "r", {"lr": 1})
    resumed.close()
    assert not (tmp_path / "r" / "FAILED").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and everything below it, by relative path."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def test_outputs_respect_the_umask(tmp_path: Path, umask, tiny_weights: Path, cirr_demo: Path) -> None:
    """Under umask 022 every file irkit writes is 0644 and every folder 0755 (run folder, collection,
    single output file); under 027 they are 0640 / 0750, so no mode is hard-coded."""
    umask(0o022)
    assert run_cli(["cir", "phrases", "--out", tmp_path / "phrases.tsv"])[0] == 0
    assert run_cli(_lincir(tmp_path, cirr_demo, tiny_weights))[0] == 0
    images = tmp_path / "images"
    for i in range(3):
        write_image(images / f"{i}.png", (40 * i, 90, 200))
    code, _, err = run_cli(["embed", "images", "--images", images, "--out", tmp_path / "collection", "--checkpoint",
                            tiny_weights, "--num-workers", "0", "--cache-dir", "none"])
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "phrases.tsv").stat().st_mode) == 0o644
    for root in (tmp_path / "log" / "phi", tmp_path / "collection"):
        modes = _modes(root)
        assert len(modes) > 4, modes
        wrong = {name: oct(mode) for name, mode in modes.items()
                 if mode != (0o755 if (root / name).is_dir() else 0o644)}
        assert not wrong, wrong

    umask(0o027)
    assert run_cli(["cir", "phrases", "--out", tmp_path / "phrases-027.tsv"])[0] == 0
    assert run_cli(_lincir(tmp_path / "u027", cirr_demo, tiny_weights))[0] == 0
    assert stat.S_IMODE((tmp_path / "phrases-027.tsv").stat().st_mode) == 0o640
    modes = _modes(tmp_path / "u027" / "log" / "phi")
    assert {oct(m) for m in modes.values()} == {"0o750", "0o640"}, modes


def test_submit_overwrite_replaces_only_when_asked(tmp_path: Path, tiny_weights: Path, cirr_demo: Path) -> None:
    out = tmp_path / "submission"
    out.mkdir()
    (out / "test1_pred_ranks_recall.json").write_text('{"kept": true}')
    argv = ["cir", "submit", "--dataset", "cirr", "--root", cirr_demo / "cirr", "--split", "test1", "--method",
            "image-only", "--checkpoint", tiny_weights, "--out", out, "--num-workers", "0", "--cache-dir", "none"]
    (out / "unrelated.json").write_text("{}")  # other files in --out do not matter
    code, _, err = run_cli(argv)
    assert_one_line_error(code, err, 2, ("submission file exists",))
    code, printed, err = run_cli([*argv, "--overwrite"])
    assert code == 0, err
    written = json.loads(printed)["written"]
    assert sorted(Path(p).name for p in written) == ["test1_pred_ranks_recall.json",
                                                     "test1_pred_ranks_recall_subset.json"]
    replaced = json.loads((out / "test1_pred_ranks_recall.json").read_text())
    assert "kept" not in replaced and replaced["version"] == "rc2" and replaced["metric"] == "recall"
    assert (out / "unrelated.json").read_text() == "{}"


def test_batch_best_still_picks_the_highest_metric(tmp_path: Path) -> None:
    """The checks above leave the valid case alone: the run with the higher trained metric is copied."""
    _reproduce_run(tmp_path / "runs" / "a", GOOD_METRICS)
    _reproduce_run(tmp_path / "runs" / "b", GOOD_METRICS.replace("12.5", "20.0"))
    (tmp_path / "runs" / "b" / "submission.json").write_text('{"results": []}')
    code, out, err = run_cli(["batch", "best", tmp_path / "runs", "--out", tmp_path / "review", "--metric",
                              "official_mAP@10"])
    assert code == 0, err
    assert json.loads(out)["best_run"] == str(tmp_path / "runs" / "b")
    source = json.loads((tmp_path / "review" / "SOURCE.json").read_text())
    assert source["value"] == 20.0 and "checkpoint" not in source  # none.pt does not exist
    assert (tmp_path / "review" / "submission.json").read_text() == '{"results": []}'
    assert (tmp_path / "review" / "params.txt").read_text() == "model: irkit-tiny\n"
