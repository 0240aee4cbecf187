#!/usr/bin/env bash
# Fill tests/gpu/wheelhouse with WHEELS of everything run_gpu_checks.sh needs beyond torch + transformers
# (and their own dependencies), for a GPU machine without network. Run where PyPI is reachable.
#
# tests/gpu/wheelhouse is git-ignored: it must travel with the tree to the GPU machine (copy or carry
# the folder along with the checkout).
#
# `pip wheel`, not `pip download`: antlr4-python3-runtime 4.9.3 (hydra-core's parser) exists only as
# an sdist, which `pip install --no-index` cannot build there (no setuptools to fetch). The packages
# that depend on torch are taken --no-deps: resolving them would pull a (CUDA) torch into the folder.
# setuptools/wheel: the build backend for `pip install -e .` (vicuna_sft itself, offline).
# tests/gpu/prove_offline_setup.sh proves the folder is complete (fresh venv, pip --no-index).
# Usage: make_wheelhouse.sh [OUTPUT_DIR]   (default: tests/gpu/wheelhouse)
set -euo pipefail
OUTDIR=$(realpath -m "${1:-$(dirname "$0")/wheelhouse}")
PY=${PYTHON:-python}
rm -rf "$OUTDIR.tmp" && mkdir -p "$OUTDIR.tmp"
# Packages that depend on torch: --no-deps (the GPU machine's own CUDA torch must stay).
$PY -m pip wheel -q --no-deps -w "$OUTDIR.tmp" \
  "accelerate>=1.15,<1.16" "peft>=0.17" "bitsandbytes>=0.48" "liger-kernel>=0.5"
# Everything else vicuna_sft needs, with its whole dependency closure (none of it needs torch):
# `pip install --no-index -e .` there then resolves from this folder and the installed torch/transformers.
# --no-binary tomli: its binary wheels are per Python version; the GPU machine's Python may differ.
# Binary wheels (numpy, pyarrow, matplotlib, grpcio, ...) are for THIS Python: build the wheelhouse
# with the GPU machine's Python version (PYTHON=python3.X).
$PY -m pip wheel -q --no-binary tomli -w "$OUTDIR.tmp" \
  "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3,<2.4" "antlr4-python3-runtime==4.9.3" "datasets>=3.0" \
  "psutil>=5.9" "filelock>=3.12" "markdownify>=1.1" "xxhash>=3" "matplotlib>=3.7" "tensorboard>=2.14" \
  "hydra-optuna-sweeper>=1.2" "pytest>=8" "setuptools>=70.1" wheel
rm -rf "$OUTDIR" && mv "$OUTDIR.tmp" "$OUTDIR"
bad=$(find "$OUTDIR" -type f ! -name '*.whl')
[ -z "$bad" ] || { echo "not a wheel: $bad" >&2; exit 1; }
echo "$OUTDIR: $(ls "$OUTDIR" | wc -l) wheels ($(du -sh "$OUTDIR" | cut -f1)); carry it to the GPU machine as tests/gpu/wheelhouse"
