"""Nothing silently wrong (issue 10), through the CLI as a user runs it: damaged checkpoints are
found and skipped, changed data is refused, the final loss is the final step's, one run per
directory, readable model files, and Ctrl-C saves a checkpoint.

One 8-step reference run (checkpoints 2, 4, 6, 8) is shared: the damage tests copy its directory,
break checkpoints, rerun the same command and compare the final weights with the reference's.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

BASE = [
    "experiment=smoke",
    "trainer.max_steps=8",
    "trainer.save_steps=2",
    "trainer.save_total_limit=null",
    "trainer.eval_strategy=no",
    "trainer.logging_steps=1",
    "trainer.resume=auto",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, run_module) -> pathlib.Path:
    root = tmp_path_factory.mktemp("safety")
    out = root / "reference"
    r = run_module("vicuna_sft", *BASE, f"hydra.run.dir={out}", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def copy_run(reference: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """The reference run's checkpoints, without its final model and result."""
    shutil.copytree(reference, dest, ignore=shutil.ignore_patterns("final", "result.json"))
    return dest


def final_weights_equal(a: pathlib.Path, b: pathlib.Path) -> bool:
    wa, wb = (load_file(d / "final" / "model.safetensors") for d in (a, b))
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def truncate(path: pathlib.Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_damaged_checkpoints_are_set_aside_and_the_run_falls_back(tmp_path, run_module, reference):
    run = copy_run(reference, tmp_path / "run")
    (run / "checkpoint-8" / "optimizer.pt").unlink()  # the marker stays: it used to resume anyway
    truncate(run / "checkpoint-6" / "model.safetensors")
    (run / "checkpoint-4" / "trainer_state.json").write_text("garbage")
    damaged = {p: sorted(x.name for x in (run / p).iterdir()) for p in ("checkpoint-8", "checkpoint-6")}

    r = run_module("vicuna_sft", *BASE, f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr  # warnings are logged (stdout), errors printed (stderr)
    assert "checkpoint-8 is damaged (optimizer.pt is missing)" in log
    assert "checkpoint-6 is damaged (model.safetensors has" in log
    assert "checkpoint-4 is damaged (trainer_state.json has" in log
    result = json.loads((run / "result.json").read_text())
    assert result["resumed_from"] == str(run / "checkpoint-2") and result["global_step"] == 8
    # set aside, never deleted: the damaged files are still there to inspect
    # (the copied run's plots/ and data_stats.json went to set_aside/previous-run.<time>/)
    aside = {p.name.split(".")[0]: p for p in (run / "set_aside").glob("checkpoint-*")}
    assert sorted(aside) == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    for name, files in damaged.items():
        assert sorted(x.name for x in aside[name].iterdir()) == files
    assert (aside["checkpoint-4"] / "trainer_state.json").read_text() == "garbage"
    # steps 3-8 again from checkpoint-2: bit-identical to the uninterrupted run
    assert final_weights_equal(run, reference)


def test_no_intact_checkpoint_left_is_a_clear_error(tmp_path, run_module, reference):
    run = copy_run(reference, tmp_path / "run")
    for step in (2, 4, 6, 8):
        truncate(run / f"checkpoint-{step}" / "optimizer.pt")
    r = run_module("vicuna_sft", *BASE, f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "no intact checkpoint to resume" in r.stderr
    assert "checkpoint-8: optimizer.pt has" in r.stderr and "trainer.resume=PATH" in r.stderr
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]

    # asking for one of them by path: the same check, no fallback
    r = run_module(
        "vicuna_sft", *BASE, f"hydra.run.dir={run}", f"trainer.resume={run / 'checkpoint-4'}", cwd=tmp_path
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"trainer.resume: {run / 'checkpoint-4'} is damaged (optimizer.pt has" in r.stderr


class _Plant:
    """A planted pickle: loading it with weights_only=False would create the file `target`."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.open, (self.target, os.O_CREAT | os.O_WRONLY))


def test_a_planted_pickle_in_a_checkpoint_is_damage_not_a_traceback(tmp_path, run_module, reference):
    """Issue 19, item 10: torch's weights-only load refuses a planted scheduler.pt / rng_state.pth
    (nothing runs) but as a raw UnpicklingError from inside the Trainer. Even with its manifest
    rewritten to match, the checkpoint is damaged: the run falls back; asked for by path (no
    COMPLETE marker), it is refused in one line."""
    import pickle

    from vicuna_sft.training import manifest
    from vicuna_sft.training.checkpoint import COMPLETE, mark_complete

    run = copy_run(reference, tmp_path / "run")
    ran = tmp_path / "code_ran"
    newest = run / "checkpoint-8"
    (newest / "scheduler.pt").write_bytes(pickle.dumps(_Plant(str(ran)), protocol=2))
    files = manifest.list_files(str(newest), exclude=(COMPLETE,))
    mark_complete(str(newest), 8, manifest.hash_share(str(newest), files, 0, 1))
    r = run_module("vicuna_sft", *BASE, f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "checkpoint-8 is damaged (scheduler.pt is not plain checkpoint data (" in r.stdout + r.stderr
    assert json.loads((run / "result.json").read_text())["resumed_from"] == str(run / "checkpoint-6")
    assert final_weights_equal(run, reference) and not ran.exists()

    copy = tmp_path / "copied"  # a checkpoint copied by hand, without its marker
    shutil.copytree(reference / "checkpoint-4", copy, ignore=shutil.ignore_patterns(COMPLETE))
    (copy / "rng_state.pth").write_bytes(pickle.dumps(_Plant(str(ran)), protocol=2))
    r = run_module(
        "vicuna_sft", *BASE, f"hydra.run.dir={tmp_path / 'other'}", f"trainer.resume={copy}", cwd=tmp_path
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("vicuna_sft: error:")]
    assert line.startswith(
        f"vicuna_sft: error: trainer.resume: {copy} is unsafe to load (rng_state.pth is not plain checkpoint data ("
    ), line
    assert "GLOBAL posix.open" in line and not ran.exists()


def test_resume_from_a_set_aside_checkpoint_reads_its_step_and_never_prunes_it(
    tmp_path, run_module, reference
):
    """trainer.resume=<a checkpoint not named checkpoint-N>: its step comes from its own state, and
    the pruning of set_aside/ (3 kept) never deletes the checkpoint being resumed."""
    run = copy_run(reference, tmp_path / "run")
    aside = run / "set_aside"
    aside.mkdir()
    resumed = aside / "checkpoint-4.20200101-000000"  # the oldest there: first in line for pruning
    (run / "checkpoint-4").rename(resumed)
    for day in (2, 3, 4):
        shutil.copytree(run / "checkpoint-2", aside / f"checkpoint-2.2020010{day}-000000")
    r = run_module("vicuna_sft", *BASE, f"hydra.run.dir={run}", f"trainer.resume={resumed}", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "this run starts at step 4" in log and "starts at step 0" not in log
    assert resumed.is_dir() and (run / "checkpoint-2").is_dir()  # older than step 4: left in place
    result = json.loads((run / "result.json").read_text())
    assert result["resumed_from"] == str(resumed) and result["global_step"] == 8
    assert final_weights_equal(run, reference)  # steps 5-8 again: the uninterrupted run's weights


def test_an_interrupted_rerun_leaves_no_outputs_of_the_previous_run_in_place(tmp_path, run_module, reference):
    """A `trainer.resume=never` rerun killed early: before, config.yaml said the new settings while
    result.json and final/ were the old run's. The previous outputs are set aside at the start."""
    from vicuna_test_callbacks import override

    run = tmp_path / "run"
    shutil.copytree(reference, run)  # a finished run: checkpoints, final/, result.json
    old_result = (run / "result.json").read_text()
    r = run_module(
        "vicuna_sft",
        *BASE,
        f"hydra.run.dir={run}",
        "trainer.resume=never",
        "optimizer.lr=1e-3",
        override("KillDuringSave", step=2),
        cwd=tmp_path,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    assert not (run / "result.json").exists() and not (run / "final").exists()
    (previous,) = (run / "set_aside").glob("previous-run.*")
    assert (previous / "result.json").read_text() == old_result and (
        previous / "final" / "model.safetensors"
    ).is_file()


def test_model_files_are_readable_by_the_group_and_others_as_the_umask_says(reference):
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    for path in (
        reference / "checkpoint-8" / "model.safetensors",
        reference / "final" / "model.safetensors",
        reference / "final" / "config.json",
    ):
        assert path.stat().st_mode & 0o777 == expected, (path, oct(path.stat().st_mode))


def test_final_train_loss_is_the_loss_of_the_last_steps(tmp_path, run_module):
    """`-m optimizer.lr=1e-4,1e-2 trainer.max_steps=8`: logging every 10 steps used to report the
    step-1 loss as the final one for both jobs."""
    sweep = tmp_path / "sweep"
    r = run_module(
        "vicuna_sft",
        "-m",
        "optimizer.lr=1e-4,1e-2",
        "trainer.max_steps=8",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((sweep / "summary.json").read_text())
    finals = []
    for row in rows:
        result = json.loads((pathlib.Path(row["output_dir"]) / "result.json").read_text())
        state = json.loads((pathlib.Path(row["output_dir"]) / "trainer_state.json").read_text())
        logged = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
        assert sorted(logged) == [1, 8]  # logging_steps=10: step 1 (first) and now the last step
        assert result["final_train_loss"] == logged[8] == row["final_train_loss"]
        assert result["final_train_loss_steps"] == [2, 8]  # the mean over steps 2..8
        assert result["first_train_loss"] == logged[1] != logged[8]
        finals.append(logged[8])
    assert finals[0] != finals[1]


def test_changed_data_under_the_same_path_is_refused(tmp_path, run_module, sample_path):
    data = tmp_path / "data.json"
    records = json.loads(sample_path.read_text())
    data.write_text(json.dumps(records))
    args = [
        *BASE,
        "trainer.max_steps=2",
        "data=sharegpt",
        f"data.path={data}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    r = run_module("vicuna_sft", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    digest = stats["records"][str(data)]["xxh3_128"]

    data.write_text(json.dumps(records[:100]))  # cut to 100 records, same path
    r = run_module("vicuna_sft", *args, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "refusing to resume" in r.stderr
    assert f"data content ({data}): {digest!r} in the checkpoint" in r.stderr
    assert "trainer.resume_on_config_change=true" in r.stderr and "trainer.resume=never" in r.stderr


def _bump_first_weight(model_dir: pathlib.Path) -> None:
    from safetensors.torch import save_file

    weights = load_file(model_dir / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("changed", "extra"),
    [
        # the frozen base of an adapter run: resuming would merge the adapter into a base its
        # first steps never saw
        ("model.safetensors", ["adapter=lora"]),
        ("tokenizer_config.json", []),
    ],
)
def test_a_model_or_tokenizer_changed_in_place_is_refused(tmp_path, run_module, tiny_dir, changed, extra):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    args = [
        *BASE,
        "trainer.max_steps=2",
        f"model.name_or_path={model}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *extra,
    ]
    r = run_module("vicuna_sft", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    if changed == "model.safetensors":
        _bump_first_weight(model)
    else:  # still the same tokenizer to load, other bytes: the fingerprint cannot know it is harmless
        config = json.loads((model / changed).read_text())
        (model / changed).write_text(json.dumps({**config, "model_max_length": 4096}))
    r = run_module("vicuna_sft", *args, cwd=tmp_path)  # the same command: only the file differs
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "refusing to resume" in r.stderr and f"model content ({model / changed}):" in r.stderr
    assert r.stderr.count("in the checkpoint") == 1  # nothing else differs


def test_a_second_run_on_the_same_directory_is_refused(tmp_path, run_module):
    from vicuna_sft.launch.run_lock import LOCK_FILE

    out = tmp_path / "run"
    out.mkdir()
    # another process holds the run directory's lock (as a running training would)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from vicuna_sft.launch.run_lock import run_lock; import time\nwith run_lock({str(out)!r}): time.sleep(600)",
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / LOCK_FILE).is_file() or not (out / LOCK_FILE).read_text():
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
        r = run_module("vicuna_sft", *BASE, f"hydra.run.dir={out}", cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert f"another run (pid {holder.pid}, host {os.uname().nodename}) is using {out}" in r.stderr
        assert not list(out.glob("checkpoint-*"))
    finally:
        holder.kill()
        holder.wait()


def test_a_refused_second_run_leaves_the_live_runs_record_as_it_was(tmp_path, cache_dir, run_module):
    """Issue 19, item 8: the second run used to be refused only after Hydra had written its own
    `.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml` over the live run's."""
    out = tmp_path / "run"
    live = start(cache_dir, [*BASE, "trainer.max_steps=400", f"hydra.run.dir={out}"], tmp_path)
    try:
        wait_for(out / "checkpoint-2" / "COMPLETE", live)
        record = {p.name: p.read_bytes() for p in (out / ".hydra").iterdir()}
        assert set(record) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
        log = (out / "vicuna_sft.log").read_bytes()
        r = run_module("vicuna_sft", *BASE, "optimizer.lr=1e-4", f"hydra.run.dir={out}", cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        (line,) = r.stderr.strip().splitlines()
        assert line == (
            f"vicuna_sft: error: another run (pid {live.pid}, host {os.uname().nodename}) is using {out}; "
            "wait for it to end, or give this one another hydra.run.dir"
        )
        assert {p.name: p.read_bytes() for p in (out / ".hydra").iterdir()} == record
        assert b"1e-4" not in record["overrides.yaml"]
        assert not (out / "vicuna_sft.log").read_bytes()[len(log) :].count(b"1e-4")
        assert live.poll() is None  # the live run goes on
    finally:
        live.kill()
        live.communicate()


def start(cache_dir: str, args: list[str], cwd: pathlib.Path) -> subprocess.Popen:
    env = {**os.environ, "VICUNA_SFT_CACHE": cache_dir, "PYTHONPATH": os.pathsep.join(sys.path)}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "vicuna_sft", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_ctrl_c_finishes_the_step_saves_and_exits_75(tmp_path, cache_dir):
    from vicuna_sft.errors import PREEMPTED_EXIT

    out = tmp_path / "run"
    args = [*BASE, "trainer.max_steps=400", "trainer.save_steps=2", f"hydra.run.dir={out}"]
    proc = start(cache_dir, args, tmp_path)
    wait_for(out / "checkpoint-2" / "COMPLETE", proc)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT == 75, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("vicuna_sft: stopped")]
    step = int(line.split("at step ")[1].split(":")[0])
    assert 3 <= step < 400 and (out / f"checkpoint-{step}" / "COMPLETE").is_file()
    assert f"checkpoint-{step} is complete; run the same command to resume" in line
    assert not (out / "final").exists()
    # result.json says how the run ended (a launcher reads the signal's name there, issue 19)
    result = json.loads((out / "result.json").read_text())
    assert (result["status"], result["stopped_by"], result["global_step"]) == ("preempted", "SIGINT", step)
    assert result["final_dir"] is None


def test_a_signal_to_a_worker_is_named_by_the_launcher(tmp_path, cache_dir):
    """Issue 19: SLURM signals every task and `kill` reaches one rank, so the launcher of a
    self-launched run may not see the signal itself: it used to say "stopped by a signal". The
    ranks agree on the signal, rank 0 records it, the launcher names it."""
    import psutil

    from vicuna_sft.errors import PREEMPTED_EXIT

    out = tmp_path / "run"
    layout = ["fsdp=ddp", "distributed.nproc_per_node=2"]  # two CPU workers, one of them signalled
    args = [*BASE, *layout, "trainer.max_steps=400", "trainer.save_steps=2", f"hydra.run.dir={out}"]
    proc = start(cache_dir, args, tmp_path)
    wait_for(out / "checkpoint-2" / "COMPLETE", proc)
    workers = [p for p in psutil.Process(proc.pid).children() if "vicuna_sft.launch.worker" in p.cmdline()]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGTERM)  # one worker only: the launcher never receives it
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("vicuna_sft: stopped")]
    step = int(line.split("at step ")[1].split(":")[0])
    assert line.startswith(f"vicuna_sft: stopped by SIGTERM at step {step}: "), line
    assert (out / f"checkpoint-{step}" / "COMPLETE").is_file()


def test_a_second_ctrl_c_exits_at_once(tmp_path, cache_dir):
    out = tmp_path / "run"
    proc = start(cache_dir, [*BASE, "trainer.max_steps=400", f"hydra.run.dir={out}"], tmp_path)
    wait_for(out / "checkpoint-2" / "COMPLETE", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "second interrupt: exiting now" in stderr
