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
    # only what the GPU run imports: no datasets / plotting / TensorBoard closure; compiled wheels
    # for every CPython the GPU machine may have
    assert not [
        w
        for w in wheels
        if w.split("-")[0].lower() in {"datasets", "pyarrow", "matplotlib", "tensorboard", "scipy"}
    ]
    assert {f"cp{v}" for v in (310, 311, 312, 313)} <= {
        w.split("-")[2] for w in wheels if w.startswith("xxhash-")
    }
    mib = re.search(r"wheelhouse: (\d+) wheels, (\d+) MiB \(limit 64\)", out)
    assert mib and int(mib[2]) <= 64, out[-3000:]
    assert "SETUP_ONLY=1: stopping before the first CUDA call" in out
    assert re.search(r"setup +passed", out) and "FAILED" not in out
    counts = re.search(
        r"pytest -m gpu: \{'tests': (\d+), 'errors': 0, 'failures': 0, 'skipped': (\d+)\}", out
    )
    assert counts and int(counts[1]) == int(counts[2]) > 0, out[-3000:]
    assert "attention=flash needs a CUDA GPU and none is visible here" in out
    assert "cpu run: 2 steps, loss" in out
    assert "offline setup proven" in out
