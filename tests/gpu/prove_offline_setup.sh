#!/usr/bin/env bash
# Proves on a CPU machine that run_gpu_checks.sh sets itself up on a bare GPU machine WITHOUT NETWORK,
# up to its first CUDA call:
#   1. a copy of the tree (tracked + untracked-not-ignored files) plus tests/gpu/wheelhouse, as the GPU
#      machine receives it (the wheelhouse is git-ignored: it must travel with the tree)
#   2. a fresh virtualenv holding only torch (the CPU build here) and transformers, with their own deps:
#      pip-installed (network), or with BASE_FROM=<python> hard-linked (copied across filesystems) from
#      that environment: exactly the torch + transformers dependency closure, nothing else, no network
#   3. network off: no pip config, no find-links, PIP_NO_INDEX=1, HF_HUB_OFFLINE=1, a bare environment;
#      run_gpu_checks.sh with SETUP_ONLY=1 (offline installs from the wheelhouse, vicuna_sft installed,
#      the headline config composed)
#   4. pytest -m gpu there: collected, and every test skipped for lack of CUDA (no import error)
#   5. the headline command itself: it must get as far as the attention check and stop with its
#      "needs a CUDA GPU" message (config, validation and imports all passed)
#   6. the same command on CPU (attention=sdpa, no FSDP, 2 steps): the training path past that check
#      (data, model, Trainer) has every package it imports
# Step 2 without BASE_FROM uses the network (it stands for the GPU machine's image); so does building
# the wheelhouse (WHEELHOUSE, default tests/gpu/wheelhouse) with make_wheelhouse.sh when it is absent or
# REBUILD_WHEELHOUSE=1. tests/integration/test_gpu_offline_setup.py runs this with BASE_FROM (slow).
# By hand: bash tests/gpu/prove_offline_setup.sh   (recorded output: docs/benchmarks.md, "GPU")
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-$(mktemp -d)}
PYTHON_BOOT=${PYTHON_BOOT:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}  # the CPU wheel, as the Makefile installs it
TRANSFORMERS_SPEC=${TRANSFORMERS_SPEC:-transformers==5.17.0}  # the GPU image's
WHEELHOUSE=$(realpath -m "${WHEELHOUSE:-$ROOT/tests/gpu/wheelhouse}")
BASE_FROM=${BASE_FROM:-}
start=$SECONDS
step() { echo "== [$((SECONDS - start)) s] $*"; }

if [ ! -d "$WHEELHOUSE" ] || [ "${REBUILD_WHEELHOUSE:-0}" = 1 ]; then
  step "building $WHEELHOUSE (network)"
  PYTHON=${PYTHON:-$ROOT/.venv/bin/python} bash "$ROOT/tests/gpu/make_wheelhouse.sh" "$WHEELHOUSE"
fi

step "1. copy of the tree + wheelhouse -> $WORK/tree"
mkdir -p "$WORK/tree"
(cd "$ROOT" && git ls-files --cached --others --exclude-standard \
  | while read -r f; do [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) \
  | tar -xf - -C "$WORK/tree"
rm -rf "$WORK/tree/tests/gpu/wheelhouse" && cp -r "$WHEELHOUSE" "$WORK/tree/tests/gpu/wheelhouse"

step "2. fresh venv with only $TORCH_SPEC and $TRANSFORMERS_SPEC"
VPY=$WORK/venv/bin/python
if [ -z "$BASE_FROM" ]; then
  $PYTHON_BOOT -m venv "$WORK/venv"
  $VPY -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
  $VPY -m pip install -q "$TRANSFORMERS_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
else
  $PYTHON_BOOT -m venv --without-pip "$WORK/venv"  # pip comes from BASE_FROM with the closure
  SITE=$($VPY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # the top-level files/folders of every distribution in the closure of torch + transformers (+ pip)
  "$BASE_FROM" - > "$WORK/base-closure.txt" <<'PY'
import importlib.metadata as md
import pathlib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

todo, seen = ["torch", "transformers", "pip"], {}
while todo:
    name = canonicalize_name(todo.pop())
    if name in seen:
        continue
    dist = seen[name] = md.distribution(name)
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
for dist in seen.values():
    site = pathlib.Path(dist.locate_file(""))
    for top in sorted({pathlib.PurePosixPath(f).parts[0] for f in dist.files or []}):
        if top not in ("..", "__pycache__") and (site / top).exists():
            print(site / top)
PY
  while read -r path; do
    cp -al "$path" "$SITE/" 2>/dev/null || cp -a "$path" "$SITE/"
  done < "$WORK/base-closure.txt"
fi
$VPY -m pip list --format=freeze > "$WORK/base-packages.txt"
echo "base venv: $(wc -l < "$WORK/base-packages.txt") distributions ($(grep -iE '^(torch|transformers)==' "$WORK/base-packages.txt" | tr '\n' ' '))"
for mod in hydra omegaconf accelerate pytest vicuna_sft; do  # (from outside the tree)
  ! (cd "$WORK" && $VPY -c "import $mod" 2>/dev/null) || { echo "the base venv already has $mod" >&2; exit 1; }
done

offline() {  # a bare environment, pip cut off from every index and local wheel folder
  env -i PATH="$WORK/venv/bin:/usr/bin:/bin" HOME="$WORK/home" LANG=C.UTF-8 \
    PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHON="$VPY" "$@"
}

step "3. network off: run_gpu_checks.sh SETUP_ONLY=1"
mkdir -p "$WORK/home" "$WORK/out"
(cd "$WORK/tree" && offline SETUP_ONLY=1 OUT="$WORK/out" bash tests/gpu/run_gpu_checks.sh)

step "4. network off: pytest -m gpu"
(cd "$WORK/tree" && offline "$VPY" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider \
  --junitxml="$WORK/gpu-tests.xml") | tail -15
offline "$VPY" - "$WORK/gpu-tests.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET

suite = ET.parse(sys.argv[1]).getroot().iter("testsuite").__next__()
counts = {k: int(suite.get(k, 0)) for k in ("tests", "errors", "failures", "skipped")}
cases = list(suite.iter("testcase"))
reasons = {c.find("skipped").get("message") for c in cases if c.find("skipped") is not None}
print(f"pytest -m gpu: {counts}, skip reasons {sorted(reasons)}")
assert counts["tests"] > 0 and counts["errors"] == counts["failures"] == 0, counts
assert counts["skipped"] == counts["tests"] == len(cases), counts
assert reasons == {"needs a CUDA device"}, reasons
PY

step "5. network off: the headline command up to its first CUDA call"
set +e
(cd "$WORK/out" && offline VICUNA_SFT_CACHE="$WORK/out/cache" "$VPY" -m vicuna_sft attention=flash \
  fsdp=full_shard trainer.precision=bf16 trainer.max_steps=40 data.lazy=true data.eval_fraction=0 'trainer.report_to=[]' \
  hydra.run.dir="$WORK/out/headline") > "$WORK/headline.log" 2>&1
rc=$?
set -e
tail -3 "$WORK/headline.log"
grep -q "attention=flash needs a CUDA GPU and none is visible here" "$WORK/headline.log" \
  || { echo "the headline stopped elsewhere (rc=$rc): see $WORK/headline.log" >&2; exit 1; }
! grep -q "Traceback" "$WORK/headline.log" || { echo "traceback in $WORK/headline.log" >&2; exit 1; }

step "6. network off: the same training path on CPU (attention=sdpa, no FSDP), 2 steps"
(cd "$WORK/out" && offline VICUNA_SFT_CACHE="$WORK/out/cache" "$VPY" -m vicuna_sft trainer.max_steps=2 \
  trainer.per_device_train_batch_size=8 trainer.save_strategy=no trainer.resume=never data.lazy=true 'trainer.report_to=[]' \
  data.eval_fraction=0 hydra.run.dir="$WORK/out/cpu_run") > "$WORK/cpu_run.log" 2>&1 \
  || { tail -20 "$WORK/cpu_run.log"; echo "the CPU training run failed: $WORK/cpu_run.log" >&2; exit 1; }
offline "$VPY" -c "import json, sys; r = json.load(open(sys.argv[1])); assert r['global_step'] == 2, r; \
print('cpu run: 2 steps, loss', r['final_train_loss'])" "$WORK/out/cpu_run/result.json"

for mod in datasets matplotlib tensorboard; do  # the minimal wheelhouse leaves them out on purpose
  ! offline "$VPY" -c "import $mod" 2>/dev/null || echo "note: the base venv has $mod"
done
step "offline setup proven: $(ls "$WHEELHOUSE" | wc -l) wheels, $(du -sm "$WHEELHOUSE" | cut -f1) MiB; transformers $(offline "$VPY" -c 'import transformers; print(transformers.__version__)'); work dir $WORK"
