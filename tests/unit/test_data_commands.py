"""`python -m vicuna_sft.data clean|identity|stats`: realistic ShareGPT HTML against the markdown a
person would write, dedupe and counted drops, identity conversations, and length statistics."""

import json

import pytest

from vicuna_sft.data.__main__ import main
from vicuna_sft.data.clean import clean_records, to_markdown

# As the ShareGPT export stores ChatGPT's replies (classes and the copy button's SVG included).
CODE_BLOCK = (
    '<div class="markdown prose w-full break-words dark:prose-invert light"><p>Here is a function:</p>'
    '<pre><div class="bg-black mb-4 rounded-md"><div class="flex items-center relative text-gray-200 '
    'bg-gray-800 px-4 py-2 text-xs font-sans"><span class="">python</span><button class="flex ml-auto gap-2">'
    '<svg stroke="currentColor" fill="none" stroke-width="2" viewBox="0 0 24 24" class="h-4 w-4" height="1em" '
    'width="1em" xmlns="http://www.w3.org/2000/svg"><path d="M16 4h2a2 2 0 0 1 2 2v14a2 2 0 0 1-2 2H6"></path>'
    '<rect x="8" y="2" width="8" height="4" rx="1" ry="1"></rect></svg>Copy code</button></div>'
    '<div class="p-4 overflow-y-auto"><code class="!whitespace-pre hljs language-python">'
    '<span class="hljs-keyword">def</span> <span class="hljs-title function_">add_one</span>(<span class="hljs-params">'
    'x_value</span>):\n    <span class="hljs-keyword">return</span> x_value * <span class="hljs-number">2</span> &lt; 10\n'
    "</code></div></div></pre><p>It uses <code>x_value</code> and <strong>returns</strong> a bool.</p></div>"
)
CODE_MD = (
    "Here is a function:\n\n```python\ndef add_one(x_value):\n    return x_value * 2 < 10\n```\n\n"
    "It uses `x_value` and **returns** a bool."
)
NESTED = (
    '<div class="markdown prose w-full break-words dark:prose-invert light"><ol><li><p>Preheat the oven:</p>'
    "<ul><li>to 180°C</li><li>fan off</li></ul></li><li><p>Mix <em>flour</em> and sugar.</p></li></ol>"
    "<h3>Notes</h3><p>Serve warm.</p></div>"
)
NESTED_MD = "1. Preheat the oven:\n\n   - to 180°C\n   - fan off\n2. Mix *flour* and sugar.\n\n### Notes\n\nServe warm."
NO_LANGUAGE = (
    '<div class="markdown prose"><pre><div class="bg-black"><div class="flex items-center">'
    '<button class="flex ml-auto gap-2"><svg></svg>Copy code</button></div><div class="p-4">'
    '<code class="!whitespace-pre hljs">SELECT * FROM t;</code></div></div></pre></div>'
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (CODE_BLOCK, CODE_MD),
        (NESTED, NESTED_MD),
        (NO_LANGUAGE, "```\nSELECT * FROM t;\n```"),
        ("1 / 1Write a haiku about rain", "Write a haiku about rain"),  # regenerate counter, glued
        ("2 / 2\nAnd now in French?", "And now in French?"),
        ("3 / 4 is how much in percent?", "3 / 4 is how much in percent?"),  # math stays
        ("Sure, done.Copy1 chars / 1 words", "Sure, done."),
        ("Sure.\n\nCopy42 chars / 8 words", "Sure."),
        ("```pythonCopy code\nprint('hi')\n```", "```python\nprint('hi')\n```"),  # text-rendered export
        ("plain text with snake_case and 2*3", "plain text with snake_case and 2*3"),  # never escaped
    ],
    ids=[
        "code",
        "nested-lists",
        "no-language",
        "counter",
        "counter-line",
        "math",
        "copy-chars",
        "copy-chars-2",
        "inline-copy-code",
        "plain",
    ],
)
def test_to_markdown(raw, expected):
    assert to_markdown(raw) == expected


def record(rid, *values):
    return {
        "id": rid,
        "conversations": [
            {"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)
        ],
    }


def test_clean_dedupes_and_counts_every_drop():
    records = [
        record("a", "1 / 1How do I add one?", CODE_BLOCK),
        record("a-again", "How do I add one?", CODE_BLOCK),  # same conversation once cleaned
        record("b", "Bake?", NESTED, "Thanks", "You're welcome"),
        record("empty", "Hi", '<div class="markdown prose"><p> </p></div>'),  # nothing left after cleaning
        {"id": "wrong", "conversations": [{"from": "gpt", "value": "x"}, {"from": "gpt", "value": "y"}]},
        {"id": "no-convs"},
        "not an object",
        record("word", "Who made you?", "<p>OpenAI trained me.</p>"),
        record(
            "html-question",
            "What does <div><p>x</p></div> render?",
            "<p>A paragraph: <code>&lt;p&gt;</code>.</p>",
        ),
    ]
    out, stats = clean_records(records, "raw.json", drop_words=("openai",))
    assert [r["id"] for r in out] == ["a", "b", "html-question"]
    assert out[2]["conversations"] == [  # the user's HTML is text; the reply's is rendered
        {"from": "human", "value": "What does <div><p>x</p></div> render?"},
        {"from": "gpt", "value": "A paragraph: `<p>`."},
    ]
    assert out[0]["conversations"] == [
        {"from": "human", "value": "How do I add one?"},
        {"from": "gpt", "value": CODE_MD},
    ]
    assert out[1]["conversations"][1]["value"] == NESTED_MD
    assert stats.read == 9 and stats.kept == 3
    assert dict(stats.dropped) == {
        "duplicate": 1,
        "empty_message": 1,
        "not_alternating": 1,
        "wrong_format": 2,
        "drop_word": 1,
    }
    assert stats.read == stats.kept + sum(stats.dropped.values())


def test_clean_command_writes_records_training_reads(tmp_path, capsys):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(
        "\n".join(json.dumps(r) for r in [record("a", "Hi", CODE_BLOCK), record("b", "Hi", CODE_BLOCK)])
    )
    main(["clean", str(raw), str(tmp_path / "clean.json")])
    assert "2 records read, 1 kept" in capsys.readouterr().out
    from vicuna_sft.data.records import load_conversations

    convs, stats = load_conversations(str(tmp_path / "clean.json"), skip_errors=False)
    assert [c.pairs for c in convs] == [(("Hi", CODE_MD),)] and stats.read == 1


def test_identity_command(tmp_path, capsys):
    out = tmp_path / "identity.json"
    main(["identity", str(out), "--name", "Ada", "--org", "Acme Labs"])
    records = json.loads(out.read_text())
    assert f"{len(records)} conversations" in capsys.readouterr().out and len(records) > 40
    replies = [m["value"] for r in records for m in r["conversations"] if m["from"] == "gpt"]
    assert all("{" not in v for v in replies)
    assert sum("Ada" in v for v in replies) > 30 and sum("Acme Labs" in v for v in replies) > 40
    assert len({r["id"] for r in records}) == len(records)
    who_made = [r for r in records if r["conversations"][0]["value"] == "Who created you?"]
    assert who_made and all("Acme Labs" in r["conversations"][1]["value"] for r in who_made)
    from vicuna_sft.data.records import load_conversations

    convs, stats = load_conversations(str(out), skip_errors=False)  # valid training data
    assert len(convs) == len(records) and not stats.adjusted


def test_stats_command_counts_what_split_and_truncate_would_do(tiny_dir, tmp_path, capsys, monkeypatch):
    long_reply = " ".join(["word"] * 120)
    records = [record("short", "Hi", "Hello"), record("long", "Q1", long_reply, "Q2", long_reply)]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records))
    monkeypatch.setenv("VICUNA_SFT_CACHE", str(tiny_dir.parent))
    result_file = tmp_path / "stats.json"
    main(
        [
            "stats",
            f"data.path={data}",
            "data.max_length=200",
            "data.eval_fraction=0",
            "--json",
            str(result_file),
        ]
    )
    s = json.loads(result_file.read_text())
    train = s["train"]
    assert train["conversations"] == 2 and train["turns"]["max"] == 2
    assert train["longer_than_max_length"] == 1 and train["tokens"]["max"] > 200
    # the cut (tokens past 200) lies inside the second reply: every cut token is a lost reply token
    assert train["truncate"] == {"truncated": 1, "lost_reply_tokens": train["tokens"]["max"] - 200}
    assert train["split"] == {
        "conversations_split": 1,
        "samples": 3,
        "pairs_truncated": 0,
        "lost_reply_tokens": 0,
    }
    assert "data.long=split: 1 split into 3 samples" in capsys.readouterr().out


def test_bad_input_is_one_line_error(run_module, tmp_path):
    r = run_module(
        "vicuna_sft.data", "clean", str(tmp_path / "missing.json"), str(tmp_path / "o.json"), cwd=tmp_path
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"vicuna_sft: error: {tmp_path / 'missing.json'}: data file not found"
