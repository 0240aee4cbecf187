"""Real CUDA kernels against an fp32 reference (needs a GPU; skipped cleanly without one).

A small GQA model (8 query heads, 2 key/value heads) runs in bf16 with each available kernel of our
flash / xformers variants: PyTorch flash (SDPA flash backend for padded batches, varlen_attn for
packed rows), flash-attn (transformers' flash_attention_2) and xformers when importable. Layouts:
padded, packed (collator boundaries) and packed with boundaries from position_ids alone.

- forward (no gradients: xformers' 5-D GQA layout): each kernel's max |logit error| against the fp32
  eager model on the same weights is at most twice that of bf16 sdpa against the same reference;
- training (forward + backward: xformers' 4-D layout with expanded K/V): the relative L2 error of
  all parameter gradients, same rule;
- the same for a Mistral-style sliding window (64 tokens, rows up to 512), which varlen_attn gets
  as `window_size` and xformers as a local-attention bias.
The CPU tests (tests/unit/test_attention_kernels.py) check the calls against the kernels' contracts;
these check the kernels' numbers.
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
LAYOUTS = ["padded", "packed", "packed_position_ids_only"]
WINDOW = 64


def _model(attn: str, dtype: torch.dtype, window: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    shape = {
        "vocab_size": 1000,
        "hidden_size": 512,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "use_cache": False,
    }
    if window is None:
        cfg, cls = LlamaConfig(**shape), LlamaForCausalLM
    else:
        cfg, cls = MistralConfig(**shape, sliding_window=window), MistralForCausalLM
    cfg._attn_implementation = attn
    model = cls(cfg)  # same seed: same weights for every variant
    return model.to("cuda", dtype)


def _batches() -> dict[str, dict]:
    from vicuna_sft.config import Padding
    from vicuna_sft.data.collate import Collator

    g = torch.Generator().manual_seed(1)
    feats = []
    for n in LENGTHS:
        ids = torch.randint(3, 1000, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": ids})
    packed = Collator(0, Padding.packed)(feats)
    return {
        "padded": Collator(0, Padding.longest)(feats),
        "packed": packed,
        "packed_position_ids_only": {k: packed[k] for k in ("input_ids", "labels", "position_ids")},
    }


def _cuda(batch):
    return {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in batch.items()}


def _logits(model, batch, layout: str) -> torch.Tensor:
    """Real-token logits [sum(LENGTHS), vocab] in fp32, without gradients."""
    inputs = {k: v for k, v in _cuda(batch).items() if k != "labels"}
    with torch.no_grad():
        logits = model.eval()(**inputs).logits.float()
    if layout.startswith("packed"):
        return logits[0]
    return torch.cat([logits[i, :n] for i, n in enumerate(LENGTHS)])


def _grads(model, batch) -> torch.Tensor:
    """All parameter gradients of one training forward/backward, flattened, fp32."""
    model.train().zero_grad()
    model(**_cuda(batch)).loss.backward()
    return torch.cat([p.grad.float().flatten() for p in model.parameters()])


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).norm() / ref.norm()).item()


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


def _reference(window):
    batches = _batches()
    ref, base = _model("eager", torch.float32, window), _model("sdpa", torch.bfloat16, window)
    ref_logits = _logits(ref, batches["padded"], "padded")
    ref_grads = _grads(ref, batches["padded"])
    return {
        "batches": batches,
        "logits": ref_logits,
        "grads": ref_grads,
        "logit_err": (_logits(base, batches["padded"], "padded") - ref_logits).abs().max().item(),
        "grad_err": _rel(_grads(base, batches["padded"]), ref_grads),
    }


@pytest.fixture(scope="module")
def reference():
    return _reference(None)


@pytest.fixture(scope="module")
def window_reference():
    return _reference(WINDOW)


def _check(name, impl, layout, ref, window):
    from vicuna_sft.attention import guard_packed

    model = guard_packed(_model(impl(), torch.bfloat16, window))
    batch = ref["batches"][layout]
    logit_err = (_logits(model, batch, layout) - ref["logits"]).abs().max().item()
    grad_err = _rel(_grads(model, batch), ref["grads"])
    tag = f"{name} {layout}" + (f" window={window}" if window else "")
    print(
        f"{tag}: max |logit error| {logit_err:.4g} (bf16 sdpa {ref['logit_err']:.4g}); "
        f"gradient rel. L2 error {grad_err:.4g} (bf16 sdpa {ref['grad_err']:.4g})"
    )
    assert 0 < ref["logit_err"] < 1.0 and 0 < ref["grad_err"] < 0.5, ref
    assert logit_err <= 2 * ref["logit_err"], (tag, logit_err, ref["logit_err"])
    assert grad_err <= 2 * ref["grad_err"], (tag, grad_err, ref["grad_err"])


@pytest.mark.parametrize("name,impl", _variants(), ids=[n for n, _ in _variants()])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernel_forward_and_backward_within_twice_bf16_sdpa(name, impl, layout, reference):
    _check(name, impl, layout, reference, None)


@pytest.mark.parametrize("name,impl", _variants(), ids=[n for n, _ in _variants()])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_sliding_window_within_twice_bf16_sdpa(name, impl, layout, window_reference):
    _check(name, impl, layout, window_reference, WINDOW)
