"""tests/gpu/run_gpu_checks.sh fits the lent GPU machine (issue 16): its step budgets add up to at
most 540 s of the 600 s a device command may run, every step runs even after one fails, and one
summary table ends it with a non-zero exit when anything failed."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "gpu" / "run_gpu_checks.sh"


def test_step_budgets_fit_the_device_limit():
    text = SCRIPT.read_text()
    budgets = dict(b.split(":") for b in re.search(r"^BUDGETS=\((.*)\)$", text, re.M)[1].split())
    assert list(budgets) == ["setup", "pytest", "headline", "liger", "qlora"]
    assert (
        sum(int(v) for v in budgets.values()) <= int(re.search(r"^TOTAL_BUDGET=(\d+)$", text, re.M)[1]) <= 540
    )
    assert all(f"step_{name}()" in text for name in budgets)


def run_with_a_failing_python(tmp_path, **env):
    """The script with a `python` that fails every call."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def test_every_step_runs_after_a_failure_and_the_summary_says_which(tmp_path):
    # setup fails, the others still run (and fail, or skip for lack of their package)
    proc = run_with_a_failing_python(tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    summary = out[out.index("== summary") :].splitlines()[1:]
    status = {line.split()[0]: line.split()[1] for line in summary}
    assert status == {
        "setup": "FAILED",
        "pytest": "FAILED",
        "headline": "FAILED",
        "liger": "skipped",
        "qlora": "skipped",
    }


def test_setup_only_stops_after_setup(tmp_path):
    proc = run_with_a_failing_python(tmp_path, SETUP_ONLY="1")
    assert proc.returncode == 1 and "== pytest" not in proc.stdout, proc.stdout
