"""The contract stand-ins catch what the real kernels reject: one deliberate violation per rule of
tests/kernel_contracts.py, each starting from a call the stand-in accepts and breaking one thing.
Every rule has a case here (checked), and the valid calls compute what the kernels compute."""

from __future__ import annotations

import math

import kernel_contracts as kc
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

BF16 = torch.bfloat16
CU = torch.tensor([0, 3, 8], dtype=torch.int32)  # two sequences: 3 + 5 tokens


def _packed(hq=4, hk=2, total=8, d=16, dtype=BF16):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(total, hq, d, generator=g).to(dtype)
    k = torch.randn(total, hk, d, generator=g).to(dtype)
    return q, k, k.clone()


def _varlen(**change):
    q, k, v = _packed()
    args = {"query": q, "key": k, "value": v, "cu_seq_q": CU, "cu_seq_k": CU, "max_q": 5, "max_k": 5}
    kwargs = {"window_size": (-1, 0), "enable_gqa": True}
    for name, value in change.items():
        (args if name in args else kwargs)[name] = value
    return kc.varlen_attn(*args.values(), **kwargs)


def _flash_attn(**change):
    q, k, v = _packed()
    kwargs = {
        "q": q,
        "k": k,
        "v": v,
        "cu_seqlens_q": CU,
        "cu_seqlens_k": CU,
        "max_seqlen_q": 5,
        "max_seqlen_k": 5,
    }
    kwargs |= {"causal": True, **change}
    return kc.flash_attn_varlen_func(**kwargs)


def _sdpa(backends=(SDPBackend.FLASH_ATTENTION,), **change):
    g = torch.Generator().manual_seed(0)
    kwargs = {
        "query": torch.randn(2, 4, 6, 16, generator=g).to(BF16),
        "key": torch.randn(2, 2, 6, 16, generator=g).to(BF16),
        "value": torch.randn(2, 2, 6, 16, generator=g).to(BF16),
        "is_causal": True,
        "enable_gqa": True,
        **change,
    }
    with sdpa_kernel(list(backends)):
        return kc.sdpa_flash(**kwargs)


def _xformers(**change):
    """A packed GQA row in the 4-D layout with expanded K/V, block-diagonal bias, requiring grad."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, 4, 16, generator=g).to(BF16).requires_grad_()
    k = torch.randn(1, 8, 4, 16, generator=g).to(BF16).requires_grad_()
    kwargs = {
        "query": q,
        "key": k,
        "value": k,
        "attn_bias": kc.BlockDiagonalCausalMask.from_seqlens([3, 5], device="cpu"),
    }
    kwargs |= change
    return kc.memory_efficient_attention(**kwargs)


def _gqa_5d(requires_grad):
    q = torch.randn(1, 8, 2, 2, 16, dtype=BF16, requires_grad=requires_grad)
    k = torch.randn(1, 8, 2, 1, 16, dtype=BF16, requires_grad=requires_grad).expand(1, 8, 2, 2, 16)
    return {"query": q, "key": k, "value": k, "attn_bias": kc.LowerTriangularMask()}


VIOLATIONS = {
    # varlen_attn
    "varlen.signature": lambda: _varlen(dropout_p=0.1),
    # the call torch 2.13 needs (enable_gqa=True) is a TypeError under torch 2.11
    "varlen.signature_2_11": lambda: kc.varlen_attn_2_11(
        *_packed(), CU, CU, 5, 5, window_size=(-1, 0), enable_gqa=True
    ),
    "varlen.gqa_heads": lambda: _varlen(enable_gqa=False),
    "varlen.window": lambda: _varlen(window_size=[-1, 0]),  # a list: is_causal would be False
    "varlen.layout": lambda: _varlen(query=_packed()[0][None]),
    "flash.dtype": lambda: _varlen(query=_packed(dtype=torch.float32)[0]),
    "flash.cu_seqlens_int32": lambda: _varlen(cu_seq_q=CU.long(), cu_seq_k=CU.long()),
    "flash.same_device": lambda: _varlen(cu_seq_q=CU.to("meta"), cu_seq_k=CU.to("meta")),
    "flash.last_dim_contiguous": lambda: _varlen(query=_packed(d=32)[0][..., ::2]),
    "flash.head_dim": lambda: _varlen(query=_packed(d=12)[0], key=_packed(d=12)[1], value=_packed(d=12)[2]),
    "flash.cu_seqlens_values": lambda: _varlen(max_q=4, max_k=4),  # the 5-token sequence is longer
    # flash_attn_varlen_func
    "flash_attn.gqa_heads": lambda: _flash_attn(k=_packed(hk=3)[1], v=_packed(hk=3)[2]),
    "flash_attn.window": lambda: _flash_attn(window_size=(-1, 0, 0)),
    # SDPA flash backend
    "sdpa_flash.backend": lambda: _sdpa(backends=(SDPBackend.FLASH_ATTENTION, SDPBackend.MATH)),
    "sdpa_flash.no_mask": lambda: _sdpa(attn_mask=torch.ones(6, 6, dtype=torch.bool), is_causal=False),
    "sdpa_flash.shape": lambda: _sdpa(query=torch.randn(4, 6, 16, dtype=BF16)),
    "sdpa_flash.dtype": lambda: _sdpa(query=torch.randn(2, 4, 6, 16)),
    "sdpa_flash.head_dim": lambda: _sdpa(query=torch.randn(2, 4, 6, 8, dtype=BF16)),
    "sdpa_flash.gqa_heads": lambda: _sdpa(enable_gqa=False),
    "sdpa_flash.last_dim_contiguous": lambda: _sdpa(query=torch.randn(2, 4, 6, 32, dtype=BF16)[..., ::2]),
    # xformers
    "xformers.ndim": lambda: _xformers(key=torch.randn(1, 8, 2, 2, 16, dtype=BF16)),
    "xformers.same_device": lambda: _xformers(value=torch.randn(1, 8, 4, 16, dtype=BF16, device="meta")),
    "xformers.bias_device": lambda: _xformers(attn_bias=kc.BlockDiagonalCausalMask.from_seqlens([3, 5])),
    "xformers.dtype": lambda: _xformers(value=torch.randn(1, 8, 4, 16)),
    "xformers.shapes": lambda: _xformers(
        key=torch.randn(1, 8, 2, 16, dtype=BF16), value=torch.randn(1, 8, 2, 16, dtype=BF16)
    ),
    "xformers.block_diagonal_batch1": lambda: _xformers(
        query=torch.randn(2, 4, 4, 16, dtype=BF16),
        key=torch.randn(2, 4, 4, 16, dtype=BF16),
        value=torch.randn(2, 4, 4, 16, dtype=BF16),
    ),
    "xformers.last_dim_contiguous": lambda: _xformers(query=torch.randn(1, 8, 4, 32, dtype=BF16)[..., ::2]),
    "xformers.bmghk_forward_only": lambda: kc.memory_efficient_attention(**_gqa_5d(requires_grad=True)),
    "xformers.bias_type": lambda: _xformers(attn_bias=torch.zeros(1, 4, 8, 8, dtype=BF16)),
    "xformers.seqlens_ints": lambda: kc.BlockDiagonalCausalMask.from_seqlens(
        torch.tensor([3, 5]), device="cpu"
    ),
    "xformers.window_positive": lambda: kc.BlockDiagonalCausalMask.from_seqlens(
        [3, 5], device="cpu"
    ).make_local_attention(0),
    "xformers.dropout": lambda: _xformers(p=1.5),
}


def test_every_rule_has_a_violation_case():
    assert set(VIOLATIONS) == set(kc.RULES)


@pytest.mark.parametrize("rule", sorted(VIOLATIONS))
def test_violation_is_caught(rule):
    with pytest.raises(kc.ContractViolation) as err:
        VIOLATIONS[rule]()
    assert err.value.rule == rule
    assert kc.RULES[rule] in str(err.value)  # the message cites its source


def _eager(q, k, v, *, causal=True, window=None):
    """[H, n, D] with k/v [Hkv, n, D] -> [H, n, D] in fp32, plain softmax attention."""
    k = k.float().repeat_interleave(q.shape[0] // k.shape[0], 0)
    v = v.float().repeat_interleave(q.shape[0] // v.shape[0], 0)
    scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    i, j = torch.arange(q.shape[1])[:, None], torch.arange(q.shape[1])[None]
    allowed = (j <= i) if causal else torch.ones_like(scores, dtype=torch.bool)
    if window is not None:
        allowed = allowed & (j > i - window)
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def _per_sequence(q, k, v, window=None):
    """Packed [T, H, D] over CU -> [T, H, D], each sequence on its own."""
    out = [
        _eager(
            q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1), window=window
        ).transpose(0, 1)
        for s, e in zip(CU[:-1].tolist(), CU[1:].tolist())
    ]
    return torch.cat(out)


def test_valid_calls_compute_the_attention():
    """The stand-ins' numbers (bf16 in, fp32 math) against a direct fp32 computation."""
    q, k, v = _packed()
    tol = {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(_varlen().float(), _per_sequence(q, k, v), **tol)
    torch.testing.assert_close(_varlen(window_size=(1, 0)).float(), _per_sequence(q, k, v, window=2), **tol)
    torch.testing.assert_close(_flash_attn().float(), _per_sequence(q, k, v), **tol)
    ks = _sdpa()
    g = torch.Generator().manual_seed(0)
    sq, sk, sv = (torch.randn(2, h, 6, 16, generator=g).to(BF16) for h in (4, 2, 2))
    torch.testing.assert_close(
        ks.float(), torch.stack([_eager(sq[b], sk[b], sv[b]) for b in range(2)]), **tol
    )
    xq = q[None]
    xk = k.repeat_interleave(2, 1)[None]
    out = kc.memory_efficient_attention(
        xq, xk, xk, attn_bias=kc.BlockDiagonalCausalMask.from_seqlens([3, 5], device="cpu")
    )
    torch.testing.assert_close(out[0].float(), _per_sequence(q, k, v), **tol)
    local = kc.BlockDiagonalCausalMask.from_seqlens([3, 5], device="cpu").make_local_attention(2)
    out = kc.memory_efficient_attention(xq, xk, xk, attn_bias=local)
    torch.testing.assert_close(out[0].float(), _per_sequence(q, k, v, window=2), **tol)
    # 5-D GQA: fine without gradients, the same numbers as the expanded 4-D call
    five = _gqa_5d(requires_grad=False)
    four = {n: t.reshape(1, 8, 4, 16) for n, t in five.items() if n != "attn_bias"}
    torch.testing.assert_close(
        kc.memory_efficient_attention(**five).reshape(1, 8, 4, 16),
        kc.memory_efficient_attention(**four, attn_bias=kc.LowerTriangularMask()),
    )


def test_backward_runs_through_the_stand_ins():
    q, k, v = (t.requires_grad_() for t in _packed())
    kc.varlen_attn(q, k, v, CU, CU, 5, 5, window_size=(-1, 0), enable_gqa=True).float().sum().backward()
    assert q.grad is not None and k.grad.shape == k.shape
    out = _xformers()
    out.float().sum().backward()


@pytest.mark.parametrize("release", sorted(kc.VARLEN_ATTN))
def test_the_compat_call_fits_each_torch_signature(release, monkeypatch):
    """vicuna_sft.compat.torch passes `enable_gqa` only to a varlen_attn that takes it: the same
    grouped-query call is accepted by the 2.11 and the 2.13 signatures, with the same result."""
    from vicuna_sft.compat import torch as compat_torch

    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", kc.VARLEN_ATTN[release])
    q, k, v = _packed()
    out = compat_torch.varlen_attn(q, k, v, CU, CU, 5, 5, window_size=(-1, 0), enable_gqa=True)
    ref = kc.varlen_attn(q, k, v, CU, CU, 5, 5, window_size=(-1, 0), enable_gqa=True)
    assert torch.equal(out, ref)
