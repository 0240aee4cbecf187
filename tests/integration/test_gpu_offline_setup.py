"""The GPU check script sets itself up on a bare GPU machine without network (issue 13), proven on
CPU by tests/gpu/prove_offline_setup.sh: a wheelhouse built by make_wheelhouse.sh (wheels only; this
step uses PyPI), a fresh venv holding only the torch + transformers dependency closure (hard-linked
from this environment), then with pip cut off: run_gpu_checks.sh up to its first CUDA call,
`pytest -m gpu` collected with every test skipped for lack of CUDA, the headline command
stopping at the attention check's CUDA message, and the same training path run on CPU."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_gpu_checks_set_up_offline_from_the_wheelhouse(tmp_path):
    env = {
        **os.environ,
        "WORK": str(tmp_path / "work"),
        "WHEELHOUSE": str(tmp_path / "wheelhouse"),
        "BASE_FROM": sys.executable,
        "PYTHON": sys.executable,
        "PYTHON_BOOT": sys.executable,
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "tests" / "gpu" / "prove_offline_setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    wheels = sorted(p.name for p in (tmp_path / "wheelhouse").iterdir())
    assert all(w.endswith(".whl") for w in wheels) and any(
        w.startswith("antlr4_python3_runtime") for w in wheels
    )
    assert "installing vicuna_sft and the dependencies this machine lacks, offline from" in out
    assert "SETUP_ONLY=1: stopping before the first CUDA call" in out
    counts = re.search(
        r"pytest -m gpu: \{'tests': (\d+), 'errors': 0, 'failures': 0, 'skipped': (\d+)\}", out
    )
    assert counts and int(counts[1]) == int(counts[2]) > 0, out[-3000:]
    assert "attention=flash needs a CUDA GPU and none is visible here" in out
    assert "cpu run: 2 steps, loss" in out
    assert "offline setup proven" in out
