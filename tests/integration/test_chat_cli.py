"""`python -m vicuna_sft.chat` through a real pseudo-terminal (pexpect), on a model trained by a short
smoke run: two turns, the prompt it shows is the template's rendering of the history it keeps
(and the training prompt), /reset, /exit with status 0."""

from __future__ import annotations

import os
import re
import sys

import pytest
from vicuna_reference import render

from vicuna_sft.data.conversation import Conversation
from vicuna_sft.data.templates import VICUNA_SYSTEM


def training_prompt(system: str, history: list[tuple[str, str]], user: str) -> str:
    """The training text (conversation.render) of the finished turns, then the new turn up to
    `ASSISTANT:` (no trailing space: the reply's first token carries it), as FastChat generates."""
    done = render(Conversation.of("", system, tuple(history))) if history else system + " "
    return done + f"USER: {user} ASSISTANT:"


pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.slow

PROMPT_BLOCK = re.compile(r"--- prompt \((\d+) tokens\) ---\n(.*?)\n--- end of prompt ---\n", re.DOTALL)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_module):
    tmp = tmp_path_factory.mktemp("chat-run")
    r = run_module(
        "vicuna_sft",
        "experiment=smoke",
        "trainer.max_steps=10",
        "trainer.eval_strategy=no",
        "trainer.save_strategy=no",
        f"hydra.run.dir={tmp / 'run'}",
        cwd=tmp,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run" / "final"


def turn(child, message: str) -> tuple[str, int, str]:
    """Send one message; returns (prompt text shown, its token count, the reply as displayed)."""
    child.sendline(message)
    child.expect(r"--- end of prompt ---\r\n")
    block = PROMPT_BLOCK.search((child.before + child.after).replace("\r\n", "\n"))
    assert block, child.before
    child.expect("ASSISTANT: ")
    child.expect("USER: ")  # the next input prompt: the reply has been streamed completely
    reply = child.before.replace("\r\n", "\n").strip()
    return block.group(2), int(block.group(1)), reply


def test_two_turns_reset_exit_in_a_terminal(trained, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONUNBUFFERED": "1"}
    args = [
        "-m",
        "vicuna_sft.chat",
        str(trained),
        "--temperature",
        "0",
        "--max-new-tokens",
        "16",
        "--show-prompt",
    ]
    child = pexpect.spawn(sys.executable, args, env=env, cwd=str(tmp_path), encoding="utf-8", timeout=120)
    try:
        child.expect("USER: ")
        assert "/reset clears the history, /exit quits" in child.before

        u1, u2 = "What is 2 plus 2?", "And what is 3 plus 3?"
        text1, n1, r1 = turn(child, u1)
        assert r1, "no reply was streamed"
        text2, n2, r2 = turn(child, u2)
        assert r2
        # the prompt of turn 2 holds turn 1 as the chat displayed it
        messages = [
            {"role": "user", "content": u1},
            {"role": "assistant", "content": r1},
            {"role": "user", "content": u2},
        ]
        for shown, n, msgs, history, user in [
            (text1, n1, messages[:1], [], u1),
            (text2, n2, messages, [(u1, r1)], u2),
        ]:
            assert shown == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            assert shown == tok.bos_token + training_prompt(VICUNA_SYSTEM, history, user)
            assert n == len(tok(shown, add_special_tokens=False).input_ids)  # byte-level BPE: same tokens

        child.sendline("/reset")
        child.expect(r"\(history cleared\)")
        text3, _, r3 = turn(child, u1)
        assert text3 == text1 and r3 == r1  # greedy, and no history left

        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_not_a_model_dir_is_one_line(run_module, tmp_path):
    """(--prompt itself is tested in-process: tests/unit/test_chat.py::test_prompt_mode_prints_the_reply_only.)"""
    r = run_module("vicuna_sft.chat", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        f"vicuna_sft.chat: error: {tmp_path}: not a model directory (no config.json or adapter_config.json); "
        "give a run's final/ or an adapter directory"
    )
