#!/usr/bin/env bash
# Idempotent setup for reconet: Debian packages, the virtual environment at .venv/, the project.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# libchromaprint-tools: fpcalc, the Chromaprint anchor of benchmarks/song_id.py
APT_PACKAGES=(ffmpeg espeak-ng libchromaprint-tools)
PYTHON=${PYTHON:-python3.11}

missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v fpcalc >/dev/null 2>&1 || missing+=(libchromaprint-tools)
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

# Re-install only when the dependency list (or the extras installed) changed. The dask extra is
# installed for its test (tests/test_dask_executor.py: a run's steps on a local Dask cluster).
EXTRAS=dev,dask
stamp=.venv/.reconet-installed
want=$({ cat pyproject.toml; echo "$EXTRAS"; } | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing reconet and its dependencies into .venv (torch is large: minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi

# The separation backends: the official Spleeter environment, its model files, the PyTorch weights.
scripts/setup_spleeter.sh

# The project's Dagster instance folder (DAGSTER_HOME, see Makefile).
mkdir -p .dagster
