"""The tokenizer saved with a model can pad a batch for `generate` (issue 10, item 14)."""

from __future__ import annotations

import pytest
import torch

from vicuna_sft.model.loading import set_inference_pad_token

PROMPTS = [
    "Be brief. USER: Hi ASSISTANT:",  # Vicuna prompts of different lengths, up to where a reply starts
    "Be brief. USER: What is 2 plus 2? ASSISTANT: 4.</s>USER: And 3 plus 3, please? ASSISTANT:",
]


def test_saved_tokenizer_pads_a_batch_for_generate(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert tok.pad_token is None  # as trained: the collator never needs one
    with pytest.raises(ValueError, match="does not have a padding token"):
        tok(PROMPTS, padding=True)  # what a user of final/ got before
    size = len(tok)
    set_inference_pad_token(tok)
    tok.save_pretrained(tmp_path)
    # the caller picks the side: left, so every prompt ends where generation starts
    saved = AutoTokenizer.from_pretrained(tmp_path, padding_side="left")
    assert (saved.pad_token, saved.pad_token_id, len(saved)) == ("<unk>", saved.unk_token_id, size)

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # the tiny model is random: make its argmax far from ties
        for p in model.parameters():
            p.mul_(4.0)
    batch = saved(PROMPTS, return_tensors="pt", padding=True)
    assert batch.input_ids.shape[0] == 2 and (batch.attention_mask[0] == 0).any()  # really padded
    gen = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": saved.pad_token_id}
    batched = model.generate(**batch, **gen)[:, batch.input_ids.shape[1] :]
    for row, prompt in zip(batched, PROMPTS):
        alone = saved(prompt, return_tensors="pt")
        expected = model.generate(**alone, **gen)[0, alone.input_ids.shape[1] :]
        assert row.tolist() == expected.tolist()


def test_pad_token_reuses_unk_then_eos_and_keeps_an_existing_one(mistral_tokenizer):
    import copy

    tok = copy.deepcopy(mistral_tokenizer)
    size = len(tok)
    set_inference_pad_token(tok)
    assert (tok.pad_token, tok.pad_token_id, len(tok)) == ("<unk>", 0, size)

    no_unk = copy.deepcopy(mistral_tokenizer)
    no_unk.unk_token = None
    set_inference_pad_token(no_unk)
    assert (no_unk.pad_token, no_unk.pad_token_id) == ("</s>", 2)

    has_pad = copy.deepcopy(mistral_tokenizer)
    has_pad.pad_token = "<s>"
    set_inference_pad_token(has_pad)
    assert has_pad.pad_token == "<s>"
