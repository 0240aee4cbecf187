#!/usr/bin/env bash
# `make lock`: re-resolve the newest releases inside pyproject's ranges and rewrite the locks.
#   requirements/cpu.lock     the CPU development environment (`make install`, CI): every package
#                             fully pinned with hashes, torch excluded (the bootstrap installs the
#                             CPU wheel), torch's own dependencies included.
#   requirements/oldest.lock  the same closure at the oldest supported pure-Python pins
#                             (requirements/oldest.in): CI's second, shorter job.
# A changed lock lands only with `make test` green on it (tests/unit/test_lock.py checks that
# pyproject and the locks agree and that the active .venv holds exactly the lock).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
TORCH=$(sed -n 's/^TORCH_VERSION ?= //p' Makefile)
# torch's dependencies are those of its CPU wheel (the PyPI wheel is the CUDA build, whose metadata
# pulls nvidia-* packages): resolve against a local CPU wheel if there is one (this workplace's
# offline disk), else against PyTorch's CPU index.
torch_src=()
for d in ${PIP_FIND_LINKS:-} /opt/wheels; do
  if ls "$d"/torch-"$TORCH"+cpu-*.whl >/dev/null 2>&1; then torch_src=(--find-links "$d"); break; fi
done
[ ${#torch_src[@]} -gt 0 ] || torch_src=(--index https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "torch==$TORCH+cpu" >"$tmp/torch.txt"
compile() {  # $1: output, rest: extra args
  local out=$1; shift
  "$UV" pip compile pyproject.toml --extra dev --extra qlora \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --override "$tmp/torch.txt" "${torch_src[@]}" --no-emit-package torch \
    --generate-hashes --no-header --quiet --upgrade -o "$tmp/out.txt" "$@"
  {
    echo "# Locked by \`make lock\` (scripts/lock.sh) with $("$UV" --version): CPython 3.11, Linux x86_64."
    echo "# torch==$TORCH+cpu is installed by the Makefile's bootstrap; its dependencies are pinned here."
    echo "# Do not edit: change pyproject.toml or requirements/oldest.in and run \`make lock\`."
    cat "$tmp/out.txt"
  } >"$out"
  echo "wrote $out ($(grep -cE '^[a-z0-9]' "$out") packages)"
}
compile requirements/cpu.lock
compile requirements/oldest.lock --constraint requirements/oldest.in
