"""The run plan (vicuna_sft/plan.py): device, layout, accumulation and dtypes decided once, from the
config and whether CUDA is visible; the TrainingArguments and the model build take theirs from it."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from vicuna_sft.config import Dtype, register_configs, to_config
from vicuna_sft.plan import Device, make_plan
from vicuna_sft.training.arguments import to_training_arguments


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        yield lambda *o: to_config(compose("config", overrides=[f"trainer.output_dir={out}", *o]))


@pytest.mark.parametrize(
    ("use_cpu", "cuda", "device"),
    [
        ("null", False, Device.cpu),
        ("null", True, Device.cuda),
        ("true", True, Device.cpu),
        ("false", True, Device.cuda),
        # the Trainer computes on the CPU when no CUDA device is visible, whatever use_cpu says;
        # the check's own rule once chose CUDA here
        ("false", False, Device.cpu),
    ],
)
def test_device(make, use_cpu, cuda, device):
    assert make_plan(make(f"trainer.use_cpu={use_cpu}"), cuda=cuda).device == device


@pytest.mark.parametrize(
    ("overrides", "autocast", "compute", "save"),
    [
        ([], None, Dtype.float32, Dtype.float32),
        (["trainer.precision=bf16"], Dtype.bfloat16, Dtype.bfloat16, Dtype.bfloat16),
        (["trainer.precision=fp16"], Dtype.float16, Dtype.float16, Dtype.float16),
        (["model.dtype=bfloat16"], None, Dtype.bfloat16, Dtype.bfloat16),
        (
            ["trainer.precision=bf16", "model.save_dtype=float32"],
            Dtype.bfloat16,
            Dtype.bfloat16,
            Dtype.float32,
        ),
    ],
)
def test_dtypes(make, overrides, autocast, compute, save):
    plan = make_plan(make(*overrides), cuda=False)
    assert (plan.autocast, plan.compute_dtype, plan.save_dtype) == (autocast, compute, save)
    assert plan.weight_dtype == make(*overrides).model.dtype


def test_tf32_only_where_cuda_computes(make):
    cfg = make("trainer.tf32=true")
    assert make_plan(cfg, cuda=True).compute_precision == "tf32"
    assert make_plan(cfg, cuda=False).compute_precision == "float32" and not make_plan(cfg, cuda=False).tf32
    assert (
        make_plan(make("trainer.tf32=true", "trainer.precision=bf16"), cuda=True).compute_precision
        == "bfloat16"
    )


def test_layout_and_accumulation(make):
    cfg = make(
        "distributed.nproc_per_node=2",
        "distributed.nnodes=2",
        "trainer.global_batch_size=32",
        "trainer.per_device_train_batch_size=2",
    )
    plan = make_plan(cfg, cuda=False)
    assert (plan.world_size, plan.nnodes, plan.gradient_accumulation) == (4, 2, 4)


def test_the_training_arguments_follow_the_plan(make, monkeypatch):
    import sys

    import transformers

    class Recorder:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    # resolving the lazy attribute can replace sys.modules["transformers"] (as in test_config.py):
    # patch the module that `from transformers import ...` will see
    transformers.TrainingArguments  # noqa: B018
    monkeypatch.setattr(sys.modules["transformers"], "TrainingArguments", Recorder)
    cfg = make("trainer.use_cpu=false", "trainer.precision=bf16", "trainer.global_batch_size=8")
    kwargs = to_training_arguments(cfg, plan=make_plan(cfg, cuda=False)).kwargs
    assert (kwargs["use_cpu"], kwargs["bf16"], kwargs["fp16"], kwargs["gradient_accumulation_steps"]) == (
        True,
        True,
        False,
        4,
    )
    kwargs = to_training_arguments(cfg, plan=make_plan(cfg, cuda=True)).kwargs
    assert kwargs["use_cpu"] is False
