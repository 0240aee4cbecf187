from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import pathlib

import pytest

from vicuna_sft.model.builtin import build_tiny, ensure_tiny, is_built, sample_conversations_path


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, vicuna_sft.model.builtin; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )


def test_sample_file_shape():
    records = json.loads(sample_conversations_path().read_text(encoding="utf-8"))
    assert 200 <= len(records) <= 400
    assert sample_conversations_path().stat().st_size < 250_000
    assert len({r["id"] for r in records}) == len(records)
    for rec in records:
        conv = rec["conversations"]
        body = conv[1:] if conv[0]["from"] == "system" else conv
        assert [m["from"] for m in body] == ["human", "gpt"] * (len(body) // 2)
        assert body and all(m["value"].strip() for m in conv)


def test_files_and_config(tiny_dir, loaded):
    model, tok = loaded
    assert is_built(tiny_dir)
    assert (tiny_dir / "model.safetensors").is_file()
    cfg = model.config
    assert cfg.vocab_size == len(tok) <= 1024
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (64, 2)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, None)
    assert not cfg.tie_word_embeddings
    assert next(model.parameters()).dtype.is_floating_point
    assert str(next(model.parameters()).dtype) == "torch.float32"


def test_tokenizer_specials(loaded):
    _, tok = loaded
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert tok.bos_token_id == 1 and tok.eos_token == "</s>" and tok.eos_token_id == 2
    assert tok.pad_token is None
    assert tok.padding_side == "right"
    assert tok("hi").input_ids[0] == tok.bos_token_id
    assert tok("hi", add_special_tokens=False).input_ids[0] != tok.bos_token_id
    ids = tok("Hi!</s>USER").input_ids
    assert ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids[ids.index(tok.eos_token_id) + 1 :]) == "USER"


@pytest.mark.parametrize(
    "text", ["Grüße, café: こんにちは 😀⭐", " leading space and\nnewline", "```python\nx = 1\n```"]
)
def test_decode_round_trip(loaded, text):
    _, tok = loaded
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_forward_loss_finite(loaded):
    import torch

    model, tok = loaded
    batch = tok(["USER: What is 2 plus 2? ASSISTANT: 2 plus 2 is 4.</s>"], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"], use_cache=False)
    assert math.isfinite(out.loss.item())
    assert out.logits.shape[-1] == len(tok)


def test_ensure_tiny_reuses(tiny_dir):
    before = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny(tiny_dir) == tiny_dir
    assert build_tiny(tiny_dir) == tiny_dir
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == before


def test_concurrent_builds_leave_one_valid_dir(tmp_path: pathlib.Path):
    dest = tmp_path / "tiny-llama"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=build_tiny, args=(str(dest),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    assert is_built(dest)
    # Only the destination and its lock file remain: no temporary build directories.
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tiny-llama", "tiny-llama.lock"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dest)
    model = AutoModelForCausalLM.from_pretrained(dest)
    assert model.config.vocab_size == len(tok)


def test_recovers_from_crashed_build(tmp_path: pathlib.Path):
    dest = tmp_path / "tiny-llama"
    stale = tmp_path / ".tiny-llama.tmp-crashed"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    dest.mkdir()  # an empty destination (e.g. created by hand) is replaced
    assert ensure_tiny(dest) == dest.absolute()
    assert is_built(dest)
    assert not stale.exists()


def test_refuses_foreign_nonempty_dir(tmp_path: pathlib.Path):
    dest = tmp_path / "tiny-llama"
    dest.mkdir()
    (dest / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        build_tiny(dest)


def test_the_old_module_name_still_imports():
    """model/tiny.py became model/builtin.py (it builds `small` too); the old import keeps working."""
    from vicuna_sft.model import builtin, tiny

    assert tiny.build_tiny is builtin.build_tiny and tiny.ensure_tiny is builtin.ensure_tiny
