"""Hostile records through the commands a user runs (issue 19, item 10): training, preprocess,
`data stats` and `data clean` count them under data.on_error=skip and name the first one in one
line under on_error=raise; none ends in a traceback. The generated cases: tests/unit/test_hostile_inputs.py.
"""

import json
import pathlib

import pytest

pytestmark = pytest.mark.slow

HOSTILE = [
    '{"id": "surrogate", "conversations": [{"from": "human", "value": "a \\ud800"}, {"from": "gpt", "value": "b"}]}',
    '{"id": ' + "9" * 5000 + ', "conversations": []}',
    '{"id": "role", "conversations": [{"from": ["human"], "value": "a"}, {"from": "gpt", "value": "b"}]}',
    '{"id": "deep", "conversations": [], "x": ' + "[" * 300 + "]" * 300 + "}",
    '"not an object"',
]
TOO_DEEP_FOR_JSON = "[" * 100_000 + "]" * 100_000
DROPPED = {"lone_surrogate": 1, "number_too_long": 1, "bad_role": 1, "too_deep": 1, "not_an_object": 1}
SHORT = ["model=tiny", "trainer.max_steps=2", "trainer.save_steps=2", "trainer.eval_strategy=no"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, sample_path) -> tuple[pathlib.Path, pathlib.Path]:
    """The bundled sample as JSONL with the hostile lines in between (the first at record 3): one
    file with, one without the line nested too deeply to parse (which under on_error=raise stops
    the reading of the file before any record is looked at)."""
    records = [json.dumps(r) for r in json.loads(sample_path.read_text())]
    root = tmp_path_factory.mktemp("hostile")
    hostile, parsable = root / "hostile.jsonl", root / "parsable.jsonl"
    hostile.write_text("\n".join([*records[:3], *HOSTILE, TOO_DEEP_FOR_JSON, *records[3:]]) + "\n")
    parsable.write_text("\n".join([*records[:3], *HOSTILE, *records[3:]]) + "\n")
    return hostile, parsable


def clean_failure(r) -> str:
    """The refusal: one line, or (several bad records, issue 21) a line counting them, one line per
    record (the first five) and the hint; returned as the first record's line, prefixed as one."""
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    if len(lines) == 1:
        return lines[0]
    head, *records, hint = lines
    assert head.startswith("vicuna_sft: error: ") and " bad records (" in head, head
    assert hint.startswith("fix them, or set data.on_error=skip") and 1 <= len(records) <= 5, lines
    return head.split(": ")[0] + ": error: " + head.split(": ")[2] + ": " + records[0].strip()


def test_training_counts_hostile_records_or_names_the_first(tmp_path, run_module, files):
    hostile, parsable = files
    out = tmp_path / "run"
    data = [f"data.path={hostile}", "data.on_error=skip"]
    r = run_module("vicuna_sft", *SHORT, *data, f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    stats = json.loads((out / "data_stats.json").read_text())["records"][str(hostile)]
    assert stats["dropped"] == {**DROPPED, "invalid_json": 1} and stats["kept"] == 300

    r = run_module(
        "vicuna_sft", *SHORT, f"data.path={hostile}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert (
        clean_failure(r)
        == f"vicuna_sft: error: {hostile}: invalid JSON on line 9: nested too deeply to parse"
    )
    r = run_module(
        "vicuna_sft", *SHORT, f"data.path={parsable}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert clean_failure(r) == (
        f"vicuna_sft: error: {parsable}: record 3 (id='surrogate'): ['conversations'][0]['value'] holds a "
        "lone surrogate \\ud800 at character 2 (not valid Unicode text)"
    )


def test_preprocess_and_data_stats_count_them(tmp_path, run_module, files):
    hostile, parsable = files
    data = [f"data.path={hostile}", "data.on_error=skip"]
    r = run_module("vicuna_sft.preprocess", *data, f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    assert stats["files"][str(hostile)]["dropped"] == {**DROPPED, "invalid_json": 1}
    assert stats["files"][str(hostile)]["read"] == 306 and stats["files"][str(hostile)]["kept"] == 300

    r = run_module("vicuna_sft.data", "stats", *data, cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = [x for x in r.stdout.splitlines() if x.startswith(f"  {hostile}: ")]
    assert line.startswith(f"  {hostile}: 306 records, 300 usable, dropped ")
    assert "'lone_surrogate': 1" in line and "'invalid_json': 1" in line and "'number_too_long': 1" in line

    r = run_module("vicuna_sft.data", "stats", f"data.path={parsable}", cwd=tmp_path)
    assert clean_failure(r).startswith(f"vicuna_sft: error: {parsable}: record 3 (id='surrogate'): ")


def test_data_clean_counts_them_and_names_a_line_too_deep_to_parse(tmp_path, run_module, files):
    hostile, parsable = files
    r = run_module("vicuna_sft.data", "clean", str(hostile), str(tmp_path / "out.json"), cwd=tmp_path)
    assert clean_failure(r) == (
        f"vicuna_sft: error: {hostile}: invalid JSON on line {3 + len(HOSTILE) + 1}: nested too deeply to parse"
    )
    r = run_module("vicuna_sft.data", "clean", str(parsable), str(tmp_path / "out.json"), cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    clean_dropped = {**DROPPED, "wrong_format": 1, "duplicate": 69}  # clean's name for not_an_object
    del clean_dropped["not_an_object"]
    assert f"305 records read, 231 kept -> {tmp_path / 'out.json'}, dropped {clean_dropped};" in r.stdout, (
        r.stdout
    )
    assert len(json.loads((tmp_path / "out.json").read_text())) == 231
