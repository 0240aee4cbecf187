"""A model's own chat template end to end, as a user runs it: a local Llama-3-style tiny model
(Meta's real Llama-3 tokenizer and the published Llama-3.1 template) fine-tuned for 40 steps on
OpenAI-style `messages` with `data.template=tokenizer`, then `vicuna_sft.chat` on `final/`, which
must stop at `<|eot_id|>`; and ChatML on a base model that lacks its tokens."""

from __future__ import annotations

import json
import pathlib

import chat_families as cf
import pytest

pytestmark = pytest.mark.slow

# one short reply to learn in 40 steps of a 2-layer model: what is tested is that generation stops
REPLIES = {"ask colour": "cat", "ask animal": "cat", "ask number": "cat", "ask fruit": "cat"}


def write_messages(path: pathlib.Path, n: int = 32) -> pathlib.Path:
    rows = []
    for i in range(n):
        question = list(REPLIES)[i % len(REPLIES)]
        rows.append(
            {
                "id": f"m{i}",
                "messages": [
                    {"role": "system", "content": "Answer in two words."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": REPLIES[question]},
                ],
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def losses(run_dir: pathlib.Path) -> list[float]:
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


def test_llama3_own_template_trains_and_chat_stops_at_end_of_turn(tmp_path, run_module):
    model_dir = cf.tiny_model_dir(tmp_path, "llama3", tie_word_embeddings=True)
    data = write_messages(tmp_path / "qa.jsonl")
    run = tmp_path / "run"
    r = run_module(
        "vicuna_sft",
        f"model.name_or_path={model_dir}",
        "model.builtin=null",
        f"data.path={data}",
        "data.template=tokenizer",
        "data.eval_fraction=0",
        "trainer.eval_strategy=no",
        "trainer.max_steps=40",
        "trainer.per_device_train_batch_size=4",
        "trainer.logging_steps=5",
        "trainer.save_steps=1000",
        "optimizer.lr=1e-2",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    seen = losses(run)
    assert len(seen) >= 8 and seen[-1] < 0.5 * seen[0], seen

    final = run / "final"
    cfg = json.loads((final / "tokenizer_config.json").read_text())
    template = cfg.get("chat_template") or (final / "chat_template.jinja").read_text()
    assert template == cf.template_text("llama3")  # the exact template used in training
    gen = json.loads((final / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert 128009 in eos  # <|eot_id|>

    chat = run_module(
        "vicuna_sft.chat",
        str(final),
        "--prompt",
        "ask animal",
        "--system",
        "Answer in two words.",
        "--temperature",
        "0",
        "--max-new-tokens",
        "40",
        cwd=tmp_path,
        timeout=300,
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.strip() == "cat"  # and it stopped there: 40 new tokens would say more


def test_chatml_on_a_base_model_adds_its_tokens(tmp_path, run_module):
    """The builtin tiny model has no <|im_start|>/<|im_end|>: they are added as special tokens,
    the embeddings grow, and final/ holds both."""
    data = write_messages(tmp_path / "qa.jsonl", n=16)
    run = tmp_path / "run"
    r = run_module(
        "vicuna_sft",
        f"data.path={data}",
        "data.template=chatml",
        "data.eval_fraction=0",
        "trainer.eval_strategy=no",
        "trainer.max_steps=6",
        "trainer.save_steps=1000",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "final")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end == len(tok) - 1 and AutoConfig.from_pretrained(run / "final").vocab_size == len(tok)
    ids = tok.apply_chat_template([{"role": "user", "content": "ask colour"}], add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else list(ids["input_ids"])
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids
    gen = json.loads((run / "final" / "generation_config.json").read_text())
    assert im_end in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]])


def test_preprocess_and_stats_use_the_models_template(tmp_path, run_module):
    """The commands around training go through the same encoder: with Llama-3's own template the
    preview highlights each reply plus <|eot_id|>, and data stats reads the messages."""
    model_dir = cf.tiny_model_dir(tmp_path, "llama3", tie_word_embeddings=True)
    data = write_messages(tmp_path / "qa.jsonl", n=8)
    common = [
        f"model.name_or_path={model_dir}",
        "model.builtin=null",
        f"data.path={data}",
        "data.template=tokenizer",
    ]
    pre = run_module(
        "vicuna_sft.preprocess",
        *common,
        "preprocess.show=1",
        f"hydra.run.dir={tmp_path / 'pre'}",
        cwd=tmp_path,
    )
    assert pre.returncode == 0, pre.stderr[-2000:]
    rows = [
        json.loads(x) for x in next((tmp_path / "pre").rglob("encoded_train.jsonl")).read_text().splitlines()
    ]
    tok = cf.family("llama3").load()
    trained = [tok.decode([i for i, t in zip(r["input_ids"], r["labels"]) if t != -100]) for r in rows]
    assert trained and all(t == "cat<|eot_id|>" for t in trained)
    stats = run_module("vicuna_sft.data", "stats", *common, cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr[-2000:]
    assert "8 records" in stats.stdout
