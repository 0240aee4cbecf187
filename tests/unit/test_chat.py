"""`vicuna_sft.chat`: the prompt it sends is the training prompt, the conversation loop, loading.

The end-to-end run through a real pseudo-terminal is in tests/integration/test_chat_cli.py."""

from __future__ import annotations

import io
import json
import pathlib
import shutil

import pytest
import torch
from vicuna_reference import render

from vicuna_sft.chat import Chat, ChatError, Prompter, Sampling, build_messages, interact, locate, run
from vicuna_sft.data.conversation import Conversation
from vicuna_sft.data.templates import VICUNA_SYSTEM
from vicuna_sft.data.templates import VICUNA_TEMPLATE as CHAT_TEMPLATE


def training_prompt(system: str, history: list[tuple[str, str]], user: str) -> str:
    """The training text (conversation.render) of the finished turns, then the new turn up to
    `ASSISTANT:` (no trailing space: the reply's first token carries it), as FastChat generates."""
    done = render(Conversation.of("", system, tuple(history))) if history else system + " "
    return done + f"USER: {user} ASSISTANT:"


HISTORY = [("What is 2 plus 2?", "2 plus 2 is 4."), ("Say </s> please", "Here: </s> as text.")]
USER = "And 3 plus 3?"


@pytest.fixture(scope="module")
def final_dir(tiny_dir, tmp_path_factory) -> pathlib.Path:
    """What a run's final/ holds: the model, and the tokenizer with the Vicuna chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("chat") / "final"
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    AutoModelForCausalLM.from_pretrained(tiny_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loaded(final_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(final_dir), AutoModelForCausalLM.from_pretrained(final_dir).eval()


@pytest.fixture(scope="module", params=["bpe", "mistral"])
def prompter(request) -> Prompter:
    """A byte-level BPE and a SentencePiece tokenizer, with the chat template final/ gets."""
    import copy

    tok = copy.deepcopy(request.getfixturevalue(f"{request.param}_tokenizer"))
    tok.chat_template = CHAT_TEMPLATE
    return Prompter(tok)


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_prompt_is_the_training_prompt(prompter, system):
    """Text: what the saved template renders = BOS + conversation.generation_prompt. Ids: the
    training encoding (Encoder, which builds the labels) of the same conversation, up to where its
    reply starts; a `</s>` typed in a message stays text."""
    tok = prompter.tokenizer
    sys_text = VICUNA_SYSTEM if system is None else system
    messages = build_messages(system, HISTORY, USER)
    text = prompter.text(system, HISTORY, USER)
    assert text == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == tok.bos_token + training_prompt(sys_text, HISTORY, USER)

    ids = prompter.ids(system, HISTORY, USER)
    reply = "Six, since 3 plus 3 is 6."
    encoded = prompter.encoder.encode(Conversation.of("c", sys_text, (*HISTORY, (USER, reply))))  # an Encoder
    assert ids == encoded.input_ids[: len(ids)]
    # what follows in training is the reply (with the space after "ASSISTANT:") and its EOS
    assert tok.decode(encoded.input_ids[len(ids) :]).strip() == reply + tok.eos_token
    reply_start = max(i for i, label in enumerate(encoded.labels) if encoded.labels[i - 1] == -100 != label)
    assert (
        reply_start >= len(ids) and tok.decode(encoded.labels[reply_start:]).strip() == reply + tok.eos_token
    )
    # one EOS per finished assistant turn: the typed "</s>" are text
    assert ids.count(tok.eos_token_id) == len(HISTORY)
    if (
        tok.vocab_size < 1000
    ):  # the tiny model's byte-level BPE tokenizes the template's text as training does
        from vicuna_sft.compat.transformers import chat_template_ids, keeps_control_token_text

        if keeps_control_token_text(tok):  # transformers >= 5.20; older ones refuse (test_compat.py)
            assert chat_template_ids(tok, messages, add_generation_prompt=True) == ids


def test_locate(tmp_path, final_dir):
    assert locate(str(final_dir)).path == str(final_dir) and not locate(str(final_dir)).adapter
    run_dir = tmp_path / "run"
    shutil.copytree(final_dir, run_dir / "final")
    md = locate(str(run_dir))
    assert md.path == str(run_dir / "final") and "run directory" in md.note
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert locate(str(tmp_path / "adapter")).adapter
    # an adapter run with adapter.merge=false: no final/, the adapter beside where it would be
    shutil.copytree(tmp_path / "adapter", tmp_path / "lora-run" / "final_adapter")
    md = locate(str(tmp_path / "lora-run"))
    assert md.adapter and md.path == str(tmp_path / "lora-run" / "final_adapter")
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    for bad, why in [
        ("missing", "no such directory"),
        ("file.txt", "not a directory"),
        ("empty", "not a model"),
    ]:
        with pytest.raises(ChatError, match=why) as e:
            locate(str(tmp_path / bad))
        assert "\n" not in str(e.value) and bad in str(e.value)


def test_cli_errors_are_one_line(tmp_path, tiny_dir, final_dir, capsys):
    import sys

    from vicuna_sft.chat import main

    for argv, expected in [
        ([str(tmp_path)], "not a model directory"),
        ([str(tiny_dir)], "the tokenizer has no chat template"),
        ([str(final_dir), "--temperature", "-1"], "--temperature must be >= 0"),
        ([str(final_dir), "--top-p", "0"], "--top-p must be in (0, 1]"),
        ([str(final_dir), "--repetition-penalty", "0"], "--repetition-penalty must be > 0 and finite"),
    ]:
        old, sys.argv = sys.argv, ["vicuna_sft.chat", *argv]
        try:
            with pytest.raises(SystemExit) as e:
                main()
        finally:
            sys.argv = old
        assert e.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("vicuna_sft.chat: error: ") and expected in err and "\n" not in err


def greedy(model, tok, history, user, n, system=None, **kwargs):
    ids = torch.tensor([Prompter(tok).ids(system, history, user)])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, **kwargs
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_turns_reset_and_commands(loaded):
    """Two turns keep the history (the second reply is the greedy continuation of the two-turn
    template prompt), /reset forgets it, unknown commands are not sent, EOF exits 0."""
    tok, model = loaded
    out = io.StringIO()
    chat = Chat(tok, model, sampling=Sampling(temperature=0, max_new_tokens=8), label="ASSISTANT: ", out=out)
    lines = iter(["Hi there", "/nope", "What is 2 plus 2?", "/reset", "What is 2 plus 2?"])
    seen_history = []

    def read(prompt):
        seen_history.append(list(chat.history))
        return next(lines)

    with pytest.raises(StopIteration):
        interact(chat, read)
    r1 = seen_history[1][0][1]
    assert r1 == greedy(model, tok, [], "Hi there", 8)
    r2 = seen_history[3][1][1]
    assert r2 == greedy(model, tok, [("Hi there", r1)], "What is 2 plus 2?", 8)
    assert [len(h) for h in seen_history] == [0, 1, 1, 2, 0, 1]
    assert chat.history == [("What is 2 plus 2?", greedy(model, tok, [], "What is 2 plus 2?", 8))]
    text = out.getvalue()
    assert f"ASSISTANT: {r1}\n" in text and f"ASSISTANT: {r2}\n" in text
    assert "(unknown command /nope" in text and "(history cleared)" in text
    assert interact(chat, lambda p: (_ for _ in ()).throw(EOFError)) == 0
    assert interact(chat, lambda p: "/exit") == 0


def test_history_dropped_to_fit_context(loaded):
    tok, model = loaded
    err = io.StringIO()
    limit = model.config.max_position_embeddings
    chat = Chat(
        tok, model, sampling=Sampling(temperature=0, max_new_tokens=limit - 60), out=io.StringIO(), err=err
    )
    chat.history = [("What is 2 plus 2?", "2 plus 2 is 4.")] * 3
    ids = chat.fit("Hi")
    assert len(ids) + chat.sampling.max_new_tokens <= limit
    assert 0 < len(chat.history) < 3 and "dropped the oldest turn" in err.getvalue()
    assert ids == Prompter(tok).ids(None, chat.history, "Hi")
    with pytest.raises(ChatError, match="too long"):
        Chat(tok, model, sampling=Sampling(max_new_tokens=1), out=io.StringIO()).fit("word " * limit)


def test_prompt_mode_prints_the_reply_only(final_dir, loaded, capsys):
    tok, model = loaded
    assert (
        run([str(final_dir), "--prompt", "What is 2 plus 2?", "--temperature", "0", "--max-new-tokens", "8"])
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out == greedy(model, tok, [], "What is 2 plus 2?", 8) + "\n"
    # the system prompt reaches the template
    run([str(final_dir), "--prompt", "Hi", "--system", "Be brief.", "--show-prompt", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert f"{tok.bos_token}Be brief. USER: Hi ASSISTANT:\n--- end of prompt ---" in err


def test_adapter_directory(tiny_dir, final_dir, tmp_path, capsys):
    """An adapter saved by PEFT (with the tokenizer) answers as base + adapter does."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(final_dir)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():  # a non-zero B, so the adapter changes the replies
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(final_dir).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(final_dir)

    tok = AutoTokenizer.from_pretrained(final_dir)
    expected = greedy(model.eval(), tok, [], "What is 2 plus 2?", 8)
    assert expected != greedy(
        AutoModelForCausalLM.from_pretrained(final_dir).eval(), tok, [], "What is 2 plus 2?", 8
    )
    assert (
        run([str(adapter), "--prompt", "What is 2 plus 2?", "--temperature", "0", "--max-new-tokens", "8"])
        == 0
    )
    assert capsys.readouterr().out == expected + "\n"


def test_repetition_penalty_reaches_generate(loaded, final_dir, capsys):
    """Issue 21, item 9: `--repetition-penalty` (FastChat's CLI has it)."""
    from vicuna_sft.chat import run

    tok, model = loaded
    question = "What is 2 plus 2?"
    penalized = greedy(model, tok, [], question, 12, repetition_penalty=3.0)
    assert penalized != greedy(model, tok, [], question, 12)  # the penalty changes this reply
    argv = [str(final_dir), "--prompt", question, "--temperature", "0", "--max-new-tokens", "12"]
    assert run([*argv, "--repetition-penalty", "3"]) == 0
    assert capsys.readouterr().out == penalized + "\n"
    assert Sampling(temperature=0.7).generate_kwargs().get("repetition_penalty") is None  # 1.0: not passed
