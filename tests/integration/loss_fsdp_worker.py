"""Run by tests/integration/test_loss_distributed.py under torchrun (2 ranks, gloo, CPU):
one Trainer step (gradient accumulation 2) with fsdp=full_shard for loss=full and then
loss=chunked, for each given model directory, the model built by load_model. Every rank gathers each parameter's full gradient
(DTensor.full_tensor is a collective) before the optimizer step; rank 0 saves, per loss kind,
the eval loss, the training loss, the gathered gradients and whether the parameters were
sharded DTensors.

Usage: torchrun --nproc_per_node=2 loss_fsdp_worker.py SAMPLES_JSON OUT_PT MODEL_DIR [MODEL_DIR ...]
"""

from __future__ import annotations

import json
import sys

import torch

from vicuna_sft.compat.transformers import no_split_modules


def run(kind: str, model_dir: str, samples: list[dict], out_dir: str) -> dict:
    from accelerate.state import AcceleratorState
    from torch.distributed.tensor import DTensor
    from transformers import AutoTokenizer, TrainerCallback

    from vicuna_sft.config import (
        AttentionConfig,
        Config,
        DataConfig,
        FsdpConfig,
        FsdpStrategy,
        LossConfig,
        LossKind,
        ModelConfig,
        OptimizerConfig,
        Padding,
        Strategy,
        TrainerConfig,
    )
    from vicuna_sft.data.collate import Collator, pad_id_for
    from vicuna_sft.model.loading import load_model
    from vicuna_sft.training.arguments import to_training_arguments
    from vicuna_sft.training.trainer import Trainer

    cfg = Config(
        model=ModelConfig(name_or_path=model_dir),
        data=DataConfig(path="unused.json", max_length=192, padding=Padding.packed),
        attention=AttentionConfig(),
        fsdp=FsdpConfig(strategy=FsdpStrategy.full_shard),
        optimizer=OptimizerConfig(lr=1e-3, max_grad_norm=0.0, warmup_ratio=0.0),
        loss=LossConfig(kind=LossKind(kind), chunk_tokens=16),
        trainer=TrainerConfig(
            output_dir=f"{out_dir}/{kind}",
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            max_steps=1,
            logging_steps=1,
            save_strategy=Strategy.no,
            use_cpu=True,
        ),
    )
    result: dict = {"grads": {}, "sharded": {}}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            for name, p in model.named_parameters():
                g = p.grad
                result["sharded"][name] = isinstance(p, DTensor)
                result["grads"][name] = (g.full_tensor() if isinstance(g, DTensor) else g).detach().clone()

    torch.manual_seed(0)
    model = load_model(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = Trainer(
        model=model,
        args=to_training_arguments(cfg, wrap_classes=no_split_modules(model)),  # world size: torchrun's
        train_dataset=samples,
        eval_dataset=samples,
        data_collator=Collator(pad_id_for(tokenizer), cfg.data.padding, cfg.data.max_length),
        callbacks=[Grab()],
    )
    result["train"] = trainer.train().training_loss
    result["eval"] = trainer.evaluate()["eval_loss"]  # after the step: same weights in both runs
    result["loss_installed"] = str(getattr(model, "_vicuna_sft_loss", None))
    result["world_size"] = trainer.accelerator.num_processes
    trainer.accelerator.wait_for_everyone()
    AcceleratorState._reset_state(reset_partial_state=True)
    return result


def main() -> None:
    samples_json, out, *model_dirs = sys.argv[1:]
    with open(samples_json) as f:
        samples = json.load(f)
    results = {
        (model_dir, kind): run(kind, model_dir, samples, f"{out}.runs/{i}")
        for i, model_dir in enumerate(model_dirs)
        for kind in ("full", "chunked")
    }
    if torch.distributed.get_rank() == 0:
        torch.save(results, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
