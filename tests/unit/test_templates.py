"""Labels by construction for every chat template, on real tokenizers where they are available
offline (tests/chat_families.py says which are stand-ins).

For generated multi-turn conversations (system or not, whitespace at message edges, typed
special-token text, unicode, reasoning where the template renders it), every template x tokenizer
pair must give: trained tokens that decode to the assistant message as the template renders it,
closed by the template's end-of-turn token; nothing else trained (no header, role or user text);
and for every assistant prefix, the training ids of that prefix equal
`apply_chat_template(prefix, add_generation_prompt=True, tokenize=True)` on the same tokenizer:
what a server gives the model.
"""

from __future__ import annotations

import copy

import chat_families as cf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vicuna_sft.compat.transformers import keeps_control_token_text
from vicuna_sft.config import Reasoning
from vicuna_sft.data.conversation import Conversation, Message
from vicuna_sft.data.encode import IGNORE_INDEX, Encoder
from vicuna_sft.data.templates import VICUNA_TEMPLATE, ChatTemplate, TemplateError, resolve

FAMILIES = [f.name for f in cf.families()]
# templates that render earlier turns differently once later ones follow: Qwen3 (the <think>
# block of the latest turn only), Mistral v3 (the system prompt inside the last user message only)
UNSTABLE = {"qwen3", "mistral_v3"}
TYPED = ["</s>", "<s>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "[INST]", "<|im_start|>", "<think>"]


def tokenizer_of(name: str):
    tok = cf.family(name).load()
    if tok.chat_template is None:  # vicuna: the builtin template, as final/ saves it
        tok = copy.deepcopy(tok)
        tok.chat_template = VICUNA_TEMPLATE
    return tok


_encoders: dict = {}


def encoder(name: str, reasoning: Reasoning = Reasoning.refuse) -> Encoder:
    if (name, reasoning) not in _encoders:
        tok = tokenizer_of(name)
        _encoders[name, reasoning] = Encoder(tok, resolve("tokenizer", tok), 1 << 20, reasoning=reasoning)
    return _encoders[name, reasoning]


def spans(labels: list[int]) -> list[list[int]]:
    out, cur = [], []
    for t in labels:
        if t != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def squash(text: str) -> str:
    return " ".join(text.split())


def served_prompt(tok, conv: Conversation, k: int) -> list[int]:
    """apply_chat_template's ids for messages[:k] + the generation prompt (what a server sends)."""
    from vicuna_sft.compat.transformers import chat_template_ids

    msgs = [m.for_template() for m in conv.messages[:k]]
    return chat_template_ids(tok, msgs, add_generation_prompt=True)


def check(name: str, conv: Conversation) -> list:
    spec = cf.SPECS[name]
    enc = encoder(name, Reasoning.split if name in UNSTABLE else Reasoning.refuse)
    tok = tokenizer_of(name)
    samples = enc.samples([conv])[0]
    trained = [k for k, m in enumerate(conv.messages) if m.train]
    assert all(not s.dropped for s in samples)
    got = []
    for s in samples:
        assert len(s.input_ids) == len(s.labels)
        assert all(t in (IGNORE_INDEX, i) for i, t in zip(s.input_ids, s.labels))
        for span in spans(s.labels):
            assert span[-1] == enc.eot_id == tok.convert_tokens_to_ids(spec.eot)  # end of turn trained
            assert enc.eot_id not in span[:-1]  # a typed end-of-turn stays text
            got.append(tok.decode(span, skip_special_tokens=False))
    if samples[0].layout == "":
        assert len(samples) == 1
    assert len(got) == len(trained)  # one span per trained assistant message, nothing else trained
    for k, text in zip(trained, got):
        m = conv.messages[k]
        assert "ask" not in text  # no user text
        body = text.lstrip()
        assert body.startswith("say") or body.startswith("<think>"), text  # no header or role name
        assert squash(m.content) in squash(text)
        if "reasoning_content" in m.extra and k == trained[-1]:
            assert squash(m.extra["reasoning_content"]) in squash(text)
    # train/serve parity: the served prompt of each trained turn is the training prefix
    typed = any(t in m.content for m in conv.messages for t in TYPED)
    if typed and not keeps_control_token_text(tok):
        return samples  # transformers < 5.20 cannot keep typed control text as text (README)
    for j, k in enumerate(trained):
        s = samples[j] if len(samples) == len(trained) else samples[0]
        prompt = served_prompt(tok, conv, k)
        assert s.input_ids[: len(prompt)] == prompt, (name, k)
        assert all(t == IGNORE_INDEX for t in s.labels[len(prompt) - 1 : len(prompt)])
    return samples


_piece = st.one_of(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Co")), min_size=1, max_size=8
    ),
    st.text(alphabet="abc xyz\n\t.,!?'\"`#-_=()[]{}0123456789", min_size=1, max_size=12),
    st.sampled_from([*TYPED, "🙂", "你好", "é", "```\ncode\n```", "  ", "\n", " x "]),
)
_text = st.lists(_piece, min_size=0, max_size=4).map("".join)


@st.composite
def conversations(draw, reasoning: bool):
    msgs = []
    if draw(st.booleans()):
        msgs.append(Message("system", "sys " + draw(_text)))
    for _ in range(draw(st.integers(1, 3))):
        edge = draw(st.sampled_from(["", " ", "\n", "  "]))
        msgs.append(Message("user", edge + "ask " + draw(_text) + edge))
        extra = {}
        if reasoning and draw(st.booleans()):
            extra["reasoning_content"] = "think " + draw(_text).replace("<think>", "").strip() or "think"
        reply = "say " + draw(_text) + draw(st.sampled_from(["", " ", "\n"]))
        msgs.append(Message("assistant", reply, train=True, extra=extra))
    return Conversation("gen", tuple(msgs))


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_conversations(name, data):
    check(name, data.draw(conversations(reasoning=cf.SPECS[name].reasoning)))


# --- the peers' known failures, as regression tests --------------------------------------------


def two_turns(
    system: str | None = None, first: str = "say one", second: str = "say two", **extra
) -> Conversation:
    msgs = [Message("system", system)] if system else []
    msgs += [
        Message("user", "ask one"),
        Message("assistant", first, train=True, extra=extra),
        Message("user", "ask two"),
        Message("assistant", second, train=True),
    ]
    return Conversation("two", tuple(msgs))


def trained_text(name: str, sample) -> list[str]:
    tok = tokenizer_of(name)
    return [tok.decode(s, skip_special_tokens=False) for s in spans(sample.labels)]


def test_gemma_end_of_turn_is_trained():
    """Axolotl never trains Gemma's <end_of_turn> by default: the model never stops."""
    (s,) = encoder("gemma3").samples([two_turns()])[0]
    assert trained_text("gemma3", s) == ["say one<end_of_turn>", "say two<end_of_turn>"]


def test_llama3_trim_is_what_is_trained():
    """Llama-3's template trims every message: the trained text is the trimmed reply."""
    (s,) = encoder("llama3").samples([two_turns(first="  say one \n", second="\nsay two  ")])[0]
    assert trained_text("llama3", s) == ["say one<|eot_id|>", "say two<|eot_id|>"]


def qwen3_reasoning() -> Conversation:
    return two_turns(first="say one", reasoning_content="because one")


def test_qwen3_refuses_by_default_naming_the_conversation():
    with pytest.raises(
        TemplateError, match=r"data.template=tokenizer: conversation two: .*data.reasoning=split"
    ):
        encoder("qwen3").samples([qwen3_reasoning()])


def test_qwen3_split_trains_each_turn_as_served():
    a, b = encoder("qwen3", Reasoning.split).samples([qwen3_reasoning()])[0]
    assert (a.layout, b.layout) == ("split", "split")
    assert trained_text("qwen3", a) == ["<think>\nbecause one\n</think>\n\nsay one<|im_end|>"]
    assert trained_text("qwen3", b) == ["<think>\n\n</think>\n\nsay two<|im_end|>"]
    tok = tokenizer_of("qwen3")
    history = tok.decode(b.input_ids)
    assert "because one" not in history  # turn 1 in the history as a server renders it: no reasoning
    assert len(b.input_ids) + len(a.input_ids) > len(b.input_ids)  # the token cost of splitting


def test_qwen3_keep_trains_every_turn_with_its_reasoning():
    (s,) = encoder("qwen3", Reasoning.keep).samples([qwen3_reasoning()])[0]
    assert s.layout == "keep"
    assert trained_text("qwen3", s) == [
        "<think>\nbecause one\n</think>\n\nsay one<|im_end|>",
        "<think>\n\n</think>\n\nsay two<|im_end|>",
    ]


def test_a_template_edited_by_one_character_still_works():
    """TRL swaps templates only when byte-identical to a stored one; nothing here is looked up."""
    tok = tokenizer_of("llama3")
    edited = cf.template_text("llama3").replace("Cutting Knowledge Date", "Cutting knowledge date")
    enc = Encoder(tok, ChatTemplate("edited.jinja", edited), 4096)
    (s,) = enc.samples([two_turns()])[0]
    assert trained_text("llama3", s) == ["say one<|eot_id|>", "say two<|eot_id|>"]
    assert "Cutting knowledge date" in tok.decode(s.input_ids)


def test_mistral_v3_system_prompt_is_trained_as_served():
    """Mistral v3 writes the system prompt into the last user message only: a conversation ending
    in a reply would lose it, so each turn is trained after the prompt a server sends."""
    a, b = encoder("mistral_v3", Reasoning.split).samples([two_turns(system="Be brief.")])[0]
    tok = tokenizer_of("mistral_v3")
    assert "Be brief." in tok.decode(a.input_ids) and "Be brief." in tok.decode(b.input_ids)
    check("mistral_v3", two_turns(system="Be brief."))


@pytest.mark.parametrize("name", [n for n in FAMILIES if cf.SPECS[n].tools])
def test_tool_calls_are_trained_as_rendered(name):
    call = {
        "id": "abcdefghi",
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
    }
    conv = Conversation(
        "tools",
        (
            Message("user", "ask the weather in Paris"),
            Message("assistant", "", train=True, extra={"tool_calls": [call]}),
            Message("tool", '{"temp": 21}', extra={"tool_call_id": "abcdefghi", "name": "get_weather"}),
            Message("assistant", "say 21 degrees", train=True),
        ),
    )
    samples = encoder(name, Reasoning.split).samples([conv])[0]
    texts = [t for s in samples for t in trained_text(name, s)]
    assert len(texts) == 2
    assert "get_weather" in texts[0] and "Paris" in texts[0] and "21" not in texts[0]
    assert "say 21 degrees" in texts[1] and "temp" not in texts[1]


def test_a_field_the_template_never_renders_is_refused():
    """Reasoning or tool calls given to a template that ignores them would vanish silently."""
    with pytest.raises(TemplateError, match="reasoning_content, which the template never renders"):
        encoder("llama3").samples([two_turns(reasoning_content="hidden")])


def test_typed_end_of_turn_stays_text_everywhere():
    for name in FAMILIES:
        eot = cf.SPECS[name].eot
        conv = two_turns(first=f"say {eot} is the end", second=f"say {eot}")
        samples = check(name, conv)
        ids = [i for s in samples for i in s.input_ids]
        enc = encoder(name)
        n_trained = sum(1 for m in conv.messages if m.train)
        assert ids.count(enc.eot_id) >= n_trained  # the template's own, typed text is not the token
        for s in samples:
            assert sum(1 for t in s.labels if t == enc.eot_id) == len(spans(s.labels))


def test_template_without_end_of_turn_is_refused():
    tok = tokenizer_of("llama3")
    plain = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    plain += "{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(TemplateError, match="never stop"):
        Encoder(tok, ChatTemplate("plain.jinja", plain), 4096)
