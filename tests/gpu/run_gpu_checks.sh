#!/usr/bin/env bash
# GPU checks on a bare GPU machine (python with a CUDA torch + transformers, no network), < 8 minutes:
#   0. setup, offline, before any CUDA call: missing packages from tests/gpu/wheelhouse, then
#      vicuna_sft itself, always (editable, --no-deps): `import vicuna_sft` succeeds from the repository
#      root without an install, but `pkg://vicuna_sft.conf` (Hydra's configs) exists only installed.
#      Then the headline's config is composed (python -m vicuna_sft --cfg job) as a check.
#   1. pytest -m gpu (tests/gpu): each flash/xformers kernel vs an fp32 reference, padded and packed,
#      forward (logits) and backward (gradients), GQA, plus the sliding-window path
#   2. the headline run: python -m vicuna_sft attention=flash fsdp=full_shard, bf16, tiny model,
#      40 steps, checking that the loss decreases.
#   3. the same run with loss=liger (liger-kernel's fused linear cross-entropy), when it is installed
#      or in the wheelhouse (tests/gpu/test_loss_gpu.py, part of step 1, compares it with loss=full).
#   4. the same run (fsdp=none) with adapter=qlora: a bitsandbytes nf4 base on CUDA, LoRA on every
#      linear layer; the loss decreases (tests/gpu/test_adapters_gpu.py, part of step 1, checks the
#      4-bit layers, what trains and the merged bf16 final/).
#
# tests/gpu/wheelhouse is git-ignored and MUST TRAVEL WITH THE TREE: fill it where PyPI is reachable
# with tests/gpu/make_wheelhouse.sh and carry the folder to the GPU machine.
# SETUP_ONLY=1 stops before the first CUDA call (tests/gpu/prove_offline_setup.sh runs it so on CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
[[ "$PY" != */* ]] || PY=$(realpath -s "$PY")  # absolute (a venv python is a symlink: keep it)
OUT=${OUT:-$(mktemp -d)}
WHEELS=tests/gpu/wheelhouse
start=$SECONDS

echo "== 0 setup (offline)"
# vicuna_sft and every dependency the machine lacks, offline from the wheelhouse (torch and
# transformers are the machine's own). Always installed: an import from the repository root does not
# prove the package (and its conf/) is installed.
if [ -d "$WHEELS" ]; then
  echo "installing vicuna_sft and the dependencies this machine lacks, offline from $WHEELS"
  $PY -m pip install -q --no-index --find-links "$WHEELS" -e . pytest
else
  echo "no $WHEELS: installing from an index (run tests/gpu/make_wheelhouse.sh where PyPI is reachable, carry the folder)"
  $PY -m pip install -q -e . pytest
fi
$PY -c "import liger_kernel" 2>/dev/null || [ ! -d "$WHEELS" ] || \
  $PY -m pip install -q --no-index --no-deps --find-links "$WHEELS" liger-kernel 2>/dev/null || \
  echo "liger-kernel not available: loss=liger checks skipped"
$PY -c "import bitsandbytes" 2>/dev/null || [ ! -d "$WHEELS" ] || \
  $PY -m pip install -q --no-index --no-deps --find-links "$WHEELS" bitsandbytes 2>/dev/null || \
  echo "bitsandbytes not available: adapter=qlora checks skipped"
$PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('vicuna_sft.conf') is None)" \
  || { echo "vicuna_sft.conf is not importable after the install" >&2; exit 1; }
HEADLINE=(attention=flash fsdp=full_shard trainer.precision=bf16
  trainer.max_steps=40 trainer.per_device_train_batch_size=8 trainer.logging_steps=5
  trainer.save_strategy=no trainer.resume=never optimizer.lr=3e-3 optimizer.warmup_ratio=0.05
  data.lazy=true data.eval_fraction=0)
(cd "$OUT" && $PY -m vicuna_sft "${HEADLINE[@]}" --cfg job > headline_config.yaml)
echo "headline config composes ($(wc -l < "$OUT/headline_config.yaml") lines)"
if [ "${SETUP_ONLY:-0}" = 1 ]; then
  echo "SETUP_ONLY=1: stopping before the first CUDA call"
  exit 0
fi

$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

echo "== 1/4 pytest -m gpu"
timeout 300 $PY -m pytest -m gpu tests/gpu -q -rs -s -p no:cacheprovider 2>&1 | tail -40

echo "== 2/4 headline run: attention=flash fsdp=full_shard, bf16"
export VICUNA_SFT_CACHE="$OUT/cache"
timeout 240 $PY -m vicuna_sft "${HEADLINE[@]}" hydra.run.dir="$OUT/headline" 2>&1 | grep -v "it/s]" | tail -25
$PY - "$OUT/headline/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
first, last = r["first_train_loss"], r["final_train_loss"]
print(f"headline: {r['global_step']} steps, loss {first:.4f} -> {last:.4f}")
assert r["global_step"] == 40 and last < first - 0.5, r
PY
echo "== 3/4 loss=liger run"
if $PY -c "import liger_kernel" 2>/dev/null; then
  timeout 240 $PY -m vicuna_sft "${HEADLINE[@]}" fsdp=none loss=liger hydra.run.dir="$OUT/liger" 2>&1 | grep -v "it/s]" | tail -8
  $PY - "$OUT/liger/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
first, last = r["first_train_loss"], r["final_train_loss"]
print(f"loss=liger: {r['global_step']} steps, loss {first:.4f} -> {last:.4f}")
assert r["global_step"] == 40 and last < first - 0.5, r
PY
else
  echo "skipped: liger-kernel not installed"
fi
echo "== 4/4 adapter=qlora run (bitsandbytes nf4 base on CUDA, bf16)"
if $PY -c "import bitsandbytes" 2>/dev/null; then
  timeout 240 $PY -m vicuna_sft "${HEADLINE[@]}" fsdp=none adapter=qlora adapter.target_modules=[all-linear] \
    optimizer.lr=2e-2 hydra.run.dir="$OUT/qlora" 2>&1 | grep -v "it/s]" | tail -8
  $PY - "$OUT/qlora/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
first, last = r["first_train_loss"], r["final_train_loss"]
print(f"adapter=qlora: {r['global_step']} steps, loss {first:.4f} -> {last:.4f}; {r['final_dir']}, {r['adapter_dir']}")
assert r["global_step"] == 40 and last < first, r
PY
else
  echo "skipped: bitsandbytes not installed"
fi
echo "all GPU checks passed in $((SECONDS - start)) s"
