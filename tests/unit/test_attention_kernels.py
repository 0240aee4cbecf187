"""The flash and xformers modules' own logic on CPU: registration with transformers, the mask
function, GQA head layout, sequence boundaries from cu_seq_lens / position_ids, and which xformers
bias they ask for.

The CUDA kernels are substituted: `torch.nn.attention.varlen.varlen_attn` and
`xformers.ops.memory_efficient_attention` by plain-PyTorch reference implementations of their
documented semantics (below); SDPA's flash backend runs for real (PyTorch has a CPU flash kernel).
These tests therefore check OUR code (layouts, heads, boundaries, masks), not the CUDA kernels;
tests/gpu/ compares the real kernels. fp32 throughout (the flash dtype policy is bypassed for the
model-level comparison and tested on its own).
"""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from vicuna_sft.attention import flash as flash_mod
from vicuna_sft.attention import xformers as xformers_mod
from vicuna_sft.config import Padding
from vicuna_sft.data.collate import Collator
from vicuna_sft.data.encode import IGNORE_INDEX

TOL = {"rtol": 1e-5, "atol": 1e-6}


# --- reference kernels ----------------------------------------------------------------------------


def _attend(q, k, v, scale, causal, left_window=-1):
    """q [Hq, n, D], k/v [Hq, n, D] -> [Hq, n, D], eager math."""
    scores = (q @ k.transpose(-1, -2)) * scale
    n = q.shape[1]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    allowed = torch.ones(n, n, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if left_window >= 0:
        allowed &= j >= i - left_window
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


calls: list[str] = []


def reference_varlen_attn(
    q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False
):
    """`varlen_attn` semantics: [T, H, D] inputs, int32 cu_seqlens, window (-1, 0) = causal."""
    calls.append("varlen")
    assert cu_q.dtype == cu_k.dtype == torch.int32 and torch.equal(cu_q, cu_k)
    assert q.dim() == 3 and q.shape[0] == int(cu_q[-1])
    hq, hk = q.shape[1], k.shape[1]
    assert hq == hk or (enable_gqa and hq % hk == 0), (hq, hk, enable_gqa)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.empty_like(q)
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        assert e - s <= max_q == max_k
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))
        ks, vs = ks.repeat_interleave(hq // hk, 0), vs.repeat_interleave(hq // hk, 0)
        out[s:e] = _attend(
            qs, ks, vs, scale, causal=window_size[1] == 0, left_window=window_size[0]
        ).transpose(0, 1)
    return out


class _LowerTriangularMask:
    def materialize(self, n):
        return torch.full((n, n), float("-inf")).triu(1)


class _BlockDiagonalCausalMask:
    def __init__(self, seqlens):
        self.seqlens = seqlens

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        assert kv_seqlen is None and all(isinstance(n, int) for n in q_seqlen)
        return cls(list(q_seqlen))

    def materialize(self, n):
        assert sum(self.seqlens) == n
        bias = torch.full((n, n), float("-inf"))
        s = 0
        for m in self.seqlens:
            bias[s : s + m, s : s + m] = _LowerTriangularMask().materialize(m)
            s += m
        return bias


def reference_memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
    """xformers semantics: [B, M, H, K] or GQA's [B, M, G, H, K] (heads = G*H, flattened in that
    order; key/value broadcast inside a group), additive bias over [M, M]."""
    calls.append(type(attn_bias).__name__)
    assert p == 0.0 and query.shape[:2] == key.shape[:2] == value.shape[:2]
    if isinstance(attn_bias, _BlockDiagonalCausalMask):
        assert query.shape[0] == 1
    shape = query.shape
    q, k, v = (t.reshape(*shape[:2], -1, shape[-1]).transpose(1, 2) for t in (query, key, value))
    scale = 1 / math.sqrt(shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale + attn_bias.materialize(shape[1])
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(shape)


FAKE_XOPS = SimpleNamespace(
    memory_efficient_attention=reference_memory_efficient_attention,
    fmha=SimpleNamespace(
        attn_bias=SimpleNamespace(
            LowerTriangularMask=_LowerTriangularMask, BlockDiagonalCausalMask=_BlockDiagonalCausalMask
        )
    ),
)


@pytest.fixture
def substituted(monkeypatch):
    calls.clear()
    monkeypatch.setattr(flash_mod, "_varlen_attn", reference_varlen_attn)
    monkeypatch.setattr(xformers_mod, "_xops", lambda: FAKE_XOPS)
    # fp32 comparison at 1e-5: skip the fp16/bf16 cast the CUDA flash kernels require
    monkeypatch.setattr(flash_mod, "compute_dtype", lambda query, module, allow_fp32: query.dtype)
    return calls


# --- model-level: our functions inside a real GQA Llama, against eager -----------------------------

FEATURES = [
    {"input_ids": [1, *range(3, 40), 2], "labels": [IGNORE_INDEX, *range(3, 40), 2]},
    {"input_ids": [1, *range(50, 61), 2], "labels": [IGNORE_INDEX] * 6 + [*range(55, 61), 2]},
    {"input_ids": [1, *range(100, 170), 2], "labels": [IGNORE_INDEX, *range(100, 170), 2]},
]


def _load(tiny_dir, impl):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=impl, use_cache=False)
    assert model.config.num_attention_heads == 2 * model.config.num_key_value_heads  # GQA
    return model


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def eager_reference(tiny_dir):
    model = _load(tiny_dir, "eager")
    return _loss_and_grads(model, Collator(0, Padding.longest)(FEATURES))


def _batches():
    packed = Collator(0, Padding.packed)(FEATURES)
    from_positions = {k: packed[k] for k in ("input_ids", "labels", "position_ids")}  # no cu_seq_lens
    return {
        "longest": Collator(0, Padding.longest)(FEATURES),
        "max_length": Collator(0, Padding.max_length, max_length=96)(FEATURES),
        "packed": packed,
        "packed_position_ids_only": from_positions,
    }


@pytest.mark.parametrize("variant", ["flash", "xformers"])
@pytest.mark.parametrize("layout", list(_batches()))
def test_variant_matches_eager(variant, layout, tiny_dir, eager_reference, substituted):
    mod = {"flash": flash_mod, "xformers": xformers_mod}[variant]
    cfg = SimpleNamespace()
    name = mod.implementation(cfg)
    assert name == {"flash": flash_mod.TORCH_KERNELS, "xformers": xformers_mod.NAME}[variant]
    model = mod.prepare(_load(tiny_dir, name))
    loss, grads = _loss_and_grads(model, _batches()[layout])
    ref_loss, ref_grads = eager_reference
    torch.testing.assert_close(loss, ref_loss, **TOL)
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], **TOL, msg=lambda m, n=n: f"{n}: {m}")
    layers = model.config.num_hidden_layers
    if layout.startswith("packed"):
        expected = ["varlen"] if variant == "flash" else ["_BlockDiagonalCausalMask"]
    else:
        expected = [] if variant == "flash" else ["_LowerTriangularMask"]  # flash: the real SDPA kernel
    assert calls == expected * layers


def test_flash_padded_uses_sdpa_flash_backend(monkeypatch):
    seen = {}

    def spy(q, k, v, **kwargs):
        seen.update(kwargs, shapes=(q.shape, k.shape))
        return torch.zeros_like(q)

    monkeypatch.setattr(flash_mod, "_sdpa_flash", spy)
    q, k = torch.randn(2, 4, 8, 16, dtype=torch.bfloat16), torch.randn(2, 2, 8, 16, dtype=torch.bfloat16)
    out, _ = flash_mod.torch_flash_attention(
        None, q, k, k, None, scaling=0.25, position_ids=torch.arange(8)[None]
    )
    assert out.shape == (2, 8, 4, 16)
    assert seen["is_causal"] and seen["enable_gqa"] and seen["scale"] == 0.25
    assert seen["shapes"] == (q.shape, k.shape)  # kv heads not expanded


def test_mask_function_is_registered_and_rejects_left_padding(tiny_dir):
    from transformers.masking_utils import AttentionMaskInterface

    name = xformers_mod.implementation(SimpleNamespace())
    assert name in AttentionMaskInterface._global_mapping  # else the function would get no mask
    model = _load(tiny_dir, name)
    left = {"input_ids": torch.tensor([[0, 0, 1, 5, 6]]), "attention_mask": torch.tensor([[0, 0, 1, 1, 1]])}
    with pytest.raises(ValueError, match="right padding"):
        model(**left)


def test_boundaries_from_position_ids_and_cu_seq_lens():
    from vicuna_sft.attention import packed_boundaries

    q = torch.zeros(1, 2, 9, 4)
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    cu, max_len = packed_boundaries(q, None, {"position_ids": pos})
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == torch.int32 and max_len == 4
    cu2, max2 = packed_boundaries(q, None, {"cu_seq_lens_q": torch.tensor([0, 3, 5, 9]), "max_length_q": 4})
    assert cu2.tolist() == [0, 3, 5, 9] and max2 == 4
    assert packed_boundaries(q, None, {"position_ids": torch.arange(9)[None]}) is None  # one sequence
    assert packed_boundaries(q, torch.ones(1, 9, dtype=torch.bool), {"position_ids": pos}) is None
    with pytest.raises(ValueError, match="ends at"):
        packed_boundaries(q, None, {"cu_seq_lens_q": torch.tensor([0, 3, 8])})
    with pytest.raises(NotImplementedError, match="one row"):
        packed_boundaries(torch.zeros(2, 2, 9, 4), None, {"position_ids": pos.expand(2, -1)})


def test_compute_dtype_policy():
    from vicuna_sft.attention import compute_dtype

    q = torch.zeros(1, 2, 3, 4)
    bf16_module = SimpleNamespace(q_proj=SimpleNamespace(weight=torch.zeros(1, dtype=torch.bfloat16)))
    fp32_module = SimpleNamespace(q_proj=SimpleNamespace(weight=torch.zeros(1)))
    assert compute_dtype(q.half(), fp32_module, allow_fp32=False) == torch.float16
    assert compute_dtype(q, bf16_module, allow_fp32=False) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(q, fp32_module, allow_fp32=False) == torch.bfloat16
    assert compute_dtype(q, fp32_module, allow_fp32=True) == torch.float32
    with pytest.raises(ValueError, match="fp16/bf16"):
        compute_dtype(q, fp32_module, allow_fp32=False)


@pytest.mark.slow
def test_nothing_imported_or_registered_at_import_time():
    code = (
        "import sys\n"
        "import vicuna_sft.model, vicuna_sft.attention.flash, vicuna_sft.attention.xformers\n"
        "from transformers import AttentionInterface\n"
        "from transformers.masking_utils import AttentionMaskInterface\n"
        "names = set(AttentionInterface._global_mapping) | set(AttentionMaskInterface._global_mapping)\n"
        "assert not any(n.startswith('vicuna_sft') for n in names), names\n"
        "from types import SimpleNamespace\n"
        "vicuna_sft.attention.xformers.implementation(SimpleNamespace())\n"
        "assert 'vicuna_sft_xformers' in AttentionInterface._global_mapping\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('flash_attn', 'xformers')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
