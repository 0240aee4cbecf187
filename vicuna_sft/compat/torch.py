"""torch: the signature of `torch.nn.attention.varlen.varlen_attn`, which moved between releases.

torch 2.11: `varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux, scale, window_size)`;
grouped-query attention (fewer K/V heads) is handled natively. torch 2.13 added `enable_gqa`
(and requires it when H_q != H_kv). The argument is passed only where the kernel takes it.
"""

import functools
import inspect
from typing import Any

TESTED = ((2, 11), (2, 14))  # the torch releases the kernel calls were checked against


@functools.lru_cache(maxsize=8)
def _takes(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: assume the newest API
        return True


def varlen_attn(*args: Any, enable_gqa: bool, **kwargs: Any) -> Any:
    """`varlen_attn` with `enable_gqa` given only to releases that have it (2.13+)."""
    from torch.nn.attention import varlen

    fn = varlen.varlen_attn  # looked up at call time: CPU tests substitute contract stand-ins
    if _takes(fn, "enable_gqa"):
        kwargs["enable_gqa"] = enable_gqa
    return fn(*args, **kwargs)
