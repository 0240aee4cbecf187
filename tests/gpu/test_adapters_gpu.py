"""adapter=qlora on CUDA (needs a GPU and bitsandbytes; skipped cleanly without): the tiny model's
base is quantized to nf4 on the GPU while loading, a bf16 run trains only the adapter and its
loss decreases, and the merged final/ loads in bf16."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from vicuna_sft.compat.transformers import no_split_modules

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(
        importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (.[qlora])"
    ),
]


def test_qlora_on_cuda(tmp_path, tiny_dir):
    import bitsandbytes as bnb
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from transformers import AutoModelForCausalLM

    from vicuna_sft.config import register_configs, to_config
    from vicuna_sft.data.dataset import build_datasets
    from vicuna_sft.model.loading import load_model, load_tokenizer
    from vicuna_sft.training.arguments import to_training_arguments
    from vicuna_sft.training.final import save_final
    from vicuna_sft.training.trainer import Trainer, release

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        dcfg = compose(
            "config",
            overrides=[
                f"trainer.output_dir={tmp_path}",
                f"model.name_or_path={tiny_dir}",
                "adapter=qlora",
                "adapter.target_modules=[all-linear]",
                "trainer.precision=bf16",
                "trainer.max_steps=30",
                "trainer.per_device_train_batch_size=8",
                "trainer.logging_steps=1",
                "trainer.save_strategy=no",
                "data.eval_fraction=0",
                "optimizer.lr=2e-2",
            ],
        )
    cfg = to_config(dcfg)
    tokenizer = load_tokenizer(cfg.model)
    data = build_datasets(cfg.data, tokenizer, seed=cfg.trainer.seed)
    model = load_model(cfg)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 7 * model.config.num_hidden_layers
    assert all(m.weight.device.type == "cuda" and m.weight.quant_state.quant_type == "nf4" for m in four_bit)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n
    }
    args = to_training_arguments(cfg, wrap_classes=no_split_modules(model))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        data_collator=data.collator,
        processing_class=tokenizer,
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    saved = save_final(trainer, tokenizer, cfg)
    release(trainer)
    merged = AutoModelForCausalLM.from_pretrained(saved["final_dir"])
    assert merged.dtype == torch.bfloat16 and not hasattr(merged.config, "quantization_config")
