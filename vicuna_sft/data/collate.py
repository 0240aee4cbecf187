"""Batching encoded samples.

The attention mask comes from each sample's length, never from `input_ids != pad_id` (FastChat's
`ne(pad)` also hides real `<unk>` tokens), so the pad id only fills space and any id will do.

`Padding.packed` keeps the same samples per batch but concatenates them into one row without
padding: `position_ids` restart at 0 for each sample, the first label of each sample is ignored
(it would be predicted from the previous sample's last token), and `cu_seq_lens_q/k` /
`max_length_q/k` describe the boundaries for varlen kernels. There is deliberately no
`attention_mask`: transformers derives per-sample masks from the restarting `position_ids` only
when the mask is absent (and only without a KV cache; see `vicuna_sft.attention.guard_packed`).
"""

from dataclasses import dataclass
from typing import Any

import torch

from ..compat.transformers import quiet_token_count_fallback
from ..config import Padding
from .encode import IGNORE_INDEX


def pad_id_for(tokenizer: Any) -> int:
    """Fill id for padding; the tokenizer's own pad token is never created or overwritten."""
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


@dataclass
class Collator:
    pad_id: int
    padding: Padding = Padding.longest
    max_length: int = 2048

    def __post_init__(self) -> None:
        if self.padding == Padding.packed:
            quiet_token_count_fallback()

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if self.padding == Padding.packed:
            return pack(features)
        lengths = [len(f["input_ids"]) for f in features]
        width = self.max_length if self.padding == Padding.max_length else max(lengths)
        input_ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, (f, n) in enumerate(zip(features, lengths)):  # right padding
            input_ids[row, :n] = torch.as_tensor(f["input_ids"])
            labels[row, :n] = torch.as_tensor(f["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def pack(features: list[dict[str, Any]]) -> dict[str, Any]:
    """One row [1, sum(lengths)] holding every sample of the batch, boundaries in position_ids."""
    lengths = [len(f["input_ids"]) for f in features]
    if min(lengths) < 1:
        raise ValueError("cannot pack an empty sample")
    input_ids = torch.cat([torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features])
    labels = torch.cat([torch.as_tensor(f["labels"], dtype=torch.long) for f in features])
    position_ids = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths])
    cu_seq_lens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seq_lens[1:] = torch.cumsum(torch.as_tensor(lengths, dtype=torch.int32), 0)
    labels[cu_seq_lens[:-1].long()] = IGNORE_INDEX  # never predict a sample from the previous one
    return {
        "input_ids": input_ids[None],
        "labels": labels[None],
        "position_ids": position_ids[None],
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
    }
