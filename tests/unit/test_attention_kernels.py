"""The flash and xformers modules' own logic on CPU, every call into a CUDA kernel checked against
that kernel's input contract: registration with transformers, the mask function, GQA head layouts,
sequence boundaries from cu_seq_lens / position_ids, sliding windows, and the refusals.

The CUDA kernels (`varlen_attn`, SDPA's flash backend, `xformers.ops.memory_efficient_attention`)
are replaced by the stand-ins of tests/kernel_contracts.py: each checks the real API's rules (from
the kernels' sources) and then computes a plain-PyTorch reference. So a call the real kernel would
reject fails here, forward or backward, and the numbers are compared with transformers' eager
attention. tests/gpu/ runs the real kernels.

Two modes: `fp32_allowed()` relaxes only the fp16/bf16 rule, for exact (1e-5) comparisons with fp32
eager; the contract runs use bf16 as training does (bf16 weights, or fp32 weights under bf16
autocast) with every rule on.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import kernel_contracts as kc
import pytest
import torch

from vicuna_sft.attention import AttentionUnavailable
from vicuna_sft.attention import flash as flash_mod
from vicuna_sft.attention import xformers as xformers_mod
from vicuna_sft.config import Padding
from vicuna_sft.data.collate import Collator
from vicuna_sft.data.encode import IGNORE_INDEX

TOL = {"rtol": 1e-5, "atol": 1e-6}
VARIANTS = {"flash": flash_mod, "xformers": xformers_mod}


@pytest.fixture(params=sorted(kc.VARLEN_ATTN), ids=lambda v: f"torch{v}")
def kernels(request, monkeypatch):
    """The CUDA kernels replaced by their contract-checking stand-ins; varlen_attn in the signature
    of each supported torch release (2.11 has no `enable_gqa`)."""
    kc.calls.log.clear()
    monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", kc.VARLEN_ATTN[request.param])
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", kc.sdpa_flash)
    monkeypatch.setattr(xformers_mod, "_xops", lambda: kc.XOPS)
    return kc.calls


# --- model-level: our functions inside a real GQA Llama, against eager -----------------------------

FEATURES = [
    {"input_ids": [1, *range(3, 40), 2], "labels": [IGNORE_INDEX, *range(3, 40), 2]},
    {"input_ids": [1, *range(50, 61), 2], "labels": [IGNORE_INDEX] * 6 + [*range(55, 61), 2]},
    {"input_ids": [1, *range(100, 170), 2], "labels": [IGNORE_INDEX, *range(100, 170), 2]},
]
LAYOUTS = ["longest", "max_length", "packed", "packed_position_ids_only"]


def _load(tiny_dir, impl):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=impl, use_cache=False)
    assert model.config.num_attention_heads == 2 * model.config.num_key_value_heads  # GQA
    return model


def _sliding_window_model(impl, window=8):
    """A tiny GQA Mistral (the Llama architecture plus a sliding window), same weights for every impl."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=window,
        use_cache=False,
    )
    config._attn_implementation = impl
    return MistralForCausalLM(config)


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _batch(layout):
    if layout == "packed_position_ids_only":  # boundaries from restarting position_ids alone
        packed = Collator(0, Padding.packed)(FEATURES)
        return {k: packed[k] for k in ("input_ids", "labels", "position_ids")}
    if layout == "max_length":
        return Collator(0, Padding.max_length, max_length=96)(FEATURES)
    return Collator(0, Padding[layout])(FEATURES)


@pytest.fixture(scope="module")
def eager_reference(tiny_dir):
    return _loss_and_grads(_load(tiny_dir, "eager"), _batch("longest"))


@pytest.fixture(scope="module")
def eager_window_reference():
    loss, grads = _loss_and_grads(_sliding_window_model("eager"), _batch("longest"))
    # the window matters for these rows: the same weights without it give another loss
    assert (
        abs(loss.item() - _sliding_window_model("eager", window=None)(**_batch("longest")).loss.item()) > 1e-3
    )
    return loss, grads


def _assert_matches(loss, grads, reference, **tol):
    ref_loss, ref_grads = reference
    torch.testing.assert_close(loss, ref_loss, **tol)
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], **tol, msg=lambda m, n=n: f"{n}: {m}")


def _expected_calls(variant, layout, layers, window=None):
    packed = layout.startswith("packed")
    if variant == "flash":
        if packed or window:
            return [
                {"kernel": "varlen_attn", "window_size": (-1 if window is None else window - 1, 0)}
            ] * layers
        return [{"kernel": "sdpa_flash", "is_causal": True}] * layers
    if packed or window:
        bias = "BlockDiagonalCausalLocalAttentionMask" if window else "BlockDiagonalCausalMask"
    else:
        bias = "LowerTriangularMask"
    # training: GQA expanded to the 4-D layout (5-D is forward-only in xformers)
    return [{"kernel": "memory_efficient_attention", "bias": bias, "ndim": 4, "window": window}] * layers


def _called(keys):
    return [{k: c[k] for k in keys} for c in kc.calls.log]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_variant_matches_eager(variant, layout, tiny_dir, eager_reference, kernels, monkeypatch):
    """fp32: loss and every gradient equal eager's, each kernel call within its contract."""
    mod = VARIANTS[variant]
    name = mod.implementation(SimpleNamespace())
    assert name == {"flash": flash_mod.TORCH_KERNELS, "xformers": xformers_mod.NAME}[variant]
    monkeypatch.setattr(flash_mod, "compute_dtype", lambda query, module, allow_fp32: query.dtype)
    model = mod.prepare(_load(tiny_dir, name))
    with kc.fp32_allowed():
        loss, grads = _loss_and_grads(model, _batch(layout))
    _assert_matches(loss, grads, eager_reference, **TOL)
    expected = _expected_calls(variant, layout, model.config.num_hidden_layers)
    assert _called(expected[0]) == expected


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("layout", ["longest", "packed_position_ids_only"])
def test_sliding_window_honoured(variant, layout, eager_window_reference, kernels, monkeypatch):
    """A Mistral-style window (8 tokens, rows of 13-72) reaches the kernel: varlen_attn's
    window_size (padded batches too), xformers' local-attention bias; results equal eager's."""
    mod = VARIANTS[variant]
    monkeypatch.setattr(flash_mod, "compute_dtype", lambda query, module, allow_fp32: query.dtype)
    model = mod.prepare(_sliding_window_model(mod.implementation(SimpleNamespace())))
    with kc.fp32_allowed():
        loss, grads = _loss_and_grads(model, _batch(layout))
    _assert_matches(loss, grads, eager_window_reference, **TOL)
    expected = _expected_calls(variant, layout, model.config.num_hidden_layers, window=8)
    assert _called(expected[0]) == expected


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(
    "layout,precision",
    [
        ("longest", "bf16_weights"),
        ("packed_position_ids_only", "bf16_weights"),
        ("packed", "bf16_autocast"),
        ("max_length", "bf16_autocast"),
    ],
)
def test_training_calls_satisfy_kernel_contracts(
    variant, layout, precision, tiny_dir, eager_reference, kernels
):
    """bf16 as in training, every contract rule on (dtypes included): forward + backward, then a
    forward without gradients (evaluation). xformers GQA training needs the 4-D layout, packed rows a
    block-diagonal bias on the query's device; the fp32 numbers stay within bf16 noise of eager."""
    mod = VARIANTS[variant]
    model = mod.prepare(_load(tiny_dir, mod.implementation(SimpleNamespace())))
    batch = _batch(layout)
    if precision == "bf16_weights":
        model = model.to(torch.bfloat16)
        context = torch.autocast("cpu", enabled=False)
    else:
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    with context:
        out = model(**batch)
        out.loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters()}
    ref_loss, ref_grads = eager_reference
    assert abs(out.loss.item() - ref_loss.item()) < 0.02 * ref_loss.item()
    for n, g in grads.items():
        assert torch.isfinite(g).all(), n
        cos = torch.nn.functional.cosine_similarity(g.flatten(), ref_grads[n].flatten(), dim=0)
        assert cos > 0.99, (n, cos.item())
    expected = _expected_calls(variant, layout, model.config.num_hidden_layers)
    assert _called(expected[0]) == expected
    kc.calls.log.clear()
    with context, torch.no_grad():
        model(**batch)
    if variant == "xformers":  # no gradients: the broadcast 5-D GQA layout, no K/V copy
        assert [c["ndim"] for c in kc.calls.log] == [5] * model.config.num_hidden_layers


# --- flash-attn installed: transformers' own flash_attention_2 calls flash-attn ------------------------


@pytest.fixture
def flash_attn_kernels(monkeypatch, kernels):
    """flash-attn "installed": transformers' flash_attention_2 integration (the call site of
    flash_attn_func / flash_attn_varlen_func in this configuration) gets the contract stand-ins."""
    import transformers.modeling_flash_attention_utils as fau

    stand_ins = (kc.flash_attn_func, kc.flash_attn_varlen_func, None, fau._pad_input, fau._unpad_input)
    monkeypatch.setattr(fau, "_lazy_imports", lambda *args, **kwargs: stand_ins)
    for name in ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_pad_fn", "_unpad_fn"):
        monkeypatch.setattr(fau, name, None)
    for name in ("_process_flash_kwargs_fn", "_flash_with_kvcache_fn", "_process_with_kvcache_kwargs_fn"):
        if hasattr(fau, name):  # the kvcache ones are newer than transformers 5.17
            monkeypatch.setattr(fau, name, getattr(fau, name))  # restored after the test
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: True)
    monkeypatch.setattr("importlib.metadata.version", lambda name: "2.8.3")
    return kernels


def _as_flash_attn(model):
    """from_pretrained refuses flash_attention_2 without CUDA; the attention layers read the name
    from the (shared) config at every forward, so switch it after loading."""
    name = flash_mod.implementation(SimpleNamespace())
    assert name == "flash_attention_2"
    model.config._attn_implementation = name
    return flash_mod.prepare(model)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flash_attn_path_matches_eager(layout, tiny_dir, eager_reference, flash_attn_kernels):
    model = _as_flash_attn(_load(tiny_dir, "eager"))
    with kc.fp32_allowed():
        loss, grads = _loss_and_grads(model, _batch(layout))
    _assert_matches(loss, grads, eager_reference, **TOL)
    # padded batches are unpadded by transformers: every layout reaches the varlen function
    assert kc.calls.kernels() == ["flash_attn_varlen_func"] * model.config.num_hidden_layers


@pytest.mark.parametrize("layout", ["longest", "packed_position_ids_only"])
def test_flash_attn_path_satisfies_contracts_in_bf16(layout, tiny_dir, eager_reference, flash_attn_kernels):
    model = _as_flash_attn(_load(tiny_dir, "eager")).to(torch.bfloat16)
    out = model(**_batch(layout))
    out.loss.backward()
    assert abs(out.loss.item() - eager_reference[0].item()) < 0.02 * eager_reference[0].item()
    assert kc.calls.kernels() == ["flash_attn_varlen_func"] * model.config.num_hidden_layers


def test_flash_attn_path_passes_the_sliding_window(eager_window_reference, flash_attn_kernels):
    model = _as_flash_attn(_sliding_window_model("eager"))
    with kc.fp32_allowed():
        loss, grads = _loss_and_grads(model, _batch("packed"))
    _assert_matches(loss, grads, eager_window_reference, **TOL)
    assert {c["window_size"] for c in kc.calls.log} == {(7, 0)}  # (window - 1, window - 1), causal


# --- refusals: features a kernel cannot compute -----------------------------------------------------


def _config(model_type, **kwargs):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **kwargs)


@pytest.mark.parametrize(
    "variant,model_type,kwargs,message",
    [
        ("flash", "gemma2", {}, "softcapping"),
        ("xformers", "gemma2", {}, "softcapping"),
        ("flash", "gpt_oss", {}, "sinks"),
        ("xformers", "gpt_oss", {}, "sinks"),
    ],
)
def test_model_features_refused_at_build_time(variant, model_type, kwargs, message):
    with pytest.raises(AttentionUnavailable, match=message) as err:
        VARIANTS[variant].check_model(SimpleNamespace(), _config(model_type, **kwargs))
    assert "attention=eager" in str(err.value) and "\n" not in str(err.value)


def test_flash_attn_handles_softcap_but_not_sinks(monkeypatch):
    """With flash-attn installed transformers passes softcap/window to it, but drops sinks."""
    monkeypatch.setattr(flash_mod, "has_flash_attn", lambda: True)
    flash_mod.check_model(SimpleNamespace(), _config("gemma2"))
    with pytest.raises(AttentionUnavailable, match="sinks"):
        flash_mod.check_model(SimpleNamespace(), _config("gpt_oss"))


@pytest.mark.parametrize("impl", ["flash", "xformers"])
def test_load_model_refuses_softcapping_before_any_weights(impl, tmp_path, monkeypatch):
    """A Gemma-2 directory with a config and no weights: the refusal must come from the config,
    before loading would find that there are no weights."""
    from vicuna_sft.config import AttentionConfig, AttentionImpl, Config, DataConfig, ModelConfig
    from vicuna_sft.model.loading import load_model

    _config("gemma2", num_hidden_layers=1).save_pretrained(tmp_path)
    monkeypatch.setattr(VARIANTS[impl], "check", lambda cfg: None)  # no CUDA / xformers here
    cfg = Config(
        model=ModelConfig(name_or_path=str(tmp_path)),
        data=DataConfig(path="x.json"),
        attention=AttentionConfig(implementation=AttentionImpl(impl)),
    )
    with pytest.raises(AttentionUnavailable, match=r"softcapping \(attn_logit_softcapping=50.0\)"):
        load_model(cfg)


def test_sliding_window_without_varlen_attn_refused(monkeypatch):
    monkeypatch.setattr(flash_mod, "has_torch_varlen", lambda: False)
    with pytest.raises(AttentionUnavailable, match="sliding window needs flash-attn"):
        flash_mod.check_model(SimpleNamespace(), _config("mistral", sliding_window=4096))
    flash_mod.check_model(SimpleNamespace(), _config("llama"))  # no window: SDPA's flash backend does


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("variant", ["eager", "sdpa", "flash", "xformers"])
def test_supported_models_pass_the_build_check(variant, model_type):
    from vicuna_sft.attention import get

    get(variant).check_model(SimpleNamespace(), _config(model_type))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("feature", ["softcap", "s_aux"])
def test_runtime_refuses_what_it_cannot_compute(variant, feature, kernels):
    fn = {"flash": flash_mod.torch_flash_attention, "xformers": xformers_mod.xformers_attention}[variant]
    q = torch.randn(1, 4, 8, 16, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="softcapping" if feature == "softcap" else "sinks"):
        fn(None, q, q[:, :2], q[:, :2], None, **{feature: 30.0 if feature == "softcap" else torch.zeros(4)})
    assert kc.calls.log == []


def test_mask_function_is_registered_and_rejects_left_padding(tiny_dir):
    from transformers.masking_utils import AttentionMaskInterface

    name = xformers_mod.implementation(SimpleNamespace())
    assert name in AttentionMaskInterface._global_mapping  # else the function would get no mask
    model = _load(tiny_dir, name)
    left = {"input_ids": torch.tensor([[0, 0, 1, 5, 6]]), "attention_mask": torch.tensor([[0, 0, 1, 1, 1]])}
    with pytest.raises(ValueError, match="right padding"):
        model(**left)


def test_boundaries_from_position_ids_and_cu_seq_lens():
    from vicuna_sft.attention import packed_boundaries

    q = torch.zeros(1, 2, 9, 4)
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    cu, max_len = packed_boundaries(q, None, {"position_ids": pos})
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == torch.int32 and max_len == 4
    cu2, max2 = packed_boundaries(q, None, {"cu_seq_lens_q": torch.tensor([0, 3, 5, 9]), "max_length_q": 4})
    assert cu2.tolist() == [0, 3, 5, 9] and max2 == 4
    assert packed_boundaries(q, None, {"position_ids": torch.arange(9)[None]}) is None  # one sequence
    assert packed_boundaries(q, torch.ones(1, 9, dtype=torch.bool), {"position_ids": pos}) is None
    with pytest.raises(ValueError, match="ends at"):
        packed_boundaries(q, None, {"cu_seq_lens_q": torch.tensor([0, 3, 8])})
    with pytest.raises(NotImplementedError, match="one row"):
        packed_boundaries(torch.zeros(2, 2, 9, 4), None, {"position_ids": pos.expand(2, -1)})


def test_compute_dtype_policy():
    from vicuna_sft.attention import compute_dtype

    q = torch.zeros(1, 2, 3, 4)
    bf16_module = SimpleNamespace(q_proj=SimpleNamespace(weight=torch.zeros(1, dtype=torch.bfloat16)))
    fp32_module = SimpleNamespace(q_proj=SimpleNamespace(weight=torch.zeros(1)))
    assert compute_dtype(q.half(), fp32_module, allow_fp32=False) == torch.float16
    assert compute_dtype(q, bf16_module, allow_fp32=False) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(q, fp32_module, allow_fp32=False) == torch.bfloat16
    assert compute_dtype(q, fp32_module, allow_fp32=True) == torch.float32
    with pytest.raises(ValueError, match="fp16/bf16"):
        compute_dtype(q, fp32_module, allow_fp32=False)


@pytest.mark.slow
def test_nothing_imported_or_registered_at_import_time():
    code = (
        "import sys\n"
        "import vicuna_sft.model.loading, vicuna_sft.attention.flash, vicuna_sft.attention.xformers\n"
        "from transformers import AttentionInterface\n"
        "from transformers.masking_utils import AttentionMaskInterface\n"
        "names = set(AttentionInterface._global_mapping) | set(AttentionMaskInterface._global_mapping)\n"
        "assert not any(n.startswith('vicuna_sft') for n in names), names\n"
        "from types import SimpleNamespace\n"
        "vicuna_sft.attention.xformers.implementation(SimpleNamespace())\n"
        "assert 'vicuna_sft_xformers' in AttentionInterface._global_mapping\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('flash_attn', 'xformers')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
