"""Checkpoint manifests, the allow-list check of torch distributed checkpoint metadata, and the
run-directory lock (with real processes)."""

import os
import pickle
import signal
import socket
import subprocess
import sys
import time

import pytest

from vicuna_sft.launch.run_lock import LOCK_FILE, RunDirectoryBusy, run_lock
from vicuna_sft.training import manifest
from vicuna_sft.training.checkpoint import COMPLETE, damage, mark_complete


def checkpoint(tmp_path):
    path = tmp_path / "checkpoint-3"
    (path / "shards").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(os.urandom(3000))
    import torch

    torch.save({"state": {0: {"exp_avg": torch.zeros(300)}}, "param_groups": []}, path / "optimizer.pt")
    (path / "trainer_state.json").write_text('{"global_step": 3}')
    (path / "shards" / "__0_0.distcp").write_bytes(os.urandom(100))
    files = manifest.list_files(str(path))
    mark_complete(str(path), 3, manifest.hash_share(str(path), files, 0, 1))
    return path


def test_intact_checkpoint_has_no_damage_and_the_manifest_lists_every_file(tmp_path):
    path = checkpoint(tmp_path)
    assert damage(str(path)) == []
    import json

    files = json.loads((path / COMPLETE).read_text())["manifest"]["files"]
    assert sorted(files) == ["model.safetensors", "optimizer.pt", "shards/__0_0.distcp", "trainer_state.json"]
    assert files["optimizer.pt"]["size"] == (path / "optimizer.pt").stat().st_size > 1200


def test_shares_of_several_ranks_make_the_same_manifest(tmp_path):
    path = str(checkpoint(tmp_path))
    files = manifest.list_files(path, exclude=(COMPLETE,))
    whole = manifest.hash_share(path, files, 0, 1)
    parts = [manifest.hash_share(path, files, r, 3) for r in range(3)]
    assert sorted(k for p in parts for k in p) == sorted(whole)
    assert {k: v for p in parts for k, v in p.items()} == whole


@pytest.mark.parametrize(
    "breaks, expected",
    [
        (lambda p: (p / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (
            lambda p: os.truncate(p / "model.safetensors", 1500),
            "model.safetensors has 1500 bytes, 3000 when written",
        ),
        (lambda p: (p / "trainer_state.json").write_text('{"global_step": 9}'), "trainer_state.json changed"),
        (lambda p: (p / "shards" / "__0_0.distcp").write_bytes(b"\0" * 100), "shards/__0_0.distcp changed"),
        (lambda p: (p / COMPLETE).write_text("{"), f"its {COMPLETE} marker is unreadable"),
    ],
    ids=["deleted", "truncated", "rewritten-same-size", "zeroed", "marker"],
)
def test_each_kind_of_damage_is_named(tmp_path, breaks, expected):
    path = checkpoint(tmp_path)
    breaks(path)
    (found,) = damage(str(path))
    assert found.startswith(expected), found


class _Plant:
    """What a planted `.metadata` could hold: unpickling it runs `touch`."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.open, (self.target, os.O_CREAT | os.O_WRONLY))


def test_dcp_metadata_is_checked_without_running_code(tmp_path):
    import torch
    import torch.distributed.checkpoint as dcp

    real = tmp_path / "real"
    # tensors, and a non-tensor value (stored as pickled bytes), as the Trainer's states hold
    dcp.save(
        {"w": torch.randn(4, 3), "b": torch.zeros(2, dtype=torch.bfloat16), "step": 3},
        checkpoint_id=str(real),
    )
    assert (real / ".metadata").is_file()
    assert manifest.check_dcp_metadata(str(real)) == []

    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "code_ran"
    (planted / ".metadata").write_bytes(pickle.dumps(_Plant(str(marker))))
    (found,) = manifest.check_dcp_metadata(str(planted))
    assert "is not plain checkpoint metadata" in found and "posix.open" in found
    assert not marker.exists()
    pickle.loads((planted / ".metadata").read_bytes())  # what torch's plain pickle.load would do
    assert marker.exists()


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_a_planted_pickle_in_a_torch_file_is_damage_even_with_a_rewritten_manifest(tmp_path, name):
    """Issue 19, item 10: such a file is refused by torch's weights-only load (nothing runs), but
    deep in the Trainer, as a raw UnpicklingError; the check finds it first, so the checkpoint is
    damaged (the run falls back) even when its manifest was rewritten to match."""
    import numpy as np
    import torch

    path = checkpoint(tmp_path)
    rng = {"python": ("state",), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    torch.save(rng, path / "rng_state.pth")  # what the Trainer writes: numpy's state is allowed
    torch.save({"last_epoch": 3}, path / "scheduler.pt")
    torch.save({"lr": 1.0}, path / "training_args.bin")  # never loaded at resume: never checked
    assert manifest.check_torch_files(str(path)) == []
    marker = tmp_path / "code_ran"
    (path / name).write_bytes(pickle.dumps(_Plant(str(marker)), protocol=2))
    files = manifest.list_files(str(path), exclude=(COMPLETE,))
    mark_complete(str(path), 3, manifest.hash_share(str(path), files, 0, 1))  # the manifest agrees
    (found,) = damage(str(path))
    assert found.startswith(f"{name} is not plain checkpoint data (") and "GLOBAL posix.open" in found, found
    assert "\n" not in found and len(found) < 300
    assert not marker.exists()


HOLD = "from vicuna_sft.launch.run_lock import run_lock\nimport sys, time\nwith run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)"


def test_run_lock_names_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryBusy) as e, run_lock(str(tmp_path)):
            pass
        assert str(e.value).startswith(
            f"another run (pid {holder.pid}, host {socket.gethostname()}) is using {tmp_path}"
        )
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel released the lock with the process
        try:
            with run_lock(str(tmp_path)):
                assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
            break
        except RunDirectoryBusy:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_run_lock_file_is_removed_when_the_run_ends_however_it_ends(tmp_path):
    """A finished run leaves no run.lock (with its pid, now dead, it would look like a stale lock);
    an error or a preemption ending the run removes it as well."""
    with run_lock(str(tmp_path)):
        assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()
    with pytest.raises(RuntimeError, match="boom"), run_lock(str(tmp_path)):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_sweep_into_a_directory_in_use_stops_before_hydra_writes_into_it(tmp_path, capsys):
    """Issue 19, item 8, for sweeps: the lock of hydra.sweep.dir is taken in on_multirun_start,
    before Hydra's launcher writes multirun.yaml and the jobs' `.hydra/`; released at the sweep's end."""
    from omegaconf import OmegaConf

    from vicuna_sft.launch.hydra_callbacks import RankAwareHydra

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as e:
            RankAwareHydra().on_multirun_start(config)
        assert e.value.code == 1
        assert capsys.readouterr().err.startswith(f"vicuna_sft: error: another run (pid {holder.pid}, ")
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / LOCK_FILE).unlink()  # left by the killed holder
    callback = RankAwareHydra()
    callback.on_multirun_start(config)
    assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    with run_lock(str(tmp_path)):  # held by this process already: taken again as a no-op
        pass
    assert (tmp_path / LOCK_FILE).is_file()
    callback.on_multirun_end(config)
    assert not (tmp_path / LOCK_FILE).exists()


CONTEND = """
import os, sys, time
from vicuna_sft.launch.run_lock import RunDirectoryBusy, run_lock
run_dir, inside, end = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
held = 0
while time.monotonic() < end:
    try:
        with run_lock(run_dir):
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holder is inside
            os.close(fd)
            time.sleep(0.001)
            os.unlink(inside)
            held += 1
    except RunDirectoryBusy:
        pass
print(held)
"""


def test_run_lock_stays_exclusive_while_holders_remove_the_file(tmp_path):
    """Removing the lock file at the end must not let two runs hold it at once (one that opened the
    old file locks it after its removal while a third locks the new one): several processes take and
    release the lock as fast as they can; a second holder inside would fail its exclusive create."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    inside = tmp_path / "inside"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTEND, str(tmp_path / "run"), str(inside), "4"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert sum(int(out) for out, _ in results) > 20  # they really contended
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_dcp_non_tensor_values_are_loaded_weights_only(tmp_path):
    """torch's default load planner unpickles a checkpoint's non-tensor values with
    weights_only=False; the check loads them with weights_only=True first."""
    import torch
    import torch.distributed.checkpoint as dcp

    path = tmp_path / "ckpt"
    marker = tmp_path / "code_ran"
    dcp.save({"w": torch.randn(2), "step": 3, "evil": _Plant(str(marker))}, checkpoint_id=str(path))
    marker.unlink(missing_ok=True)
    (found,) = manifest.check_dcp_metadata(str(path))
    assert "value 'evil' is not plain data" in found and not marker.exists()
