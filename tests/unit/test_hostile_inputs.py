"""Hostile data files through the record readers that training, preprocess, `data stats`
(`load_conversations`) and `data clean` (`read_records` + `clean_records`) use (issue 19, item 10).

Generated with hypothesis: records nested past any sane depth and past the JSON parser's, lone
surrogates ("\\ud800") in values and keys, integers past Python's 4,300-digit limit, megabyte
strings, records that are not objects, every JSON type in every field. Each ends in a counted skip
(on_error=skip) or one DataError line naming the file, the record (or JSONL line) and the problem
(on_error=raise); nothing else escapes. Both record formats (ShareGPT, OpenAI `messages`). Kept conversations encode, and `clean`'s output is written.
The CLI path: tests/integration/test_hostile_cli.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vicuna_sft.data.__main__ import _write_json
from vicuna_sft.data.clean import clean_records
from vicuna_sft.data.records import DataError, load_conversations, read_records
from vicuna_sft.errors import UserError

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same cases on every run and machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- JSON text, hostile where Python's json objects cannot be: written by hand ------------------


class Raw:
    """JSON text put into the file as is (what json.dumps cannot produce)."""

    def __init__(self, text: str):
        self.text = text


def dump(value) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # ensure_ascii: a lone surrogate is written as the escape "\ud800"


surrogate = st.sampled_from(["\ud800", "\udfff", "\udc80"])
strings = st.one_of(
    st.text(max_size=20),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=5), surrogate, st.text(max_size=5)),
    st.builds(lambda n: "x" * n, st.integers(100_000, 1_000_000)),  # huge strings
)
deep = st.builds(lambda d: Raw("[" * d + "]" * d), st.sampled_from([50, 150, 900, 5_000]))
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.builds(lambda n: Raw("9" * n), st.sampled_from([4_300, 4_301, 20_000])),  # past int's limit
    st.sampled_from([Raw("1e999"), Raw("-0.0"), Raw("NaN"), Raw("Infinity")]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
anything = st.recursive(
    st.one_of(scalars, deep),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=5), surrogate), inner, max_size=3),
    ),
    max_leaves=6,
)
roles = st.one_of(st.sampled_from(["human", "gpt", "user", "assistant", "system"]), anything)
message = st.one_of(
    st.fixed_dictionaries({"from": roles, "value": st.one_of(strings, anything)}),
    anything,
)
# OpenAI/HF `messages` records: roles, content parts, tool calls (arguments a JSON string, which
# is parsed again: hostile there too), reasoning and train flags of any type
json_text = st.one_of(
    st.builds(lambda v: dump(v), anything), st.sampled_from(["[" * 5000 + "]" * 5000, "9" * 5000, "{"])
)
tool_call = st.one_of(
    st.fixed_dictionaries(
        {
            "function": st.fixed_dictionaries(
                {"name": st.one_of(strings, anything)}, optional={"arguments": st.one_of(json_text, anything)}
            )
        }
    ),
    anything,
)
openai_message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "developer"]), anything)},
        optional={
            "content": st.one_of(
                strings,
                st.lists(
                    st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": strings}), anything),
                    max_size=2,
                ),
                anything,
            ),
            "tool_calls": st.one_of(st.lists(tool_call, max_size=2), anything),
            "reasoning_content": anything,
            "train": anything,
            "name": anything,
        },
    ),
    anything,
)
record = st.one_of(
    st.fixed_dictionaries(
        {"conversations": st.one_of(st.lists(message, max_size=4), anything)},
        optional={"id": anything, "extra": anything},
    ),
    st.fixed_dictionaries(
        {"messages": st.one_of(st.lists(openai_message, max_size=4), anything)},
        optional={"id": anything, "tools": anything},
    ),
    anything,  # not an object at all
)
GOOD = {"id": "good", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}


def write(records: list, jsonl: bool) -> str:
    fd, path = tempfile.mkstemp(suffix=".jsonl" if jsonl else ".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        if jsonl:
            f.write("\n".join(dump(r) for r in records) + "\n")
        else:
            f.write(dump(records))
    return path


def assert_one_line_naming(error: DataError, path: str) -> None:
    """One line naming file, record and problem; or, for several bad records (issue 21), a line
    counting them by reason, one such line per record (the first five) and the hint."""
    text = str(error)
    lines = text.splitlines()
    assert all(len(line) < 600 for line in lines), text[:600]
    if len(lines) == 1:
        assert re.match(rf"{re.escape(path)}: (record \d+|invalid JSON on line \d+)", text), text[:300]
        return
    head, *records, hint = lines
    assert re.match(rf"{re.escape(path)}: \d+ bad records \(", head), text[:300]
    assert 1 <= len(records) <= 5 and all(re.match(r"  record \d+", r) for r in records), text[:600]
    assert hint.startswith("fix them, or set data.on_error=skip"), hint


@pytest.fixture(scope="module")
def encoder(bpe_tokenizer):
    from vicuna_sft.config import DataConfig, OnError
    from vicuna_sft.data.encode import Encoder

    return Encoder.for_data(DataConfig(path="unused", max_length=64, on_error=OnError["skip"]), bpe_tokenizer)


@SETTINGS
@given(records=st.lists(record, min_size=1, max_size=4), jsonl=st.booleans())
def test_training_readers_count_or_name_every_hostile_record(records, jsonl, encoder):
    path = write([GOOD, *records], jsonl)
    try:
        try:
            convs, stats = load_conversations(path, skip_errors=True)
        except DataError as e:  # only a JSON array broken at the JSON level is never skipped
            assert not jsonl
            assert_one_line_naming(e, path)
        else:
            assert stats.read == 1 + len(records)
            assert len(convs) + sum(stats.dropped.values()) == stats.read  # nothing silently lost
            assert convs[0].id == "good"
            try:
                encoder.encode_batch(convs[:3])  # what is kept, training can tokenize
            except UserError as e:  # or refuses in one line (e.g. tool calls the template lacks)
                assert "\n" not in str(e) and len(str(e)) < 600, str(e)[:600]
        try:
            load_conversations(path, skip_errors=False)
        except DataError as e:
            assert_one_line_naming(e, path)
    finally:
        os.unlink(path)


@SETTINGS
@given(records=st.lists(record, min_size=1, max_size=4), jsonl=st.booleans())
def test_clean_counts_every_hostile_record_and_writes_its_output(records, jsonl):
    path = write([GOOD, *records], jsonl)
    out = path + ".out.json"
    try:
        try:
            raw = read_records(path)[0]  # `data clean` reads with errors raised
        except DataError as e:
            assert_one_line_naming(e, path)
            return
        kept, stats = clean_records(raw, path)
        assert stats.read == len(raw) == 1 + len(records)
        assert stats.kept + sum(stats.dropped.values()) == stats.read
        _write_json(kept, out)  # no record left that its output cannot hold
        assert len(json.loads(pathlib.Path(out).read_text(encoding="utf-8"))) == stats.kept
    finally:
        for p in (path, out):
            if os.path.exists(p):
                os.unlink(p)


# ---- each kind once, with the message a user reads --------------------------------------------


def tool_call_of(arguments: str) -> dict:
    """An assistant message calling a tool with `arguments` (OpenAI sends them as a JSON string)."""
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "f", "arguments": arguments}}],
    }


def turns(value: str = "hi") -> list:
    return [{"from": "human", "value": value}, {"from": "gpt", "value": "hello"}]


@pytest.mark.parametrize(
    "line, reason, message",
    [
        (
            dump({"id": "s", "conversations": turns("a \ud800")}),
            "lone_surrogate",
            "record 1 (id='s'): ['conversations'][0]['value'] holds a lone surrogate \\ud800 at character 2",
        ),
        (
            dump({"id": "k", "conversations": turns(), "meta": {"\udc80": 1}}),
            "lone_surrogate",
            "record 1 (id='k'): a key in ['meta'] holds a lone surrogate",
        ),
        (
            dump({"id": Raw("9" * 5000), "conversations": turns()}),
            "number_too_long",
            "record 1 (id=<an integer of 5000 digits>): ['id'] is an integer of 5000 digits (Python reads at most 4300)",
        ),
        (
            dump({"id": "d", "conversations": turns(), "x": Raw("[" * 500 + "]" * 500)}),
            "too_deep",
            "record 1 (id='d'): nested deeper than 100 levels",
        ),
        (
            dump({"id": "r", "conversations": [{"from": ["human"], "value": "hi"}]}),
            "bad_role",
            "record 1 (id='r'): message 0: 'from' must be a string, got list",
        ),
        (
            dump({"id": "x" * 10_000, "conversations": 5}),
            "bad_conversations",
            "record 1 (id='xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...): 'conversations' must be",
        ),
        ("[" * 100_000 + "]" * 100_000, "invalid_json", "invalid JSON on line 2: nested too deeply to parse"),
        (
            dump(
                {
                    "id": "m",
                    "messages": [
                        {"role": "user", "content": "a \udfff"},
                        {"role": "assistant", "content": "b"},
                    ],
                }
            ),
            "lone_surrogate",
            "record 1 (id='m'): ['messages'][0]['content'] holds a lone surrogate \\udfff at character 2",
        ),
        (
            dump(
                {
                    "id": "t",
                    "messages": [{"role": "user", "content": "a"}, tool_call_of("[" * 5000 + "]" * 5000)],
                }
            ),
            "bad_tool_calls",
            "record 1 (id='t'): message 1: tool call arguments are not JSON: '[[[[",
        ),
        (
            dump({"id": "t", "messages": [{"role": "user", "content": "a"}, tool_call_of("9" * 5000)]}),
            "bad_tool_calls",
            "record 1 (id='t'): message 1: tool call arguments are not JSON: '9999",
        ),
        (
            dump(
                {"id": "t", "messages": [{"role": "user", "content": "a"}, tool_call_of('{"a": "\\ud800"}')]}
            ),
            "bad_tool_calls",
            "record 1 (id='t'): message 1: tool call arguments hold a lone surrogate or nest too deep",
        ),
    ],
    ids=[
        "surrogate",
        "surrogate-key",
        "long-integer",
        "deep",
        "list-role",
        "huge-id",
        "deeper-than-json",
        "messages-surrogate",
        "tool-arguments-too-deep",
        "tool-arguments-long-integer",
        "tool-arguments-surrogate",
    ],
)
def test_each_kind_is_counted_or_named(tmp_path, line, reason, message):
    path = tmp_path / "data.jsonl"
    path.write_text(dump(GOOD) + "\n" + line + "\n", encoding="utf-8")
    convs, stats = load_conversations(str(path), skip_errors=True)
    assert (len(convs), dict(stats.dropped)) == (1, {reason: 1})
    with pytest.raises(DataError) as e:
        load_conversations(str(path), skip_errors=False)
    assert str(e.value).startswith(f"{path}: {message}"), str(e.value)[:300]


def test_a_json_array_too_deep_to_parse_names_its_record(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[\n" + dump(GOOD) + ",\n" + dump(GOOD) + ",\n" + "[" * 100_000 + "]" * 100_000 + "]")
    for skip in (True, False):
        with pytest.raises(DataError) as e:
            load_conversations(str(path), skip_errors=skip)
        assert str(e.value) == (
            f"{path}: record 2 (line 4): nested too deeply to parse; a JSON array is read whole: fix or "
            "remove the record (in a .jsonl file it could be skipped)"
        )


def test_clean_drops_html_nested_past_the_converter(tmp_path):
    record = {
        "id": "h",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "<div>" * 5000}],
    }
    kept, stats = clean_records([GOOD, record], str(tmp_path / "raw.json"))
    assert [r["id"] for r in kept] == ["good"] and dict(stats.dropped) == {"html_too_deep": 1}
    assert stats.converted_html == 0


def _fifo(p: pathlib.Path) -> None:
    os.mkfifo(p)


def _loop(p: pathlib.Path) -> None:
    os.symlink(p.with_name("b"), p)
    os.symlink(p, p.with_name("b"))


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda p: p.mkdir(), "is a directory, not a data file (give a .json or .jsonl file)"),
        (_fifo, "is a FIFO (named pipe), not a data file"),
        (_loop, "a symlink loop (it never reaches a file)"),
        (lambda p: os.symlink(p.with_name("gone.json"), p), "a symlink to "),
        (lambda p: None, "data file not found"),
    ],
    ids=["directory", "fifo", "symlink-loop", "dangling-symlink", "missing"],
)
def test_a_data_path_that_is_no_file_says_what_it_is(tmp_path, make, says):
    """Both readers of a data path: the digest (first, for the cache key; a FIFO would block it)
    and the parser."""
    from vicuna_sft.data.sources import file_digest

    path = tmp_path / "data.json"
    make(path)
    for read in (file_digest, lambda p: read_records(p)):
        with pytest.raises(DataError) as e:
            read(str(path))
        assert str(e.value).startswith(f"{path}: {says}"), str(e.value)
