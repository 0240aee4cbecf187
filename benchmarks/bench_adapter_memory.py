"""Memory of training steps: full fine-tuning against adapter=lora, side by side.

The builtin `small` model (a ~228M-parameter Llama, 8 layers x 1536, random weights, created
locally on first use, no download) trains N steps on the bundled sample data with the same
config, the same batches and the real package path (load_model -> transformers Trainer, AdamW,
fp32, sdpa, packed) in two fresh worker processes, one after the other, so that each peak is its own:
- `full`: every parameter trains: weights + gradients + two AdamW moments, ~16 bytes per parameter;
- `lora`: FastChat's LoRA (r 8 on q_proj/v_proj): the frozen base weights, and the adapter's
  gradients and moments (0.1 % of the parameters).

Peak RSS is sampled every 2 ms during `trainer.train()` (the training steps only: not the model
build, not the final save). "model+training" is that peak above the RSS the worker had before
the model was loaded (interpreter, torch, transformers, the encoded data), i.e. what the model and
its training add. Prints both, their LoRA/full ratios, and tokens/s; exits 1 if LoRA's peak is
above 40 % of full fine-tuning's. Usage: python benchmarks/bench_adapter_memory.py [--steps N]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import tempfile
import threading
import time

LIMIT = 0.40  # issue 8: LoRA's peak <= 40 % of full fine-tuning's


def measure(adapter: str, steps: int, batch: int, max_length: int, cache: str, threads: int) -> dict:
    import psutil
    import torch

    torch.set_num_threads(threads)
    os.environ["VICUNA_SFT_CACHE"] = cache
    from hydra import compose, initialize_config_module

    from vicuna_sft.config import register_configs, to_config
    from vicuna_sft.data.dataset import build_datasets
    from vicuna_sft.model.adapters import count_parameters
    from vicuna_sft.model.loading import load_model, load_tokenizer
    from vicuna_sft.training.arguments import to_training_arguments
    from vicuna_sft.training.trainer import Trainer

    register_configs()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        dcfg = compose(
            "config",
            overrides=[
                "model=small",
                f"adapter={adapter}",
                "attention=sdpa",
                f"data.max_length={max_length}",
                "data.eval_fraction=0",
                f"trainer.output_dir={tempfile.mkdtemp(prefix=f'bench_{adapter}_')}",
                f"trainer.max_steps={steps}",
                f"trainer.per_device_train_batch_size={batch}",
                "trainer.save_strategy=no",
                "trainer.logging_steps=1",
                "trainer.use_cpu=true",
                "optimizer.lr=1e-4",
            ],
        )
    cfg = to_config(dcfg)
    tokenizer = load_tokenizer(cfg.model)
    data = build_datasets(cfg.data, tokenizer, seed=cfg.trainer.seed)
    me = psutil.Process()
    before_model = me.memory_info().rss
    model = load_model(cfg)
    trainable, total = count_parameters(model)
    args = to_training_arguments(cfg, wrap_classes=list(model._no_split_modules or []))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        data_collator=data.collator,
        processing_class=tokenizer,
    )
    peak, done = [me.memory_info().rss], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.002)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    out = trainer.train()
    elapsed = time.perf_counter() - t0
    done.set()
    watcher.join()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "adapter": adapter,
        "trainable": trainable,
        "total": total,
        "peak_mb": peak[0] / 2**20,
        "above_mb": (peak[0] - before_model) / 2**20,
        "base_mb": before_model / 2**20,
        "tokens": trainer.state.num_input_tokens_seen,
        "tokens_per_s": trainer.state.num_input_tokens_seen / elapsed,
        "first_loss": losses[0],
        "train_loss": out.training_loss,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--steps",
        type=int,
        default=3,
        help="training steps per run (the first allocates the optimizer state)",
    )
    ap.add_argument("--batch", type=int, default=1, help="samples per step")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--cache", default=os.environ.get("VICUNA_SFT_CACHE", os.path.join(".cache", "vicuna_sft"))
    )
    args = ap.parse_args()
    print(
        f"model=small (builtin, random weights); bundled sample data, {args.steps} steps x {args.batch} samples "
        f"(packed, max_length {args.max_length}); fp32, sdpa, AdamW, CPU x{args.threads}"
    )
    results = []
    ctx = mp.get_context("spawn")
    for adapter in ("none", "lora"):  # a fresh process each, one after the other
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            job = (adapter, args.steps, args.batch, args.max_length, args.cache, args.threads)
            results.append(pool.submit(measure, *job).result())
    full, lora = results
    print(
        f"\n{'run':<6} {'trainable':>14} {'of':>7} {'peak RSS':>10} {'model+training':>15} {'tokens/s':>9} {'first loss':>10}"
    )
    for name, r in zip(("full", "lora"), results):
        print(
            f"{name:<6} {r['trainable']:>14,} {r['total'] / 1e6:>6.1f}M {r['peak_mb']:>8.0f}MB {r['above_mb']:>13.0f}MB "
            f"{r['tokens_per_s']:>9.1f} {r['first_loss']:>10.4f}"
        )
    assert full["tokens"] == lora["tokens"], "both runs must see the same data"
    ratio, ratio_above = lora["peak_mb"] / full["peak_mb"], lora["above_mb"] / full["above_mb"]
    print(
        f"\nLoRA / full: peak RSS {ratio:.1%}, model+training {ratio_above:.1%} "
        f"(RSS before the model loaded: {full['base_mb']:.0f}MB / {lora['base_mb']:.0f}MB); "
        f"tokens/s {lora['tokens_per_s'] / full['tokens_per_s']:.2f}x"
    )
    print(
        f"same data: {full['tokens']} tokens each; same first-step loss: {full['first_loss'] == lora['first_loss']}"
    )
    if ratio > LIMIT:
        print(f"FAIL: LoRA's peak RSS is above {LIMIT:.0%} of full fine-tuning's")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
