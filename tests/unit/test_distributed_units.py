"""Fast checks of the distributed pieces that need no second process: the FSDP group's mapping
to FSDP2 arguments and its refusals, the CPU FSDP adaptation's version guard, the resume
fingerprint, and rank/launch bookkeeping. Multi-process behaviour: tests/integration/test_distributed.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from vicuna_sft.compat import accelerate as fsdp_cpu
from vicuna_sft.config import FsdpStrategy, register_configs, to_config
from vicuna_sft.errors import UserError
from vicuna_sft.launch import agreement, entry
from vicuna_sft.training import checkpoint
from vicuna_sft.training.arguments import fsdp_arguments
from vicuna_sft.validation import ConfigError

WRAP = ["LlamaDecoderLayer"]


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        yield lambda *o: to_config(compose("config", overrides=[f"trainer.output_dir={out}", *o]))
    GlobalHydra.instance().clear()


def test_every_strategy_has_its_option_file(make):
    for s in FsdpStrategy:
        assert make(f"fsdp={s.value}").fsdp.strategy == s


@pytest.mark.parametrize("strategy", ["none", "ddp"])
def test_none_and_ddp_need_no_fsdp_arguments(make, strategy):
    assert fsdp_arguments(make(f"fsdp={strategy}"), WRAP, world_size=8) == {}


def test_full_shard_and_shard_grad_op_differ_in_resharding_only(make):
    full = fsdp_arguments(make("fsdp=full_shard"), WRAP, world_size=2)
    grad_op = fsdp_arguments(make("fsdp=shard_grad_op"), WRAP, world_size=2)
    assert full["fsdp"] is True and full["fsdp_config"]["version"] == 2
    assert full["fsdp_config"]["reshard_after_forward"] is True
    assert grad_op["fsdp_config"]["reshard_after_forward"] is False
    assert {k: v for k, v in full["fsdp_config"].items() if k != "reshard_after_forward"} == {
        k: v for k, v in grad_op["fsdp_config"].items() if k != "reshard_after_forward"
    }
    assert full["fsdp_config"]["transformer_layer_cls_to_wrap"] == WRAP


def test_activation_checkpointing_field(make):
    assert fsdp_arguments(make("fsdp=full_shard"), WRAP)["fsdp_config"]["activation_checkpointing"] is False
    on = make("fsdp=full_shard", "fsdp.activation_checkpointing=true")
    assert fsdp_arguments(on, WRAP)["fsdp_config"]["activation_checkpointing"] is True
    via_model = make("fsdp=full_shard", "model.activation_checkpointing=true")
    assert fsdp_arguments(via_model, WRAP)["fsdp_config"]["activation_checkpointing"] is True
    off = make(
        "fsdp=full_shard", "model.activation_checkpointing=true", "fsdp.activation_checkpointing=false"
    )
    assert fsdp_arguments(off, WRAP)["fsdp_config"]["activation_checkpointing"] is False


def test_hybrid_shard_needs_nodes_with_several_ranks(make):
    cfg = make("fsdp=hybrid_shard")
    args = fsdp_arguments(cfg, WRAP, world_size=16, nnodes=2)
    assert args["parallelism_config"] == {"dp_replicate_size": 2, "dp_shard_size": 8}
    for world, nodes in [(8, 1), (2, 2), (6, 4)]:
        with pytest.raises(ConfigError, match=r"fsdp=hybrid_shard .* needs >= 2 nodes"):
            fsdp_arguments(cfg, WRAP, world_size=world, nnodes=nodes)


def test_offload_is_gpu_only(make):
    cfg = make("fsdp=full_shard_offload")
    assert fsdp_arguments(cfg, WRAP, cuda_available=True)["fsdp_config"]["cpu_offload"] is True
    with pytest.raises(ConfigError, match=r"fsdp=full_shard_offload .* needs CUDA"):
        fsdp_arguments(cfg, WRAP, cuda_available=False)


def test_cpu_fsdp_adaptation_refuses_untested_accelerate():
    fsdp_cpu.check_version("1.15.0")
    fsdp_cpu.check_version("1.16.0")  # its 2-rank FSDP2 tests pass (the lock's release)
    for version in ("1.14.0", "1.17.0", "2.0.0"):
        with pytest.raises(fsdp_cpu.UnsupportedAccelerate, match="Refusing rather than silently"):
            fsdp_cpu.check_version(version)


def test_fingerprint_names_what_changed(make, tmp_path):
    base = make()
    fp = checkpoint.run_fingerprint(base, world_size=1)
    assert fp["global_batch_size"] == base.trainer.per_device_train_batch_size
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    checkpoint.write_fingerprint(str(ckpt), fp)
    checkpoint.check_compatible(str(ckpt), fp, allow_change=False)  # same config: fine
    # the same global batch from another layout is the same math
    same = make("trainer.global_batch_size=8", "trainer.per_device_train_batch_size=2")
    other = make("trainer.global_batch_size=8", "trainer.per_device_train_batch_size=4")
    assert checkpoint.run_fingerprint(same, 4) == checkpoint.run_fingerprint(other, 2)
    changed = checkpoint.run_fingerprint(
        make("data.max_length=128", "trainer.per_device_train_batch_size=4"), 1
    )
    with pytest.raises(UserError) as e:
        checkpoint.check_compatible(str(ckpt), changed, allow_change=False)
    assert "data.max_length: 512 in the checkpoint, 128 now" in str(e.value)
    assert "global_batch_size: 2 in the checkpoint, 4 now" in str(e.value)
    assert "resume_on_config_change=true" in str(e.value)
    checkpoint.check_compatible(str(ckpt), changed, allow_change=True)  # told to: warns only


def test_resume_across_safe_changes_only(make, tmp_path, caplog):
    """A longer (or shorter) run and safe trainer.args resume; anything else is refused with a
    suggestion that is itself safe first (issue 21, item 4)."""
    ckpt = tmp_path / "run" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    checkpoint.write_fingerprint(str(ckpt), checkpoint.run_fingerprint(make("trainer.max_steps=4"), 1))
    longer = make("trainer.max_steps=6", "trainer.num_train_epochs=5", "trainer.args.eval_on_start=true")
    with caplog.at_level(logging.INFO):
        checkpoint.check_compatible(str(ckpt), checkpoint.run_fingerprint(longer, 1), allow_change=False)
    assert "trainer.max_steps: 4 in the checkpoint, 6 now" in caplog.text
    assert "trainer.args.eval_on_start: None in the checkpoint, True now" in caplog.text
    for override in ("optimizer.lr=1e-3", "trainer.args.neftune_noise_alpha=5"):
        with pytest.raises(UserError) as e:
            checkpoint.check_compatible(
                str(ckpt), checkpoint.run_fingerprint(make("trainer.max_steps=6", override), 1), False
            )
        text = str(e.value)
        assert "trainer.max_steps" not in text  # only what blocks the resume is listed
        suggestions = text.splitlines()[-1]
        assert (
            suggestions.index(f"hydra.run.dir={tmp_path / 'run'}-2")
            < suggestions.index("trainer.resume=never")
            < suggestions.index("trainer.resume_on_config_change=true")
        )


def _checkpoint(root, step, complete=True):
    d = root / f"checkpoint-{step}"
    d.mkdir()
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        checkpoint.mark_complete(str(d), step)
    return d


def test_resume_ignores_incomplete_checkpoints_and_sets_them_aside(tmp_path):
    for step in (2, 4):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 6, complete=False)  # killed mid-write
    assert checkpoint.resolve_resume("auto", str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-6").exists()
    [aside] = (tmp_path / "set_aside").iterdir()  # moved, not deleted
    assert aside.name.startswith("checkpoint-6.") and (aside / "trainer_state.json").is_file()
    with pytest.raises(UserError, match="not a complete checkpoint"):
        (tmp_path / "checkpoint-8").mkdir()
        checkpoint.resolve_resume(str(tmp_path / "checkpoint-8"), str(tmp_path))


def test_starting_over_sets_aside_an_earlier_runs_checkpoints(tmp_path):
    for step in (2, 4):
        _checkpoint(tmp_path, step)
    assert checkpoint.resolve_resume("never", str(tmp_path)) is None
    assert checkpoint.checkpoints(str(tmp_path)) == []  # a later resume=auto cannot pick them up
    assert len(list((tmp_path / "set_aside").iterdir())) == 2
    for step in (2, 4, 6):
        _checkpoint(tmp_path, step)
    assert checkpoint.resolve_resume(str(tmp_path / "checkpoint-2"), str(tmp_path)) == str(
        tmp_path / "checkpoint-2"
    )
    assert [s for s, _ in checkpoint.checkpoints(str(tmp_path))] == [2]  # 4 and 6 were another timeline


def test_set_aside_keeps_the_newest_few_and_says_so(tmp_path, monkeypatch, caplog):
    clock = iter(f"20261130-0900{s:02d}" for s in range(60))
    monkeypatch.setattr(checkpoint.time, "strftime", lambda fmt: next(clock))
    (tmp_path / "set_aside").mkdir()
    (tmp_path / "set_aside" / "notes.txt").write_text("mine")  # not a set-aside checkpoint: kept
    for step in (2, 4):
        _checkpoint(tmp_path, step)
    checkpoint.resolve_resume("never", str(tmp_path))  # sets aside 2 and 4 (at :00 and :01)
    for _ in range(3):  # three more runs started over, each setting aside its checkpoint-6
        _checkpoint(tmp_path, 6)
        with caplog.at_level(logging.WARNING, logger="vicuna_sft.checkpoint"):
            checkpoint.resolve_resume("never", str(tmp_path))
    names = sorted(p.name for p in (tmp_path / "set_aside").iterdir())
    keep = checkpoint.KEEP_SET_ASIDE
    assert keep == 3 and names == [
        "checkpoint-6.20261130-090002",
        "checkpoint-6.20261130-090003",
        "checkpoint-6.20261130-090004",
        "notes.txt",
    ]
    deleted = [r.getMessage() for r in caplog.records if "newest set-aside" in r.getMessage()]
    assert len(deleted) == 2
    assert deleted[0].endswith(
        "keeps the 3 newest set-aside checkpoints: deleting checkpoint-2.20261130-090000"
    )
    assert deleted[1].endswith("deleting checkpoint-4.20261130-090001")


def test_rotation_keeps_the_newest_complete_checkpoints_only(tmp_path):
    for step in (2, 4, 6):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 8, complete=False)  # being written: never counted, never deleted here
    checkpoint.rotate(str(tmp_path), keep=1)
    assert [s for s, _ in checkpoint.checkpoints(str(tmp_path))] == [6, 8]
    checkpoint.rotate(str(tmp_path), keep=None)
    assert [s for s, _ in checkpoint.checkpoints(str(tmp_path))] == [6, 8]


def test_rotation_keeps_the_best_checkpoint(tmp_path):
    """trainer.args.load_best_model_at_end loads state.best_model_checkpoint at the end (issue 21)."""
    for step in (2, 4, 6):
        _checkpoint(tmp_path, step)
    checkpoint.rotate(str(tmp_path), keep=1, protect=str(tmp_path / "checkpoint-2"))
    assert [s for s, _ in checkpoint.checkpoints(str(tmp_path))] == [2, 6]


def test_alone_means_no_store_and_no_checks(make, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert agreement.exchange("x", "v") == ["v"]
    assert agreement.launcher_store() is None


def test_layout_must_match_the_external_launcher(make, monkeypatch):
    cfg = make("distributed.nproc_per_node=4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(entry.LaunchError, match=r"nproc_per_node=4 .* started 2 per node"):
        entry.check_layout(cfg)
    entry.check_layout(make())  # no distributed.* override: the launcher decides


def test_multi_node_self_launch_needs_an_endpoint(make):

    cfg = make("distributed.nnodes=2")
    with pytest.raises(entry.LaunchError, match="rdzv_endpoint"):
        entry.launch(cfg)


def test_distributed_module_imports_no_torch():
    code = "import sys, vicuna_sft.launch.entry, vicuna_sft.launch.slurm; assert 'torch' not in sys.modules"
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )


def fake_trainer(device: str = "cpu", processes: int = 2, fsdp: bool = True, distributed_type=None):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    state = SimpleNamespace(
        device=SimpleNamespace(type=device),
        num_processes=processes,
        distributed_type=distributed_type or DistributedType.MULTI_CPU,
    )
    return SimpleNamespace(
        accelerator=SimpleNamespace(state=state), args=SimpleNamespace(fsdp_plugin_args={} if fsdp else None)
    )


def test_cpu_fsdp_adaptation_applies_only_where_accelerate_would_downgrade():
    from accelerate.utils import DistributedType

    assert fsdp_cpu.needed(fake_trainer())  # CPU, 2 ranks, FSDP asked, accelerate chose DDP
    assert not fsdp_cpu.needed(fake_trainer(device="cuda", distributed_type=DistributedType.FSDP))
    assert not fsdp_cpu.needed(fake_trainer(device="cuda", distributed_type=DistributedType.MULTI_GPU))
    assert fsdp_cpu.needed(fake_trainer(processes=1))  # one self-launched worker shards too (world of 1)
    assert not fsdp_cpu.needed(fake_trainer(fsdp=False))
    assert not fsdp_cpu.needed(fake_trainer(distributed_type=DistributedType.FSDP))  # a future accelerate


def test_fsdp_needs_a_process_group_even_on_one_process(make):
    from vicuna_sft.launch.entry import needs_process_group

    assert not needs_process_group(make())
    assert not needs_process_group(make("fsdp=ddp"))
    assert needs_process_group(make("fsdp=full_shard"))
    assert needs_process_group(make("distributed.nproc_per_node=2"))


def test_one_layout_helper_for_world_size_and_nodes(make, monkeypatch):
    from vicuna_sft.process import layout

    for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert layout(make("distributed.nproc_per_node=4", "distributed.nnodes=2")) == (8, 2)  # planned
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    # in a worker the launcher decided, whatever the config says
    assert layout(make()) == (4, 2) == layout(make("distributed.nnodes=3"))
