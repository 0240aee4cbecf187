#!/usr/bin/env bash
# Fill tests/gpu/wheelhouse with the wheels run_gpu_checks.sh installs on a GPU machine without
# network: only what the GPU run imports beyond the machine's own torch + transformers (and their
# dependencies: numpy, pyyaml, packaging, huggingface_hub, safetensors, tokenizers, tqdm, filelock):
#   hydra-core, omegaconf, antlr4 (hydra's parser), accelerate, peft, psutil, xxhash, pytest (+ its
#   own small dependencies), bitsandbytes (adapter=qlora), liger-kernel (loss=liger), setuptools
#   (the build backend of `pip install -e . --no-deps`, vicuna_sft itself).
# Not included: datasets (the GPU run reads data lazily), matplotlib and tensorboard (optional at run
# time: no plots, report_to=[]), the sweepers. Versions: requirements/oldest.lock, whose
# transformers (5.17) is the GPU image's. Compiled wheels for CPython 3.10-3.13 (the GPU machine's
# Python is checked by the script). Run where PyPI is reachable; the folder is git-ignored and must
# travel with the tree (carry tests/gpu/wheelhouse): at most 64 MiB, checked here and on arrival.
# Usage: make_wheelhouse.sh [OUTPUT_DIR]   (default: tests/gpu/wheelhouse)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUTDIR=$(realpath -m "${1:-$ROOT/tests/gpu/wheelhouse}")
PY=${PYTHON:-python3}
LOCK=$ROOT/requirements/oldest.lock
LIMIT_MIB=64
pin() { grep -iE "^$1==" "$LOCK" | cut -d' ' -f1; }  # name==version from the lock
PURE=(hydra-core omegaconf accelerate peft pytest iniconfig pluggy pygments setuptools bitsandbytes)
COMPILED=(psutil xxhash)
rm -rf "$OUTDIR.tmp" && mkdir -p "$OUTDIR.tmp"
dl() { $PY -m pip download -q --no-deps --only-binary=:all: -d "$OUTDIR.tmp" "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
for name in "${PURE[@]}"; do dl "$(pin "$name")"; done
dl "liger-kernel==0.8.5"  # not in the CPU lock (CUDA only)
# pytest's two extra dependencies on Python 3.10, as pure wheels
dl --python-version 3.10 --implementation py --abi none --platform any "exceptiongroup>=1" "tomli>=1"
for v in 3.10 3.11 3.12 3.13; do
  for name in "${COMPILED[@]}"; do
    dl --python-version "$v" --implementation cp --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$(pin "$name")"
  done
done
# antlr4-python3-runtime 4.9.3 exists only as an sdist, which pip --no-index cannot build there
$PY -m pip wheel -q --no-deps -w "$OUTDIR.tmp" "$(pin antlr4-python3-runtime)" 2>&1 | grep -v "^WARNING: Location" || true
bad=$(find "$OUTDIR.tmp" -type f ! -name '*.whl')
[ -z "$bad" ] || { echo "not a wheel: $bad" >&2; exit 1; }
for v in 310 311 312 313; do
  for name in "${COMPILED[@]}"; do
    ls "$OUTDIR.tmp" | grep -iqE "^${name}-.*-(cp$v|cp3[0-9]*-abi3|abi3)" \
      || ls "$OUTDIR.tmp" | grep -iqE "^${name}-.*abi3" || { echo "no $name wheel for cp$v" >&2; exit 1; }
  done
done
mib=$(( ($(du -sb "$OUTDIR.tmp" | cut -f1) + 1048575) / 1048576 ))
[ "$mib" -le "$LIMIT_MIB" ] || { echo "wheelhouse is $mib MiB, over the $LIMIT_MIB MiB that can travel" >&2; exit 1; }
rm -rf "$OUTDIR" && mv "$OUTDIR.tmp" "$OUTDIR"
echo "$OUTDIR: $(ls "$OUTDIR" | wc -l) wheels, $mib MiB (limit $LIMIT_MIB); carry it as tests/gpu/wheelhouse"
