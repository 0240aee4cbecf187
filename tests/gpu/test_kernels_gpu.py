"""Real CUDA kernels against an fp32 reference (needs a GPU; skipped cleanly without one).

A small GQA Llama runs in bf16 with each available kernel of our flash / xformers variants
(PyTorch flash via SDPA + varlen_attn; flash-attn and xformers when importable), on a padded and a
packed batch. Each kernel's max logit error against the fp32 eager model on the same weights must
be at most twice that of bf16 sdpa against the same reference.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

LENGTHS = [37, 300, 129, 512]


def _model(attn: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        use_cache=False,
    )
    model = LlamaForCausalLM(cfg)  # same seed: same weights for every variant
    model.config._attn_implementation = attn
    return model.to("cuda", dtype).eval()


def _batches():
    from vicuna_sft.config import Padding
    from vicuna_sft.data.collate import Collator

    g = torch.Generator().manual_seed(1)
    feats = []
    for n in LENGTHS:
        ids = torch.randint(3, 1000, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": ids})
    return Collator(0, Padding.longest)(feats), Collator(0, Padding.packed)(feats)


def _real_logits(model, batch, packed: bool) -> torch.Tensor:
    inputs = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    if packed:
        return logits[0]
    return torch.cat([logits[i, :n] for i, n in enumerate(LENGTHS)])


def _variants() -> list[tuple[str, object]]:
    from vicuna_sft.attention import flash, xformers

    out = []

    def torch_flash():
        flash.register(flash.TORCH_KERNELS, flash.torch_flash_attention)
        return flash.TORCH_KERNELS

    out.append(("torch-flash", torch_flash))
    if importlib.util.find_spec("flash_attn") is not None:
        out.append(("flash-attn", lambda: "flash_attention_2"))
    if importlib.util.find_spec("xformers") is not None:
        out.append(("xformers", lambda: xformers.implementation(SimpleNamespace())))
    return out


@pytest.fixture(scope="module")
def reference():
    padded, packed = _batches()
    ref = _model("eager", torch.float32)
    baseline_model = _model("sdpa", torch.bfloat16)
    ref_logits = _real_logits(ref, padded, packed=False)
    base_err = (_real_logits(baseline_model, padded, packed=False) - ref_logits).abs().max().item()
    return padded, packed, ref_logits, base_err


@pytest.mark.parametrize("name,impl", _variants(), ids=[n for n, _ in _variants()])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_kernel_error_at_most_twice_bf16_sdpa(name, impl, layout, reference):
    from vicuna_sft.attention import guard_packed

    padded, packed, ref_logits, base_err = reference
    model = guard_packed(_model(impl(), torch.bfloat16))
    batch = packed if layout == "packed" else padded
    err = (_real_logits(model, batch, packed=layout == "packed") - ref_logits).abs().max().item()
    print(f"{name} {layout}: max |logit error| {err:.4g} (bf16 sdpa: {base_err:.4g})")
    assert 0 < base_err < 1.0
    assert err <= 2 * base_err, (name, layout, err, base_err)


def test_bf16_training_step_runs_and_matches_sdpa():
    """One bf16 forward+backward with the torch flash variant on a packed batch: finite, and the
    loss within bf16 noise of sdpa's."""
    from vicuna_sft.attention import flash, guard_packed

    _, packed = _batches()
    flash.register(flash.TORCH_KERNELS, flash.torch_flash_attention)
    losses = {}
    for impl in ("sdpa", flash.TORCH_KERNELS):
        model = guard_packed(_model(impl, torch.bfloat16)).train()
        inputs = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in packed.items()}
        loss = model(**inputs).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        losses[impl] = loss.item()
    assert abs(losses["sdpa"] - losses[flash.TORCH_KERNELS]) < 0.02 * losses["sdpa"], losses
