#!/usr/bin/env bash
# Download (never install) the wheels that bench/gpu_check.sh needs on a bare, offline GPU machine
# (Python 3.12, x86-64, CUDA torch 2.11 + triton preinstalled; transformers there is 5.17, too old).
# Run here, in the repo root; wheels land in .whl/ (git-ignored) and travel with the working tree.
#   bash bench/fetch_gpu_wheels.sh          # transformers, tokenizers, liger-kernel (~16 MB)
#   bash bench/fetch_gpu_wheels.sh --train  # + hydra-core, omegaconf, antlr4 for train.py runs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}   # the Python of your venv (pip download only)
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -qx '/.whl/' .gitignore || echo '/.whl/' >> .git/info/exclude
WHEELS=(transformers==5.24.0 tokenizers==0.23.3 liger-kernel==0.8.5)
if [[ "${1:-}" == "--train" ]]; then
  WHEELS+=(hydra-core==1.3.8 omegaconf==2.3.1)
  # antlr4-python3-runtime 4.9.3 (omegaconf's parser) is published as an sdist only: build a pure wheel.
  "$PY" -m pip wheel --no-deps -q -w .whl antlr4-python3-runtime==4.9.3
fi
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -la .whl
du -sh .whl
