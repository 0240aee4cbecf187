"""One real Trainer step (grad accumulation 2, fp32, a 2-layer GQA Llama) through our own
collator and attention modules: eager vs sdpa, padded vs packed, losses and gradients equal."""

from __future__ import annotations

import pathlib

import pytest
import torch
from vicuna_reference import vicuna_encoder

from vicuna_sft.config import (
    AttentionConfig,
    AttentionImpl,
    Config,
    DataConfig,
    FsdpConfig,
    ModelConfig,
    OptimizerConfig,
    Padding,
    Strategy,
    TrainerConfig,
)

MAX_LENGTH = 192
TOL = {"rtol": 1e-5, "atol": 1e-6}


def make_cfg(model_dir: pathlib.Path, out: pathlib.Path, impl: AttentionImpl, padding: Padding) -> Config:
    return Config(
        model=ModelConfig(name_or_path=str(model_dir)),
        data=DataConfig(path="unused.json", max_length=MAX_LENGTH, padding=padding),
        attention=AttentionConfig(implementation=impl),
        fsdp=FsdpConfig(),
        optimizer=OptimizerConfig(lr=1e-3, max_grad_norm=0.0, warmup_ratio=0.0),
        trainer=TrainerConfig(
            output_dir=str(out),
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            max_steps=1,
            logging_steps=1,
            save_strategy=Strategy.no,
            use_cpu=True,
        ),
    )


@pytest.fixture(scope="module")
def samples(bpe_tokenizer, sample_path) -> list[dict]:
    """Four samples of clearly different lengths (so padding and packing really differ)."""
    from vicuna_sft.data.records import load_conversations

    convs, _ = load_conversations(str(sample_path), skip_errors=False)
    encoded = vicuna_encoder(bpe_tokenizer, MAX_LENGTH).encode_batch(convs[:64])
    by_len = sorted((e for e in encoded if e.trained_tokens > 0), key=lambda e: len(e.input_ids))
    picks = [by_len[0], by_len[-1], by_len[len(by_len) // 2], by_len[len(by_len) // 4]]
    lengths = [len(e.input_ids) for e in picks]
    assert len(set(lengths)) == 4 and max(lengths) > 2 * min(lengths), lengths
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in picks]


def one_step(cfg: Config, samples: list[dict], pad_id: int) -> tuple[float, dict[str, torch.Tensor]]:
    from transformers import Trainer, TrainerCallback

    from vicuna_sft.data.collate import Collator
    from vicuna_sft.model.loading import load_model
    from vicuna_sft.training.arguments import to_training_arguments

    torch.manual_seed(0)
    model = load_model(cfg)
    grads: dict[str, torch.Tensor] = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    trainer = Trainer(
        model=model,
        args=to_training_arguments(cfg),
        train_dataset=samples,
        data_collator=Collator(pad_id, cfg.data.padding, cfg.data.max_length),
        callbacks=[Grab()],
    )
    out = trainer.train()
    assert trainer.state.global_step == 1
    return out.training_loss, grads


@pytest.mark.slow
def test_eager_sdpa_padded_packed_one_trainer_step(tiny_dir, samples, tmp_path):
    from accelerate.state import AcceleratorState

    from vicuna_sft.data.collate import pad_id_for

    pad_id = pad_id_for(__import__("transformers").AutoTokenizer.from_pretrained(tiny_dir))
    results = {}
    for impl in (AttentionImpl.eager, AttentionImpl.sdpa):
        for padding in (Padding.longest, Padding.max_length, Padding.packed):
            cfg = make_cfg(tiny_dir, tmp_path / f"{impl.value}-{padding.value}", impl, padding)
            results[impl, padding] = one_step(cfg, samples, pad_id)
            AcceleratorState._reset_state(reset_partial_state=True)

    ref_loss, ref_grads = results[AttentionImpl.eager, Padding.longest]
    assert 2.0 < ref_loss < 10.0  # a real loss over real labels (vocab ~512: ln 512 = 6.2)
    assert sum(g.abs().sum() for g in ref_grads.values()) > 0
    for key, (loss, grads) in results.items():
        torch.testing.assert_close(torch.tensor(loss), torch.tensor(ref_loss), **TOL, msg=f"loss {key}")
        assert grads.keys() == ref_grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(
                g, ref_grads[name], **TOL, msg=lambda m, k=key, n=name: f"{k} {n}: {m}"
            )
