"""The optimizer group: every option maps to transformers' `optim`, an unknown one fails at
composition listing the valid ones, one that cannot run here fails at preflight naming what it
needs; the state size is measured from the optimizer itself."""

from __future__ import annotations

import pytest
import torch
from conftest import conf_dir
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException

from vicuna_sft import config as C
from vicuna_sft.config import register_configs, to_config
from vicuna_sft.plan import make_plan
from vicuna_sft.training import optimizers
from vicuna_sft.training.optimizers import REQUIREMENTS, OptimizerUnavailable

OPTIONS = sorted(p.stem for p in (conf_dir() / "optimizer").glob("*.yaml"))


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        yield lambda *o: compose("config", overrides=[f"trainer.output_dir={out}", *o])


def test_the_group_offers_the_low_memory_optimizers():
    assert {"adamw", "adamw_8bit", "paged_adamw_8bit", "adafactor", "lion_8bit"} <= set(OPTIONS)
    # every choice of the enum has its requirements stated (what preflight checks)
    assert set(REQUIREMENTS) == set(C.Optim)


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_is_its_transformers_optim(make, option):
    from transformers.training_args import OptimizerNames

    cfg = to_config(make(f"optimizer={option}"))
    assert isinstance(cfg.optimizer.name, C.Optim)
    assert OptimizerNames(cfg.optimizer.name.value)  # a name transformers' Trainer builds
    expected = "adamw_torch" if option == "adamw" else option
    assert cfg.optimizer.name.value == expected


def test_an_unknown_optimizer_fails_at_composition_listing_the_valid_ones(make):
    with pytest.raises(MissingConfigException) as e:
        make("optimizer=adamw8bit")
    listed = str(e.value).split("Available options in 'optimizer':", 1)[1].split()
    assert set(OPTIONS) <= set(listed)
    with pytest.raises(ConfigCompositionException) as e:
        make("optimizer.name=adam_8bit")
    message = str(e.value.__cause__ or e.value)
    assert "Invalid value 'adam_8bit'" in message
    assert all(m.value in message for m in C.Optim), message


def test_a_paged_optimizer_is_refused_on_cpu_naming_what_it_needs(make):
    cfg = to_config(make("optimizer=paged_adamw_8bit"))
    with pytest.raises(OptimizerUnavailable) as e:
        optimizers.check(cfg, make_plan(cfg, cuda=False))
    (line,) = str(e.value).splitlines()
    assert line.startswith("optimizer.name=paged_adamw_8bit pages its state between GPU and CPU memory")
    assert "needs a CUDA device" in line and "run here: adafactor, adamw_8bit, adamw_torch," in line
    optimizers.check(cfg, make_plan(cfg, cuda=True))  # allowed on a GPU machine
    optimizers.check(c := to_config(make("optimizer=adamw_8bit")), make_plan(c, cuda=False))  # runs on CPU


def test_a_missing_package_is_named(make, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    with pytest.raises(
        OptimizerUnavailable, match=r"^optimizer.name=adamw_8bit needs the bitsandbytes package: pip install"
    ):
        optimizers.check(c := to_config(make("optimizer=adamw_8bit")), make_plan(c, cuda=False))


def test_state_bytes_counts_each_state_tensor_once():
    import bitsandbytes as bnb

    big, small = torch.nn.Parameter(torch.randn(64, 256)), torch.nn.Parameter(torch.randn(10))
    adam = torch.optim.AdamW([big, small], lr=1e-3)
    eight = bnb.optim.AdamW8bit([torch.nn.Parameter(big.detach().clone())], lr=1e-3)
    for opt in (adam, eight):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        opt.step()
    # AdamW: exp_avg + exp_avg_sq in fp32 per element, plus a 4-byte step per tensor
    assert optimizers.state_bytes(adam) == 8 * (64 * 256 + 10) + 2 * 4
    assert optimizers.trained_elements(adam) == 64 * 256 + 10
    # 8-bit: one byte per element per moment, the 256-entry quantization maps and a scale per block
    n = 64 * 256
    per_param = optimizers.bytes_per_parameter(eight)
    assert 2 <= per_param < 2.2, per_param
    assert optimizers.state_bytes(eight) < 0.3 * optimizers.state_bytes(adam) * n / (n + 10) + 2 * 256 * 4
