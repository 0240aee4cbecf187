"""loss=chunked against transformers' own loss (loss=full), forward and backward, fp32: the loss
and every parameter's gradient, padded and packed, tied and untied embeddings, any chunk size;
the model's own forward without labels; what the wrapper must survive (PEFT, accelerate's
autocast wrapper and its unwrap); and the refusals (liger without CUDA, unsupported heads)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from vicuna_sft.config import LossConfig, LossKind, Padding
from vicuna_sft.data.collate import Collator
from vicuna_sft.data.encode import IGNORE_INDEX
from vicuna_sft.model.loss import LossUnavailable, check_model_config, chunked_cross_entropy_sum, install

TOL = {"rtol": 1e-5, "atol": 1e-6}
VOCAB = 300

# ShareGPT-like: a masked prompt, then a trained reply, per sample (lengths differ)
FEATURES = [
    {"input_ids": [1, *range(10, 40)], "labels": [-100] * 16 + list(range(25, 40))},
    {"input_ids": [1, *range(50, 62)], "labels": [-100] * 7 + list(range(56, 62))},
    {"input_ids": [1, *range(100, 150)], "labels": [-100] * 20 + list(range(119, 150))},
]


def tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        use_cache=False,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    return model


def loss_and_grads(model, batch, num_items=None) -> tuple[torch.Tensor, dict[str, torch.Tensor], object]:
    model.zero_grad(set_to_none=True)
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    out = model(**batch, **extra)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), grads, out


def assert_same(a, b) -> None:
    torch.testing.assert_close(a[0], b[0], **TOL)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


CASES = [  # (tied, padding, chunk_tokens): several chunks and a ragged last one; one token; one chunk
    *[(tied, padding, 7) for tied in (False, True) for padding in (Padding.longest, Padding.packed)],
    (False, Padding.longest, 1),
    (True, Padding.packed, 4096),
]


@pytest.mark.parametrize(("tied", "padding", "chunk"), CASES)
def test_chunked_equals_full_loss_and_every_gradient(tied, padding, chunk):
    full = tiny_llama(tied)
    chunked = install(copy.deepcopy(full), LossConfig(LossKind.chunked, chunk_tokens=chunk))
    batch = Collator(pad_id=0, padding=padding)(FEATURES)
    trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert trained == 15 + 6 + 31
    # the Trainer's normalisation (trained tokens of the whole accumulated batch), and the plain mean
    for num_items in (torch.tensor(2 * trained), None):
        ref = loss_and_grads(full, batch, num_items)
        got = loss_and_grads(chunked, batch, num_items)
        assert 3.0 < ref[0].item() * (2 if num_items is not None else 1) < 10.0  # ~ln(300) = 5.7
        assert got[2].logits is None and ref[2].logits.shape[-1] == VOCAB  # the chunked path really ran
        assert_same(got, ref)


def test_chunked_without_labels_is_the_models_own_forward():
    full = tiny_llama(tied=False)
    chunked = install(copy.deepcopy(full), LossConfig(LossKind.chunked, chunk_tokens=4))
    ids = torch.tensor([FEATURES[0]["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(chunked(input_ids=ids).logits, full(input_ids=ids).logits, rtol=0, atol=0)
        a = chunked.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
        b = full.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
    assert a.tolist() == b.tolist()


def test_a_batch_without_trained_tokens_gives_zero_loss_and_zero_gradients():
    full = tiny_llama(tied=False)
    chunked = install(copy.deepcopy(full), LossConfig(LossKind.chunked))
    ids = torch.tensor([FEATURES[0]["input_ids"]])
    batch = {"input_ids": ids, "labels": torch.full_like(ids, IGNORE_INDEX)}
    ref, got = loss_and_grads(full, batch, torch.tensor(5)), loss_and_grads(chunked, batch, torch.tensor(5))
    assert got[0].item() == ref[0].item() == 0.0
    assert all(g.abs().sum() == 0 for g in got[1].values())
    assert_same(got, ref)


def test_function_matches_cross_entropy_with_a_bias_and_under_bf16_autocast():
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    got = chunked_cross_entropy_sum(h, w, b, t, 5)
    want = torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w, b), t, reduction="sum")
    torch.testing.assert_close(got, want, **TOL)
    for g, r in zip(torch.autograd.grad(got * 0.25, (h, w, b)), torch.autograd.grad(want * 0.25, (h, w, b))):
        torch.testing.assert_close(g, r, **TOL)
    # under autocast the projection runs in bf16 and the loss in fp32, as transformers' `logits.float()`
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_cross_entropy_sum(h, w, None, t, 5)
        logits = torch.nn.functional.linear(h, w)
        assert logits.dtype == torch.bfloat16
        want = torch.nn.functional.cross_entropy(logits.float(), t, reduction="sum")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-4)  # same bf16 logits, fp32 reductions
    (gh,) = torch.autograd.grad(got, (h,))
    (rh,) = torch.autograd.grad(want, (h,))
    assert gh.dtype == torch.float32
    torch.testing.assert_close(gh, rh, rtol=2e-2, atol=2e-2)  # bf16 matmuls, different accumulation


def test_install_is_per_instance_idempotent_and_keeps_the_signature():
    from transformers import LlamaForCausalLM

    model = tiny_llama(tied=False)
    other = tiny_llama(tied=False)
    class_forward = LlamaForCausalLM.forward
    install(model, LossConfig(LossKind.chunked))
    first = model.forward
    install(model, LossConfig(LossKind.chunked))
    assert model.forward.__func__ is first.__func__  # not wrapped twice
    assert LlamaForCausalLM.forward is class_forward and "forward" not in vars(other)
    # the Trainer decides from this signature whether to pass num_items_in_batch, and which inputs exist
    params = inspect.signature(model.forward).parameters
    assert "labels" in params and "input_ids" in params and "self" not in params
    assert any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    with pytest.raises(ValueError, match="already installed"):
        install(model, LossConfig(LossKind.liger))
    assert install(other, LossConfig(LossKind.full)) is other and "forward" not in vars(other)


def test_survives_accelerate_autocast_wrapper_and_its_unwrap():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    model = install(tiny_llama(tied=False), LossConfig(LossKind.chunked, chunk_tokens=8))
    batch = Collator(pad_id=0, padding=Padding.packed)(FEATURES)
    try:
        acc = Accelerator(cpu=True, mixed_precision="bf16")
        prepared = acc.prepare(model)
        out = prepared(**batch)
        assert out.logits is None and out.loss.dtype == torch.float32
        # the wrapper's projection ran under accelerate's autocast: bf16 logits, so a different loss than fp32
        with torch.no_grad():
            fp32 = copy.deepcopy(acc.unwrap_model(prepared, keep_fp32_wrapper=False))(**batch).loss
        assert 1e-6 < abs(out.loss.item() - fp32.item()) < 0.05
        # accelerate's unwrap follows `__wrapped__` chains: ours must still be the forward afterwards
        unwrapped = acc.unwrap_model(prepared, keep_fp32_wrapper=False)
        assert unwrapped(**batch).logits is None
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_survives_peft_lora_wrapping():
    peft = pytest.importorskip("peft")

    base = tiny_llama(tied=False)
    full = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    chunked_base = install(copy.deepcopy(base), LossConfig(LossKind.chunked, chunk_tokens=8))
    chunked = peft.get_peft_model(chunked_base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert type(chunked.base_model.model.lm_head) is torch.nn.Linear  # LoRA's default targets spare lm_head
    # LoRA's B starts at zero: make the adapters matter; then the same adapter weights in both
    torch.manual_seed(1)
    for (n, p), (m, q) in zip(full.named_parameters(), chunked.named_parameters()):
        assert n == m
        with torch.no_grad():
            if "lora_B" in n:
                p.normal_(0, 0.05)
            q.copy_(p)
    batch = Collator(pad_id=0, padding=Padding.packed)(FEATURES)
    ref, got = loss_and_grads(full, batch, torch.tensor(40)), loss_and_grads(chunked, batch, torch.tensor(40))
    assert got[2].logits is None
    trainable = {n for n, p in chunked.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    torch.testing.assert_close(got[0], ref[0], **TOL)
    for n in trainable:
        assert ref[1][n].abs().sum() > 0
        torch.testing.assert_close(got[1][n], ref[1][n], **TOL)
    # an adapter on lm_head itself would be bypassed by a projection with lm_head's weight: refused
    on_head = install(copy.deepcopy(base), LossConfig(LossKind.chunked))
    on_head = peft.get_peft_model(on_head, peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(LossUnavailable, match=r"lm_head is now a .*use loss=full"):
        on_head(**batch)


def test_refuses_a_model_whose_logits_are_transformed_after_lm_head():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        final_logit_softcapping=30.0,
    )
    with pytest.raises(LossUnavailable, match=r"final_logit_softcapping.*use loss=full"):
        check_model_config(LossConfig(LossKind.chunked), config)  # what load_model asks before any weight
    check_model_config(LossConfig(LossKind.full), config)
    with pytest.raises(LossUnavailable, match=r"final_logit_softcapping.*use loss=full"):
        install(Gemma2ForCausalLM(config), LossConfig(LossKind.chunked))


def test_liger_is_refused_early_without_cuda_or_package():
    from types import SimpleNamespace

    from vicuna_sft.model.loss import check

    cfg = SimpleNamespace(loss=LossConfig(LossKind.liger))
    if torch.cuda.is_available():
        pytest.skip("CUDA present: tests/gpu/test_loss_gpu.py covers loss=liger")
    with pytest.raises(LossUnavailable, match=r"loss=liger .*CUDA.*use loss=chunked"):
        check(cfg)
    check(SimpleNamespace(loss=LossConfig(LossKind.chunked)))  # runs everywhere


def _cli(run_module, tmp_path, *args: str):
    out = tmp_path / "run"
    return run_module("vicuna_sft", *args, f"hydra.run.dir={out}", f"trainer.output_dir={out}", cwd=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cli_liger_is_refused_before_data_or_weights(run_module, tmp_path):
    # data_stats.json is written as soon as the data is read: it must not exist after the refusal
    r = _cli(run_module, tmp_path, "loss=liger")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "vicuna_sft: error: loss=liger runs Triton kernels on a CUDA GPU" in r.stderr
    assert not (tmp_path / "run" / "data_stats.json").exists()


def test_cli_chunk_tokens_must_be_positive_and_kinds_are_listed(run_module, tmp_path):
    r = _cli(run_module, tmp_path, "loss.chunk_tokens=0")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "loss.chunk_tokens must be >= 1, got 0" in r.stderr
    r = _cli(run_module, tmp_path, "loss=fused")
    assert r.returncode != 0 and "Available options in 'loss'" in r.stderr
    assert set(r.stderr.split("Available options in 'loss':", 1)[1].split()[:3]) == {
        k.value for k in LossKind
    }


def test_loss_group_files_match_the_enum_and_chunked_is_the_default(tmp_path):
    from importlib import resources

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from vicuna_sft.config import register_configs, to_config

    files = {f.name[: -len(".yaml")] for f in (resources.files("vicuna_sft.conf") / "loss").iterdir()}
    assert files == {k.value for k in LossKind}
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        out = f"trainer.output_dir={tmp_path}"
        default = to_config(compose("config", overrides=[out])).loss
        assert default == LossConfig(LossKind.chunked, LossConfig.chunk_tokens)
        for kind in LossKind:
            assert to_config(compose("config", overrides=[out, f"loss={kind.value}"])).loss.kind == kind
    GlobalHydra.instance().clear()
