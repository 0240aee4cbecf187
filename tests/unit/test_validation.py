"""Numeric config values outside their valid range fail validation with one line naming the key
and the range (issue 19): inf, nan and absurd values among them, which used to train on nan weights."""

import math

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from vicuna_sft.config import register_configs, to_config
from vicuna_sft.validation import ConfigError, validate


def compose_cfg(*overrides):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        return to_config(compose("config", overrides=["trainer.output_dir=/tmp/x", *overrides]))


LR = "optimizer.lr must be > 0 and <= 1, got"
BAD = [
    ("optimizer.lr=inf", f"{LR} inf"),
    ("optimizer.lr=1e30", f"{LR} 1e+30"),
    ("optimizer.lr=nan", f"{LR} nan"),
    ("optimizer.lr=0", f"{LR} 0.0"),
    ("optimizer.lr=1.5", f"{LR} 1.5"),
    ("optimizer.weight_decay=inf", "optimizer.weight_decay must be >= 0 and <= 1, got inf"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay must be >= 0 and <= 1, got -0.1"),
    ("optimizer.warmup_ratio=nan", "optimizer.warmup_ratio must be in [0, 1), got nan"),
    (
        "optimizer.max_grad_norm=inf",
        "optimizer.max_grad_norm must be >= 0 and finite (0: no clipping), got inf",
    ),
    (
        "optimizer.max_grad_norm=nan",
        "optimizer.max_grad_norm must be >= 0 and finite (0: no clipping), got nan",
    ),
    ("optimizer.adam_beta1=1", "optimizer.adam_beta1 must be in [0, 1), got 1.0"),
    ("optimizer.adam_beta2=nan", "optimizer.adam_beta2 must be in [0, 1), got nan"),
    ("optimizer.eps=0", "optimizer.eps must be > 0 and < 1, got 0.0"),
    ("optimizer.eps=inf", "optimizer.eps must be > 0 and < 1, got inf"),
    ("trainer.num_train_epochs=inf", "trainer.num_train_epochs must be >= 0 and finite, got inf"),
    ("distributed.monitor_interval=0", "distributed.monitor_interval must be > 0 and finite, got 0.0"),
    ("distributed.max_restarts=-1", "distributed.max_restarts must be >= 0, got -1"),
    (
        "trainer.save_total_limit=-1",
        "trainer.save_total_limit must be >= 1, or null to keep every checkpoint, got -1",
    ),
    (
        "trainer.save_total_limit=0",
        "trainer.save_total_limit must be >= 1, or null to keep every checkpoint, got 0",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD, ids=[o for o, _ in BAD])
def test_out_of_range_values_fail_with_one_line_naming_key_and_range(override, message):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(override))
    assert str(e.value) == f"invalid config:\n  {message}"


@pytest.mark.parametrize(
    "overrides",
    [
        ("optimizer.lr=1",),  # the bounds are inclusive where they say so
        ("optimizer.weight_decay=1", "optimizer.max_grad_norm=0", "optimizer.adam_beta1=0"),
        ("trainer.save_total_limit=1",),
        ("trainer.save_total_limit=null",),
    ],
)
def test_edge_values_pass(overrides):
    cfg = compose_cfg(*overrides)
    validate(cfg)
    assert math.isfinite(cfg.optimizer.lr)
