"""`python -m vicuna_sft.check` as a user runs it: status 0 and a report when the variant agrees with
the reference, 1 naming the quantity past its tolerance, 2 with one line for what cannot run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def test_passes_and_writes_report(run_module, tmp_path):
    out = tmp_path / "check"
    r = run_module(
        "vicuna_sft.check", "data.padding=packed", "attention=sdpa", f"hydra.run.dir={out}", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        "attention=sdpa, padding=packed, loss=chunked  vs reference  attention=eager, padding=longest, loss=full"
        in r.stdout
    )
    assert f"vicuna_sft.check: passed (report: {out / 'check.json'})" in r.stdout
    report = json.loads((out / "check.json").read_text())
    assert report["ok"] is True and report["precision"] == "float32" and report["samples"] == 4
    assert [q["name"] for q in report["quantities"]] == ["loss", "logits", "gradients"]
    for q in report["quantities"]:
        assert q["ok"] and 0 <= q["relative"] <= q["tolerance"]
        assert f"{q['name']:<10} {q['max_abs']:>11.3e} {q['relative']:>10.3e}" in r.stdout


def test_past_tolerance_exits_1_naming_it(run_module, tmp_path):
    """bf16 autocast against fp32's logits tolerance: the rounding of bf16 is far above 1e-6."""
    r = run_module(
        "vicuna_sft.check",
        "trainer.precision=bf16",
        "check.logits_tol=1e-6",
        f"hydra.run.dir={tmp_path / 'check'}",
        cwd=tmp_path,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    assert "vicuna_sft.check: FAILED: logits differ from the reference by" in r.stdout
    assert "tolerance 1e-06" in r.stdout and "Traceback" not in r.stderr
    assert json.loads((tmp_path / "check" / "check.json").read_text())["ok"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is visible: flash can run")
def test_flash_refused_on_cpu(run_module, tmp_path):
    r = run_module(
        "vicuna_sft.check",
        "attention=flash",
        "trainer.precision=bf16",
        f"hydra.run.dir={tmp_path / 'c'}",
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("vicuna_sft.check: error: attention=flash needs a CUDA GPU")
    assert not (tmp_path / "c" / "check.json").exists()


def test_reads_a_source_list_as_training_does(run_module, tmp_path, sample_path):
    """`data.path=[a, b]` (accepted by validation) used to end in a TypeError traceback: the check
    read data on its own path. It now reads every source as training does."""
    records = json.loads(sample_path.read_text())
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(records[:20]))
    b.write_text(json.dumps(records[20:40]))
    out = tmp_path / "check"
    r = run_module(
        "vicuna_sft.check",
        "data=sharegpt",
        f"data.path=[{a},{{path: {b}, weight: 2}}]",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert json.loads((out / "check.json").read_text())["ok"] is True


# a model class without SDPA support (as some architectures are), in the checking process only
NO_SDPA = "import transformers\ntransformers.LlamaForCausalLM._supports_sdpa = False\n"


def test_a_model_without_the_attention_exits_2_in_one_line(cache_dir, tmp_path):
    """Issue 19, item 10: transformers' ValueError from inside from_pretrained became a traceback."""
    args = ["attention=sdpa", f"hydra.run.dir={tmp_path / 'c'}"]
    script = f"import runpy, sys\n{NO_SDPA}sys.argv = ['vicuna_sft.check', *{args!r}]\n"
    script += "runpy.run_module('vicuna_sft.check', run_name='__main__', alter_sys=True)\n"
    env = {**os.environ, "VICUNA_SFT_CACHE": cache_dir, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("vicuna_sft.check: error: cannot load the model from "), line
    assert (
        "with attn_implementation='sdpa' (from attention=): LlamaForCausalLM does not support an attention"
        in line
    )
    assert line.endswith("; valid: attention=eager, sdpa, flash, xformers (eager runs every model)"), line
