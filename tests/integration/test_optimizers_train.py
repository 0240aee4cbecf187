"""Every optimizer that runs on CPU trains the tiny model (40 in-process steps each) and keeps the
state it claims; resume with optimizer state: test_train.py (parametrized over the same choices)."""

from __future__ import annotations

import pytest
from test_adapters_train import build_trainer, compose_config, logged_losses, release

from vicuna_sft.training.optimizers import OptimizerStateLog

pytestmark = pytest.mark.slow

# the group options that run on CPU (paged_*: CUDA only, refused at preflight), each with a
# learning rate for the tiny random model: Lion's sign updates want ~10x less than AdamW
CPU = {"adamw": 3e-3, "adamw_8bit": 3e-3, "adafactor": 3e-3, "lion_8bit": 1e-3}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir):
    out = {}
    for option, lr in CPU.items():
        cfg = compose_config(
            tmp_path_factory.mktemp(option),
            tiny_dir,
            f"optimizer={option}",
            f"optimizer.lr={lr}",
            "trainer.max_steps=40",
        )
        trainer, _ = build_trainer(cfg)
        state_log = OptimizerStateLog(cfg.optimizer.name)
        trainer.add_callback(state_log)
        trainer.train()
        out[option] = (logged_losses(trainer), state_log.bytes_per_parameter)
        release(trainer)
    return out


@pytest.mark.parametrize("option", list(CPU))
def test_loss_decreases_over_40_steps(runs, option):
    losses, _ = runs[option]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # measured: adamw 5.85 -> 3.46, adamw_8bit 5.86 -> 3.46, adafactor 5.89 -> 3.54
    assert last < 0.8 * first, (option, first, last)


def test_state_per_trained_parameter_is_what_each_optimizer_keeps(runs):
    per = {option: bpp for option, (_, bpp) in runs.items()}
    # fp32 exp_avg + exp_avg_sq, plus one 4-byte step per tensor
    assert per["adamw"] == pytest.approx(8.0, abs=0.01), per
    # tiny's tensors are mostly under bitsandbytes' 4096-element 8-bit threshold (and the embedding
    # stays 32-bit): 3.6 here; benchmarks/bench_optimizer_memory.py measures ~2 on model=small
    assert per["adamw_8bit"] < 0.5 * per["adamw"], per
    assert per["lion_8bit"] < per["adamw_8bit"], per  # one moment instead of two
    assert per["adafactor"] < 0.2, per  # factored: a row and a column per matrix


def test_a_released_run_leaves_no_bitsandbytes_override_for_the_next(runs):
    """transformers registers the embeddings of an 8-bit run with bitsandbytes' process-wide
    manager; release (as between the jobs of a sweep) forgets them, or the next run's optimizer
    would keep some tensor's state in 32 bits (seen: 8.0 bytes per parameter instead of 2)."""
    import bitsandbytes as bnb
    import torch

    manager = bnb.optim.GlobalOptimManager.get_instance()
    assert manager.module_weight_config_triple == [] and manager.index2config == {}
    p = torch.nn.Parameter(torch.randn(64, 256))
    opt = bnb.optim.AdamW8bit([p], lr=1e-3)
    p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[p]["state1"].dtype == torch.uint8
