"""Issue 17: a list of sources, one of them weighted with its own system prompt, read the same way by
every command (`vicuna_sft.data.dataset.read_splits`): the check, preprocess, `data stats` and
training. `data.path=[a, b]` once ended in a TypeError traceback in the check, which read data on a
path of its own; the numbers here only agree when all four read, split and weight alike."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

ADA = "You are Ada."


def test_every_command_reads_a_source_list_as_training_does(run_module, tmp_path, sample_path, tiny_dir):
    from transformers import AutoTokenizer

    records = json.loads(sample_path.read_text())
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(records[100:130]))
    # records without a system message of their own (which would win over the source's)
    b.write_text(json.dumps([r for r in records[:100] if r["conversations"][0]["from"] != "system"][:10]))
    # b first: the check's batch (the first training samples) comes from it, with its system prompt
    sources = f"data.path=[{{path: {b}, weight: 2, system: '{ADA}'}},{a}]"
    common = [sources, "data.eval_fraction=0.1", "trainer.seed=3"]

    r = run_module("vicuna_sft.data", "stats", *common, "--json", str(tmp_path / "stats.json"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert [stats["records"][str(p)]["read"] for p in (b, a)] == [10, 30]
    assert stats["records"][str(b)]["weight"] == 2
    n_b = stats["records"][str(b)]["train_samples"]
    n_train = stats["train"]["conversations"]
    assert n_b == 2 * stats["records"][str(b)]["train_records"] > 0
    assert n_train == n_b + stats["records"][str(a)]["train_samples"]
    assert stats["eval"]["conversations"] == 4 and n_train == 36 + n_b // 2  # eval: 4 of the 40, unweighted

    pre = tmp_path / "pre"
    r = run_module(
        "vicuna_sft.preprocess", *common, f"preprocess.out={pre}", f"hydra.run.dir={pre}", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (pre / "encoded_train.jsonl").read_text().splitlines()]
    assert len(rows) == n_train
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    with_ada = [row for row in rows if tok.decode(row["input_ids"], skip_special_tokens=True).startswith(ADA)]
    assert len(with_ada) == n_b and rows[:n_b] == with_ada  # b's copies first, each with b's prompt

    out = tmp_path / "check"
    r = run_module("vicuna_sft.check", *common, "check.samples=4", f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    report = json.loads((out / "check.json").read_text())
    assert report["ok"] is True and report["samples"] == 4
    assert report["tokens"] == sum(len(row["input_ids"]) for row in rows[:4])  # b's samples, b's prompt
    assert report["trained_tokens"] == sum(sum(x != -100 for x in row["labels"]) for row in rows[:4])
    assert f"batch 4 samples of {b}, {a}: {report['tokens']} tokens" in r.stdout  # the sources, by name

    run = tmp_path / "run"
    r = run_module(
        "vicuna_sft",
        *common,
        "experiment=smoke",
        "trainer.max_steps=1",
        "trainer.eval_strategy=no",
        "trainer.save_strategy=no",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    trained = json.loads((run / "data_stats.json").read_text())
    assert trained["records"] == stats["records"]
    assert trained["train"]["kept"] == n_train and trained["eval"]["kept"] == stats["eval"]["conversations"]
