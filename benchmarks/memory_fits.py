"""What fits where: training memory per GPU from first principles, for Llama 7B / 13B / 70B under
full fine-tuning, LoRA and QLoRA with adamw / adamw_8bit / adafactor.

Nothing is measured here: each term is counted from the architecture and the bytes each tensor
holds, so the table in docs/benchmarks.md (which `tests/unit/test_memory_fits.py` keeps equal to
this script's output) cannot drift from the formulas. `--small` prints the same terms for the
settings of benchmarks/bench_optimizer_memory.py (model=small, fp32, 256 tokens), to compare with
what that benchmark measures. Usage: python benchmarks/memory_fits.py [--small]

Terms (bytes per parameter or per token; N GPUs with fsdp=full_shard divide the first three):
- weights: full fine-tuning keeps fp32 master weights (model.dtype float32, precision bf16: the
  vicuna_7b recipe); LoRA a frozen bf16 base; QLoRA a 4-bit nf4 base with double quantization
  (4.127 bits per weight, the QLoRA paper) for the decoder's linear layers, embeddings and head in
  fp32 (prepare_model_for_kbit_training) and the adapter in fp32 (PEFT's default).
- gradients: one fp32 value per trained parameter.
- optimizer state per trained parameter: adamw 8 (two fp32 moments), adamw_8bit 2 (two 8-bit
  moments; embeddings stay 32-bit, +8 bytes per 256-element block), adafactor: a row and a column
  vector per matrix (4 (rows + cols) bytes), nothing per element.
- activations for one micro-batch of `tokens` (bf16, flash/sdpa attention: no tokens^2 term),
  per layer per token saved for backward: the two norms' inputs and outputs, q, o_proj's input,
  k and v, gate, up, act(gate), down's input = 6 h + 2 kv + 4 i elements. With activation
  checkpointing: each layer's input (h) is kept and one layer's activations are recomputed at a time.
- loss: loss=full holds the logits [tokens, vocab] in bf16 and fp32 and their fp32 gradient
  (10 bytes per entry); loss=chunked (default) one [chunk_tokens, vocab] fp32 chunk and its gradient.
Not counted: the CUDA context and allocator slack (~1-3 GB per GPU), communication buffers of FSDP
(one layer's parameters gathered), temporaries inside a kernel. "fits" asks for 90 % of the GPU.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Arch:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def kv(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each decoder linear layer, once per layer."""
        h, kv, i = self.hidden, self.kv, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def decoder_linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())

    def other_params(self) -> int:
        """Embeddings and the (untied) head, the norms."""
        return 2 * self.vocab * self.hidden + (2 * self.layers + 1) * self.hidden

    def params(self) -> int:
        return self.decoder_linear_params() + self.other_params()

    def lora_params(self, targets: tuple[str, ...], r: int = 8) -> int:
        return self.layers * sum(r * (a + b) for n, (a, b) in self.linears().items() if n in targets)

    def factored_state(self) -> int:
        """Adafactor's state in elements: a row and a column per matrix, the vector's own size otherwise."""
        per_layer = sum(a + b for a, b in self.linears().values()) + 2 * self.hidden
        return self.layers * per_layer + 2 * (self.vocab + self.hidden) + self.hidden


LLAMA = {
    "7B": Arch(4096, 32, 11008, 32, 32, 32000),  # Llama 2 7B / Vicuna 7B
    "13B": Arch(5120, 40, 13824, 40, 40, 32000),
    "70B": Arch(8192, 80, 28672, 64, 8, 32000),  # grouped-query attention: 8 kv heads
}
SMALL = Arch(1536, 8, 4096, 16, 16, 512)  # the builtin model=small (vicuna_sft/model/tiny.py)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS = {  # the recipes: conf/adapter/lora.yaml (FastChat's q_proj/v_proj), conf/adapter/qlora.yaml
    "full": None,
    "LoRA": ("q_proj", "v_proj"),
    "QLoRA": ALL_LINEAR,
}
OPTIMIZERS = ("adamw", "adamw_8bit", "adafactor")
GPUS = [("1x24GB", 1, 24), ("1x48GB", 1, 48), ("1x80GB", 1, 80), ("2x80GB", 2, 80), ("8x80GB", 8, 80)]


@dataclass(frozen=True)
class Setting:
    weight_bytes: float = 4.0  # full fine-tuning's master weights (fp32)
    frozen_bytes: float = 2.0  # LoRA's frozen base (bf16)
    act_bytes: float = 2.0  # activations under bf16 autocast
    tokens: int = 2048  # one micro-batch: 1 x 2048 tokens
    chunk_tokens: int = 512


def terms(arch: Arch, adapter: str, optimizer: str, s: Setting = Setting()) -> dict[str, float]:
    """Bytes of each term for one process holding the whole model (divide the first three by N)."""
    targets = ADAPTERS[adapter]
    if targets is None:
        trained = arch.params()
        weights = s.weight_bytes * trained
    else:
        trained = arch.lora_params(targets)
        if adapter == "QLoRA":  # 4-bit decoder linears; embeddings, head, norms in fp32
            base = arch.decoder_linear_params() * 4.127 / 8 + 4 * arch.other_params()
        else:
            base = s.frozen_bytes * arch.params()
        weights = base + 4 * trained  # the adapter in fp32
    grads = 4 * trained
    if optimizer == "adamw":
        state = 8 * trained
    elif optimizer == "adamw_8bit":
        # embeddings keep 32-bit state (transformers registers them with bitsandbytes as such)
        embed = 2 * arch.vocab * arch.hidden if targets is None else 0
        state = 2 * (trained - embed) + 8 * embed + 8 * trained / 256
    else:
        state = 4 * (arch.factored_state() if targets is None else trained)  # LoRA's A/B: thin matrices
    h, kv, i = arch.hidden, arch.kv, arch.intermediate
    per_layer = (6 * h + 2 * kv + 4 * i) * s.act_bytes * s.tokens
    return {
        "trained": trained,
        "weights": weights,
        "grads": grads,
        "state": state,
        "act": arch.layers * per_layer,
        "act_ckpt": arch.layers * h * s.act_bytes * s.tokens + per_layer,
        "loss_full": 10 * s.tokens * arch.vocab,
        "loss_chunked": 8 * min(s.chunk_tokens, s.tokens) * arch.vocab,
    }


def per_gpu(t: dict[str, float], n: int, checkpointing: bool = True, chunked: bool = True) -> float:
    sharded = (t["weights"] + t["grads"] + t["state"]) / n
    return sharded + t["act_ckpt" if checkpointing else "act"] + t["loss_chunked" if chunked else "loss_full"]


def fits(t: dict[str, float]) -> str:
    for name, n, size in GPUS:
        if per_gpu(t, n) <= 0.9 * size * GB:
            return name
    return "> 8x80GB"


def table() -> str:
    rows = [
        "| model | adapter | optimizer | weights | gradients | optimizer state | activations (ckpt / none) "
        "| loss (chunked / full) | total, 1 GPU | smallest fit |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model, arch in LLAMA.items():
        for adapter in ADAPTERS:
            for optimizer in OPTIMIZERS:
                t = terms(arch, adapter, optimizer)
                rows.append(
                    f"| {model} | {adapter} | {optimizer} | {t['weights'] / GB:.1f} | {t['grads'] / GB:.2f} "
                    f"| {t['state'] / GB:.2f} | {t['act_ckpt'] / GB:.2f} / {t['act'] / GB:.1f} "
                    f"| {t['loss_chunked'] / GB:.2f} / {t['loss_full'] / GB:.2f} | {per_gpu(t, 1) / GB:.1f} "
                    f"| {fits(t)} |"
                )
    return "\n".join(rows)


def small_table() -> str:
    """The terms at the settings of benchmarks/bench_optimizer_memory.py: fp32 throughout, 256 tokens,
    no checkpointing, chunked loss, one process."""
    s = Setting(weight_bytes=4, frozen_bytes=4, act_bytes=4, tokens=256)
    rows = [
        "| run | weights | gradients | optimizer state | activations | predicted model+training |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for optimizer in OPTIMIZERS:
        t = terms(SMALL, "full", optimizer, s)
        total = per_gpu(t, 1, checkpointing=False)
        rows.append(
            f"| {optimizer} | {t['weights'] / 2**20:.0f} MB | {t['grads'] / 2**20:.0f} MB "
            f"| {t['state'] / 2**20:.0f} MB | {t['act'] / 2**20:.0f} MB | {total / 2**20:.0f} MB |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="the terms at bench_optimizer_memory.py's settings")
    args = ap.parse_args()
    print(small_table() if args.small else table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
