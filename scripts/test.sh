#!/usr/bin/env bash
# Sets up a virtual environment with cocktail-gguf built from this checkout (CPU) and runs the tests.
# Usage: bash scripts/test.sh [pytest args]   (COCKTAIL_VENV=path picks the venv, default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${COCKTAIL_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check --upgrade pip
# CPU torch for the sentence-transformers encoders (pinned: a plain `torch` would pull a CUDA build)
"$py" -m pip install -q --disable-pip-version-check "torch==2.13.0"
echo "== building cocktail-gguf (pinned llama.cpp, ~3-5 min on 2 cores)"
"$py" -m pip install -q --disable-pip-version-check ".[test]"
echo "== tests"
# pytest (not `python -m pytest`) keeps the source tree off sys.path: the installed package is tested
"$venv/bin/pytest" -q "$@"
