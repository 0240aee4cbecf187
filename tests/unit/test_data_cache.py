"""Encode once: the encoded-data cache is hit by an identical config, missed by any change of what
the samples depend on and by nothing else, loaded memory-mapped, and safe under concurrent runs."""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

import pytest

from vicuna_sft.config import Config, DataConfig, LongMode, OnError, Padding, Reasoning, TrainOn
from vicuna_sft.data import cache
from vicuna_sft.data.dataset import build_datasets


def rows(ds):
    return [(r["id"], r["input_ids"], r["labels"]) for r in ds]


@pytest.fixture
def data_file(sample_path, tmp_path) -> str:
    path = tmp_path / "data.json"
    shutil.copy(sample_path, path)
    return str(path)


def test_second_build_hits_and_gives_the_same_memory_mapped_samples(bpe_tokenizer, data_file, tmp_path):
    cfg = DataConfig(
        path=data_file, eval_fraction=0.1, max_length=96, long=LongMode.split, cache_dir=str(tmp_path / "c")
    )
    first = build_datasets(cfg, bpe_tokenizer, seed=0)
    second = build_datasets(cfg, bpe_tokenizer, seed=0)
    fresh = build_datasets(dataclasses.replace(cfg, cache=False), bpe_tokenizer, seed=0)
    assert first.cache["hit"] is False and second.cache["hit"] is True
    assert first.cache["path"] == second.cache["path"] and fresh.cache is None
    assert rows(second.train) == rows(first.train) == rows(fresh.train)
    assert rows(second.eval) == rows(fresh.eval)
    assert second.stats == first.stats == fresh.stats
    assert second.stats["train"]["split"] > 0  # the sample has conversations longer than 96 tokens
    entry = pathlib.Path(second.cache["path"])
    # memory-mapped Arrow files inside the entry, not a copy in memory
    assert all(pathlib.Path(f["filename"]).is_relative_to(entry) for f in second.train.cache_files)
    assert second.train.cache_files
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name, entry.name + ".lock"]


def key(cfg: Config, tok) -> str:
    return cache.key_of(cache.key_inputs(cfg.data, tok, cfg.trainer.seed))


# every DataConfig field is either in the key or listed here as not changing the samples
NOT_IN_KEY = {
    "padding": Padding.longest,
    "lazy": True,
    "num_proc": 2,
    "cache": False,
    "cache_dir": "/elsewhere",
}


def test_key_changes_with_every_input_and_nothing_else(bpe_tokenizer, data_file, tmp_path):
    base = Config(data=DataConfig(path=data_file, max_length=128))
    k0 = key(base, bpe_tokenizer)
    assert key(base, bpe_tokenizer) == k0

    def with_data(**kw):
        return dataclasses.replace(base, data=dataclasses.replace(base.data, **kw))

    changed = {
        "max_length": with_data(max_length=129),
        "long": with_data(long=LongMode.split),
        "template": with_data(template="chatml"),
        "template_kwargs": with_data(template_kwargs={"enable_thinking": False}),
        "train_on": with_data(train_on=TrainOn.last),
        "reasoning": with_data(reasoning=Reasoning.split),
        "on_error": with_data(on_error=OnError["skip"]),
        "eval_fraction": with_data(eval_fraction=0.1),
        "weight": with_data(path=[{"path": data_file, "weight": 2.0}]),
        "system": with_data(path=[{"path": data_file, "system": "Be brief."}]),
        "eval_path": with_data(eval_path=data_file),
    }
    keys = {name: key(cfg, bpe_tokenizer) for name, cfg in changed.items()}
    assert k0 not in keys.values() and len(set(keys.values())) == len(keys), keys
    # the seed only matters where it decides something (eval split, fractional weights)
    split = with_data(eval_fraction=0.1)
    assert (
        key(dataclasses.replace(split, trainer=dataclasses.replace(split.trainer, seed=7)), bpe_tokenizer)
        != keys["eval_fraction"]
    )
    reseeded = dataclasses.replace(base, trainer=dataclasses.replace(base.trainer, seed=7))
    assert key(reseeded, bpe_tokenizer) == k0

    unchanged = [with_data(**{f: v}) for f, v in NOT_IN_KEY.items()]
    unchanged.append(dataclasses.replace(base, optimizer=types.SimpleNamespace(lr=1.0)))
    unchanged.append(
        dataclasses.replace(base, trainer=dataclasses.replace(base.trainer, output_dir="/other", max_steps=3))
    )
    assert all(key(cfg, bpe_tokenizer) == k0 for cfg in unchanged)
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    in_key = {
        "path",
        "eval_path",
        "eval_fraction",
        "template",
        "template_kwargs",
        "train_on",
        "reasoning",
        "max_length",
        "long",
        "on_error",
    }
    assert fields == in_key | set(NOT_IN_KEY)  # a new field must be classified here

    # one byte of the data file
    raw = bytearray(pathlib.Path(data_file).read_bytes())
    i = raw.index(b"Hello") if b"Hello" in raw else raw.index(b'"value": "') + 10
    raw[i] ^= 0x20
    pathlib.Path(data_file).write_bytes(bytes(raw))
    assert key(base, bpe_tokenizer) not in {k0, *keys.values()}


def test_a_changed_tokenizer_file_or_code_is_a_new_entry(
    bpe_tokenizer, tiny_dir, data_file, tmp_path, monkeypatch
):
    from transformers import AutoTokenizer

    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for name in os.listdir(tiny_dir):
        if name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(tiny_dir / name, tok_dir / name)
    cfg = DataConfig(path=data_file, max_length=128, cache_dir=str(tmp_path / "c"))
    k0 = cache.key_of(cache.key_inputs(cfg, AutoTokenizer.from_pretrained(tok_dir), 0))
    assert k0 == cache.key_of(cache.key_inputs(cfg, AutoTokenizer.from_pretrained(tok_dir), 0))
    conf = tok_dir / "tokenizer_config.json"
    conf.write_text(conf.read_text() + " ")  # one byte that changes no behaviour: still a new entry
    k1 = cache.key_of(cache.key_inputs(cfg, AutoTokenizer.from_pretrained(tok_dir), 0))
    assert k1 != k0
    monkeypatch.setattr(cache, "code_version", lambda: "a different encoder")
    assert cache.key_of(cache.key_inputs(cfg, AutoTokenizer.from_pretrained(tok_dir), 0)) not in (k0, k1)


def test_one_changed_byte_of_data_makes_a_new_entry_on_disk(bpe_tokenizer, data_file, tmp_path):
    cfg = DataConfig(path=data_file, max_length=4096, cache_dir=str(tmp_path / "c"))
    a = build_datasets(cfg, bpe_tokenizer, seed=0)
    records = json.loads(pathlib.Path(data_file).read_text())
    records[0]["conversations"][1]["value"] += "!"
    pathlib.Path(data_file).write_text(json.dumps(records))
    b = build_datasets(cfg, bpe_tokenizer, seed=0)
    assert not a.cache["hit"] and not b.cache["hit"] and a.cache["path"] != b.cache["path"]
    assert rows(a.train)[1:] == rows(b.train)[1:] and rows(a.train)[0] != rows(b.train)[0]


def test_incomplete_entries_and_leftover_temp_dirs_are_never_used(bpe_tokenizer, data_file, tmp_path):
    cfg = DataConfig(path=data_file, max_length=128, cache_dir=str(tmp_path / "c"))
    entry = pathlib.Path(cfg.cache_dir) / cache.key_of(cache.key_inputs(cfg, bpe_tokenizer, 0))
    (entry / "train").mkdir(parents=True)  # a half-written entry (no stats.json)
    stale = pathlib.Path(f"{entry}.tmp-1-dead")
    stale.mkdir()
    data = build_datasets(cfg, bpe_tokenizer, seed=0)
    assert data.cache["hit"] is False and (entry / "stats.json").is_file() and not stale.exists()
    assert rows(data.train) == rows(
        build_datasets(dataclasses.replace(cfg, cache=False), bpe_tokenizer, 0).train
    )


def _arrow(entry: pathlib.Path) -> pathlib.Path:
    return next((entry / "train").glob("*.arrow"))


DAMAGE = {
    "truncated arrow": lambda e, other: _arrow(e).write_bytes(_arrow(e).read_bytes()[:100]),
    "missing state.json": lambda e, other: (e / "train" / "state.json").unlink(),
    "missing split": lambda e, other: shutil.rmtree(e / "train"),
    # the same layout from another entry (another max_length): sizes may even agree, contents don't
    "arrow of another entry": lambda e, other: shutil.copyfile(_arrow(other), _arrow(e)),
    "garbage manifest": lambda e, other: (e / "manifest.json").write_text("{"),
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_damaged_or_swapped_entry_is_reported_and_encoded_again(
    how, bpe_tokenizer, data_file, tmp_path, caplog
):
    cfg = DataConfig(path=data_file, max_length=128, cache_dir=str(tmp_path / "c"))
    first = build_datasets(cfg, bpe_tokenizer, seed=0)
    other = build_datasets(dataclasses.replace(cfg, max_length=96), bpe_tokenizer, seed=0)
    expected = rows(first.train)
    entry = pathlib.Path(first.cache["path"])
    DAMAGE[how](entry, pathlib.Path(other.cache["path"]))
    caplog.set_level("WARNING", logger="vicuna_sft.data.cache")
    again = build_datasets(cfg, bpe_tokenizer, seed=0)
    assert again.cache["hit"] is False and again.cache["path"] == str(entry)
    assert [r for r in caplog.messages if "is damaged" in r and "encoding it again" in r]
    assert rows(again.train) == expected and cache.damage(str(entry)) is None
    assert build_datasets(cfg, bpe_tokenizer, seed=0).cache["hit"] is True  # and trusted from then on


WORKER = """
import json, os, sys, time, logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
from transformers import AutoTokenizer
from vicuna_sft.config import DataConfig, LongMode
from vicuna_sft.data.dataset import build_datasets
tok_dir, data, cache_dir, me, other, out = sys.argv[1:]
tok = AutoTokenizer.from_pretrained(tok_dir)
open(me, "w").close()
while not os.path.exists(other):  # start together
    time.sleep(0.001)
d = build_datasets(DataConfig(path=data, max_length=96, long=LongMode.split, cache_dir=cache_dir), tok, seed=0)
json.dump({"hit": d.cache["hit"], "path": d.cache["path"], "ids": list(d.train["id"]),
           "n_tokens": sum(len(x) for x in d.train["input_ids"])}, open(out, "w"))
"""


@pytest.mark.slow
def test_two_runs_started_together_encode_once(tiny_dir, data_file, tmp_path):
    cache_dir = tmp_path / "shared"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(tiny_dir),
                data_file,
                str(cache_dir),
                str(tmp_path / f"ready{i}"),
                str(tmp_path / f"ready{1 - i}"),
                str(tmp_path / f"out{i}.json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (0, 1)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in (0, 1)]
    assert sorted(o["hit"] for o in outs) == [False, True]  # exactly one encoded
    assert outs[0]["path"] == outs[1]["path"] and outs[0]["ids"] == outs[1]["ids"]
    assert outs[0]["n_tokens"] == outs[1]["n_tokens"] > 0
    assert sum("data cache miss" in log for log in logs) == 1
    entry = pathlib.Path(outs[0]["path"])
    assert sorted(p.name for p in cache_dir.iterdir()) == [entry.name, entry.name + ".lock"]  # no temp left
    assert (entry / "stats.json").is_file()


def test_the_same_content_elsewhere_hits_and_is_reported_under_its_new_path(
    bpe_tokenizer, data_file, tmp_path
):
    a = build_datasets(
        DataConfig(path=data_file, max_length=128, cache_dir=str(tmp_path / "c")), bpe_tokenizer, 0
    )
    moved = str(tmp_path / "moved.json")
    shutil.copy(data_file, moved)
    b = build_datasets(
        DataConfig(path=moved, max_length=128, cache_dir=str(tmp_path / "c")), bpe_tokenizer, 0
    )
    assert b.cache == {"hit": True, "path": a.cache["path"]}
    assert list(b.stats["records"]) == [moved] and b.stats["records"][moved] == a.stats["records"][data_file]
