"""Memory of the optimizers and speed of the LoRA variants, side by side on model=small.

The builtin `small` model (a ~228M-parameter Llama, 8 layers x 1536, random weights, created
locally on first use, no download) trains N steps on the bundled sample data through the real
package path (load_model -> the package's Trainer, fp32, sdpa, packed), each run in a fresh worker
process one after the other, so that each peak is its own:
- full fine-tuning with `optimizer=adamw`, `adamw_8bit`, `adafactor`: peak RSS during
  `trainer.train()` (sampled every 2 ms) and the optimizer's state in bytes per trained parameter,
  measured from the optimizer after the first step (training/optimizers.py, what the run logs);
- `adapter=lora` against `adapter=lora adapter.use_dora=true` (FastChat's r 8 on q_proj/v_proj):
  tokens/s (DoRA recomputes each adapted weight's norm every step).

Prints each run, the ratios to adamw (and DoRA / LoRA), and exits 1 if adamw_8bit's state is above
30 % of adamw's or its peak RSS is not lower. Usage: python benchmarks/bench_optimizer_memory.py [--steps N]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import tempfile
import threading
import time

STATE_LIMIT = 0.30  # issue 20: adamw_8bit's state <= 30 % of adamw's

RUNS = {
    "adamw": ["optimizer=adamw"],
    "adamw_8bit": ["optimizer=adamw_8bit"],
    "adafactor": ["optimizer=adafactor"],
    "lora": ["adapter=lora"],
    "dora": ["adapter=lora", "adapter.use_dora=true"],
}


def measure(name: str, steps: int, batch: int, max_length: int, cache: str, threads: int) -> dict:
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
    from vicuna_sft.training.optimizers import OptimizerStateLog, state_bytes
    from vicuna_sft.training.trainer import Trainer

    register_configs()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        dcfg = compose(
            "config",
            overrides=[
                "model=small",
                *RUNS[name],
                "attention=sdpa",
                f"data.max_length={max_length}",
                "data.eval_fraction=0",
                f"trainer.output_dir={tempfile.mkdtemp(prefix=f'bench_{name}_')}",
                f"trainer.max_steps={steps}",
                f"trainer.per_device_train_batch_size={batch}",
                "trainer.save_strategy=no",
                "trainer.logging_steps=1",
                "trainer.use_cpu=true",
                "trainer.report_to=[]",
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
    state_log = OptimizerStateLog(cfg.optimizer.name)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        data_collator=data.collator,
        processing_class=tokenizer,
        callbacks=[state_log],
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
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {
        "name": name,
        "optimizer": type(optimizer).__module__.split(".")[0] + "." + type(optimizer).__name__,
        "trainable": trainable,
        "total": total,
        "state_mb": state_bytes(optimizer) / 2**20,
        "bytes_per_param": state_log.bytes_per_parameter,
        "peak_mb": peak[0] / 2**20,
        "above_mb": (peak[0] - before_model) / 2**20,
        "tokens": trainer.state.num_input_tokens_seen,
        "tokens_per_s": trainer.state.num_input_tokens_seen / elapsed,
        "first_loss": losses[0],
        "train_loss": out.training_loss,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--steps", type=int, default=3, help="training steps per run (the first allocates the state)"
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
        f"(packed, max_length {args.max_length}); fp32, sdpa, CPU x{args.threads}"
    )
    results = {}
    ctx = mp.get_context("spawn")
    for name in RUNS:  # a fresh process each, one after the other
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            job = (name, args.steps, args.batch, args.max_length, args.cache, args.threads)
            results[name] = pool.submit(measure, *job).result()
    print(
        f"\n{'run':<11} {'optimizer':<24} {'trainable':>12} {'state':>9} {'B/param':>8} {'peak RSS':>10} "
        f"{'model+training':>15} {'tokens/s':>9} {'first loss':>10}"
    )
    for name, r in results.items():
        print(
            f"{name:<11} {r['optimizer']:<24} {r['trainable']:>12,} {r['state_mb']:>7.0f}MB {r['bytes_per_param']:>8.3f} "
            f"{r['peak_mb']:>8.0f}MB {r['above_mb']:>13.0f}MB {r['tokens_per_s']:>9.1f} {r['first_loss']:>10.4f}"
        )
    adamw = results["adamw"]
    print()
    for name in ("adamw_8bit", "adafactor"):
        r = results[name]
        print(
            f"{name} / adamw: optimizer state {r['state_mb'] / adamw['state_mb']:.1%}, "
            f"peak RSS {r['peak_mb'] / adamw['peak_mb']:.1%} ({r['peak_mb'] - adamw['peak_mb']:+.0f}MB), "
            f"model+training {r['above_mb'] / adamw['above_mb']:.1%}"
        )
    lora, dora = results["lora"], results["dora"]
    print(
        f"DoRA / LoRA: tokens/s {dora['tokens_per_s'] / lora['tokens_per_s']:.2f}x "
        f"({dora['tokens_per_s']:.1f} vs {lora['tokens_per_s']:.1f}), trainable {dora['trainable']:,} vs {lora['trainable']:,}"
    )
    tokens = {r["tokens"] for r in results.values()}
    assert len(tokens) == 1, f"every run must see the same data: {tokens}"
    print(f"same data: {tokens.pop()} tokens each")
    eight = results["adamw_8bit"]
    failed = []
    if eight["state_mb"] > STATE_LIMIT * adamw["state_mb"]:
        failed.append(f"adamw_8bit's optimizer state is above {STATE_LIMIT:.0%} of adamw's")
    if eight["peak_mb"] >= adamw["peak_mb"]:
        failed.append("adamw_8bit's peak RSS is not below adamw's")
    for f in failed:
        print(f"FAIL: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
