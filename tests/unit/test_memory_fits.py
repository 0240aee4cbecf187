"""benchmarks/memory_fits.py: its architectures are the real ones (parameter counts), and the
"what fits where" table in docs/benchmarks.md is exactly what it prints (so neither drifts)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("memory_fits", ROOT / "benchmarks" / "memory_fits.py")
fits = importlib.util.module_from_spec(spec)
sys.modules["memory_fits"] = fits  # dataclasses look their module up there
spec.loader.exec_module(fits)


def test_the_architectures_have_the_real_parameter_counts():
    # Llama 2 7B / 13B / 70B as transformers counts them, and the builtin small model
    assert fits.LLAMA["7B"].params() == 6_738_415_616
    assert fits.LLAMA["13B"].params() == 13_015_864_320
    assert fits.LLAMA["70B"].params() == 68_976_648_192
    assert fits.SMALL.params() == 228_091_392  # docs/benchmarks.md, adapter memory
    # FastChat's LoRA on 7B: what tests/unit/test_adapters.py gets from PEFT
    assert fits.LLAMA["7B"].lora_params(("q_proj", "v_proj")) == 4_194_304


def test_the_terms_add_up_as_documented():
    t = fits.terms(fits.LLAMA["7B"], "full", "adamw")
    n = 6_738_415_616
    assert (t["weights"], t["grads"], t["state"]) == (4 * n, 4 * n, 8 * n)  # 16 bytes per parameter
    eight = fits.terms(fits.LLAMA["7B"], "full", "adamw_8bit")
    assert 0.25 < eight["state"] / t["state"] < 0.3
    assert fits.fits(t) == "2x80GB" and fits.fits(eight) == "1x80GB"
    # the 70B QLoRA recipe: the 4-bit base alone fits a 48 GB GPU, and FSDP halves it over two
    q = fits.terms(fits.LLAMA["70B"], "QLoRA", "adamw_8bit")
    assert fits.fits(q) == "1x48GB" and fits.per_gpu(q, 2) < 24 * 1e9


def test_the_docs_table_is_the_scripts_output():
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert fits.table() in doc
    assert fits.small_table() in doc
