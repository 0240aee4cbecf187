"""data.long=split: a long conversation becomes several samples cut at turn boundaries.

Property (generated conversations, real SentencePiece and byte-level BPE tokenizers): the pieces
partition the turns in order; each piece fits in max_length, starts with BOS + the system prompt
(it is exactly the encoding of the sub-conversation it holds, whose labels test_labels proves
exact); the trained tokens of all pieces together are the trained tokens of the whole conversation
(0 lost) except the cut part of a single turn pair longer than max_length, which is counted; no
piece is empty. Plus FastChat's two split_long_conversation bugs as regression tests.
"""

import itertools
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_labels import _conversation, check_sample
from vicuna_reference import vicuna_encoder

from vicuna_sft.config import DataConfig, LongMode
from vicuna_sft.data.conversation import Conversation
from vicuna_sft.data.dataset import NO_TRAINED_TOKENS, build_datasets
from vicuna_sft.data.encode import IGNORE_INDEX
from vicuna_sft.data.templates import VICUNA_SYSTEM

_encoders: dict = {}


def encoder(tok, max_length: int, long: LongMode = LongMode.split):
    key = (id(tok), max_length, long)
    if key not in _encoders:
        _encoders[key] = vicuna_encoder(tok, max_length, long)
    return _encoders[key]


def trained(labels: list[int]) -> list[int]:
    return [t for t in labels if t != IGNORE_INDEX]


def check_split(tok, conv: Conversation, max_length: int) -> None:
    pieces = encoder(tok, max_length).split(conv)
    whole = encoder(tok, 100_000).encode(conv)
    assert pieces[0].turns[0] == 0 and pieces[-1].turns[1] == len(conv.pairs)
    assert all(a.turns[1] == b.turns[0] for a, b in itertools.pairwise(pieces))  # contiguous, in order
    kept_plus_lost = []
    for p in pieces:
        start, end = p.turns
        assert end > start
        assert 0 < len(p.input_ids) <= max_length and len(p.labels) == len(p.input_ids)
        sub = Conversation.of(conv.id, conv.system, conv.pairs[start:end])
        full = encoder(tok, 100_000).encode(sub)  # untruncated encoding of the piece's turns
        check_sample(tok, sub)  # exact labels, whole-text ids: BOS + system prompt first
        assert p.input_ids == full.input_ids[:max_length] and p.labels == full.labels[:max_length]
        assert p.truncated == (len(full.input_ids) > max_length)
        if p.truncated:
            assert end - start == 1  # only a single pair that alone does not fit is ever cut
            assert p.lost_tokens == len(trained(full.labels)) - len(trained(p.labels))
        else:
            assert p.lost_tokens == 0 and p.trained_tokens > 0  # no empty piece
        kept_plus_lost += trained(full.labels)
    for prev, p in itertools.pairwise(pieces):  # greedy: a new piece only when the next turn did not fit
        grown = Conversation.of("", conv.system, conv.pairs[prev.turns[0] : p.turns[0] + 1])
        assert len(encoder(tok, 100_000).encode(grown).input_ids) > max_length
    assert kept_plus_lost == trained(whole.labels)  # every reply token is in some piece
    assert sum(p.trained_tokens + p.lost_tokens for p in pieces) == whole.trained_tokens
    if len(pieces) > 1:
        assert [p.id for p in pieces] == [f"{conv.id}_{k}" for k in range(len(pieces))]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=_conversation, max_length=st.sampled_from([24, 48, 64, 96, 160]))
def test_split_generated_mistral(mistral_tokenizer, conv, max_length):
    check_split(mistral_tokenizer, conv, max_length)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=_conversation, max_length=st.sampled_from([24, 48, 64, 96, 160]))
def test_split_generated_bpe(bpe_tokenizer, conv, max_length):
    check_split(bpe_tokenizer, conv, max_length)


def _turn(n_words: int, word: str) -> str:
    return " ".join([word] * n_words)


def _lengths(tok, conv: Conversation) -> list[int]:
    """Token count of each piece [0, k) for k = 1..n, to place max_length exactly."""
    return [
        len(encoder(tok, 100_000).encode(Conversation.of("", conv.system, conv.pairs[:k])).input_ids)
        for k in range(1, len(conv.pairs) + 1)
    ]


def test_fastchat_bug_tail_kept_when_the_last_pair_overflows(bpe_tokenizer):
    """FastChat dropped the rest of a conversation once its last pair overflowed."""
    conv = Conversation.of(
        "c", VICUNA_SYSTEM, (("a", _turn(20, "x")), ("b", _turn(20, "y")), ("c", _turn(10, "z")))
    )
    two, three = _lengths(bpe_tokenizer, conv)[1:]
    max_length = two + 5  # turns 0-1 fit, adding the last does not (three > two + 5)
    assert three > max_length
    pieces = encoder(bpe_tokenizer, max_length).split(conv)
    assert [p.turns for p in pieces] == [(0, 2), (2, 3)]
    assert not any(p.truncated for p in pieces)
    assert bpe_tokenizer.decode(trained(pieces[1].labels), skip_special_tokens=True).strip() == _turn(10, "z")


def test_fastchat_bug_no_empty_sample_when_the_first_pair_is_too_long(bpe_tokenizer, tmp_path):
    """FastChat emitted an empty sample when the first pair alone exceeded max_length. Here that
    pair is truncated (and counted); when its reply is cut entirely the sample is dropped and
    counted, and the following turns are still trained."""
    records = [
        {
            "id": "long-reply",
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": _turn(200, "w")},
                {"from": "human", "value": "and?"},
                {"from": "gpt", "value": "ok"},
            ],
        },
        {
            "id": "long-question",
            "conversations": [
                {"from": "human", "value": _turn(200, "q")},
                {"from": "gpt", "value": "short"},
                {"from": "human", "value": "next"},
                {"from": "gpt", "value": "fine"},
            ],
        },
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    cfg = DataConfig(path=str(path), max_length=64, long=LongMode.split, cache=False)
    data = build_datasets(cfg, bpe_tokenizer, seed=0)
    rows = {r["id"]: r for r in data.train}
    assert sorted(rows) == ["long-question_1", "long-reply_0", "long-reply_1"]
    assert all(len(r["input_ids"]) <= 64 and trained(r["labels"]) for r in rows.values())
    s = data.stats["train"]
    assert s["read"] == 2 and s["samples"] == 4 and s["split"] == 2 and s["kept"] == 3
    assert s["truncated"] == 2 and s["dropped"] == {NO_TRAINED_TOKENS: 1}
    assert s["lost_tokens"] > 150  # the cut part of the 200-word reply, plus the dropped "short</s>"
    tail = bpe_tokenizer.decode(trained(rows["long-question_1"]["labels"]), skip_special_tokens=True)
    assert tail.strip() == "fine"


def test_truncate_mode_keeps_one_sample_and_counts_what_it_cuts(bpe_tokenizer):
    conv = Conversation.of("c", VICUNA_SYSTEM, (("a", _turn(40, "x")), ("b", _turn(40, "y"))))
    [[cut]] = encoder(bpe_tokenizer, 64, LongMode.truncate).samples([conv])
    whole = encoder(bpe_tokenizer, 100_000).encode(conv)
    assert cut.truncated and cut.trained_tokens + cut.lost_tokens == whole.trained_tokens
    pieces = encoder(bpe_tokenizer, 64, LongMode.split).samples([conv])[0]
    assert len(pieces) == 2 and sum(p.lost_tokens for p in pieces) < cut.lost_tokens
