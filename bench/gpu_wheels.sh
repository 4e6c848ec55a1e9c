#!/usr/bin/env bash
# Download, here, the wheels that the GPU machine's image lacks (Python 3.12, x86-64), into .whl/
# (ignored by git; carried by the device call). The versions are the ones this checkout's venv uses.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
pkgs=(pydantic pydantic_core annotated-types typing-inspection SQLAlchemy greenlet gguf torch-fidelity
      adversarial-robustness-toolbox codecarbon)
specs=()
for p in "${pkgs[@]}"; do
  v=$("$PY" -m pip show "$p" 2>/dev/null | awk '/^Version:/{print $2}')
  specs+=("$p${v:+==$v}")
done
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${specs[@]}"
du -sh .whl
