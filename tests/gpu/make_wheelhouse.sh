#!/usr/bin/env bash
# Fill tests/gpu/wheelhouse (git-ignored) with the pure-Python packages run_gpu_checks.sh needs on a
# machine that has torch + transformers but no network. Run where PyPI is reachable; carry the folder.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip download -q --no-deps -d wheelhouse "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3,<2.4" \
  "antlr4-python3-runtime==4.9.3" "accelerate>=1.10" psutil pytest iniconfig pluggy "liger-kernel>=0.5"
