"""A newcomer's first hour (issue 21), through the CLI as a user runs it: a finished run extends,
runs that differ get their own directories, and mistakes end in one line saying what to do."""

import json

import pytest

pytestmark = pytest.mark.slow

SHORT = [
    "experiment=smoke",
    "trainer.eval_strategy=no",
    "trainer.logging_steps=1",
    "trainer.report_to=[none]",
    "trainer.resume=auto",
]


def test_a_finished_run_extends_and_an_unsafe_change_is_refused_with_a_safe_suggestion(tmp_path, run_module):
    run = tmp_path / "run"
    args = [*SHORT, f"hydra.run.dir={run}"]
    r = run_module("vicuna_sft", *args, "trainer.max_steps=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "result.json").read_text())["global_step"] == 4
    # what the console showed is in the run's log too (issue 21, item 8): each step's loss, the result
    log = (run / "vicuna_sft.log").read_text()
    assert [f"step {s}: {{'loss': " in log for s in range(1, 5)] == [True] * 4
    assert "vicuna_sft: 4 steps" in log

    # more steps: resumed from the finished run's last checkpoint, no override needed
    r = run_module("vicuna_sft", *args, "trainer.max_steps=6", "trainer.save_total_limit=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["resumed_from"] == str(run / "checkpoint-4") and result["global_step"] == 6
    state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]

    # another lr: refused, naming it, and suggesting a new run directory first
    r = run_module("vicuna_sft", *args, "trainer.max_steps=8", "optimizer.lr=1e-3", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "optimizer.lr: 0.003 in the checkpoint, 0.001 now" in r.stderr
    assert "trainer.max_steps" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.index(f"hydra.run.dir={run}-2") < last.index("trainer.resume=never")
    assert last.index("trainer.resume=never") < last.index("resume_on_config_change=true")
    assert "vicuna_sft: error: refusing to resume" in (run / "vicuna_sft.log").read_text()  # the refusal too


def test_runs_that_differ_get_their_own_directory_and_the_readme_sequence_runs(tmp_path, run_module):
    base = ["trainer.report_to=[none]", "trainer.logging_steps=1"]
    r = run_module("vicuna_sft", *base, "trainer.max_steps=2", cwd=tmp_path)  # a finished full fine-tune
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "outputs" / "tiny_sample"
    assert json.loads((run / "result.json").read_text())["global_step"] == 2

    # the README's next command: the same model, data and adapter, so the same directory; asked to
    # be shorter than what is there, it starts over (the longer run's checkpoint set aside, not lost)
    r = run_module(
        "vicuna_sft",
        *base,
        "model=tiny",
        "data=sample",
        "attention=eager",
        "trainer.max_steps=1",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["global_step"] == 1 and result["resumed_from"] is None
    assert [p.name.split(".")[0] for p in (run / "set_aside").glob("checkpoint-*")] == ["checkpoint-2"]

    # LoRA on the same data: its own directory, not a config change refused in the full run's
    r = run_module("vicuna_sft", *base, "adapter=lora", "trainer.max_steps=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["tiny_sample", "tiny_sample_lora"]
    assert (
        json.loads((tmp_path / "outputs" / "tiny_sample_lora" / "result.json").read_text())["global_step"]
        == 1
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--shell-completion"],
            "vicuna_sft: error: --shell-completion needs one of install=SHELL, uninstall=SHELL",
        ),
        (
            ["--cfg", "hydra", "--resolve"],
            "vicuna_sft: error: --cfg hydra --resolve: Hydra's settings resolve only",
        ),
    ],
)
def test_cli_misuse_ends_in_one_line(tmp_path, run_module, args, line):
    r = run_module("vicuna_sft", *args, cwd=tmp_path)
    assert r.returncode in (1, 2) and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(line)


def test_shell_completion_installs_for_the_console_script(tmp_path, run_module):
    r = run_module("vicuna_sft", "--shell-completion", "install=bash", cwd=tmp_path)
    assert r.returncode == 0 and "hydra_bash_completion" in r.stdout, r.stderr[-3000:]


def test_a_model_directory_without_a_tokenizer_names_model_tokenizer(tmp_path, run_module, tiny_dir):
    import shutil

    model = tmp_path / "my-model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):  # weights only, as some exports leave them
        shutil.copy(tiny_dir / name, model / name)
    r = run_module(
        "vicuna_sft", f"model.name_or_path={model}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip() == (
        f"vicuna_sft: error: {model} has no tokenizer (none of tokenizer.json, tokenizer_config.json, "
        "tokenizer.model, ...): set model.tokenizer= to the directory or hub id of the model's tokenizer"
    )


def test_a_missing_data_file_is_reported_before_workers_start(tmp_path, run_module):
    missing = tmp_path / "sharegpt.json"
    run = tmp_path / "run"
    r = run_module(
        "vicuna_sft",
        "data=sharegpt",
        f"data.path=[{tmp_path / 'a.json'},{missing}]",
        "distributed.nproc_per_node=2",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"vicuna_sft: error: data.path[0]: {tmp_path / 'a.json'}: data file not found; "
        f"data.path[1]: {missing}: data file not found"
    )
    assert not (run / "worker_config.yaml").exists()  # no worker was started


def test_our_launchers_and_sweeper_are_found_outside_the_checkout(tmp_path, cache_dir):
    """Under the editable install, outside the checkout, Hydra's scan missed hydra_plugins/ (no
    directory of the namespace holds it): `hydra/sweeper=optuna` ended in `Unknown plugin class`."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no checkout on sys.path
    r = subprocess.run(
        [sys.executable, "-m", "vicuna_sft", "--info", "plugins"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "VICUNA_SFT_CACHE": cache_dir},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    found = {line.strip() for line in r.stdout.splitlines()}
    assert {"RankedSlurmLauncher", "RankedLocalLauncher", "OptunaSearch"} <= found, r.stdout
