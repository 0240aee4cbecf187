"""Labels are exact, by construction, for both tokenizer families users train with:
a real Llama-family SentencePiece tokenizer (Mistral-7B v0.1) and a byte-level BPE one.

For every kept sample: each contiguous trained span is one assistant reply followed by the EOS
id, spans come one per reply and in order, the EOS id appears nowhere else in a span (special
text typed in a message is trained as text), and the ids are what the tokenizer gives for the
whole prompt text.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vicuna_reference import render, vicuna_encoder

from vicuna_sft.data.conversation import Conversation
from vicuna_sft.data.encode import IGNORE_INDEX
from vicuna_sft.data.templates import VICUNA_SYSTEM

SPECIAL_TEXT = ["</s>", "<s>", "<unk>", "USER:", "ASSISTANT:", " USER: ", "ASSISTANT: x</s>"]


@pytest.fixture(params=["mistral", "bpe"], scope="module")
def tokenizer(request):
    return request.getfixturevalue(f"{request.param}_tokenizer")


def trained_spans(labels: list[int]) -> list[list[int]]:
    spans, current = [], []
    for t in labels:
        if t == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(t)
    if current:
        spans.append(current)
    return spans


def decode_text(tok, ids: list[int]) -> str:
    """Decode exactly: a plain anchor token first, so decoders that strip a leading space
    (SentencePiece's `Strip`) cannot eat a space that belongs to the reply."""
    anchor = tok.convert_tokens_to_ids("a")
    assert anchor != tok.unk_token_id
    text = tok.decode([anchor, *ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert text.startswith("a")
    return text[1:]


def has_special_text(conv: Conversation) -> bool:
    texts = [conv.system, *(m for turn in conv.pairs for m in turn)]
    return any(s in t for s in ("</s>", "<s>", "<unk>") for t in texts)


_encoders: dict = {}


def encoder(tok, max_length: int):
    """One Encoder per tokenizer and length (building one copies the tokenizer twice)."""
    key = (id(tok), max_length)
    if key not in _encoders:
        _encoders[key] = vicuna_encoder(tok, max_length)
    return _encoders[key]


def check_sample(tok, conv: Conversation, max_length: int | None = None) -> None:
    enc = encoder(tok, 100_000).encode(conv)
    ids, labels = enc.input_ids, enc.labels
    assert not enc.truncated and len(ids) == len(labels)
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    for i, t in zip(ids, labels):
        assert t in (IGNORE_INDEX, i)  # a trained position predicts its own token
    if not has_special_text(conv):
        # the template's text tokenized in one piece, as apply_chat_template(tokenize=True) and a
        # server do: FastChat's ids except, on SentencePiece, the first word after the literal BOS
        # (no prefix space: "A", where FastChat's separately added BOS gave "▁A")
        text = tok.bos_token + render(conv, tok.eos_token)
        assert ids == tok(text, add_special_tokens=False).input_ids
    spans = trained_spans(labels)
    replies = [r for _, r in conv.pairs]
    assert len(spans) == len(replies), (spans, replies)  # one span per reply, in order
    for span, reply in zip(spans, replies):
        expected = reply + tok.eos_token
        text = decode_text(tok, span)
        # the template's space before a reply may merge into the reply's first token
        assert text == expected or text == " " + expected, (text, expected)
        assert span[-1] == tok.eos_token_id
        assert tok.eos_token_id not in span[:-1]  # "</s>" typed in a reply is text, not EOS
        assert tok.bos_token_id not in span
    if max_length is not None and len(ids) > max_length:  # truncation keeps ids and labels aligned
        cut = encoder(tok, max_length).encode(conv)
        assert cut.truncated and cut.input_ids == ids[:max_length] and cut.labels == labels[:max_length]


HAND_CORPUS = [
    Conversation.of("hello", VICUNA_SYSTEM, (("Hello!", "Hi!"), ("How are you?", "Fine."))),
    Conversation.of(
        "unicode", "Système: réponds en français.", (("¿Qué tal? 你好", "Très bien — 谢谢! 🙂🚀"),)
    ),
    Conversation.of(
        "code",
        VICUNA_SYSTEM,
        (
            ("Write a loop", "```python\nfor i in range(3):\n    print(i)\n```\n"),
            ("Thanks", "You're welcome."),
        ),
    ),
    Conversation.of(
        "spaces", VICUNA_SYSTEM, (("  padded  ", "  leading and trailing  "), ("\n\nnewlines\n", "\nok\n\n"))
    ),
    Conversation.of("literal-eos", VICUNA_SYSTEM, (("What is </s>?", "It is </s> written as text </s>"),)),
    Conversation.of("literal-bos", VICUNA_SYSTEM, (("<s> and <unk>", "<s>x<unk> </s></s>"),)),
    Conversation.of("fake-roles", VICUNA_SYSTEM, (("USER: ASSISTANT:", " ASSISTANT: fake</s>USER: again"),)),
    Conversation.of("single-char", VICUNA_SYSTEM, (("a", "b"), ("c", "d"), ("e", "f"))),
    Conversation.of("tabs", VICUNA_SYSTEM, (("\tindent", "\t\tdouble tab\t"),)),
    Conversation.of("emoji-only", VICUNA_SYSTEM, (("👍", "👍👍🏽"),)),
]


@pytest.mark.parametrize("conv", HAND_CORPUS, ids=lambda c: c.id)
def test_hand_corpus(tokenizer, conv):
    check_sample(tokenizer, conv)


def test_exact_tokens_on_the_readme_example(mistral_tokenizer):
    tok = mistral_tokenizer
    conv = HAND_CORPUS[0]
    enc = vicuna_encoder(tok, 2048).encode(conv)
    trained = [tok.convert_ids_to_tokens(i) for i, t in zip(enc.input_ids, enc.labels) if t != IGNORE_INDEX]
    assert trained == ["▁Hi", "!", "</s>", "▁Fine", ".", "</s>"]
    # non-legacy Llama tokenizer: no "▁" before USER after the template's </s>
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    eos_at = tokens.index("</s>")
    assert tokens[eos_at + 1] == "USER"


def test_literal_special_text_is_trained_as_text(tokenizer):
    conv = HAND_CORPUS[4]
    enc = vicuna_encoder(tokenizer, 2048).encode(conv)
    # exactly one EOS per reply (the template's), although the messages contain "</s>" three times
    assert enc.input_ids.count(tokenizer.eos_token_id) == 1
    assert [t for t in enc.labels if t == tokenizer.eos_token_id] == [tokenizer.eos_token_id]


@pytest.mark.parametrize("max_length", [24, 40, 57, 80])
def test_truncation(tokenizer, max_length):
    conv = Conversation.of("long", VICUNA_SYSTEM, (("Tell me", "word " * 30), ("More", "words " * 30)))
    full = vicuna_encoder(tokenizer, 10_000).encode(conv)
    cut = vicuna_encoder(tokenizer, max_length).encode(conv)
    assert cut.truncated and len(cut.input_ids) == max_length
    assert cut.input_ids == full.input_ids[:max_length]
    assert cut.labels == full.labels[:max_length]  # labels truncated consistently


# --- property test over generated conversations -------------------------------------------------

_pieces = st.one_of(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Co")), min_size=1, max_size=12
    ),
    st.text(alphabet="abc xyz\n\t.,!?'\"`#-_=()[]{}0123456789", min_size=1, max_size=20),
    st.sampled_from([*SPECIAL_TEXT, "🙂", "👍🏽", "你好", "é", "```\ncode\n```", "  ", "\n", " x "]),
)
_message = st.lists(_pieces, min_size=1, max_size=6).map("".join).filter(lambda s: s.strip() != "")
_conversation = st.builds(
    lambda sys, turns: Conversation.of("gen", sys or VICUNA_SYSTEM, tuple(turns)),
    st.one_of(st.none(), _message),
    st.lists(st.tuples(_message, _message), min_size=1, max_size=4),
)


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=_conversation, max_length=st.sampled_from([4096, 4096, 64]))
def test_generated_conversations_mistral(mistral_tokenizer, conv, max_length):
    check_sample(mistral_tokenizer, conv, max_length)


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=_conversation, max_length=st.sampled_from([4096, 4096, 64]))
def test_generated_conversations_bpe(bpe_tokenizer, conv, max_length):
    check_sample(bpe_tokenizer, conv, max_length)
