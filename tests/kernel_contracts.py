"""CPU stand-ins for the CUDA attention kernels, enforcing the real APIs' input contracts.

Each stand-in first checks its inputs against the rules of the real kernel, then computes the
result with a plain-PyTorch reference (fp32 math, autograd through ordinary ops). Every rule is
written once, in `RULES` (id -> where it comes from) and one `_require(...)` call; a violation
raises `ContractViolation` naming the rule. tests/unit/test_kernel_contracts.py breaks each rule on
purpose and checks that it is caught; tests/unit/test_attention_kernels.py runs every call site of
vicuna_sft.attention through these stand-ins, forward and backward.

Sources read (versions as installed / downloaded for this check):
- torch 2.13.0: torch/nn/attention/varlen.py (Python wrapper of varlen_attn), and the C++ checks
  behind it and SDPA's flash backend: aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp
  (`mha_varlen_fwd`, the same file as flash-attn's csrc/flash_attn/flash_api.cpp) and
  aten/src/ATen/native/transformers/cuda/sdp_utils.cpp (`use_flash_attention` and its checks).
- xformers 0.0.35 wheel: xformers/ops/fmha/{__init__,common,dispatch,flash,cutlass,flash3,attn_bias}.py
- flash-attn 2.x: flash_attn/flash_attn_interface.py (`flash_attn_varlen_func`) and
  csrc/flash_attn/flash_api.cpp (`mha_varlen_fwd`).

The stand-ins model the GPU machine the kernels run on: inputs are CPU tensors here, but a device
that a kernel would pick by itself (xformers' default bias device) is the CUDA device, as it is
there. bf16 is accepted as on an A100/H100 (sm80+).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

HALF = (torch.float16, torch.bfloat16)

# rule id -> source of the rule (file:line in the version read, or C++ function + message)
RULES: dict[str, str] = {
    # --- torch.nn.attention.varlen.varlen_attn (torch 2.13) --------------------------------------
    "varlen.signature": "torch/nn/attention/varlen.py:176-192 (no dropout argument; after max_k only the "
    "keywords return_aux, scale, window_size, enable_gqa, seqused_k, block_table, num_splits)",
    "varlen.signature_2_11": "torch 2.11 torch/nn/attention/varlen.py varlen_attn(query, key, value, "
    "cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1)): no "
    "enable_gqa (added in 2.13); grouped K/V heads are accepted natively",
    "varlen.gqa_heads": "torch/nn/attention/varlen.py:295-305 (Hq == Hkv unless enable_gqa; Hq % Hkv == 0)",
    "varlen.window": "torch/nn/attention/varlen.py:187,307 (window_size a (left, right) tuple; "
    "(-1, 0) is causal; is_causal is `window_size == (-1, 0)`, so a list never is)",
    "varlen.layout": "torch/nn/attention/varlen.py:199-203 (query (T_q, H_q, D), key/value (T_k, H_kv, D))",
    "flash.dtype": "flash_api.cpp mha_varlen_fwd: 'FlashAttention only support fp16 and bf16 data type', "
    "'query and key must have the same dtype'",
    "flash.cu_seqlens_int32": "flash_api.cpp mha_varlen_fwd: 'cu_seqlens_q must have dtype int32'",
    "flash.same_device": "flash_api.cpp mha_varlen_fwd: CHECK_DEVICE(q/k/v/cu_seqlens_q/cu_seqlens_k)",
    "flash.last_dim_contiguous": "flash_api.cpp mha_varlen_fwd: 'Input tensor must have contiguous last "
    "dimension'; CHECK_CONTIGUOUS(cu_seqlens_q)",
    "flash.head_dim": "flash_api.cpp mha_varlen_fwd: head size at most 256 and a multiple of 8 "
    "(flash-attn's Python wrapper pads to 8, varlen_attn does not)",
    "flash.cu_seqlens_values": "flash_api.cpp mha_varlen_fwd: batch = cu_seqlens.numel() - 1, total = "
    "q.size(0); cu_seqlens starts at 0, rises, ends at total; max_seqlen bounds every length",
    # --- flash_attn.flash_attn_varlen_func (flash-attn 2.x) --------------------------------------
    "flash_attn.gqa_heads": "flash_api.cpp mha_varlen_fwd: 'Number of heads in key/value must divide "
    "number of heads in query'",
    "flash_attn.window": "flash_attn_interface.py flash_attn_varlen_func(window_size=(-1, -1), softcap=0.0): "
    "window_size a (left, right) pair, softcap a float (0.0 = off)",
    # --- SDPA restricted to SDPBackend.FLASH_ATTENTION (torch 2.13, CUDA) ------------------------
    "sdpa_flash.backend": "torch/nn/attention/__init__.py:114 sdpa_kernel([SDPBackend.FLASH_ATTENTION]) "
    "(otherwise the dispatcher may silently pick the math kernel)",
    "sdpa_flash.no_mask": "sdp_utils.cpp check_for_attn_mask: flash takes no attn_mask (causal via is_causal)",
    "sdpa_flash.shape": "sdp_utils.cpp check_tensor_shapes: query/key/value 4-D [B, H, L, D]",
    "sdpa_flash.dtype": "sdp_utils.cpp check_dtypes_low_precision (flash: fp16/bf16, bf16 from sm80) and "
    "sdp_utils_cpp.h check_tensor_dtype (query/key/value of one dtype)",
    "sdpa_flash.head_dim": "sdp_utils.cpp check_head_dim_size_flash: equal last dims, at most 256",
    "sdpa_flash.gqa_heads": "sdp_utils.cpp check_grouped_query_attention: enable_gqa and Hq % Hkv == 0, "
    "else equal heads",
    "sdpa_flash.last_dim_contiguous": "sdp_utils.cpp check_last_dim_stride_equals_1_dense",
    # --- xformers.ops.memory_efficient_attention (xformers 0.0.35) -------------------------------
    "xformers.ndim": "xformers/ops/fmha/common.py:208-217 (query/key/value all BMGHK, BMHK or BMK)",
    "xformers.same_device": "xformers/ops/fmha/common.py:219-220",
    "xformers.bias_device": "xformers/ops/fmha/common.py:221-237 (a block-diagonal bias on the query's "
    "device); attn_bias.py:104-111 (device=None means the current CUDA device)",
    "xformers.dtype": "xformers/ops/fmha/common.py:239-247 (one dtype); cutlass.py:172 {f32, f16, bf16}, "
    "flash.py:567 {f16, bf16}",
    "xformers.shapes": "xformers/ops/fmha/common.py:291-325 (exact [B, M, H, K] / [B, M, G, H, K] match, "
    "'We don't support broadcasting'): GQA needs key/value expanded by the caller",
    "xformers.block_diagonal_batch1": "xformers/ops/fmha/common.py:278-285 (block-diagonal bias: batch 1)",
    "xformers.last_dim_contiguous": "xformers/ops/fmha/common.py:578-591 (stride(-1) == 1)",
    "xformers.bmghk_forward_only": "xformers/ops/fmha/__init__.py:266 ('MQA/GQA ... supported only for "
    "the forward pass'); flash.py:719, flash3.py:796 and common.py:403 (cutlass.BwOp) SUPPORTS_BMGHK = "
    "False; __init__.py:134-144 picks the backward op inside the forward when an input requires grad",
    "xformers.bias_type": "xformers/ops/fmha/flash.py:698-713, cutlass.py:339-353 (a bias type that "
    "every backward op accepts: in flash.BwOp's and cutlass.BwOp's lists; a tensor bias is not in flash's)",
    "xformers.seqlens_ints": "xformers/ops/fmha/attn_bias.py:423 (seqlens a list of ints, not a tensor)",
    "xformers.window_positive": "xformers/ops/fmha/attn_bias.py:1876-1880 (window_size > 0)",
    "xformers.dropout": "xformers/ops/fmha/common.py:286-287 (0 <= p <= 1)",
}

# The device xformers' attention biases land on when built with device=None on a GPU machine.
SIMULATED_DEFAULT_CUDA = torch.device("cuda")


class ContractViolation(Exception):
    def __init__(self, rule: str, message: str):
        assert rule in RULES, rule
        self.rule = rule
        super().__init__(f"[{rule}] {message}  (source: {RULES[rule]})")


def _require(rule: str, ok: bool, message: str) -> None:
    if not ok:
        raise ContractViolation(rule, message)


@dataclass
class Calls:
    """What the stand-ins were asked to do, for tests to assert on."""

    log: list[dict[str, Any]] = field(default_factory=list)

    def kernels(self) -> list[str]:
        return [c["kernel"] for c in self.log]


calls = Calls()

# Numerics-only relaxation: exact fp32 comparisons with eager need the kernels to accept fp32,
# which the CUDA ones do not. Contract tests run with it off (bf16).
_relaxed = {"dtype": False}


@contextlib.contextmanager
def fp32_allowed():
    """Accept fp32 inputs where the real kernel needs fp16/bf16 (every other rule still holds)."""
    _relaxed["dtype"] = True
    try:
        yield
    finally:
        _relaxed["dtype"] = False


def _half(rule: str, *tensors: torch.Tensor) -> None:
    dtypes = {t.dtype for t in tensors}
    _require(rule, len(dtypes) == 1, f"query/key/value dtypes differ: {sorted(map(str, dtypes))}")
    dtype = tensors[0].dtype
    _require(rule, dtype in HALF or (_relaxed["dtype"] and dtype == torch.float32), f"dtype {dtype}")


# --- reference math ---------------------------------------------------------------------------------


def _attend(q, k, v, scale: float, left: int = -1, right: int = -1, softcap: float = 0.0):
    """q [H, n, D], k/v [Hkv, m, D] (GQA: query head h uses kv head h // (H / Hkv)) -> [H, n, D].
    A query at i sees key j when i - left <= j <= i + right (-1: unbounded), flash-attn's window."""
    hq, hk = q.shape[0], k.shape[0]
    k, v = k.repeat_interleave(hq // hk, 0), v.repeat_interleave(hq // hk, 0)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    n, m = q.shape[1], k.shape[1]
    i, j = torch.arange(n)[:, None] + (m - n), torch.arange(m)[None]
    allowed = torch.ones(n, m, dtype=torch.bool)
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    return (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v.float()).to(q.dtype)


def _varlen_reference(q, k, v, cu_q, cu_k, scale, left, right, softcap=0.0):
    """[T, H, D] packed rows -> [T, H, D], each (cu_q[i]:cu_q[i+1]) block attending only to itself."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    pieces = []
    for (s, e), (ks, ke) in zip(
        zip(cu_q[:-1].tolist(), cu_q[1:].tolist()), zip(cu_k[:-1].tolist(), cu_k[1:].tolist())
    ):
        block = _attend(
            q[s:e].transpose(0, 1),
            k[ks:ke].transpose(0, 1),
            v[ks:ke].transpose(0, 1),
            scale,
            left,
            right,
            softcap,
        )
        pieces.append(block.transpose(0, 1))
    return torch.cat(pieces)


def _check_cu_seqlens(cu_q, cu_k, max_q, max_k, q, k) -> None:
    for name, cu in (("cu_seq_q", cu_q), ("cu_seq_k", cu_k)):
        _require("flash.cu_seqlens_int32", cu.dtype == torch.int32, f"{name} is {cu.dtype}")
        _require("flash.same_device", cu.device == q.device, f"{name} on {cu.device}, query on {q.device}")
        _require("flash.last_dim_contiguous", cu.is_contiguous(), f"{name} is not contiguous")
    for name, cu, total, max_len in (("q", cu_q, q.shape[0], max_q), ("k", cu_k, k.shape[0], max_k)):
        lengths = cu[1:] - cu[:-1]
        _require(
            "flash.cu_seqlens_values",
            cu.ndim == 1 and int(cu[0]) == 0 and int(cu[-1]) == total and bool((lengths >= 0).all()),
            f"cu_seqlens_{name}={cu.tolist()} for {total} tokens",
        )
        # an int in the op schemas; transformers passes a 0-d integer tensor when it derives the
        # boundaries from position_ids (prepare_fa_kwargs_from_position_ids), which the schema's
        # argument parsing takes as an int (tests/gpu runs that path on the real kernel)
        integral = isinstance(max_len, int) or (
            torch.is_tensor(max_len) and max_len.ndim == 0 and not max_len.is_floating_point()
        )
        _require(
            "flash.cu_seqlens_values",
            integral and int(max_len) >= int(lengths.max()),
            f"max_seqlen_{name}={max_len!r} for a longest sequence of {int(lengths.max())}",
        )
    _require("flash.cu_seqlens_values", cu_q.shape == cu_k.shape, "cu_seqlens_q/k count different batches")


def _check_flash_tensors(q, k, v) -> None:
    _half("flash.dtype", q, k, v)
    _require("flash.same_device", k.device == q.device == v.device, "q/k/v on different devices")
    for name, t in (("query", q), ("key", k), ("value", v)):
        _require("flash.last_dim_contiguous", t.stride(-1) == 1, f"{name}.stride() = {t.stride()}")
    d = q.shape[-1]
    _require(
        "flash.head_dim",
        d <= 256 and d % 8 == 0 and k.shape[-1] == v.shape[-1] == d,
        f"head dims q/k/v {d}/{k.shape[-1]}/{v.shape[-1]}",
    )


# --- torch.nn.attention.varlen.varlen_attn ----------------------------------------------------------


def varlen_attn(
    query,
    key,
    value,
    cu_seq_q,
    cu_seq_k,
    max_q,
    max_k,
    *,
    return_aux=None,
    scale=None,
    window_size=(-1, -1),
    enable_gqa=False,
    seqused_k=None,
    block_table=None,
    num_splits=None,
    **unexpected,
):
    _require("varlen.signature", not unexpected, f"unexpected keyword arguments {sorted(unexpected)}")
    _require(
        "varlen.layout",
        query.ndim == key.ndim == value.ndim == 3 and key.shape == value.shape,
        f"shapes {tuple(query.shape)} {tuple(key.shape)} {tuple(value.shape)}",
    )
    hq, hk = query.shape[1], key.shape[1]
    _require("varlen.gqa_heads", enable_gqa or hq == hk, f"Hq={hq} Hkv={hk} without enable_gqa")
    _require("varlen.gqa_heads", hq % hk == 0, f"Hq={hq} not a multiple of Hkv={hk}")
    _require(
        "varlen.window",
        isinstance(window_size, tuple)
        and len(window_size) == 2
        and all(isinstance(w, int) for w in window_size),
        f"window_size={window_size!r}",
    )
    _check_flash_tensors(query, key, value)
    _check_cu_seqlens(cu_seq_q, cu_seq_k, max_q, max_k, query, key)
    calls.log.append({"kernel": "varlen_attn", "window_size": window_size, "cu": cu_seq_q.tolist()})
    return _varlen_reference(query, key, value, cu_seq_q, cu_seq_k, scale, *window_size)


def varlen_attn_2_11(
    query,
    key,
    value,
    cu_seq_q,
    cu_seq_k,
    max_q,
    max_k,
    *,
    return_aux=None,
    scale=None,
    window_size=(-1, -1),
    **unexpected,
):
    """torch 2.11's `varlen_attn`: no `enable_gqa` keyword (a TypeError there); GQA is native."""
    _require("varlen.signature_2_11", not unexpected, f"unexpected keyword arguments {sorted(unexpected)}")
    hq, hk = query.shape[1], key.shape[1]
    _require("varlen.gqa_heads", hq % hk == 0, f"Hq={hq} not a multiple of Hkv={hk}")
    return varlen_attn(
        query,
        key,
        value,
        cu_seq_q,
        cu_seq_k,
        max_q,
        max_k,
        return_aux=return_aux,
        scale=scale,
        window_size=window_size,
        enable_gqa=hq != hk,
    )


# the signatures a call site must satisfy, by torch release
VARLEN_ATTN = {"2.13": varlen_attn, "2.11": varlen_attn_2_11}


# --- flash_attn.flash_attn_varlen_func ----------------------------------------------------------------


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    hq, hk = q.shape[1], k.shape[1]
    _require("flash_attn.gqa_heads", hq % hk == 0, f"Hq={hq} not a multiple of Hkv={hk}")
    _require(
        "flash_attn.window",
        len(tuple(window_size)) == 2 and isinstance(softcap, float | int),
        f"window_size={window_size!r} softcap={softcap!r}",
    )
    # flash_attn_interface.py: maybe_contiguous() fixes the last-dim stride itself; the C++ checks
    # below still apply to the rest.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    _check_flash_tensors(q, k, v)
    _check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, q, k)
    assert dropout_p == 0.0, "the reference computes no dropout"
    left, right = window_size
    if causal:
        right = 0
    calls.log.append({"kernel": "flash_attn_varlen_func", "window_size": (left, right), "softcap": softcap})
    return _varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, left, right, float(softcap))


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """flash_attn.flash_attn_func: q [B, L, H, D], k/v [B, L, Hkv, D], same rules as the varlen form."""
    hq, hk = q.shape[2], k.shape[2]
    _require("flash_attn.gqa_heads", hq % hk == 0, f"Hq={hq} not a multiple of Hkv={hk}")
    _require(
        "flash_attn.window",
        len(tuple(window_size)) == 2 and isinstance(softcap, float | int),
        f"window_size={window_size!r} softcap={softcap!r}",
    )
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    _check_flash_tensors(q, k, v)
    assert dropout_p == 0.0, "the reference computes no dropout"
    left, right = window_size
    if causal:
        right = 0
    calls.log.append({"kernel": "flash_attn_func", "window_size": (left, right), "softcap": softcap})
    scale = 1 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    out = [
        _attend(
            q[b].transpose(0, 1),
            k[b].transpose(0, 1),
            v[b].transpose(0, 1),
            scale,
            left,
            right,
            float(softcap),
        )
        for b in range(q.shape[0])
    ]
    return torch.stack(out).transpose(1, 2)


# --- torch.nn.functional.scaled_dot_product_attention under sdpa_kernel([FLASH_ATTENTION]) -----------


def sdpa_flash(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    """Stand-in for F.scaled_dot_product_attention on CUDA: only the flash backend may run."""
    backends = torch.backends.cuda
    _require(
        "sdpa_flash.backend",
        backends.flash_sdp_enabled()
        and not (
            backends.math_sdp_enabled()
            or backends.mem_efficient_sdp_enabled()
            or backends.cudnn_sdp_enabled()
        ),
        "called outside sdpa_kernel([SDPBackend.FLASH_ATTENTION])",
    )
    _require("sdpa_flash.no_mask", attn_mask is None, "flash takes no attn_mask")
    _require(
        "sdpa_flash.shape",
        query.ndim == key.ndim == value.ndim == 4,
        f"{query.ndim}-D/{key.ndim}-D/{value.ndim}-D",
    )
    _half("sdpa_flash.dtype", query, key, value)
    d = query.shape[-1]
    _require("sdpa_flash.head_dim", key.shape[-1] == value.shape[-1] == d <= 256, f"head dim {d}")
    hq, hk = query.shape[1], key.shape[1]
    _require(
        "sdpa_flash.gqa_heads",
        hq == hk or (enable_gqa and hq % hk == 0 and key.shape[1] == value.shape[1]),
        f"Hq={hq} Hkv={hk} enable_gqa={enable_gqa}",
    )
    for name, t in (("query", query), ("key", key), ("value", value)):
        _require("sdpa_flash.last_dim_contiguous", t.stride(-1) == 1, f"{name}.stride() = {t.stride()}")
    assert dropout_p == 0.0, "the reference computes no dropout"
    calls.log.append({"kernel": "sdpa_flash", "is_causal": is_causal})
    scale = 1 / math.sqrt(d) if scale is None else scale
    right = 0 if is_causal else -1
    return torch.stack([_attend(query[b], key[b], value[b], scale, -1, right) for b in range(query.shape[0])])


# --- xformers.ops ---------------------------------------------------------------------------------


class LowerTriangularMask:
    def __init__(self, device=None):  # attn_bias.py:151: the argument is ignored
        pass


@dataclass
class _SeqLenInfo:
    seqstart_py: list[int]
    device: torch.device

    @classmethod
    def from_seqlens(cls, seqlens, device):
        _require(
            "xformers.seqlens_ints",
            not isinstance(seqlens, torch.Tensor) and all(isinstance(n, int) for n in seqlens),
            f"seqlens={seqlens!r}",
        )
        starts = [0]
        for n in seqlens:
            starts.append(starts[-1] + n)
        return cls(starts, SIMULATED_DEFAULT_CUDA if device is None else torch.device(device))


@dataclass
class BlockDiagonalCausalMask:
    q_seqinfo: _SeqLenInfo
    k_seqinfo: _SeqLenInfo

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None, *, device=None):
        q = _SeqLenInfo.from_seqlens(q_seqlen, device)
        k = q if kv_seqlen is None else _SeqLenInfo.from_seqlens(kv_seqlen, device)
        return cls(q, k)

    def make_local_attention(self, window_size):
        return BlockDiagonalCausalLocalAttentionMask(self.q_seqinfo, self.k_seqinfo, window_size)


@dataclass
class BlockDiagonalCausalLocalAttentionMask(BlockDiagonalCausalMask):
    _window_size: int = 0

    def __post_init__(self):
        _require("xformers.window_positive", self._window_size > 0, f"window_size={self._window_size}")


SUPPORTED_BIASES = (
    type(None),
    LowerTriangularMask,
    BlockDiagonalCausalMask,
    BlockDiagonalCausalLocalAttentionMask,
)


def memory_efficient_attention(
    query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None, output_dtype=None
):
    qkv = (query, key, value)
    _require(
        "xformers.ndim",
        query.ndim in (3, 4, 5) and all(t.ndim == query.ndim for t in qkv),
        f"shapes {[tuple(t.shape) for t in qkv]}",
    )
    _require("xformers.same_device", all(t.device == query.device for t in qkv), "q/k/v on different devices")
    _require(
        "xformers.bias_type", type(attn_bias) in SUPPORTED_BIASES, f"attn_bias {type(attn_bias).__name__}"
    )
    block_diagonal = isinstance(attn_bias, BlockDiagonalCausalMask)
    if block_diagonal:
        _require(
            "xformers.bias_device",
            attn_bias.q_seqinfo.device == query.device,
            f"bias on {attn_bias.q_seqinfo.device}, query on {query.device}",
        )
    _require("xformers.dtype", all(t.dtype == query.dtype for t in qkv), "q/k/v dtypes differ")
    _require(
        "xformers.dtype",
        query.dtype in (*HALF, torch.float32),
        f"dtype {query.dtype} (cutlass: f32/f16/bf16, flash: f16/bf16)",
    )
    if block_diagonal:
        _require(
            "xformers.block_diagonal_batch1", all(t.shape[0] == 1 for t in qkv), f"batch {query.shape[0]}"
        )
    _require("xformers.dropout", 0.0 <= p <= 1.0, f"p={p}")
    assert p == 0.0, "the reference computes no dropout"
    _require(
        "xformers.shapes",
        query.shape[:-1] == key.shape[:-1] == value.shape[:-1] and query.shape[-1] == key.shape[-1],
        f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}",
    )
    for name, t in zip(("query", "key", "value"), qkv):
        _require("xformers.last_dim_contiguous", t.stride(-1) <= 1, f"{name}.stride() = {t.stride()}")
    needs_grad = any(t.requires_grad for t in qkv)  # __init__.py:471: no other condition
    _require(
        "xformers.bmghk_forward_only",
        not (needs_grad and query.ndim == 5),
        "No operator found for `memory_efficient_attention_backward`: BMGHK (5-D GQA) inputs that require grad",
    )
    calls.log.append(
        {
            "kernel": "memory_efficient_attention",
            "bias": type(attn_bias).__name__,
            "ndim": query.ndim,
            "window": getattr(attn_bias, "_window_size", None),
        }
    )
    # [B, M, (G,) H, K] -> per batch [heads, M, K]
    b, m = query.shape[:2]
    q, k, v = (t.reshape(b, m, -1, t.shape[-1]).transpose(1, 2) for t in qkv)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    if attn_bias is None:
        out = torch.stack([_attend(q[i], k[i], v[i], scale) for i in range(b)])
    elif not block_diagonal:
        out = torch.stack([_attend(q[i], k[i], v[i], scale, -1, 0) for i in range(b)])
    else:
        left = (
            attn_bias._window_size - 1 if isinstance(attn_bias, BlockDiagonalCausalLocalAttentionMask) else -1
        )
        cu = torch.tensor(attn_bias.q_seqinfo.seqstart_py, dtype=torch.int32)
        _require(
            "xformers.shapes",
            attn_bias.q_seqinfo.seqstart_py[-1] == m,
            f"bias covers {attn_bias.q_seqinfo.seqstart_py[-1]} tokens, inputs have {m}",
        )
        out = _varlen_reference(
            q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, scale, left, 0
        )
        out = out.transpose(0, 1)[None]
    return out.transpose(1, 2).reshape(*query.shape[:-1], value.shape[-1])


XOPS = SimpleNamespace(
    memory_efficient_attention=memory_efficient_attention,
    fmha=SimpleNamespace(
        attn_bias=SimpleNamespace(
            LowerTriangularMask=LowerTriangularMask,
            BlockDiagonalCausalMask=BlockDiagonalCausalMask,
            BlockDiagonalCausalLocalAttentionMask=BlockDiagonalCausalLocalAttentionMask,
        )
    ),
)
