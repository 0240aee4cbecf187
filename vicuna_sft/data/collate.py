"""Batching encoded samples.

The attention mask comes from each sample's length, never from `input_ids != pad_id` (FastChat's
`ne(pad)` also hides real `<unk>` tokens), so the pad id only fills space and any id will do.
"""

from dataclasses import dataclass
from typing import Any

import torch

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

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
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
