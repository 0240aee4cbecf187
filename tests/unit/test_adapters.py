"""adapter group: schema and options, the trainable-parameter line, and every refusal before weights load."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from vicuna_sft import config as C
from vicuna_sft.config import register_configs, to_config
from vicuna_sft.model import adapters
from vicuna_sft.plan import make_plan
from vicuna_sft.validation import ConfigError, validate


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        yield lambda *o: to_config(compose("config", overrides=[f"trainer.output_dir={out}", *o]))


def check_on(cfg: C.Config, cuda: bool) -> None:
    """The adapter's machine checks on a machine with (or without) a visible CUDA device."""
    adapters.check(cfg, make_plan(cfg, cuda=cuda))


def test_adapter_options_are_the_enum_and_lora_is_fastchat(make):
    from importlib import resources

    files = {
        f.name[:-5]
        for f in (resources.files("vicuna_sft.conf") / "adapter").iterdir()
        if f.name.endswith(".yaml")
    }
    assert files == {k.value for k in C.AdapterKind}
    assert make().adapter.kind == C.AdapterKind.none  # full fine-tuning by default
    a = make("adapter=lora").adapter
    assert (a.kind, a.r, a.alpha, a.dropout, a.target_modules, a.bias) == (
        C.AdapterKind.lora,
        8,
        16,
        0.05,
        ["q_proj", "v_proj"],
        C.LoraBias.none,
    )
    q = make("adapter=qlora").adapter
    assert (q.kind, q.quant_type, q.double_quant) == (C.AdapterKind.qlora, C.QuantType.nf4, True)
    assert q.target_modules == ["all-linear"]  # the QLoRA recipe adapts every linear layer
    assert (a.use_dora, a.use_rslora, a.init, a.lr_ratio) == (False, False, C.LoraInit.default, None)
    recipe = make("experiment=vicuna_7b_lora", "data.path=sharegpt.json")
    assert recipe.adapter.kind == C.AdapterKind.lora and recipe.model.name_or_path == "lmsys/vicuna-7b-v1.5"
    with pytest.raises(Exception, match="kind"):
        make("adapter.kind=dora")


@pytest.mark.slow  # a 7B skeleton: seconds even on the meta device
def test_the_trainable_line_for_vicuna_7b_lora(make, caplog):
    """FastChat's LoRA on a Llama-7B skeleton (meta device, no memory): 4.2M of 6.7B parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    with caplog.at_level(logging.INFO, logger="vicuna_sft.model.adapters"):
        adapted = adapters.apply(model, make("adapter=lora"))
    assert "trainable 4.2M of 6.7B parameters (0.06 %)" in caplog.text
    assert adapted.get_nb_trainable_parameters() == (4_194_304, 6_742_609_920)
    assert adapters.describe(160_128, 160_128) == "trainable 160.1K of 160.1K parameters (100.00 %)"


def test_bad_values_are_refused_together(make):
    cfg = make(
        "adapter=lora", "adapter.r=0", "adapter.dropout=1.5", "adapter.target_modules=[all-linear,q_proj]"
    )
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert "adapter.r must be >= 1" in msg and "adapter.dropout" in msg and "all-linear stands alone" in msg


def test_lora_variants_map_to_peft_and_their_misuses_are_refused(make):
    a = make("adapter=lora", "adapter.use_dora=true", "adapter.use_rslora=true", "adapter.init=pissa").adapter
    peft = adapters.lora_config(a)
    assert (peft.use_dora, peft.use_rslora, peft.init_lora_weights) == (True, True, "pissa")
    assert adapters.lora_config(make("adapter=lora").adapter).init_lora_weights is True  # PEFT's default
    with pytest.raises(Exception) as e:
        make("adapter=lora", "adapter.init=pisa")
    listed = str(e.value.__cause__)
    assert "Invalid value 'pisa'" in listed and all(m.value in listed for m in C.LoraInit), listed
    with pytest.raises(ConfigError) as e:
        validate(make("adapter.lr_ratio=16"))  # adapter=none: nothing has B matrices
    assert "adapter.lr_ratio (LoRA+) sets the lr of LoRA's B matrices: it needs adapter=lora or qlora" in str(
        e.value
    )
    with pytest.raises(ConfigError, match=r"adapter\.lr_ratio must be > 0"):
        validate(make("adapter=lora", "adapter.lr_ratio=0"))
    with pytest.raises(ConfigError, match=r"adapter\.init=olora replaces the base weights by their residual"):
        validate(make("adapter=qlora", "adapter.init=olora"))
    validate(make("adapter=qlora", "adapter.init=gaussian", "adapter.use_dora=true", "adapter.lr_ratio=16"))


def test_qlora_without_bitsandbytes_names_the_extra(make, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(adapters.AdapterError, match=r"pip install 'vicuna_sft\[qlora\]'"):
        check_on(make("adapter=qlora"), cuda=False)
    check_on(make("adapter=lora"), cuda=False)  # lora needs no bitsandbytes


def test_qlora_on_a_device_bitsandbytes_cannot_quantize_on(make, monkeypatch):
    old_bnb = types.SimpleNamespace(__version__="0.45.0")  # before CPU support: CUDA only
    monkeypatch.setitem(sys.modules, "bitsandbytes", old_bnb)
    with pytest.raises(adapters.AdapterError, match=r"cannot quantize on cpu \(it supports \['cuda'\]\)"):
        check_on(make("adapter=qlora"), cuda=False)
    check_on(make("adapter=qlora"), cuda=True)
    # a CUDA machine told to train on CPU counts as CPU
    with pytest.raises(adapters.AdapterError, match="cannot quantize on cpu"):
        check_on(make("adapter=qlora", "trainer.use_cpu=true"), cuda=True)


@pytest.mark.parametrize("strategy", ["hybrid_shard", "full_shard_offload"])
def test_qlora_with_an_untested_sharding_strategy_is_refused(make, strategy):
    extra = ["distributed.nnodes=2", "distributed.nproc_per_node=2"] if strategy == "hybrid_shard" else []
    with pytest.raises(ConfigError, match=f"adapter=qlora with fsdp={strategy} is not supported"):
        validate(make("adapter=qlora", f"fsdp={strategy}", *extra))
    validate(make("adapter=lora", f"fsdp={strategy}", *extra))


@pytest.mark.parametrize("strategy", ["full_shard", "shard_grad_op", "ddp"])
def test_qlora_shards_with_full_shard_and_shard_grad_op_in_a_float_storage(make, strategy):
    """FSDP-QLoRA: the packed 4-bit weights are stored in the compute dtype, a float tensor FSDP2
    shards like any parameter (accelerate leaves uint8 ones unsharded)."""
    import torch

    validate(make("adapter=qlora", f"fsdp={strategy}"))
    q = adapters.load_kwargs(
        c := make("adapter=qlora", f"fsdp={strategy}", "trainer.use_cpu=true"), make_plan(c)
    )
    assert q["quantization_config"].bnb_4bit_quant_storage == torch.float32
    bf16 = adapters.load_kwargs(
        c := make("adapter=qlora", "trainer.use_cpu=true", "trainer.precision=bf16"), make_plan(c)
    )
    assert bf16["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16


def test_unknown_target_modules_fail_before_any_weight_loads(make, tiny_dir, monkeypatch):
    import transformers

    from vicuna_sft.model.loading import load_model

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    cfg = make(f"model.name_or_path={tiny_dir}", "adapter=lora", "adapter.target_modules=[q_proj,qkv_proj]")
    with pytest.raises(adapters.AdapterError) as e:
        load_model(cfg)
    assert str(e.value) == (
        "adapter.target_modules ['qkv_proj'] match no layer of LlamaForCausalLM; its linear layers are "
        "['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj'] "
        "(or use adapter.target_modules=[all-linear])"
    )
    cfg = make(f"model.name_or_path={tiny_dir}", "adapter=lora", "adapter.modules_to_save=[head]")
    with pytest.raises(adapters.AdapterError, match=r"adapter.modules_to_save \['head'\] match no layer"):
        load_model(cfg)


def test_a_changed_adapter_is_part_of_the_resume_fingerprint(make):
    from vicuna_sft.training.checkpoint import run_fingerprint

    a, b = (run_fingerprint(make("adapter=lora", f"adapter.r={r}"), 1) for r in (8, 16))
    assert a["adapter.r"] == 8 and b["adapter.r"] == 16 and a["adapter.kind"] == "lora"
    assert a["adapter.target_modules"] == ["q_proj", "v_proj"]


@pytest.mark.slow  # a CLI process
def test_cli_target_error_is_one_line_without_traceback(tmp_path, cache_dir):
    env = {**os.environ, "VICUNA_SFT_CACHE": cache_dir, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vicuna_sft",
            "adapter=lora",
            "adapter.target_modules=[wq]",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "vicuna_sft: error: adapter.target_modules ['wq'] match no layer of LlamaForCausalLM" in r.stderr
    assert "encoding" not in r.stderr  # refused before the data was encoded


def test_adapter_init_comes_from_the_seed_not_from_the_process_rng(make, tiny_dir):
    """Every rank (FSDP shards its own copy) and every rerun must start from the same adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    def adapted(seed: int, noise: int):
        torch.manual_seed(noise)  # whatever the process drew before the model was built
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)
        model = adapters.apply(base, make("adapter=lora", f"trainer.seed={seed}"))
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    a, b, c = adapted(42, 1), adapted(42, 2), adapted(7, 1)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a if "lora_A" in n)
    # and the process's own random stream is left as it was
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    adapters.apply(base, make("adapter=lora"))
    assert torch.equal(torch.rand(3), expected)
