"""The traffic pipeline's documented bad inputs each give one clear line and no output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from irkit.data.demo import generate_demo


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, seed=0, scale="tiny", datasets=("traffic",), progress=False)
    return root / "traffic"


def _irkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "irkit", *args], capture_output=True, text=True, timeout=300)


def _assert_one_clear_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("irkit: error:")]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def test_label_file_with_wrong_separator(demo_root: Path, tmp_path: Path) -> None:
    labels = tmp_path / "train_label.txt"
    lines = (demo_root / "train" / "train_label.txt").read_text().splitlines()
    lines[3] = lines[3].replace("$", "\t")
    labels.write_text("\n".join(lines) + "\n")
    out = tmp_path / "car_attribute.json"
    done = _irkit("preprocess", "attributes", "--labels", str(labels), "--out", str(out))
    _assert_one_clear_line(done, str(labels), "line 4", "'$'", "tab")
    assert not out.exists()


def test_missing_image(demo_root: Path, tmp_path: Path) -> None:
    images = tmp_path / "train_images"
    shutil.copytree(demo_root / "train" / "train_images", images)
    first_image = (demo_root / "train" / "train_label.txt").read_text().splitlines()[0].split("$")[0]
    (images / first_image).unlink()
    out = tmp_path / "train.csv"
    done = _irkit("preprocess", "csv", "--labels", str(demo_root / "train" / "train_label.txt"),
                  "--images", str(images), "--out", str(out), "--caption", "text")
    _assert_one_clear_line(done, first_image, "line 1")
    assert not out.exists()


def test_empty_test_text(demo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "traffic"
    shutil.copytree(demo_root, root)
    (root / "test" / "test_text.txt").write_text("")
    out = tmp_path / "out"
    done = _irkit("infer", "traffic", "--root", str(root), "--out", str(out), "--cache-dir", str(tmp_path / "c"))
    _assert_one_clear_line(done, "test_text.txt", "empty")
    assert not (out / "vehicle_results.json").exists()


def test_nonexistent_checkpoint(demo_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "epoch_9.pt"
    out = tmp_path / "out"
    done = _irkit("infer", "traffic", "--root", str(demo_root), "--checkpoint", str(missing), "--out", str(out))
    _assert_one_clear_line(done, str(missing), "not found")
    assert not out.exists() or not any(out.iterdir())
