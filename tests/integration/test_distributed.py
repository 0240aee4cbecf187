"""Distributed training with real processes on CPU (gloo): torchrun, self-launch through torch's
elastic launcher, two nodes on localhost, SLURM through submitit's local executor, sweeps, and
crash safety (SIGKILL of the process group, of the launcher alone, and in the middle of a save).

Reference runs (module-scoped, shared by the tests), all with the same global batch of 4:
- `single`: 1 process, 4 per device;
- `ddp`: torchrun, 2 ranks x 2 per device, fsdp=ddp;
- `fsdp`: `python -m vicuna_sft distributed.nproc_per_node=2`, fsdp=full_shard with sharded
  intermediate checkpoints.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from vicuna_test_callbacks import override

pytestmark = pytest.mark.slow

STEPS, SAVE = 8, 2
COMMON = [
    f"trainer.max_steps={STEPS}",
    f"trainer.save_steps={SAVE}",
    "trainer.save_total_limit=null",
    "trainer.logging_steps=1",
    "trainer.global_batch_size=4",
    "data.eval_fraction=0",
    "optimizer.lr=3e-3",
]
TWO = ["trainer.per_device_train_batch_size=2"]


def report_to(directory: str) -> str:
    """Each rank writes how it holds its parameters and its final in-memory loss (LayoutReport)."""
    return override("LayoutReport", directory=directory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Runner:
    def __init__(self, root: pathlib.Path, cache: pathlib.Path):
        self.root = root
        self.env = {
            **os.environ,
            "VICUNA_SFT_CACHE": str(cache),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            # the checkout (hydra_plugins/ for the SLURM launchers) and tests/ (vicuna_test_callbacks)
            "PYTHONPATH": os.pathsep.join(sys.path),
        }
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
            self.env.pop(k, None)

    def start(self, args: list[str], log: str, env: dict | None = None, torchrun: bool = False):
        cmd = [sys.executable, "-m"]
        cmd += ["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"] if torchrun else []
        cmd += ["vicuna_sft", *args]
        out = open(self.root / log, "w")  # noqa: SIM115 (closed by the caller through wait)
        proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env={**self.env, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc.log_path = self.root / log  # type: ignore[attr-defined]
        return proc

    def run(
        self, args: list[str], log: str, env: dict | None = None, torchrun: bool = False, ok: bool = True
    ):
        proc = self.start(args, log, env, torchrun)
        try:
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        text = (self.root / log).read_text()
        if ok:
            assert proc.returncode == 0, text[-4000:]
        return proc.returncode, text


def losses(run_dir: pathlib.Path) -> dict[int, float]:
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def weights(model_dir: pathlib.Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def max_weight_diff(a: pathlib.Path, b: pathlib.Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def complete(run_dir: pathlib.Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*") if (p / "COMPLETE").is_file()
    )


def wait_until(pred, timeout: float, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{proc.log_path.read_text()[-3000:]}")
        time.sleep(0.005)
    raise AssertionError("timed out")


def descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def alive(pids: list[int]) -> list[int]:
    import psutil

    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def runner(tiny_dir, tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("dist"), tiny_dir.parent)


@pytest.fixture(scope="module")
def refs(runner: Runner) -> dict[str, pathlib.Path]:
    r = runner.root
    report = {k: str(r / f"report_{k}") for k in ("single", "ddp", "fsdp")}
    runner.run(
        [
            *COMMON,
            "trainer.per_device_train_batch_size=4",
            f"hydra.run.dir={r}/single",
            report_to(report["single"]),
        ],
        "single.log",
    )
    # torchrun; `${now:}` with microseconds in the run dir: the ranks must still agree on one directory
    runner.run(
        [
            *COMMON,
            *TWO,
            "fsdp=ddp",
            f"hydra.run.dir={r}/ddp_" + "${now:%H-%M-%S-%f}",
            report_to(report["ddp"]),
            f"data.cache_dir={r}/cache_ddp",  # empty: the two ranks meet a miss, only one may encode
        ],
        "ddp.log",
        torchrun=True,
    )
    runner.run(
        [
            *COMMON,
            *TWO,
            *FSDP,
            "distributed.nproc_per_node=2",
            f"hydra.run.dir={r}/fsdp",
            report_to(report["fsdp"]),
        ],
        "fsdp.log",
    )
    (ddp_dir,) = r.glob("ddp_*")
    return {
        "single": r / "single",
        "ddp": ddp_dir,
        "fsdp": r / "fsdp",
        **{f"report_{k}": pathlib.Path(v) for k, v in report.items()},
    }


FSDP = ["fsdp=full_shard", "fsdp.state_dict_type=sharded"]


def layout(refs, name: str, rank: int) -> dict:
    return json.loads((refs[f"report_{name}"] / f"layout_rank{rank}.json").read_text())


def test_full_shard_params_are_dtensors_sharded_on_dim0(runner, refs):
    # accelerate alone would have run DDP on CPU: the adaptation (vicuna_sft/compat/accelerate.py) switched it
    assert (runner.root / "fsdp.log").read_text().count("FSDP2 enabled on CPU over gloo (2 processes)") == 2
    r0, r1 = layout(refs, "fsdp", 0), layout(refs, "fsdp", 1)
    assert r0["params"].keys() == r1["params"].keys() and len(r0["params"]) > 10
    for name, p0 in r0["params"].items():
        p1 = r1["params"][name]
        assert p0["dtensor"] and p1["dtensor"], name
        assert p0["placements"] == p1["placements"] == ["Shard(dim=0)"], name
        assert p0["local_numel"] + p1["local_numel"] == p0["numel"], name
        assert 0.4 * p0["numel"] <= p0["local_numel"] <= 0.6 * p0["numel"], name
    total_local = sum(p["local_numel"] for p in r0["params"].values())
    total = sum(p["numel"] for p in r0["params"].values())
    assert abs(total_local / total - 0.5) < 0.01  # ~1/N of every tensor per rank


def test_two_ranks_encode_the_data_once(refs):
    logs = sorted(refs["ddp"].glob("vicuna_sft*.log"))  # rank 0's and rank 1's own log file
    assert [p.name for p in logs] == ["vicuna_sft.log", "vicuna_sft_rank1.log"]
    text = [p.read_text() for p in logs]
    assert [t.count("data cache miss") for t in text] == [1, 0], text  # rank 0 encoded
    assert "data cache hit" in text[1]  # rank 1 loaded the stored entry
    (entry,) = [p for p in (refs["ddp"].parent / "cache_ddp").iterdir() if not p.name.endswith(".lock")]
    assert (entry / "stats.json").is_file()


def test_ddp_params_are_full_replicas(refs):
    for rank in (0, 1):
        for name, p in layout(refs, "ddp", rank)["params"].items():
            assert not p["dtensor"] and p["local_numel"] == p["numel"], name


def test_per_step_loss_matches_single_rank(refs):
    single = losses(refs["single"])
    assert sorted(single) == list(range(1, STEPS + 1))
    for name in ("ddp", "fsdp"):
        other = losses(refs[name])
        assert other.keys() == single.keys()
        worst = max(abs(other[s] - single[s]) for s in single)
        print(f"max per-step |dloss| {name} (2 ranks) vs single: {worst:.2e}")
        assert worst <= 1e-4, (name, single, other)


def test_final_model_reloads_with_the_in_memory_loss(refs):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vicuna_test_callbacks import LayoutReport

    for name in ("single", "ddp", "fsdp"):
        final = refs[name] / "final"
        model = AutoModelForCausalLM.from_pretrained(final)
        tok = AutoTokenizer.from_pretrained(final)
        batch = tok([LayoutReport.TEXT], return_tensors="pt")
        with torch.no_grad():
            loss = model(**batch, labels=batch["input_ids"], use_cache=False).loss.item()
        in_memory = layout(refs, name, 0)["final_loss_fixed_text"]
        assert abs(loss - in_memory) < 1e-5, (name, loss, in_memory)
    # sharded and replicated training end at the same weights
    assert max_weight_diff(refs["ddp"] / "final", refs["fsdp"] / "final") < 1e-4


def test_checkpoints_are_complete_and_sharded_under_sharded_state_dict(refs):
    for name in ("single", "ddp", "fsdp"):
        assert complete(refs[name]) == list(range(SAVE, STEPS + 1, SAVE)), name
        assert (refs[name] / f"checkpoint-{SAVE}" / "vicuna_sft_run.json").is_file()
    assert (refs["fsdp"] / f"checkpoint-{SAVE}" / "pytorch_model_fsdp_0").is_dir()


def test_one_run_dir_and_one_hydra_dir_per_run(runner, refs):
    # torchrun resolved `${now:...%f}` once: a single ddp_* directory, .hydra/ from rank 0 only
    assert len(list(runner.root.glob("ddp_*"))) == 1
    ddp = refs["ddp"]
    assert (ddp / ".hydra" / "config.yaml").is_file()
    assert (ddp / "vicuna_sft_rank1.log").is_file()
    assert "rank 1/2 config sha256" in (ddp / "vicuna_sft_rank1.log").read_text()
    # self-launch: Hydra ran once (in the launcher); workers wrote no run directory of their own
    assert not (runner.root / "outputs").exists()
    assert (refs["fsdp"] / ".hydra").is_dir()


def test_kill_process_group_at_a_random_step_then_resume(runner, refs):
    run_dir = runner.root / "killed_fsdp"
    args = [*COMMON, *TWO, *FSDP, "distributed.nproc_per_node=2", f"hydra.run.dir={run_dir}"]
    k = random.choice(range(SAVE, STEPS, SAVE))
    proc = runner.start(args, "killed_fsdp.log")
    workers: list[int] = []

    def checkpoint_k() -> bool:
        workers.extend(p for p in descendants(proc.pid) if p not in workers)
        return (run_dir / f"checkpoint-{k}" / "COMPLETE").is_file()

    wait_until(checkpoint_k, 180, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert complete(run_dir) and max(complete(run_dir)) < STEPS, "the kill must cut the run short"
    wait_until(lambda: not alive(workers), 15)
    latest = max(complete(run_dir))
    runner.run(args, "killed_fsdp_resume.log")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from"].endswith(f"checkpoint-{latest}") and result["global_step"] == STEPS
    diff = max_weight_diff(run_dir / "final", refs["fsdp"] / "final")
    print(
        f"kill at checkpoint-{k} (latest complete {latest}), resume: max |dw| vs uninterrupted = {diff:.2e}"
    )
    assert diff <= 1e-6


def test_kill_during_save_then_kill_launcher_alone_then_resume(runner, refs):
    run_dir = runner.root / "crashy_ddp"
    args = [*COMMON, *TWO, "fsdp=ddp", "distributed.nproc_per_node=2", f"hydra.run.dir={run_dir}"]
    # 1. rank 0 SIGKILLed while writing checkpoint-4 (the weights are on disk, the rest is not)
    code, _ = runner.run([*args, override("KillDuringSave", step=4)], "crashy_1.log", ok=False)
    assert code != 0
    half = run_dir / "checkpoint-4"
    assert half.is_dir() and not (half / "COMPLETE").exists()
    print("files of the checkpoint killed mid-write:", sorted(p.name for p in half.iterdir()))
    assert complete(run_dir) == [2]
    # 2. rerun: resumes from checkpoint-2, never the half-written one; SIGKILL the launcher alone
    proc = runner.start(args, "crashy_2.log")
    wait_until(lambda: (half / "COMPLETE").is_file(), 180, proc)
    workers = descendants(proc.pid)
    assert len(workers) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    wait_until(lambda: not alive(workers), 15)  # PR_SET_PDEATHSIG: no orphaned workers
    assert "resuming from " + str(run_dir / "checkpoint-2") in proc.log_path.read_text()
    # 3. rerun to the end: the same weights as the uninterrupted run
    runner.run(args, "crashy_3.log")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["global_step"] == STEPS and int(result["resumed_from"].rsplit("-", 1)[1]) >= 4
    diff = max_weight_diff(run_dir / "final", refs["ddp"] / "final")
    print(f"kill in save + launcher kill, resume: max |dw| vs uninterrupted = {diff:.2e}")
    assert diff <= 1e-6


def test_resume_at_max_steps_trains_no_extra_step_and_config_changes_are_refused(runner, refs):
    single = refs["single"]
    args = [*COMMON, "trainer.per_device_train_batch_size=4", f"hydra.run.dir={single}"]
    before = weights(single / "final")
    code, text = runner.run([*args, "data.max_length=256"], "refused.log", ok=False)
    assert code == 1 and "refusing to resume" in text
    assert "data.max_length: 512 in the checkpoint, 256 now" in text
    runner.run([*args, "data.max_length=256", "trainer.resume_on_config_change=true"], "again.log")
    result = json.loads((single / "result.json").read_text())
    assert result["global_step"] == STEPS and result["resumed_from"].endswith(f"checkpoint-{STEPS}")
    assert not (single / f"checkpoint-{STEPS + 1}").exists()
    after = weights(single / "final")
    assert all((before[k] == after[k]).all() for k in before)


def test_two_nodes_on_localhost(runner, refs):
    run_dir = runner.root / "two_nodes"
    port = free_port()
    nodes = [
        runner.start(
            [
                *COMMON,
                *TWO,
                "fsdp=ddp",
                "distributed.nnodes=2",
                "distributed.nproc_per_node=1",
                f"distributed.node_rank={n}",
                f"distributed.rdzv_endpoint=127.0.0.1:{port}",
                f"hydra.run.dir={run_dir}",
            ],
            f"node{n}.log",
        )
        for n in (0, 1)
    ]
    for p in nodes:
        p.wait(240)
    assert [p.returncode for p in nodes] == [0, 0], [p.log_path.read_text()[-3000:] for p in nodes]
    ref, got = losses(refs["ddp"]), losses(run_dir)
    assert got.keys() == ref.keys() and max(abs(got[s] - ref[s]) for s in ref) <= 1e-6
    assert max_weight_diff(run_dir / "final", refs["ddp"] / "final") <= 1e-6


def test_hybrid_shard_on_two_torchrun_nodes_of_two_ranks(runner, refs):
    """fsdp=hybrid_shard under `torchrun --nnodes=2 --nproc_per_node=2` (two node launchers, c10d
    rendezvous on localhost), no distributed.* overrides: the node count comes from the launcher.
    Each parameter is sharded over the 2 ranks of a node and replicated across the nodes, and the
    run matches the single process (same global batch of 4)."""
    run_dir, report = runner.root / "hybrid_2x2", runner.root / "report_hybrid_2x2"
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2"]
    cmd += [
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=hybrid",
        "-m",
        "vicuna_sft",
    ]
    args = [
        *COMMON,
        "trainer.per_device_train_batch_size=1",
        "fsdp=hybrid_shard",
        f"trainer.save_steps={STEPS}",
    ]
    args.append(report_to(str(report)))
    nodes = []
    for n in (0, 1):
        log = open(runner.root / f"hybrid_2x2_{n}.log", "w")  # noqa: SIM115 (closed with the process)
        nodes.append(
            subprocess.Popen(
                [*cmd, *args, f"hydra.run.dir={run_dir}"],
                cwd=runner.root,
                env=runner.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        for p in nodes:
            p.wait(240)
    finally:
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    logs = [(runner.root / f"hybrid_2x2_{n}.log").read_text() for n in (0, 1)]
    assert [p.returncode for p in nodes] == [0, 0], [text[-3000:] for text in logs]
    assert sum(text.count("FSDP2 enabled on CPU over gloo (4 processes)") for text in logs) == 4
    reports = [json.loads((report / f"layout_rank{r}.json").read_text()) for r in range(4)]
    for name, p in reports[0]["params"].items():
        for r in reports:
            q = r["params"][name]
            # dim 0 of the mesh replicates (across nodes), dim 1 shards (within a node)
            assert q["dtensor"] and q["placements"] == ["Replicate()", "Shard(dim=0)"], name
            assert q["numel"] == p["numel"]
        # the two ranks of a node hold complementary halves; the other node the same split
        local = [r["params"][name]["local_numel"] for r in reports]
        assert local[0] + local[1] == local[2] + local[3] == p["numel"], name
    single, got = losses(refs["single"]), losses(run_dir)
    assert got.keys() == single.keys()
    worst = max(abs(got[s] - single[s]) for s in single)
    print(f"max per-step |dloss| hybrid_shard (2 nodes x 2 ranks) vs single: {worst:.2e}")
    assert worst <= 1e-4, (single, got)
    assert max_weight_diff(run_dir / "final", refs["single"] / "final") < 1e-4


def test_sweep_of_distributed_jobs_has_one_summary(runner):
    sweep = runner.root / "sweep"
    runner.run(
        [
            "-m",
            "distributed.nproc_per_node=2",
            "optimizer.lr=0.001,0.003",
            "trainer.max_steps=3",
            "trainer.save_strategy=no",
            "trainer.logging_steps=1",
            "data.eval_fraction=0",
            f"hydra.sweep.dir={sweep}",
        ],
        "sweep.log",
    )
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["job"] for r in rows] == ["0", "1"] and {r["status"] for r in rows} == {"completed"}
    assert "optimizer.lr=0.001" in rows[0]["overrides"] and "optimizer.lr=0.003" in rows[1]["overrides"]
    assert rows[0]["final_train_loss"] != rows[1]["final_train_loss"]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "result.json").read_text())["global_step"] == 3
        assert (sweep / job / ".hydra").is_dir() and (sweep / job / "worker_config.yaml").is_file()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


def test_slurm_path_with_submitit_local(runner):
    sweep = runner.root / "slurm"
    runner.run(
        [
            "-m",
            "hydra/launcher=slurm_local",
            "hydra.launcher.tasks_per_node=2",
            "fsdp=full_shard",
            "trainer.max_steps=3",
            "trainer.save_strategy=no",
            "trainer.logging_steps=1",
            "data.eval_fraction=0",
            f"hydra.sweep.dir={sweep}",
        ],
        "slurm.log",
        env={"MASTER_PORT": str(free_port())},
    )
    rows = json.loads((sweep / "summary.json").read_text())
    assert len(rows) == 1 and rows[0]["status"] == "completed" and rows[0]["global_step"] == 3
    job = sweep / "0"
    assert (job / ".hydra").is_dir()
    rank1 = (job / "vicuna_sft_rank1.log").read_text()
    assert "rank 1/2 config sha256" in rank1 and "FSDP2 enabled on CPU" in rank1


def test_ranks_with_different_configs_stop_with_a_clear_error(runner):
    code, text = runner.run(
        ["trainer.seed=${oc.env:LOCAL_RANK}", f"hydra.run.dir={runner.root}/mismatch"],
        "mismatch.log",
        torchrun=True,
        ok=False,
    )
    assert code != 0
    assert "the ranks resolved different configs" in text
    assert re.search(r"trainer.seed: rank 0 has '?0'?, rank 1 has '?1'?", text), text[-3000:]


def test_a_failing_worker_gives_a_clear_error(tmp_path, run_module):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]}\n'
    )
    r = run_module(
        "vicuna_sft", "distributed.nproc_per_node=2", "data=sharegpt", f"data.path={bad}",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "unknown role 'robot'" in r.stderr
    assert "vicuna_sft: error: distributed run failed (rank 0 exit code" in r.stderr


def test_hybrid_shard_under_torchrun_on_one_node_is_refused_for_the_right_reason(runner):
    """The node count comes from the launcher's environment (process.layout): 2 ranks on 1 node."""
    run_dir = runner.root / "hybrid"
    code, log = runner.run(
        [*COMMON, *TWO, "fsdp=hybrid_shard", f"hydra.run.dir={run_dir}"],
        "hybrid.log",
        torchrun=True,
        ok=False,
    )
    assert code != 0
    assert "fsdp=hybrid_shard shards within a node" in log and "got world size 2 on 1 node(s)" in log, log[
        -3000:
    ]
    assert not (run_dir / "data_stats.json").exists()  # refused before any data was encoded


def worker_ranks(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the workers of a self-launch (its direct children)."""
    import psutil

    found = {}
    for p in psutil.Process(launcher_pid).children():
        env = p.environ()
        if "vicuna_sft.launch.worker" in p.cmdline() and "RANK" in env:
            found[int(env["RANK"])] = p.pid
    return found


def stop_line(text: str) -> tuple[int, str]:
    """The launcher's one-line message: (step, line)."""
    (line,) = [x for x in text.splitlines() if x.startswith("vicuna_sft: stopped")]
    return int(re.search(r"at step (\d+):", line).group(1)), line


def test_sigterm_on_one_rank_stops_every_rank_then_resume_is_bit_identical(runner, refs):
    """SLURM signals every task; here only rank 1 gets SIGTERM: the ranks still agree to stop
    after the same step, with one complete checkpoint, and exit 75 (a requeue script's cue)."""
    from vicuna_sft.errors import PREEMPTED_EXIT

    run_dir = runner.root / "sigterm_ddp"
    args = [*COMMON, *TWO, "fsdp=ddp", "distributed.nproc_per_node=2", f"hydra.run.dir={run_dir}"]
    proc = runner.start(args, "sigterm_1.log")
    wait_until(lambda: (run_dir / f"checkpoint-{SAVE}" / "COMPLETE").is_file(), 180, proc)
    os.kill(worker_ranks(proc.pid)[1], signal.SIGTERM)
    proc.wait(120)
    text = proc.log_path.read_text()
    assert proc.returncode == PREEMPTED_EXIT, text[-4000:]
    assert "Traceback" not in text
    received = int(re.search(r"SIGTERM received during step (\d+)", text).group(1))
    step, line = stop_line(text)
    print(f"SIGTERM during step {received}: stopped at step {step}")
    assert received <= step <= received + 1 < STEPS  # within one step
    assert complete(run_dir)[-1] == step and f"checkpoint-{step} is complete" in line
    assert not (run_dir / "final").exists()

    runner.run(args, "sigterm_2.log")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from"] == str(run_dir / f"checkpoint-{step}") and result["global_step"] == STEPS
    assert max_weight_diff(run_dir / "final", refs["ddp"] / "final") == 0.0


def test_sigterm_to_the_launcher_reaches_the_workers(runner):
    """Kubernetes signals the container's first process only: the launcher passes it on."""
    run_dir = runner.root / "sigterm_launcher"
    args = [*COMMON, *TWO, "fsdp=ddp", "distributed.nproc_per_node=2", f"hydra.run.dir={run_dir}"]
    proc = runner.start(args, "sigterm_launcher.log")
    wait_until(lambda: (run_dir / f"checkpoint-{SAVE}" / "COMPLETE").is_file(), 180, proc)
    workers = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
    text = proc.log_path.read_text()
    assert proc.returncode == 75, text[-4000:]
    step, line = stop_line(text)
    assert line.startswith("vicuna_sft: stopped by SIGTERM") and complete(run_dir)[-1] == step > SAVE
    wait_until(lambda: not alive(workers), 15)
