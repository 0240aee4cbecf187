"""adapter=lora under FSDP2 with real processes (gloo, 2 ranks) against one process.

accelerate 1.15 prepares a PeftModel under FSDP2 like any model (transformers' Trainer only swaps
in PEFT's FSDP1 wrap policy when the optimizer is created late, which FSDP2 never does): each
decoder layer is one `fully_shard` group holding frozen base weights and trainable adapter weights
together. FSDP2 allows that mix: all parameters are sharded, gradients are reduce-scattered only
for those that require them, and the optimizer only ever sees the adapter's shards.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from vicuna_test_callbacks import override

pytestmark = pytest.mark.slow

STEPS, SAVE = 6, 3
COMMON = [
    "adapter=lora",
    "adapter.target_modules=[all-linear]",
    # no adapter dropout: 1 rank and 2 ranks cannot draw the same masks for the same samples
    "adapter.dropout=0",
    f"trainer.max_steps={STEPS}",
    f"trainer.save_steps={SAVE}",
    "trainer.save_total_limit=null",
    "trainer.logging_steps=1",
    "trainer.global_batch_size=4",
    "trainer.use_cpu=true",
    "trainer.resume=never",
    "data.eval_fraction=0",
    "optimizer.lr=1e-2",
]


def losses(run_dir) -> dict[int, float]:
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir):
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("adapter_dist")
    env = {
        **os.environ,
        "VICUNA_SFT_CACHE": str(tiny_dir.parent),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    layouts = {}
    resume_from = root / "fsdp" / f"checkpoint-{SAVE}"
    for name, extra in {
        "single": ["trainer.per_device_train_batch_size=4"],
        "fsdp": ["trainer.per_device_train_batch_size=2", "fsdp=full_shard", "distributed.nproc_per_node=2"],
        # the fsdp run again, from its own mid-run checkpoint (adapter + optimizer shards only)
        "fsdp_resumed": [
            "trainer.per_device_train_batch_size=2",
            "fsdp=full_shard",
            "distributed.nproc_per_node=2",
            f"trainer.resume={resume_from}",
        ],
    }.items():
        layouts[name] = root / f"report_{name}"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "vicuna_sft",
                *COMMON,
                *extra,
                # each rank reports how it holds its parameters (tests/vicuna_test_callbacks.py)
                override("LayoutReport", directory=str(layouts[name])),
                f"hydra.run.dir={root / name}",
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        (root / f"{name}.log").write_text(r.stdout + r.stderr)
    return root, layouts


def test_two_rank_lora_matches_one_rank_per_step(runs):
    # fsdp=full_shard; DDP replicates whatever the model is, LoRA included (the plain DDP tests)
    root, _ = runs
    name = "fsdp"
    single, other = losses(root / "single"), losses(root / name)
    assert sorted(single) == list(range(1, STEPS + 1)) and other.keys() == single.keys()
    worst = max(abs(other[s] - single[s]) for s in single)
    print(f"max per-step |dloss| {name} adapter=lora (2 ranks) vs 1 rank: {worst:.2e}")
    assert worst <= 1e-5, (single, other)
    # the same adapter at the end, and the same merged model
    a, b = (load_file(root / n / "final_adapter" / "adapter_model.safetensors") for n in ("single", name))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    ma, mb = (load_file(root / n / "final" / "model.safetensors") for n in ("single", name))
    assert ma.keys() == mb.keys() and max((ma[k] - mb[k]).abs().max().item() for k in ma) < 1e-5


def test_frozen_base_and_adapter_are_both_sharded_and_only_the_adapter_trains(runs):
    root, layouts = runs
    assert (root / "fsdp.log").read_text().count("FSDP2 enabled on CPU over gloo (2 processes)") == 2
    r0, r1 = (json.loads((layouts["fsdp"] / f"layout_rank{r}.json").read_text()) for r in (0, 1))
    params = r0["params"]
    base = [n for n in params if "lora_" not in n]
    lora = [n for n in params if "lora_" in n]
    assert base and lora
    for name in params:
        assert params[name]["dtensor"] and params[name]["placements"] == ["Shard(dim=0)"], name
        assert params[name]["local_numel"] + r1["params"][name]["local_numel"] == params[name]["numel"], name


def test_fsdp_checkpoint_holds_the_adapter_and_its_optimizer_state_only(runs):
    root, _ = runs
    ckpt = root / "fsdp" / f"checkpoint-{SAVE}"
    assert (ckpt / "COMPLETE").is_file()
    model = torch.load(ckpt / "pytorch_model_fsdp.bin", weights_only=False)  # accelerate's adapter_only save
    assert model and all("lora_" in k for k in model), sorted(model)[:5]
    optim = torch.load(ckpt / "optimizer.bin", weights_only=False)
    n_adapter = sum(t.numel() for t in model.values())
    assert sum(s["exp_avg"].numel() for s in optim["state"].values()) == n_adapter


def test_fsdp_resume_from_an_adapter_checkpoint_ends_where_the_uninterrupted_run_did(runs):
    root, _ = runs
    assert f"resuming from {root / 'fsdp' / f'checkpoint-{SAVE}'}" in (root / "fsdp_resumed.log").read_text()
    resumed, straight = losses(root / "fsdp_resumed"), losses(root / "fsdp")
    # the log history up to the checkpoint comes from it; the steps after it were trained again
    assert resumed.keys() == straight.keys()
    assert max(abs(resumed[s] - straight[s]) for s in resumed) <= 1e-6, (resumed, straight)
    a, b = (
        load_file(root / n / "final_adapter" / "adapter_model.safetensors") for n in ("fsdp", "fsdp_resumed")
    )
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


# ---- adapter=qlora under FSDP2: the 4-bit base sharded -------------------------------------------

QLORA = [c for c in COMMON if c != "adapter=lora"] + ["adapter=qlora"]


@pytest.fixture(scope="module")
def qlora_runs(tmp_path_factory, tiny_dir):
    """adapter=qlora on 1 process and with fsdp=full_shard on 2 (bnb_4bit_quant_storage = the
    compute dtype, so that FSDP2 shards the packed 4-bit weights like any float parameter)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("qlora_dist")
    env = {
        **os.environ,
        "VICUNA_SFT_CACHE": str(tiny_dir.parent),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    for name, extra in {
        "single": ["trainer.per_device_train_batch_size=4"],
        "fsdp": ["trainer.per_device_train_batch_size=2", "fsdp=full_shard", "distributed.nproc_per_node=2"],
    }.items():
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "vicuna_sft",
                *QLORA,
                *extra,
                override("LayoutReport", directory=str(root / f"report_{name}")),
                f"hydra.run.dir={root / name}",
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        (root / f"{name}.log").write_text(r.stdout + r.stderr)
    return root


def test_two_rank_qlora_matches_one_rank_per_step(qlora_runs):
    root = qlora_runs
    single, fsdp = losses(root / "single"), losses(root / "fsdp")
    assert sorted(single) == list(range(1, STEPS + 1)) and fsdp.keys() == single.keys()
    worst = max(abs(fsdp[s] - single[s]) for s in single)
    print(f"max per-step |dloss| fsdp=full_shard adapter=qlora (2 ranks) vs 1 rank: {worst:.2e}")
    assert worst <= 1e-4, (single, fsdp)
    assert single[STEPS] < single[1]
    # the merged final/ (adapter merged into the unquantized base) as on one rank
    ma, mb = (load_file(root / n / "final" / "model.safetensors") for n in ("single", "fsdp"))
    assert ma.keys() == mb.keys() and max((ma[k] - mb[k]).abs().max().item() for k in ma) < 1e-4
    # a mid-run checkpoint holds the adapter alone, marked complete
    ckpt = root / "fsdp" / f"checkpoint-{SAVE}"
    assert (ckpt / "COMPLETE").is_file()
    saved = torch.load(ckpt / "pytorch_model_fsdp.bin", weights_only=False)
    assert saved and all("lora_" in k for k in saved), sorted(saved)[:5]


def test_the_4bit_base_is_sharded_and_stays_4bit(qlora_runs):
    root = qlora_runs
    r0, r1 = (json.loads((root / "report_fsdp" / f"layout_rank{r}.json").read_text()) for r in (0, 1))
    four_bit = {n: p for n, p in r0["params"].items() if p["module"] == "Linear4bit" and "lora_" not in n}
    assert len(four_bit) == 7 * 2  # every decoder linear of the tiny model's 2 layers
    for name, p in four_bit.items():
        # packed: two 4-bit weights per byte, in a float32 storage tensor (quant_storage)
        assert p["dtype"] == "torch.float32" and p["numel"] * 4 * 2 == p["weights"], (name, p)
        assert p["dtensor"] and p["placements"] == ["Shard(dim=0)"], name
        assert p["local_numel"] + r1["params"][name]["local_numel"] == p["numel"], name
        assert p["local_numel"] < p["numel"], name
    assert "Linear4bit" in r0["modules_at_end"]  # still 4-bit after training
