"""loss=chunked against loss=full through the real Trainer (fp32, gradient accumulation 2, the
model built by load_model): eval loss, training loss and every parameter's gradient, padded and
packed, tied and untied embeddings, with activation checkpointing; and the proof of absence: no
tensor of [tokens, vocab] elements is created anywhere in a chunked training step (forward,
backward, optimizer), while the same detector flags loss=full."""

from __future__ import annotations

import pathlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from vicuna_reference import vicuna_encoder

from vicuna_sft.config import (
    AttentionConfig,
    AttentionImpl,
    Config,
    DataConfig,
    FsdpConfig,
    LossConfig,
    LossKind,
    ModelConfig,
    OptimizerConfig,
    Padding,
    Strategy,
    TrainerConfig,
)

pytestmark = pytest.mark.slow

MAX_LENGTH = 192
CHUNK = 16  # several chunks per micro-batch (each has ~100-300 trained tokens)
TOL = {"rtol": 1e-5, "atol": 1e-6}


def make_cfg(
    model_dir: pathlib.Path,
    out: pathlib.Path,
    kind: LossKind,
    padding: Padding,
    impl: AttentionImpl = AttentionImpl.sdpa,
    checkpointing: bool = False,
    accumulation: int = 2,
) -> Config:
    return Config(
        model=ModelConfig(name_or_path=str(model_dir), activation_checkpointing=checkpointing),
        data=DataConfig(path="unused.json", max_length=MAX_LENGTH, padding=padding),
        attention=AttentionConfig(implementation=impl),
        fsdp=FsdpConfig(),
        optimizer=OptimizerConfig(lr=1e-3, max_grad_norm=0.0, warmup_ratio=0.0),
        loss=LossConfig(kind=kind, chunk_tokens=CHUNK),
        trainer=TrainerConfig(
            output_dir=str(out),
            per_device_train_batch_size=2,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            logging_steps=1,
            save_strategy=Strategy.no,
            use_cpu=True,
        ),
    )


@pytest.fixture(scope="module")
def samples(bpe_tokenizer, sample_path) -> list[dict]:
    """Four samples of clearly different lengths, each with masked prompt tokens."""
    from vicuna_sft.data.records import load_conversations

    convs, _ = load_conversations(str(sample_path), skip_errors=False)
    encoded = vicuna_encoder(bpe_tokenizer, MAX_LENGTH).encode_batch(convs[:64])
    by_len = sorted((e for e in encoded if e.trained_tokens > 0), key=lambda e: len(e.input_ids))
    picks = [by_len[0], by_len[-1], by_len[len(by_len) // 2], by_len[len(by_len) // 4]]
    assert all(0 < e.trained_tokens < len(e.input_ids) - 1 for e in picks)  # prompt and reply
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in picks]


def trainer_for(cfg: Config, samples: list[dict], pad_id: int, callbacks=()):
    from vicuna_sft.data.collate import Collator
    from vicuna_sft.model.loading import load_model
    from vicuna_sft.training.arguments import to_training_arguments
    from vicuna_sft.training.trainer import Trainer

    torch.manual_seed(0)
    model = load_model(cfg)
    trainer = Trainer(
        model=model,
        args=to_training_arguments(cfg),
        train_dataset=samples,
        eval_dataset=samples,
        data_collator=Collator(pad_id, cfg.data.padding, cfg.data.max_length),
        callbacks=list(callbacks),
    )
    return model, trainer


def one_step(cfg: Config, samples: list[dict], pad_id: int) -> dict:
    from accelerate.state import AcceleratorState
    from transformers import TrainerCallback

    grads: dict[str, torch.Tensor] = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    model, trainer = trainer_for(cfg, samples, pad_id, [Grab()])
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    installed = getattr(model, "_vicuna_sft_loss", None)  # set by vicuna_sft.model.loss.install
    assert installed == (None if cfg.loss.kind == LossKind.full else cfg.loss.kind)
    eval_loss = trainer.evaluate()["eval_loss"]  # the initial weights, through the same loss path
    out = trainer.train()
    assert trainer.state.global_step == 1
    AcceleratorState._reset_state(reset_partial_state=True)
    return {"eval": eval_loss, "train": out.training_loss, "grads": grads, "tied": tied}


def assert_equal_runs(got: dict, ref: dict, what: str) -> None:
    for key in ("eval", "train"):
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(ref[key]), **TOL, msg=f"{what} {key}")
    assert got["grads"].keys() == ref["grads"].keys() and len(ref["grads"]) > 10
    assert sum(g.abs().sum() for g in ref["grads"].values()) > 0
    for name, g in got["grads"].items():
        torch.testing.assert_close(g, ref["grads"][name], **TOL, msg=lambda m, n=name: f"{what} {n}: {m}")


@pytest.fixture(scope="module")
def pad_id(tiny_dir) -> int:
    from transformers import AutoTokenizer

    from vicuna_sft.data.collate import pad_id_for

    return pad_id_for(AutoTokenizer.from_pretrained(tiny_dir))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("padding", [Padding.longest, Padding.packed])
def test_chunked_equals_full_through_the_trainer(
    tiny_dir, tied_dir, samples, pad_id, tmp_path, tied, padding
):
    model_dir = tied_dir if tied else tiny_dir
    # eager for padded, sdpa for packed: both attention variants that run on CPU
    impl = AttentionImpl.eager if padding == Padding.longest else AttentionImpl.sdpa
    runs = {}
    for kind in (LossKind.full, LossKind.chunked):
        cfg = make_cfg(model_dir, tmp_path / kind.value, kind, padding, impl)
        runs[kind] = one_step(cfg, samples, pad_id)
    assert runs[LossKind.full]["tied"] == runs[LossKind.chunked]["tied"] == tied
    assert 2.0 < runs[LossKind.full]["train"] < 10.0  # a real loss over real labels (ln 512 = 6.2)
    assert_equal_runs(runs[LossKind.chunked], runs[LossKind.full], f"{padding.value} tied={tied}")


def test_chunked_equals_full_with_activation_checkpointing(tiny_dir, samples, pad_id, tmp_path):
    runs = {}
    for kind in (LossKind.full, LossKind.chunked):
        cfg = make_cfg(tiny_dir, tmp_path / kind.value, kind, Padding.packed, checkpointing=True)
        runs[kind] = one_step(cfg, samples, pad_id)
    assert_equal_runs(runs[LossKind.chunked], runs[LossKind.full], "activation checkpointing")


class VocabSizedTensors(TorchDispatchMode):
    """Every tensor any op creates (forward, backward, optimizer): the shapes of those with a vocab-
    sized dimension, and whether the weight-gradient matmul of backward was seen (proves backward
    ran under the mode: CPU autograd runs in the calling thread)."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.vocab, self.hidden = vocab, hidden
        self.shapes: list[tuple[str, tuple[int, ...]]] = []
        self.saw_weight_grad_matmul = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and self.vocab in t.shape:
                self.shapes.append((str(func), tuple(t.shape)))
                if (
                    func.__name__.split(".")[0] in ("mm", "addmm", "addmm_")
                    and t.numel() == self.vocab * self.hidden
                ):
                    self.saw_weight_grad_matmul = True
        return out


@pytest.mark.parametrize("kind", [LossKind.chunked, LossKind.full])
def test_no_tokens_by_vocab_tensor_in_a_chunked_training_step(tiny_dir, samples, pad_id, tmp_path, kind):
    cfg = make_cfg(tiny_dir, tmp_path, kind, Padding.packed, accumulation=1)
    pair = samples[:2]  # the step's one micro-batch, whatever the sampler's order
    model, trainer = trainer_for(cfg, pair, pad_id)
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    batch = trainer.data_collator(pair)
    tokens = batch["input_ids"].numel()  # the micro-batch's positions (one packed row)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert tokens > 2 * CHUNK and trained > 2 * CHUNK and tokens > hidden
    detector = VocabSizedTensors(vocab, hidden)
    with detector:
        trainer.train()
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    assert trainer.state.global_step == 1 and detector.saw_weight_grad_matmul
    largest = max(torch.Size(s).numel() for _, s in detector.shapes)
    flagged = [(op, s) for op, s in detector.shapes if torch.Size(s).numel() >= tokens * vocab]
    if kind == LossKind.full:
        assert flagged, "the detector must see transformers' [tokens, vocab] logits"
        assert largest >= tokens * vocab
        return
    assert not flagged, flagged[:5]
    # what is vocab-sized: lm_head's weight and its gradient/optimizer state [V, H], and chunks of
    # at most CHUNK positions [c, V]; and the model's own empty logits [1, 0, V]
    not_weight = [s for _, s in detector.shapes if sorted(s) != sorted((vocab, hidden))]
    assert max(torch.Size(s).numel() for s in not_weight) <= CHUNK * vocab, not_weight
    assert any(s == (CHUNK, vocab) for s in not_weight)  # the chunks really ran
