#!/usr/bin/env bash
# Create (or refresh) the project virtual environment .venv with pinned requirements.
# Idempotent: skips pip when requirements.txt and pyproject.toml are unchanged since the last
# successful install (stamp file inside .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${IRKIT_BASE_PYTHON:-$(command -v python3.11 || command -v python3)}"
# Headless Chromium for the browser tests (report page, search app): Debian's package, driven by
# Playwright from requirements.txt (never a downloaded browser build). Only `--with-browser`
# (script/test.sh) installs it: the reproduction and the other scripts never start a browser.
WITH_BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --with-browser) WITH_BROWSER=1 ;;
    *) echo "[setup] unknown option '$arg' (expected --with-browser)" >&2; exit 2 ;;
  esac
done
if [ "$WITH_BROWSER" -eq 1 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[setup] installing Debian's chromium (browser tests)" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.irkit-install-stamp
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements (torch/torchvision install from the local wheel cache here)" >&2
  # pip compiles bytecode at install (its default). Do not skip it: where PYTHONDONTWRITEBYTECODE
  # is set (as on CI machines) no bytecode is ever written later, and every process would compile
  # torch and open_clip from source again (measured: import open_clip 14 s instead of a few).
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import irkit, open_clip, open_clip_train.main, faiss, papermill, fastapi, uvicorn, playwright" \
    || { echo "[setup] import check failed" >&2; exit 1; }
  .venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
fi
