"""Datasets and batches: eager (1 or N processes) and lazy give the same samples; the eval split is
seeded and disjoint; padded batches take their mask from lengths, never from the pad id."""

import json

import torch
from vicuna_reference import render, vicuna_encoder

from vicuna_sft.config import DataConfig, Padding
from vicuna_sft.data.collate import Collator
from vicuna_sft.data.conversation import Conversation
from vicuna_sft.data.dataset import NO_TRAINED_TOKENS, build_datasets
from vicuna_sft.data.encode import IGNORE_INDEX


def rows(ds):
    return [(r["input_ids"], r["labels"]) for r in (ds[i] for i in range(len(ds)))]


def test_eager_num_proc_and_lazy_give_the_same_samples(bpe_tokenizer, sample_path):
    cfg = DataConfig(path=str(sample_path), eval_fraction=0.1, max_length=128, cache=False)
    one = build_datasets(cfg, bpe_tokenizer, seed=3)
    two = build_datasets(DataConfig(**{**vars(cfg), "num_proc": 2}), bpe_tokenizer, seed=3)
    lazy = build_datasets(DataConfig(**{**vars(cfg), "lazy": True}), bpe_tokenizer, seed=3)
    assert rows(one.train) == rows(two.train) == rows(lazy.train)
    assert rows(one.eval) == rows(two.eval) == rows(lazy.eval)
    assert one.stats["train"]["kept"] == len(one.train) > 0


def test_eval_split_is_seeded_and_disjoint(bpe_tokenizer, sample_path):
    cfg = DataConfig(path=str(sample_path), eval_fraction=0.2, max_length=512)
    a, b = (build_datasets(cfg, bpe_tokenizer, seed=1) for _ in range(2))
    c = build_datasets(cfg, bpe_tokenizer, seed=2)
    n = len(json.loads(sample_path.read_text()))
    assert len(a.eval) == round(0.2 * n) and len(a.train) + len(a.eval) == n
    assert a.eval["id"] == b.eval["id"] and a.eval["id"] != c.eval["id"]
    assert not set(a.eval["id"]) & set(a.train["id"])


def test_samples_truncated_to_nothing_are_dropped_and_counted(bpe_tokenizer, tmp_path):
    long_user = "word " * 200
    records = [
        {"id": "ok", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {
            "id": "cut",
            "conversations": [{"from": "human", "value": long_user}, {"from": "gpt", "value": "x"}],
        },
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    data = build_datasets(DataConfig(path=str(path), max_length=64), bpe_tokenizer, seed=0)
    assert data.train["id"] == ["ok"]
    assert data.stats["train"]["dropped"] == {NO_TRAINED_TOKENS: 1}
    assert data.stats["train"]["truncated"] == 1


def test_padding_mask_comes_from_lengths_not_the_pad_id(bpe_tokenizer):
    unk = bpe_tokenizer.unk_token_id
    feats = [
        {"input_ids": [1, 5, unk, 7], "labels": [IGNORE_INDEX, 5, unk, 7]},  # a real <unk> inside a sample
        {"input_ids": [1, 9], "labels": [IGNORE_INDEX, 9]},
    ]
    batch = Collator(pad_id=unk, padding=Padding.longest)(feats)  # pad with the same id as the real token
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX]
    fastchat = Collator(pad_id=unk, padding=Padding.max_length, max_length=16)(feats)
    assert fastchat["input_ids"].shape == (2, 16) and fastchat["attention_mask"].sum().item() == 6


def test_longest_padding_gives_the_unpadded_loss(tiny_dir, bpe_tokenizer):
    """Right padding with a length mask changes nothing for the real tokens (fp32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager")
    enc = vicuna_encoder(bpe_tokenizer, 256)
    short = enc.encode(Conversation.of("s", "sys", (("Hi", "Hello there"),)))
    long = enc.encode(
        Conversation.of("l", "sys", (("What is 2 plus 2?", "2 plus 2 is 4."), ("More", "Sure.")))
    )
    assert (
        bpe_tokenizer(render(Conversation.of("s", "sys", (("Hi", "Hello there"),)))).input_ids
        == short.input_ids
    )
    batch = Collator(0, Padding.longest)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in (short, long)]
    )
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        alone = model(input_ids=torch.tensor([short.input_ids]), use_cache=False).logits
    n = len(short.input_ids)
    torch.testing.assert_close(logits[0, :n], alone[0], rtol=1e-5, atol=1e-5)
