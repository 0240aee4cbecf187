"""Bad input gets a clear error: one test per bad input, each checking that the message names what
is wrong (and where), and for the command line that it comes without a traceback.

Data problems are tested on the reader directly (fast), and end to end through the CLI for the
file-level ones; config problems through the CLI, where they all fail before any weights load.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from vicuna_sft.config import DataConfig, OnError
from vicuna_sft.data.records import DataError, load_conversations

GOOD = {"id": "ok", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}


def write_json(path: pathlib.Path, records: list) -> str:
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return str(path)


def convs(*messages: tuple[str, object]) -> list[dict]:
    return [{"from": role, "value": value} for role, value in messages]


@pytest.fixture
def cli(run_module, tmp_path):
    """`python -m vicuna_sft ARGS` with this test's run directory."""
    out = tmp_path / "run"

    def run(*args: str) -> subprocess.CompletedProcess:
        return run_module(
            "vicuna_sft",
            *args,
            f"hydra.run.dir={out}",
            f"trainer.output_dir={out}",
            cwd=tmp_path,
            timeout=120,
        )

    return run


def assert_clean_failure(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in r.stderr, f"{needle!r} not in:\n{r.stderr}"


# --- data, on the reader ------------------------------------------------------------------------


def test_missing_data_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match=f"{missing}: data file not found"):
        load_conversations(str(missing), skip_errors=False)


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"id": "a",\n    "conversations": [}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}: invalid JSON at line 3 column 23: Expecting value"):
        load_conversations(str(path), skip_errors=True)  # a broken file is never "skipped"


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + '{"id": "b", "conversations": [\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}: invalid JSON on line 3 column \d+"):
        load_conversations(str(path), skip_errors=False)


def test_record_without_conversations(tmp_path):
    path = write_json(tmp_path / "d.json", [GOOD, {"id": "x1", "turns": []}])
    with pytest.raises(
        DataError,
        match=r"d\.json: record 1 \(id='x1'\): missing the 'conversations' \(ShareGPT\) or 'messages' \(OpenAI\) field",
    ):
        load_conversations(path, skip_errors=False)


def test_unknown_role(tmp_path):
    rec = {"id": "r", "conversations": convs(("human", "Hi"), ("bot", "Hello"))}
    path = write_json(tmp_path / "d.json", [rec])
    with pytest.raises(
        DataError, match=r"record 0 \(id='r'\): message 1: unknown role 'bot' \(expected one of"
    ):
        load_conversations(path, skip_errors=False)


def test_non_string_value(tmp_path):
    rec = {"id": "n", "conversations": convs(("human", "Hi"), ("gpt", 42))}
    path = write_json(tmp_path / "d.json", [GOOD, GOOD, rec])
    with pytest.raises(DataError, match=r"record 2 \(id='n'\): message 1: 'value' must be a string, got int"):
        load_conversations(path, skip_errors=False)


def test_conversation_without_assistant_turn(tmp_path):
    rec = {"id": "u", "conversations": convs(("system", "Be brief."), ("human", "Hi"))}
    path = write_json(tmp_path / "d.json", [rec])
    with pytest.raises(DataError, match=r"record 0 \(id='u'\): no assistant reply to train on"):
        load_conversations(path, skip_errors=False)


def test_record_without_id_is_named_by_index(tmp_path):
    path = write_json(tmp_path / "d.json", [GOOD, {"conversations": []}])
    with pytest.raises(DataError, match=r"d\.json: record 1: 'conversations' is empty"):
        load_conversations(path, skip_errors=False)


# --- data that must be read (issue 10, items 4-7) ------------------------------------------------


@pytest.mark.parametrize("sep", ["\u2028", "\u0085", "\u2029"])
def test_jsonl_with_raw_unicode_line_separator_inside_a_string(tmp_path, sep):
    # JSON allows these raw inside a string; str.splitlines() would cut the line there
    rec = {"id": "s", "conversations": convs(("human", f"one{sep}two"), ("gpt", f"three{sep}four"))}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    assert sep in path.read_text(encoding="utf-8")  # raw, not escaped
    kept, stats = load_conversations(str(path), skip_errors=False)
    assert [c.pairs for c in kept] == [(("Hi", "Hello!"),), ((f"one{sep}two", f"three{sep}four"),)]
    assert (stats.read, dict(stats.dropped)) == (2, {})


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_utf8_bom_is_accepted(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    text = json.dumps([GOOD]) if suffix == ".json" else json.dumps(GOOD) + "\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    kept, _ = load_conversations(str(path), skip_errors=False)
    assert [(c.id, c.pairs) for c in kept] == [("ok", (("Hi", "Hello!"),))]


def test_not_utf8_names_the_file_and_byte(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\n")
    with pytest.raises(DataError, match=rf"{path}: not UTF-8 text \(byte {len(json.dumps(GOOD)) + 1}:"):
        load_conversations(str(path), skip_errors=True)


def test_malformed_jsonl_line_is_skipped_and_counted_under_skip(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps(GOOD),
        '{"id": "cut", "conversations": [{"from": "hu',
        json.dumps({**GOOD, "id": "ok2"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}: invalid JSON on line 2 column \d+"):  # on_error=raise
        load_conversations(str(path), skip_errors=False)
    kept, stats = load_conversations(str(path), skip_errors=True)
    assert [c.id for c in kept] == ["ok", "ok2"]
    assert (stats.read, dict(stats.dropped)) == (3, {"invalid_json": 1})


def test_only_malformed_jsonl_lines_under_skip_is_no_usable_record(tmp_path, bpe_tokenizer):
    from vicuna_sft.data.dataset import build_datasets

    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 1\n{"id": 2\n', encoding="utf-8")
    cfg = DataConfig(path=str(path), on_error=OnError["skip"], max_length=64)
    with pytest.raises(
        DataError, match=r"d\.jsonl: no usable record out of 2 \(dropped: \{'invalid_json': 2\}\)"
    ):
        build_datasets(cfg, bpe_tokenizer, seed=0)


def test_data_path_is_a_directory(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path}: is a directory, not a data file"):
        load_conversations(str(tmp_path), skip_errors=False)


@pytest.mark.parametrize("content", ["[]", "  [ ]\n", "", "\n\n"])
def test_empty_data_file_says_it_holds_no_records(tmp_path, bpe_tokenizer, content):
    from vicuna_sft.data.dataset import build_datasets

    path = tmp_path / ("d.json" if "[" in content else "d.jsonl")
    path.write_text(content, encoding="utf-8")
    cfg = DataConfig(path=str(path), eval_fraction=0.01, max_length=64)
    with pytest.raises(DataError, match=rf"^{path}: the file holds no records$"):
        build_datasets(cfg, bpe_tokenizer, seed=0)


def test_empty_eval_file_says_it_holds_no_records(tmp_path, bpe_tokenizer):
    from vicuna_sft.data.dataset import build_datasets

    train, evals = write_json(tmp_path / "t.json", [GOOD]), write_json(tmp_path / "e.json", [])
    with pytest.raises(DataError, match=rf"^{evals}: the file holds no records$"):
        build_datasets(DataConfig(path=train, eval_path=evals, max_length=64), bpe_tokenizer, seed=0)


BAD_RECORDS = [
    {"id": "b1", "turns": []},
    {"id": "b2", "conversations": convs(("human", "Hi"), ("bot", "Hello"))},
    {"id": "b3", "conversations": convs(("human", "Hi"), ("gpt", None))},
    {"id": "b4", "conversations": convs(("human", "Hi"))},
    {"id": "b5", "conversations": convs(("human", "Hi"), ("bot", "Hello"))},
    {"id": "b6", "conversations": convs(("human", "Hi"), ("gpt", "   "))},
]
SKIPPED = {
    "no_conversations": 1,
    "unknown_role": 2,
    "non_string_value": 1,
    "no_assistant_reply": 1,
    "empty_message": 1,
}


def test_bad_records_are_reported_together_up_to_five_with_the_skip_setting(tmp_path):
    """Issue 21, item 7: one run names the first five bad records, counts all by reason, and
    names data.on_error=skip (it used to stop at the first)."""
    extra = {"id": "b7", "conversations": convs(("human", "Hi"), ("bot", "Yo"))}
    path = write_json(tmp_path / "d.json", [GOOD, *BAD_RECORDS, GOOD, extra])
    with pytest.raises(DataError) as e:
        load_conversations(path, skip_errors=False)
    lines = str(e.value).splitlines()
    assert lines[0] == (
        f"{path}: 7 bad records (unknown_role 3, no_conversations 1, non_string_value 1, "
        "no_assistant_reply 1, empty_message 1):"
    )
    assert (
        lines[1]
        == "  record 1 (id='b1'): missing the 'conversations' (ShareGPT) or 'messages' (OpenAI) field"
    )
    assert [line.split(":")[0].strip() for line in lines[1:6]] == [
        f"record {i} (id='b{i}')" for i in range(1, 6)
    ]
    assert lines[6:] == ["  ... and 2 more", "fix them, or set data.on_error=skip to skip and count them"]
    one = write_json(tmp_path / "one.json", [GOOD, BAD_RECORDS[1]])
    with pytest.raises(
        DataError,
        match=r"^\S+: record 1 \(id='b2'\): message 1: unknown role 'bot' .*; fix them, "
        r"or set data.on_error=skip to skip and count them$",
    ):
        load_conversations(one, skip_errors=False)


def test_on_error_skip_counts_skipped_records_by_reason(tmp_path, bpe_tokenizer):
    from vicuna_sft.data.dataset import build_datasets

    records = [GOOD, *BAD_RECORDS[:3], GOOD, *BAD_RECORDS[3:], {**GOOD, "id": "ok2"}]
    path = write_json(tmp_path / "d.json", records)
    with pytest.raises(DataError, match=r"record 1 \(id='b1'\)"):  # on_error=raise: the first one
        load_conversations(path, skip_errors=False)

    kept, stats = load_conversations(path, skip_errors=True)
    assert [c.id for c in kept] == ["ok", "ok", "ok2"]
    assert (stats.read, dict(stats.dropped)) == (len(records), SKIPPED)

    data = build_datasets(
        DataConfig(path=path, on_error=OnError["skip"], max_length=64), bpe_tokenizer, seed=0
    )
    s = data.stats["records"][path]
    assert (s["read"], s["kept"], s["dropped"]) == (len(records), 3, SKIPPED)
    assert s["read"] == s["kept"] + sum(s["dropped"].values())
    assert len(data.train) == 3


# --- the command line ---------------------------------------------------------------------------


def test_cli_config_typo_names_the_key(tmp_path, cli):
    r = cli("optimizer.lrr=1")
    assert_clean_failure(r, "Could not override 'optimizer.lrr'", "Key 'lrr' not in 'OptimizerConfig'")


def test_cli_unknown_group_option_lists_the_valid_ones(tmp_path, cli):
    r = cli("attention=foo")
    assert_clean_failure(r, "Could not find 'attention/foo'", "Available options in 'attention'")
    options = r.stderr.split("Available options in 'attention':", 1)[1].split("Config search path")[0].split()
    assert {"eager", "sdpa"} <= set(options)


def test_cli_wrong_type_names_the_key(tmp_path, cli):
    r = cli("optimizer.lr=abc")
    assert_clean_failure(r, "Value 'abc' of type 'str' could not be converted to Float", "optimizer.lr")


def test_cli_unknown_root_key_is_refused(tmp_path, cli):
    r = cli("+foo=1")
    assert_clean_failure(
        r, "vicuna_sft: error: unknown config key(s): foo (the root has: model, data, attention"
    )


@pytest.mark.parametrize("prefix", ["+", "++"])
def test_cli_unknown_group_key_added_with_plus_is_refused(tmp_path, cli, prefix):
    """`+group.key=value` adds the key even to a struct node; it must fail like `group.key=value`,
    on one line naming each key with its close matches or the group's valid keys, before anything
    runs (no checkpoint, no config.yaml in the run directory)."""
    r = cli(
        f"{prefix}trainer.totally_bogus=1",
        f"{prefix}data.tempalte=chatml",
        f"{prefix}trainer.torch_compile=true",
    )
    assert_clean_failure(r, "vicuna_sft: error: unknown config key(s): ")
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("vicuna_sft: error:")]
    assert "data.tempalte (did you mean data.template" in line
    assert (
        "trainer.totally_bogus, trainer.torch_compile (trainer has: output_dir, per_device_train_batch_size,"
        in line
    )
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_cli_batch_larger_than_the_training_set_is_refused(tmp_path, cli, sample_path):
    """With the dataloader's drop_last off, a batch of 8 over 6 samples would silently train on one
    partial batch of 6 per epoch; refused once the data is encoded, before the model loads."""
    data = write_json(tmp_path / "six.json", json.loads(sample_path.read_text())[:6])
    r = cli(f"data.path={data}", "data.eval_fraction=0", "trainer.per_device_train_batch_size=8")
    assert_clean_failure(
        r,
        "vicuna_sft: error: trainer.per_device_train_batch_size=8 x 1 process(es) = 8 samples per batch, "
        "but the training set has only 6: every step would train on one partial batch of those 6",
    )
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_cli_max_length_must_be_positive(tmp_path, cli):
    r = cli("data.max_length=0")
    assert_clean_failure(r, "vicuna_sft: error: invalid config", "data.max_length must be > 0, got 0")


def test_cli_negative_lr(tmp_path, cli):
    r = cli("optimizer.lr=-1e-5")
    assert_clean_failure(
        r, "vicuna_sft: error: invalid config", "optimizer.lr must be > 0 and <= 1, got -1e-05"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=inf", "optimizer.lr must be > 0 and <= 1, got inf"),
        ("optimizer.lr=1e30", "optimizer.lr must be > 0 and <= 1, got 1e+30"),
        ("optimizer.max_grad_norm=nan", "optimizer.max_grad_norm must be >= 0 and finite"),
        (
            "trainer.save_total_limit=-1",
            "trainer.save_total_limit must be >= 1, or null to keep every checkpoint",
        ),
    ],
)
def test_cli_absurd_numbers_are_refused_before_training(tmp_path, cli, override, message):
    """lr=inf used to train (nan weights, a logged loss of 0.0) and save_total_limit=-1 to delete
    every checkpoint as it was written (issue 19): now refused before any weights load."""
    r = cli(override)
    assert_clean_failure(r, "vicuna_sft: error: invalid config", message)
    assert r.returncode == 1 and not (tmp_path / "run" / "result.json").exists()


def test_cli_missing_required_data_path(tmp_path, cli):
    r = cli("data=sharegpt")
    assert_clean_failure(r, "vicuna_sft: error: data.path is required")


def test_cli_model_path_that_does_not_exist(tmp_path, cli):
    missing = tmp_path / "models" / "nope"
    r = cli(f"model.name_or_path={missing}")
    assert_clean_failure(r, f"vicuna_sft: error: model path does not exist: {missing}")
    assert not missing.exists()


def test_cli_missing_data_file(tmp_path, cli):
    missing = tmp_path / "sharegpt.json"
    r = cli("data=sharegpt", f"data.path={missing}")
    assert_clean_failure(r, f"vicuna_sft: error: data.path: {missing}: data file not found")


def test_cli_bad_record_names_file_record_and_problem(tmp_path, cli):
    path = tmp_path / "d.jsonl"
    bad = {"id": "r7", "conversations": convs(("human", "Hi"), ("robot", "Hello"))}
    path.write_text(f"{json.dumps(GOOD)}\n{json.dumps(bad)}\n", encoding="utf-8")
    r = cli("data=sharegpt", f"data.path={path}")
    assert_clean_failure(r, f"vicuna_sft: error: {path}: record 1 (id='r7'): message 1: unknown role 'robot'")
    assert not (tmp_path / "run" / "checkpoint-1").exists()


# --- faults and settings that fail late unless checked (issue 10, item 10) -----------------------


def missing_logger() -> str:
    """A trainer.report_to logger whose package is not installed here."""
    from vicuna_sft.validation import LOGGERS, logger_available

    missing = [name for name in LOGGERS if name != "kubeflow" and not logger_available(name)]
    if not missing:
        pytest.skip("every logger package is installed")
    return "wandb" if "wandb" in missing else missing[0]


def test_report_to_table_is_transformers_own():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from vicuna_sft.validation import LOGGERS

    assert set(LOGGERS) == set(INTEGRATION_TO_CALLBACK)


def test_cli_report_to_not_installed_names_the_package(tmp_path, cli):
    from vicuna_sft.validation import LOGGERS

    name = missing_logger()
    package = LOGGERS[name][1]
    r = cli(f"trainer.report_to=[{name}]")
    assert_clean_failure(r, f"trainer.report_to: {name!r} needs {package}: pip install {package}")
    assert not (tmp_path / "run" / "data_stats.json").exists()  # refused before the data was encoded
    assert "encoding" not in r.stderr


def test_report_to_unknown_lists_the_valid_ones():
    from vicuna_sft.validation import report_to_problems

    [problem] = report_to_problems(["none", "tensorbord"])
    assert problem.startswith("trainer.report_to: unknown logger 'tensorbord'; valid: ['all', 'none', ")
    assert "'tensorboard'" in problem and "'wandb'" in problem
    assert report_to_problems(["all"]) == report_to_problems(["none"]) == []


def test_cli_cfg_job_resolve_outside_a_run(tmp_path, run_module):
    r = run_module("vicuna_sft", "--cfg", "job", "--resolve", cwd=tmp_path, timeout=60)
    assert_clean_failure(r, "vicuna_sft: error: --cfg job --resolve: cannot resolve trainer.output_dir")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    ok = run_module(
        "vicuna_sft", "--cfg", "job", "--resolve", "trainer.output_dir=/x", cwd=tmp_path, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert "output_dir: /x" in ok.stdout and "${" not in ok.stdout  # everything else resolves


def test_cli_output_dir_that_cannot_be_created(tmp_path, run_module):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = run_module("vicuna_sft", f"hydra.run.dir={blocker}/run", cwd=tmp_path, timeout=120)
    assert_clean_failure(r, f"vicuna_sft: error: cannot write the output directory {blocker}/run:")
    assert "Not a directory" in r.stderr and "encoding" not in r.stderr


def test_cli_trainer_output_dir_that_is_not_writable(tmp_path, run_module):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    run = [f"hydra.run.dir={tmp_path}/run", f"trainer.output_dir={blocker}/out"]
    r = run_module("vicuna_sft", *run, cwd=tmp_path, timeout=120)
    assert_clean_failure(r, f"vicuna_sft: error: cannot write the output directory {blocker}/out:")
    assert "encoding" not in r.stderr


# A test-only fault, injected in the process that trains: the Nth checkpoint write runs out of space
# halfway through (as torch.save does when the disk fills: part of the file is on disk).
DISK_FULL_AT_SAVE = """
import errno, torch
_save, _calls = torch.save, []
def save(obj, f, *a, **k):
    if isinstance(f, str) and f.endswith("/checkpoint-4/optimizer.pt"):
        with open(f, "wb") as out:
            out.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", f)
    return _save(obj, f, *a, **k)
torch.save = save
"""


def run_with(code: str, *args: str, cwd: pathlib.Path, env: dict) -> subprocess.CompletedProcess:
    """`python -m vicuna_sft ARGS` with `code` run first in the same process."""
    script = f"import runpy, sys\n{code}\nsys.argv = ['vicuna_sft', *{list(args)!r}]\n"
    script += "runpy.run_module('vicuna_sft', run_name='__main__', alter_sys=True)\n"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


@pytest.fixture
def cli_env(cache_dir):
    return {**os.environ, "VICUNA_SFT_CACHE": cache_dir, "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_sets_it_aside_and_stops(tmp_path, cli_env):
    out = tmp_path / "run"
    args = [f"hydra.run.dir={out}", "trainer.max_steps=6", "trainer.save_steps=2", "data.eval_fraction=0"]
    r = run_with(DISK_FULL_AT_SAVE, *args, cwd=tmp_path, env=cli_env)
    assert_clean_failure(
        r, f"vicuna_sft: error: could not write checkpoint {out}/checkpoint-4", "No space left on device"
    )
    assert "set aside" in r.stderr and "resume" in r.stderr
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]  # the complete one stays
    [aside] = (out / "set_aside").iterdir()
    assert aside.name.startswith("checkpoint-4.") and (aside / "optimizer.pt").stat().st_size == 1000
    # with space again, the same command resumes from the last complete checkpoint
    again = subprocess.run(
        [sys.executable, "-m", "vicuna_sft", *args], capture_output=True, text=True, cwd=tmp_path, env=cli_env
    )
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["global_step"] == 6 and result["resumed_from"].endswith("checkpoint-2")


# job 0 of the sweep fails inside the Trainer with an error that is not one of the app's own
FAIL_FIRST_JOB = """
import transformers
_train = transformers.Trainer.train
def train(self, *a, **k):
    if self.args.max_steps == 1:
        raise RuntimeError("boom in job 0")
    return _train(self, *a, **k)
transformers.Trainer.train = train
"""


@pytest.mark.slow
def test_sweep_with_a_crashing_job_still_writes_the_summary(tmp_path, cli_env):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "trainer.max_steps=1,2",
        f"hydra.sweep.dir={sweep}",
        "data.eval_fraction=0",
        "trainer.save_steps=50",
    ]
    r = run_with(FAIL_FIRST_JOB, *args, cwd=tmp_path, env=cli_env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr
    assert "vicuna_sft: error: RuntimeError: boom in job 0" in r.stderr
    assert "1 of 2 sweep jobs failed: ['0']" in r.stderr
    rows = json.loads((sweep / "summary.json").read_text())
    assert [(row["job"], row["status"]) for row in rows] == [("0", "failed"), ("1", "completed")]
    assert rows[0]["error"] == "RuntimeError: boom in job 0" and rows[1]["global_step"] == 2
    assert (sweep / "summary.csv").read_text().count("\n") == 3
    assert "RuntimeError: boom in job 0" in (sweep / "0" / "error.txt").read_text()


def test_a_tokenizer_directory_without_tokenizer_files_names_model_tokenizer(tmp_path, tiny_dir):
    from vicuna_sft.config import ModelConfig
    from vicuna_sft.model.loading import ModelLoadError, check_tokenizer_files

    empty = tmp_path / "tok"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as e:
        check_tokenizer_files(ModelConfig(name_or_path=str(tiny_dir), tokenizer=str(empty)))
    assert str(e.value).startswith(f"model.tokenizer={empty}: the directory has no tokenizer")
    check_tokenizer_files(ModelConfig(name_or_path=str(empty), tokenizer=str(tiny_dir)))  # has one: fine
    check_tokenizer_files(ModelConfig(name_or_path="lmsys/vicuna-7b-v1.5"))  # a hub id: left to loading
