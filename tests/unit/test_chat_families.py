"""The chat-family fixtures of tests/chat_families.py (issue 18): every family loads offline, its
published template renders conversations (tool calls, reasoning where the template has them), its
end-of-turn token is one special token, and its tiny model directory loads like a hub model.

The ``test_quirk_*`` tests pin the template behaviours a template-driven encoder must handle; they
are facts about the published templates, not about vicuna_sft."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import chat_families as cf
import pytest
from chat_families import TEMPLATES, family, template_text

NAMES = [f.name for f in cf.families()]
TEMPLATED = [n for n in NAMES if cf.SPECS[n].template]

# sha256 of each stored template: the fixtures are the published bytes and must not drift
PUBLISHED_SHA256 = {
    "gemma3.jinja": "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4",
    "llama3.1.jinja": "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
    "mistral_v3.jinja": "e16746b40344d6c5b5265988e0328a0bf7277be86f1c335156eae07e29c82826",
    "mistral_v7.jinja": "3934d199bfe5b6fab5cba1b5f8ee475e8d5738ac315f21cb09545b4e665cc005",
    "phi4.jinja": "fe4120415a3858b873955c92ce3a103a95bc97c2cb00b72e62659aaf0f891ee5",
    "qwen2.5.jinja": "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f",
    "qwen3.jinja": "a55ee1b1660128b7098723e0abcd92caa0788061051c62d51cbe87d9cf1974d8",
}

TWO_TURNS = [
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_CALL = {
    "id": "abc123xyz",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
}
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
    {"role": "tool", "tool_call_id": "abc123xyz", "name": "get_weather", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."},
]


def render(tok, messages, **kw) -> str:
    return tok.apply_chat_template(messages, tokenize=False, **kw)


def ids_of(out) -> list[int]:
    """apply_chat_template(tokenize=True) gives a BatchEncoding on transformers 5, a list before."""
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def test_families_are_the_issue_18_set():
    assert NAMES == ["llama3", "qwen2.5", "qwen3", "mistral_v3", "mistral_v7", "gemma3", "phi4", "vicuna"]
    assert {cf.SPECS[n].template for n in TEMPLATED} == set(PUBLISHED_SHA256)
    assert sorted(p.name for p in TEMPLATES.glob("*.jinja")) == sorted(PUBLISHED_SHA256)
    stand_ins = sorted(n for n in NAMES if not cf.SPECS[n].real_tokenizer)
    assert stand_ins == ["gemma3", "phi4", "qwen2.5", "qwen3"]


@pytest.mark.parametrize("file", sorted(PUBLISHED_SHA256))
def test_template_files_are_the_published_bytes(file):
    assert hashlib.sha256((TEMPLATES / file).read_bytes()).hexdigest() == PUBLISHED_SHA256[file]


@pytest.mark.parametrize("name", NAMES)
def test_family_loads_offline_with_its_template(name):
    from transformers import PreTrainedTokenizerFast

    fam = family(name)
    tok = fam.load()
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.chat_template == template_text(name)
    assert (tok.chat_template is None) == (name == "vicuna")
    assert tok.bos_token == fam.spec.bos
    assert fam.load() is tok  # cached within the process
    fresh = fam.load(fresh=True)
    assert fresh is not tok and fresh.chat_template == tok.chat_template
    text = "Grüße, 世界! x = 42\n\n  done "
    assert fresh(text).input_ids == tok(text).input_ids
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_real_tokenizers_have_their_published_ids():
    llama = family("llama3").load()
    assert len(llama) == 128256
    assert [
        llama.convert_tokens_to_ids(t)
        for t in ("<|begin_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>")
    ] == [
        128000,
        128009,
        128008,
        128010,
    ]
    assert llama("hi").input_ids[0] == 128000  # the tokenizer adds BOS, as Meta's tokenizer.json does
    assert llama.eos_token == "<|eot_id|>" and llama.pad_token is None
    for name, extra in (("mistral_v3", {}), ("mistral_v7", {"[SYSTEM_PROMPT]": 16, "[/SYSTEM_PROMPT]": 17})):
        tok = family(name).load()
        assert len(tok) == 32768
        for t, i in {"<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[TOOL_CALLS]": 5, **extra}.items():
            assert tok.convert_tokens_to_ids(t) == i and tok.added_tokens_decoder[i].special
    assert len(family("vicuna").load()) == 32000


@pytest.mark.parametrize("name", NAMES)
def test_end_of_turn_is_one_special_token(name):
    tok = family(name).load()
    eot = family(name).spec.eot
    eot_id = tok.convert_tokens_to_ids(eot)
    assert isinstance(eot_id, int) and eot_id != tok.unk_token_id
    assert tok(eot, add_special_tokens=False).input_ids == [eot_id]
    assert tok.added_tokens_decoder[eot_id].special  # an added token marked special
    assert tok.decode([eot_id]) == eot and tok.decode([eot_id], skip_special_tokens=True) == ""


@pytest.mark.parametrize("name", TEMPLATED)
@pytest.mark.parametrize("system", [False, True])
def test_two_turn_conversation_renders(name, system):
    fam = family(name)
    tok = fam.load()
    messages = ([{"role": "system", "content": "Be brief."}] if system else []) + TWO_TURNS
    text = render(tok, messages)
    pos = 0
    # every message's text, in order (Mistral v3 drops the system prompt of a conversation that
    # ends with an assistant reply: see the quirk test below)
    for m in [m for m in messages if not (name == "mistral_v3" and m["role"] == "system")]:
        pos = text.index(m["content"], pos)
    for m in TWO_TURNS[1::2]:  # each assistant reply directly followed by the end-of-turn token
        assert m["content"] + fam.spec.eot in text
    assert (tok.bos_token is not None and text.startswith(tok.bos_token)) == fam.spec.template_adds_bos
    ids = ids_of(tok.apply_chat_template(messages, tokenize=True))
    assert ids == tok(text, add_special_tokens=False).input_ids
    assert ids.count(tok.convert_tokens_to_ids(fam.spec.eot)) >= 2
    if fam.spec.bos is not None and fam.spec.template_adds_bos:
        assert ids.count(tok.bos_token_id) == 1  # apply_chat_template does not add a second BOS
    prompt = render(tok, messages[:-1], add_generation_prompt=True)
    assert prompt.startswith(render(tok, messages[:-2])[: len(tok.bos_token or "")])
    if fam.spec.generation_prompt:
        assert len(prompt) > len(render(tok, messages[:-1]))  # an assistant header was added
    else:
        assert prompt == render(tok, messages[:-1])  # Mistral: the prompt already ends with [/INST]


@pytest.mark.parametrize("name", [n for n in TEMPLATED if cf.SPECS[n].tools])
def test_tool_calls_render(name):
    tok = family(name).load()
    text = render(tok, TOOL_TURNS, tools=[WEATHER_TOOL])
    assert "get_weather" in text and "Paris" in text and "It is 21 degrees." in text
    expected = {
        "llama3": [
            '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
            "<|start_header_id|>ipython<|end_header_id|>\n\n",
        ],
        "qwen2.5": [
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
            "<tool_response>\n",
        ],
        "qwen3": [
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
            "<tool_response>\n",
        ],
        "mistral_v3": [
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123xyz"}]</s>',
            "[AVAILABLE_TOOLS] [",
            '[TOOL_RESULTS] {"content": {"temp": 21}, "call_id": "abc123xyz"}[/TOOL_RESULTS]',
        ],
    }[name]
    for piece in expected:
        assert piece in text, (piece, text)


def test_qwen3_reasoning_renders_and_earlier_think_is_dropped():
    tok = family("qwen3").load()
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "reasoning_content": "R1 first thoughts", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "reasoning_content": "R2 second thoughts", "content": "A2"},
    ]
    text = render(tok, messages)
    assert "<|im_start|>assistant\n<think>\nR2 second thoughts\n</think>\n\nA2<|im_end|>" in text
    assert "R1" not in text and "<|im_start|>assistant\nA1<|im_end|>" in text  # dropped before the last query
    # not prefix-stable: the first turn alone keeps its reasoning
    assert "<think>\nR1 first thoughts\n</think>\n\nA1<|im_end|>" in render(tok, messages[:2])
    # reasoning given inline in content is parsed out the same way
    inline = [
        messages[0],
        {"role": "assistant", "content": "<think>\nR1 first thoughts\n</think>\n\nA1"},
        *messages[2:],
    ]
    assert render(tok, inline) == text
    # tokenized: <think> / </think> are single added tokens, not special ones (as in Qwen3)
    think = tok.convert_tokens_to_ids("<think>")
    assert tok("<think>", add_special_tokens=False).input_ids == [think]
    assert not tok.added_tokens_decoder[think].special


# --- quirks a template-driven encoder must handle ------------------------------------------------


def test_quirk_llama3_trims_content_and_adds_a_default_system_turn():
    tok = family("llama3").load()
    text = render(
        tok, [{"role": "user", "content": "  hi  "}, {"role": "assistant", "content": "\n answer \n"}]
    )
    assert "<|end_header_id|>\n\nanswer<|eot_id|>" in text and "<|end_header_id|>\n\nhi<|eot_id|>" in text
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date:"
    )


def test_quirk_qwen2_5_adds_a_default_system_prompt_qwen3_does_not():
    assert render(family("qwen2.5").load(), TWO_TURNS[:2]).startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    )
    assert render(family("qwen3").load(), TWO_TURNS[:2]).startswith("<|im_start|>user\n")


def test_quirk_qwen3_last_assistant_turn_gets_an_empty_think_block():
    tok = family("qwen3").load()
    text = render(tok, TWO_TURNS)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nIt is 4.<|im_end|>\n")
    assert "<|im_start|>assistant\nHi! How can I help?<|im_end|>" in text  # earlier turn: none
    assert render(tok, TWO_TURNS[:1], add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_quirk_gemma3_folds_system_into_first_user_turn_trims_and_says_model():
    tok = family("gemma3").load()
    text = render(
        tok,
        [
            {"role": "system", "content": "SYS"},
            {"role": "user", "content": " hi "},
            {"role": "assistant", "content": " yo "},
        ],
    )
    assert text == "<bos><start_of_turn>user\nSYS\n\nhi<end_of_turn>\n<start_of_turn>model\nyo<end_of_turn>\n"
    with pytest.raises(Exception, match="alternate"):
        render(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_quirk_mistral_v3_system_only_in_a_final_user_turn_and_roles_must_alternate():
    tok = family("mistral_v3").load()
    messages = [{"role": "system", "content": "SYS"}, *TWO_TURNS]
    # the system prompt is rendered only into a user message that is the *last* message: a
    # conversation ending with an assistant reply loses it entirely (no error)
    assert (
        render(tok, messages)
        == "<s>[INST] Hello there[/INST] Hi! How can I help?</s>[INST] What is 2+2?[/INST] It is 4.</s>"
    )
    assert render(tok, messages[:-1]) == (
        "<s>[INST] Hello there[/INST] Hi! How can I help?</s>[INST] SYS\n\nWhat is 2+2?[/INST]"
    )
    # not prefix-stable: with one turn, the system prompt sits in the first [INST]
    assert render(tok, messages[:2]) == "<s>[INST] SYS\n\nHello there[/INST]"
    assert render(tok, messages[:3]) == "<s>[INST] Hello there[/INST] Hi! How can I help?</s>"
    assert render(
        tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  a  "}]
    ).endswith("[/INST] a</s>")  # " " + content|trim
    with pytest.raises(Exception, match="alternate"):
        render(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_quirk_mistral_v7_default_system_prompt_has_todays_date():
    import re

    tok = family("mistral_v7").load()
    text = render(tok, TWO_TURNS[:2])
    assert text.startswith("<s>[SYSTEM_PROMPT]You are Mistral Small 3, a Large Language Model")
    assert "[/SYSTEM_PROMPT][INST]Hello there[/INST]Hi! How can I help?</s>" in text
    # strftime_now("%Y-%m-%d"): the rendering changes from one day to the next
    assert re.search(r"The current date is \d{4}-\d{2}-\d{2}\.\n", text)
    assert render(tok, [{"role": "system", "content": "S"}, *TWO_TURNS[:2]]) == (
        "<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][INST]Hello there[/INST]Hi! How can I help?</s>"
    )


def test_quirk_phi4_renders_no_bos_and_no_newlines():
    tok = family("phi4").load()
    assert render(tok, TWO_TURNS[:2], add_generation_prompt=False) == (
        "<|im_start|>user<|im_sep|>Hello there<|im_end|><|im_start|>assistant<|im_sep|>Hi! How can I help?<|im_end|>"
    )


# --- tiny model directories -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama3", "qwen3", "mistral_v3", "gemma3", "vicuna"])
def test_tiny_model_dir_loads_like_a_hub_model(tmp_path, name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = family(name).load()
    path = cf.tiny_model_dir(tmp_path, name)
    assert path == tmp_path / f"tiny-{name}"
    loaded = AutoTokenizer.from_pretrained(path)
    assert loaded.chat_template == tok.chat_template
    assert len(loaded) == len(tok) and loaded.eos_token == tok.eos_token and loaded.bos_token == tok.bos_token
    text = "Hello there, 世界 42"
    assert loaded(text).input_ids == tok(text).input_ids
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tok) and model.config.num_hidden_layers == 2
    if tok.chat_template:
        ids = ids_of(loaded.apply_chat_template(TWO_TURNS, tokenize=True))
    else:
        ids = loaded(text).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))
