"""Padding-free packing: the collator's layout, and the `use_cache=False` guard that keeps
transformers' packed-sequence masking on for every forward of a prepared model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vicuna_sft.config import Padding
from vicuna_sft.data.collate import Collator
from vicuna_sft.data.encode import IGNORE_INDEX

FEATURES = [
    {"input_ids": [1, 10, 11, 12, 2], "labels": [-100, -100, 11, 12, 2]},
    {"input_ids": [1, 20, 21], "labels": [7, 20, 21]},  # first label set on purpose: must be masked
    {"input_ids": [1, 30, 31, 32, 33, 34, 2], "labels": [-100, -100, -100, 32, 33, 34, 2]},
]


def test_packed_layout():
    batch = Collator(pad_id=0, padding=Padding.packed)(FEATURES)
    assert set(batch) == {
        "input_ids",
        "labels",
        "position_ids",
        "cu_seq_lens_q",
        "cu_seq_lens_k",
        "max_length_q",
        "max_length_k",
    }  # no attention_mask: transformers only detects packing without one
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, 2, 1, 20, 21, 1, 30, 31, 32, 33, 34, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6]]
    assert batch["labels"].tolist() == [
        [-100, -100, 11, 12, 2, -100, 20, 21, -100, -100, -100, 32, 33, 34, 2]
    ]
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 8, 15]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["cu_seq_lens_k"] is batch["cu_seq_lens_q"]
    assert batch["max_length_q"] == batch["max_length_k"] == 7


def test_packed_keeps_every_trained_token_and_sample_count():
    padded = Collator(pad_id=0, padding=Padding.longest)(FEATURES)
    packed = Collator(pad_id=0, padding=Padding.packed)(FEATURES)
    assert padded["input_ids"].shape == (3, 7) and packed["input_ids"].shape == (1, 15)
    assert len(packed["cu_seq_lens_q"]) - 1 == padded["input_ids"].shape[0]
    # the tokens the shifted causal-LM loss trains on: identical sets, in the same order
    pad_targets = [t for row in padded["labels"][:, 1:].tolist() for t in row if t != IGNORE_INDEX]
    pack_targets = [t for t in packed["labels"][0, 1:].tolist() if t != IGNORE_INDEX]
    assert pack_targets == pad_targets
    assert packed["input_ids"].numel() == int(padded["attention_mask"].sum())


def test_pack_single_sample_is_plain_row():
    batch = Collator(pad_id=0, padding=Padding.packed)(FEATURES[:1])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 5]


@pytest.fixture(scope="module")
def caching_model(tiny_dir):
    """The tiny Llama loaded with `use_cache=True` (LlamaConfig's default, what a hub config says)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="sdpa", use_cache=True)
    assert model.config.use_cache is True
    return model


def _per_sample_loss_sum(model, features) -> torch.Tensor:
    total = torch.zeros(())
    for f in features:
        ids, labels = torch.tensor([f["input_ids"]]), torch.tensor([f["labels"]])
        out = model(input_ids=ids, labels=labels, use_cache=False)
        total = total + out.loss * (labels[:, 1:] != IGNORE_INDEX).sum()
    return total


def test_guard_forces_no_cache_on_packed_forward(caching_model):
    from vicuna_sft.attention import sdpa

    model = caching_model
    features = [*FEATURES, {"input_ids": [1, *range(40, 80), 2], "labels": [-100, *range(40, 80), 2]}]
    batch = Collator(pad_id=0, padding=Padding.packed)(features)
    n_targets = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    with torch.no_grad():
        expected = _per_sample_loss_sum(model, features)
        unguarded = model(**batch).loss * n_targets
        # without the guard a cache is built, packed masking is skipped: samples see each other
        assert (unguarded - expected).abs() > 1e-3
        sdpa.prepare(model)
        sdpa.prepare(model)  # idempotent: one hook
        assert len(model._forward_pre_hooks) == 1
        guarded = model(**batch).loss * n_targets
        model.eval()  # evaluation forwards are covered the same way
        guarded_eval = model(**batch, use_cache=True).loss * n_targets
    torch.testing.assert_close(guarded, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(guarded_eval, expected, rtol=1e-5, atol=1e-6)
    # padded batches are untouched (the guard only sees a packed row)
    padded = Collator(pad_id=0, padding=Padding.longest)(features)
    with torch.no_grad():
        out = model(**padded, use_cache=True)
    assert out.past_key_values is not None


def test_packing_refuses_remote_code():
    from vicuna_sft.attention import AttentionUnavailable, check_packing

    cfg = SimpleNamespace(
        data=SimpleNamespace(padding=Padding.packed), model=SimpleNamespace(trust_remote_code=True)
    )
    with pytest.raises(AttentionUnavailable, match="trust_remote_code"):
        check_packing(cfg)
    cfg.data.padding = Padding.longest
    check_packing(cfg)  # padded batches carry their mask: fine


def test_packed_collator_silences_only_the_token_count_fallback_warning():
    import logging

    Collator(pad_id=0, padding=Padding.packed)
    Collator(pad_id=0, padding=Padding.packed)
    logger = logging.getLogger("transformers.trainer")
    assert len([f for f in logger.filters if type(f).__name__ == "_DropTokenCountFallback"]) == 1

    def record(msg):
        return logging.LogRecord("transformers.trainer", logging.WARNING, __file__, 1, msg, None, None)

    assert not logger.filter(record("Could not determine method to count non-padding tokens, falling back"))
    assert logger.filter(record("some other warning"))


def test_default_padding_is_packed():
    from vicuna_sft.config import DataConfig

    assert DataConfig(path="x").padding == Padding.packed
