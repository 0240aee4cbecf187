"""`python -m vicuna_sft.preprocess`: encoded samples, stats that add up, and a preview that shows
exactly the assistant replies (and their `</s>`) as trained."""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest
from vicuna_reference import vicuna_encoder

from vicuna_sft.data.records import to_conversation
from vicuna_sft.preprocess import ANSI_RESET, ANSI_TRAINED, highlight, trained_spans

IGNORE = -100
MARKED = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
SPECIAL = re.compile("\u27e8(.*?)\u27e9")  # ⟨</s>⟩
ESCAPED = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def as_decoded(preview: str) -> str:
    """The preview without its markings: what `tokenizer.decode` gives for the sample."""
    text = SPECIAL.sub(lambda m: m.group(1), MARKED.sub(lambda m: m.group(1), preview))
    return ESCAPED.sub(lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1)[1:], 16)), text)


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_rows(rows: list[dict], max_length: int) -> None:
    for row in rows:
        assert set(row) == {"id", "input_ids", "labels"}
        ids, labels = row["input_ids"], row["labels"]
        assert isinstance(row["id"], str) and len(ids) == len(labels) <= max_length
        assert all(isinstance(t, int) for t in ids)
        assert all(label in (IGNORE, t) for label, t in zip(labels, ids))  # a label is its own token
        assert any(label != IGNORE for label in labels)  # no sample without a trained token is kept


def check_stats(stats: dict, splits: dict[str, list[dict]]) -> None:
    assert stats["read"] == stats["kept"] + sum(stats["dropped"].values())
    assert stats["kept"] == sum(len(rows) for rows in splits.values())
    assert stats["tokens"] == sum(len(r["input_ids"]) for rows in splits.values() for r in rows)
    trained = sum(t != IGNORE for rows in splits.values() for r in rows for t in r["labels"])
    assert stats["trained_tokens"] == trained
    assert 0 < stats["trained_tokens"] < stats["tokens"]
    assert set(stats["splits"]) == set(splits)
    for name, rows in splits.items():
        s = stats["splits"][name]
        assert s["kept"] == len(rows) == s["samples"] - sum(s["dropped"].values())
        assert s["trained_tokens"] == sum(t != IGNORE for r in rows for t in r["labels"])
        assert s["tokens"] == sum(len(r["input_ids"]) for r in rows)
    files = stats["files"].values()
    assert stats["read"] == sum(f["read"] for f in files)
    assert all(f["read"] == f["kept"] + sum(f["dropped"].values()) for f in files)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory, run_module):
    tmp = tmp_path_factory.mktemp("preprocess")
    r = run_module("vicuna_sft.preprocess", "preprocess.show=3", f"hydra.run.dir={tmp / 'run'}", cwd=tmp)
    assert r.returncode == 0, r.stderr
    return tmp / "run", r


def test_sample_outputs_and_stats_add_up(sample_run, sample_path):
    out, r = sample_run
    assert {"encoded_train.jsonl", "encoded_eval.jsonl", "stats.json", "config.yaml"} <= set(os.listdir(out))
    stats = json.loads((out / "stats.json").read_text())
    splits = {name: read_jsonl(out / f"encoded_{name}.jsonl") for name in ("train", "eval")}
    for rows in splits.values():
        check_rows(rows, max_length=512)
    check_stats(stats, splits)
    n_records = len(json.loads(sample_path.read_text(encoding="utf-8")))
    assert stats["read"] == n_records and stats["files"][str(sample_path)]["read"] == n_records
    assert len(splits["eval"]) == round(0.1 * n_records)  # conf/data/sample.yaml: eval_fraction 0.1
    assert stats["template"] == "vicuna_v1.1" and stats["max_length"] == 512
    all_ids = [row["id"] for rows in splits.values() for row in rows]
    assert len(set(all_ids)) == len(all_ids)
    assert f"{stats['read']} records read, {stats['kept']} samples kept" in r.stdout
    assert str(out / "stats.json") in r.stdout


def test_preview_highlights_exactly_the_assistant_replies(sample_run, sample_path, bpe_tokenizer):
    out, r = sample_run
    records = {rec["id"]: rec for rec in json.loads(sample_path.read_text(encoding="utf-8"))}
    rows = read_jsonl(out / "encoded_train.jsonl")[:3]
    assert "\033[" not in r.stdout  # not a terminal: bracket markers, no ANSI codes
    preview = r.stdout.split("\nvicuna_sft.preprocess: ")[0]  # the summary follows the samples
    blocks = re.split(r"^--- sample \d+ ", preview, flags=re.M)[1:]
    assert len(blocks) == 3
    for row, block in zip(rows, blocks):
        header, text = block.split("\n", 1)
        text = text.rstrip("\n")  # each sample ends with </s>, then a blank line
        assert f"id={row['id']}" in header
        conv, _ = to_conversation(records[row["id"]], source="sample", index=0)
        replies = [reply for _, reply in conv.pairs]
        spans = MARKED.findall(text)
        assert len(spans) == len(replies)
        for span, reply in zip(spans, replies):
            # the template's space before a reply may merge into its first token
            assert span in (reply + "\u27e8</s>\u27e9", " " + reply + "\u27e8</s>\u27e9")
        # outside the markers: the prompt, verbatim
        assert text.startswith("\u27e8<s>\u27e9")
        assert as_decoded(text) == bpe_tokenizer.decode(row["input_ids"])
        assert text.count("USER: ") == len(replies)


def test_truncation_and_skips_are_counted(tmp_path, run_module, sample_path):
    records = json.loads(sample_path.read_text(encoding="utf-8"))[:40]
    bad = [
        {"id": "bad-role", "conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]},
        {
            "id": "bad-none",
            "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": None}],
        },
    ]
    data = tmp_path / "conv.jsonl"
    data.write_text("".join(json.dumps(rec) + "\n" for rec in [*bad, *records]), encoding="utf-8")
    out = tmp_path / "custom"
    r = run_module(
        "vicuna_sft.preprocess",
        "data=sharegpt",
        f"data.path={data}",
        "data.eval_fraction=0",
        "data.on_error=skip",
        "data.max_length=40",  # the default system prompt alone is longer: those samples have no reply left
        "data.lazy=true",  # preprocessing encodes everything whatever training would do
        f"preprocess.out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert not (out / "encoded_eval.jsonl").exists()
    stats = json.loads((out / "stats.json").read_text())
    rows = read_jsonl(out / "encoded_train.jsonl")
    check_rows(rows, max_length=40)
    check_stats(stats, {"train": rows})
    assert stats["read"] == len(records) + 2
    assert stats["dropped"]["unknown_role"] == 1 and stats["dropped"]["non_string_value"] == 1
    assert stats["dropped"]["no_trained_tokens_after_truncation"] > 0
    assert stats["files"][str(data)]["dropped"] == {"unknown_role": 1, "non_string_value": 1}
    assert stats["truncated"] > 0 and stats["kept"] > 0
    assert "dropped" in r.stdout


def test_highlight_colors_on_a_terminal_and_keeps_sentencepiece_spaces(mistral_tokenizer):
    from vicuna_sft.data.conversation import Conversation

    conv = Conversation.of("c", "Be brief.", (("Hi there", "Hello, friend!"), ("And you?", "Fine.\n  ok")))
    enc = vicuna_encoder(mistral_tokenizer, 256).encode(conv)
    plain = highlight(mistral_tokenizer, enc.input_ids, enc.labels, color=False)
    assert MARKED.findall(plain) == [" Hello, friend!\u27e8</s>\u27e9", " Fine.\n  ok\u27e8</s>\u27e9"]
    assert as_decoded(plain) == mistral_tokenizer.decode(enc.input_ids)
    colored = highlight(mistral_tokenizer, enc.input_ids, enc.labels, color=True)
    assert colored.replace(ANSI_TRAINED, "[[").replace(ANSI_RESET, "]]") == plain


@pytest.mark.parametrize("tokenizer", ["mistral_tokenizer", "bpe_tokenizer"])
def test_preview_shows_special_tokens_distinctly_and_escapes_control_characters(tokenizer, request):
    from vicuna_sft.data.conversation import Conversation

    tok = request.getfixturevalue(tokenizer)
    user = "Type </s> and NUL \x00, ESC \x1b[31mred\r, \u202eevil, \u27e8x\u27e9 a\\x00"
    conv = Conversation.of("c", "Be brief.", ((user, "ok </s> done"),))
    enc = vicuna_encoder(tok, 256).encode(conv)
    for color in (False, True):
        shown = highlight(tok, enc.input_ids, enc.labels, color=color)
        if color:
            shown = shown.replace(ANSI_TRAINED, "[[").replace(ANSI_RESET, "]]")
        # the real BOS/EOS are marked; the </s> typed in each message is not
        assert SPECIAL.findall(shown) == ["<s>", "</s>"]
        assert shown.startswith("\u27e8<s>\u27e9")
        assert MARKED.findall(shown)[-1].endswith(" done\u27e8</s>\u27e9")
        assert "Type </s> and" in shown and "ok </s> done" in shown
        # control characters never reach the terminal raw (no ANSI codes but ours)
        assert not any(ch in shown for ch in "\x00\x1b\r\u202e")
        assert "NUL \\x00, ESC \\x1b[31mred\\x0d, \\u202eevil, \\u27e8x\\u27e9 a\\\\x00" in shown
        assert as_decoded(shown) == tok.decode(enc.input_ids)


def test_trained_spans():
    assert trained_spans([IGNORE, IGNORE, 5, 6, IGNORE, 7]) == [
        (0, 2, False),
        (2, 4, True),
        (4, 5, False),
        (5, 6, True),
    ]
    assert trained_spans([]) == []


def test_help_and_typos(tmp_path, run_module):
    r = run_module("vicuna_sft.preprocess", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "vicuna_sft.preprocess" in r.stdout and "preprocess.show=N" in r.stdout
    assert "attention: " in r.stdout and "show: 0" in r.stdout
    bad = run_module("vicuna_sft.preprocess", "preprocess.shw=2", cwd=tmp_path)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "Key 'shw' not in 'PreprocessOptions'" in bad.stderr


def test_preprocess_outputs_are_per_model_and_tokenizer(tmp_path):
    """One model's `preprocess` never overwrites another's encoded files (issue 21, item 1)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from vicuna_sft.config import register_configs
    from vicuna_sft.preprocess import register_preprocess_configs

    register_preprocess_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
            dirs = [
                compose("preprocess", overrides=list(o), return_hydra_config=True).hydra.run.dir
                for o in ((), ("model.name_or_path=/m/other",), ("model.tokenizer=/t/spm",))
            ]
    finally:
        GlobalHydra.instance().clear()
        register_configs()  # the training schema again, for whatever composes next
    assert dirs == [
        "outputs/preprocess/tiny_sample",
        "outputs/preprocess/other_sample",
        "outputs/preprocess/tiny-tok-spm_sample",
    ]
