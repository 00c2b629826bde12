"""The README's command walkthrough runs as written, in order (issue 15): the fenced bash block
marked ``<!-- readme-commands ... -->`` is executed by bash, line by line as a user would paste
it, with the tiny values of the variables its first line names (SCALE, EPOCHS, BATCH, DATA,
OUT) and ``irkit`` resolving to this checkout; every step's output file is then checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- readme-commands"


def readme_blocks(text: str) -> list[tuple[bool, str]]:
    """Every fenced ``bash`` block of the README as ``(marked, body)``, in order."""
    blocks = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```bash\n(?P<body>.*?)\n```", text, re.DOTALL):
        blocks.append((match.group("before").startswith(MARKER), match.group("body")))
    return blocks


def test_the_marked_block_is_the_command_walkthrough() -> None:
    blocks = readme_blocks((REPO / "README.md").read_text())
    marked = [body for is_marked, body in blocks if is_marked]
    assert len(marked) == 1
    body = marked[0]
    # the newcomer entry points are not part of it (they set up .venv and run for minutes)
    assert "script/reproduce.sh" not in body and "script/test.sh" not in body
    # every command group of the CLI appears
    for group in ("data", "preprocess", "train", "infer", "eval", "embed", "index", "cir"):
        assert re.search(rf"^irkit {group} ", body, re.MULTILINE), group
    # the README's infer example writes the submission.json its eval line scores
    infer = re.search(r"^irkit infer traffic .*?--submission (\S+)", body, re.MULTILINE | re.DOTALL)
    evaluate = re.search(r"^irkit eval traffic .*--predictions (\S+)", body, re.MULTILINE)
    assert infer and evaluate and infer.group(1) == evaluate.group(1)
    assert body.index("irkit infer traffic") < body.index("irkit eval traffic")


@pytest.mark.slow
def test_readme_commands_run_in_order_on_tiny_demo_data(tmp_path: Path) -> None:
    (body,) = [body for is_marked, body in readme_blocks((REPO / "README.md").read_text()) if is_marked]
    shim = tmp_path / "bin" / "irkit"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m irkit "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "SCALE": "tiny", "EPOCHS": "1", "BATCH": "16", "DATA": str(tmp_path / "demo"), "OUT": str(tmp_path / "out"),
           "IRKIT_CACHE_DIR": str(tmp_path / "irkit-cache")}
    work = tmp_path / "work"  # the relative default cache (.cache/irkit) lands here
    work.mkdir()
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", body], capture_output=True, text=True, cwd=work,
                          env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    out, demo = tmp_path / "out", tmp_path / "demo"
    assert {"traffic", "fashioniq", "cirr", "circo", "genecis"} <= {p.name for p in demo.iterdir()}
    # one JSON object per printing command, in the block's order
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{") and line.endswith("}")]
    assert json.loads((out / "car_attribute.json").read_text())
    assert (out / "train.csv").is_file() and (out / "log" / "clip" / "checkpoints" / "epoch_1.pt").is_file()
    assert {"vehicle_results.json", "person_results.json", "inference.json"} <= {p.name for p in (out / "answers").iterdir()}
    # the submission: one answer list per line of test_text.txt, in its order
    queries = (demo / "traffic" / "test" / "test_text.txt").read_text().splitlines()
    submission = json.loads((out / "submission.json").read_text())
    assert [entry["text"] for entry in submission["results"]] == queries
    assert (out / "collection" / "img_emb" / "img_emb_0.npy").is_file()
    assert (out / "collection" / "index" / "image.index").is_file()
    assert (out / "cirr_val_top50.json").is_file()
    # every printed metric is a fraction, and says so
    scored = [p for p in done.stdout.split("\n{") if '"units"' in p]
    assert scored, done.stdout[-2000:]
    for text in re.findall(r'"units": "(\w+)"', done.stdout):
        assert text in ("fraction", "rank"), text
    assert printed  # the one-line JSON commands (preprocess, train, infer, embed) printed their summaries
