#!/usr/bin/env bash
# GPU checks on a bare GPU machine (python with a CUDA torch + transformers, no network), within
# 540 s in all (the device allows 600 s per command): each step has its own budget, every step runs
# even after one fails, one summary table at the end, exit 1 if any step failed.
#   setup    offline, before any CUDA call: the Python version checked (3.10-3.13); the packages
#            the run imports from tests/gpu/wheelhouse (make_wheelhouse.sh: at most 64 MiB, checked
#            here); vicuna_sft itself (editable, --no-deps: `pkg://vicuna_sft.conf` exists only
#            installed); the headline's config composed (python -m vicuna_sft --cfg job).
#   pytest   pytest -m gpu (tests/gpu): each flash/xformers kernel vs an fp32 reference, padded and
#            packed, forward and backward, GQA, the sliding window; chunked/liger vs full; qlora.
#   headline python -m vicuna_sft attention=flash fsdp=full_shard, bf16, tiny model, 40 steps: the
#            loss decreases by > 0.5.
#   liger    the same run with loss=liger (liger-kernel's fused linear cross-entropy), fsdp=none.
#   qlora    the same run (fsdp=full_shard: FSDP-QLoRA, the nf4 base stored in bf16 and sharded by
#            FSDP2) with adapter=qlora and optimizer=paged_adamw_8bit (CUDA only: refused on CPU).
# The runs read data lazily (no datasets package needed) and log to no tracker (report_to=[]).
# SETUP_ONLY=1 stops after setup (tests/gpu/prove_offline_setup.sh runs it so on CPU).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
[[ "$PY" != */* ]] || PY=$(realpath -s "$PY")  # absolute (a venv python is a symlink: keep it)
OUT=${OUT:-$(mktemp -d)}
WHEELS=tests/gpu/wheelhouse
WHEELHOUSE_LIMIT_MIB=64
TOTAL_BUDGET=540
BUDGETS=(setup:90 pytest:180 headline:120 liger:60 qlora:90)
export PY OUT WHEELS WHEELHOUSE_LIMIT_MIB VICUNA_SFT_CACHE="$OUT/cache"
export HEADLINE="attention=flash fsdp=full_shard trainer.precision=bf16 trainer.max_steps=40
  trainer.per_device_train_batch_size=8 trainer.logging_steps=5 trainer.save_strategy=no
  trainer.resume=never trainer.report_to=[] optimizer.lr=3e-3 optimizer.warmup_ratio=0.05
  data.lazy=true data.eval_fraction=0"

step_setup() {
  $PY -c "import sys; v = sys.version_info[:2]; print('python', sys.version.split()[0]); \
sys.exit(0 if (3, 10) <= v <= (3, 13) else f'python {v} is outside the 3.10-3.13 the wheelhouse is built for')" || return 1
  local pkgs="hydra-core omegaconf accelerate peft psutil xxhash pytest"
  if [ -d "$WHEELS" ]; then
    local mib=$(( ($(du -sb "$WHEELS" | cut -f1) + 1048575) / 1048576 ))
    echo "wheelhouse: $(ls "$WHEELS" | wc -l) wheels, $mib MiB (limit $WHEELHOUSE_LIMIT_MIB)"
    [ "$mib" -le "$WHEELHOUSE_LIMIT_MIB" ] || { echo "wheelhouse over $WHEELHOUSE_LIMIT_MIB MiB"; return 1; }
    $PY -m pip install -q --no-index --find-links "$WHEELS" $pkgs || return 1
    $PY -m pip install -q --no-index --find-links "$WHEELS" --no-deps -e . || return 1
    for opt in liger-kernel bitsandbytes; do  # optional: their steps skip without them
      $PY -m pip install -q --no-index --no-deps --find-links "$WHEELS" "$opt" 2>/dev/null \
        || echo "$opt not installable from the wheelhouse: its step will be skipped"
    done
  else
    echo "no $WHEELS: installing from an index (make_wheelhouse.sh builds it where PyPI is reachable)"
    $PY -m pip install -q $pkgs && $PY -m pip install -q --no-deps -e . || return 1
  fi
  $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('vicuna_sft.conf') is None)" \
    || { echo "vicuna_sft.conf is not importable after the install"; return 1; }
  (cd "$OUT" && $PY -m vicuna_sft $HEADLINE --cfg job > headline_config.yaml) || return 1
  echo "headline config composes ($(wc -l < "$OUT/headline_config.yaml") lines)"
}

step_pytest() {
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || return 1
  $PY -m pytest -m gpu tests/gpu -q -rs -s -p no:cacheprovider 2>&1 | tail -40
}

train_and_check() {  # $1: run name, rest: extra overrides; the loss must fall by > $MIN_DROP
  local name=$1; shift
  $PY -m vicuna_sft $HEADLINE "$@" hydra.run.dir="$OUT/$name" 2>&1 | grep -v "it/s]" | tail -12
  $PY - "$OUT/$name/result.json" "$name" "${MIN_DROP:-0.5}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
first, last = r["first_train_loss"], r["final_train_loss"]
print(f"{sys.argv[2]}: {r['global_step']} steps, loss {first:.4f} -> {last:.4f}")
assert r["global_step"] == 40 and last < first - float(sys.argv[3]), r
PY
}

step_headline() { train_and_check headline; }

step_liger() {
  $PY -c "import liger_kernel" 2>/dev/null || { echo "liger-kernel not installed"; return 77; }
  train_and_check liger fsdp=none loss=liger
}

step_qlora() {
  $PY -c "import bitsandbytes" 2>/dev/null || { echo "bitsandbytes not installed"; return 77; }
  MIN_DROP=0 train_and_check qlora adapter=qlora optimizer=paged_adamw_8bit optimizer.lr=2e-2
}
export -f step_setup step_pytest train_and_check step_headline step_liger step_qlora

total=0
for b in "${BUDGETS[@]}"; do total=$((total + ${b#*:})); done
[ "$total" -le "$TOTAL_BUDGET" ] || { echo "step budgets add up to $total s > $TOTAL_BUDGET s" >&2; exit 2; }
start=$SECONDS
rows=()
failed=0
for b in "${BUDGETS[@]}"; do
  name=${b%%:*} budget=${b#*:}
  echo "== $name (budget $budget s)"
  t0=$SECONDS
  timeout --kill-after=5 "$budget" bash -c "step_$name"
  rc=$?
  case $rc in
    0) status=passed ;;
    77) status=skipped ;;
    124 | 137) status="FAILED (over $budget s)"; failed=1 ;;
    *) status="FAILED (exit $rc)"; failed=1 ;;
  esac
  rows+=("$(printf '%-9s %-24s %4d s / %3d s' "$name" "$status" $((SECONDS - t0)) "$budget")")
  if [ "$name" = setup ] && [ "${SETUP_ONLY:-0}" = 1 ]; then
    echo "SETUP_ONLY=1: stopping before the first CUDA call"
    break
  fi
done
echo "== summary ($((SECONDS - start)) s of $TOTAL_BUDGET s)"
printf '%s\n' "${rows[@]}"
exit $failed
