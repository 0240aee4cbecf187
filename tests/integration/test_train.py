"""End to end on the tiny model, through the CLI exactly as a user runs it (CPU, offline)."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from vicuna_reference import render, vicuna_encoder

from vicuna_sft.data.collate import Collator, pad_id_for
from vicuna_sft.data.conversation import Conversation
from vicuna_sft.data.records import load_conversations

USER, ASSISTANT, SEP = "USER", "ASSISTANT", " "

pytestmark = pytest.mark.slow

SMOKE = ["experiment=smoke"]  # the default data.padding (packed), as users run it


def generation_prompt(system: str, history: list[tuple[str, str]], user: str) -> str:
    """What the model sees at inference: the prompt up to `ASSISTANT:` (no trailing space)."""
    done = render(Conversation.of("", system, tuple(history))) if history else system + SEP
    return done + f"{USER}: {user}{SEP}{ASSISTANT}:"


def overrides(out, *extra):
    return [*SMOKE, f"hydra.run.dir={out}", *extra]


def batch_loss(model, batch):
    with torch.no_grad():
        return model(**batch, use_cache=False).loss.item()


def sample_batch(tokenizer, sample_path, n=8):
    convs, _ = load_conversations(str(sample_path), skip_errors=False)
    enc = vicuna_encoder(tokenizer, 512)
    feats = [{"input_ids": e.input_ids, "labels": e.labels} for e in enc.encode_batch(convs[:n])]
    return Collator(pad_id_for(tokenizer))(feats)


def test_train_eval_save_reload(tmp_path, run_module, sample_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    r = run_module("vicuna_sft", *overrides(out, "model.save_dtype=bfloat16"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["global_step"] == 40
    # loss decreases: the tiny model learns the sample's templated tasks
    assert result["final_train_loss"] < 0.75 * result["first_train_loss"], result
    state = json.loads((out / "checkpoint-40" / "trainer_state.json").read_text())
    evals = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
    assert len(evals) == 2 and evals[1] < evals[0]
    assert result["eval_loss"] == pytest.approx(evals[1], rel=1e-6)
    assert "first" in r.stdout and str(out / "final") in r.stdout
    assert (out / "config.yaml").is_file() and (out / "data_stats.json").is_file()

    # the final directory: bf16 safetensors, use_cache on, the Vicuna chat template
    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["use_cache"] is True
    assert {t.dtype for t in load_file(final / "model.safetensors").values()} == {torch.bfloat16}
    tok = AutoTokenizer.from_pretrained(final)
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    assert reloaded.dtype == torch.bfloat16
    # checkpoint-40 holds the in-memory model's final weights (fp32): cast to the saved dtype they
    # are bit-identical to the saved ones and give the same loss (loaded with dtype=, so that
    # fp32-only buffers such as RoPE's inv_freq stay fp32 as in any bf16 load)
    trained = load_file(out / "checkpoint-40" / "model.safetensors")
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, trained[name].to(torch.bfloat16)), name
    in_memory = AutoModelForCausalLM.from_pretrained(out / "checkpoint-40", dtype=torch.bfloat16)
    batch = sample_batch(tok, sample_path)
    assert batch_loss(reloaded, batch) == batch_loss(in_memory, batch)

    # inference tokenizes like training
    history, user = [("What is 2 plus 2?", "2 plus 2 is 4.")], "And 3 plus 3?"
    messages = [{"role": r, "content": c} for u, a in history for r, c in (("user", u), ("assistant", a))]
    messages.append({"role": "user", "content": user})
    from vicuna_sft.data.templates import VICUNA_SYSTEM

    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == tok.bos_token + generation_prompt(VICUNA_SYSTEM, history, user)
    full = [*messages, {"role": "assistant", "content": "3 plus 3 is 6."}]
    ids = tok.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"]
    conv = Conversation.of("t", VICUNA_SYSTEM, (*history, (user, "3 plus 3 is 6.")))
    assert ids == vicuna_encoder(tok, 512).encode(conv).input_ids

    # batched generation: the saved tokenizer has a pad token (left padding is the caller's choice)
    left = AutoTokenizer.from_pretrained(final, padding_side="left")
    assert left.pad_token == "<unk>" and config["pad_token_id"] == left.pad_token_id
    assert reloaded.generation_config.pad_token_id == left.pad_token_id
    prompts = [generation_prompt(VICUNA_SYSTEM, [], "Hi"), generation_prompt(VICUNA_SYSTEM, history, user)]
    batch = left(prompts, return_tensors="pt", padding=True)
    assert (batch.attention_mask[0] == 0).any()  # the shorter prompt is padded on the left
    with torch.no_grad():
        out = reloaded.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] > batch.input_ids.shape[1]


@pytest.mark.parametrize(
    ("optimizer", "max_steps", "save_steps", "state_key"),
    [
        ("adamw", 120, 20, "exp_avg"),
        # the low-memory optimizers that run on CPU, shorter: their state must be restored exactly
        # too (bitsandbytes' quantized moments and block scales, Adafactor's factored rows/columns)
        ("adamw_8bit", 30, 10, "state1"),
        ("adafactor", 30, 10, "exp_avg_sq_row"),
    ],
)
def test_resume_after_kill_matches_uninterrupted_run(
    tmp_path, run_module, cache_dir, optimizer, max_steps, save_steps, state_key
):
    common = [
        f"optimizer={optimizer}",
        f"trainer.max_steps={max_steps}",
        f"trainer.save_steps={save_steps}",
        "trainer.eval_strategy=no",
        "trainer.resume=auto",
    ]
    straight = tmp_path / "straight"
    r = run_module("vicuna_sft", *overrides(straight, *common), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    # the same command, killed (SIGKILL) once a checkpoint is complete, then run again
    crashed = tmp_path / "crashed"
    env = {**os.environ, "VICUNA_SFT_CACHE": cache_dir, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "vicuna_sft", *overrides(crashed, *common)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (crashed / f"checkpoint-{save_steps}" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.name.split("-")[1]) for p in crashed.glob("checkpoint-*"))
    assert steps and max(steps) < max_steps, steps  # the kill really cut the run short
    assert not (crashed / "final").exists()
    # the checkpoint resumed from holds this optimizer's own state
    state = torch.load(crashed / f"checkpoint-{max(steps)}" / "optimizer.pt", weights_only=False)["state"]
    keys = [{*s, *s.get("__bnb_optimizer_quant_state__", {})} for s in state.values()]  # bnb nests its own
    assert any(state_key in k for k in keys), keys[:2]

    r = run_module("vicuna_sft", *overrides(crashed, *common), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((crashed / "result.json").read_text())
    assert result["resumed_from"] is not None and result["global_step"] == max_steps
    log = (crashed / "vicuna_sft.log").read_text()
    assert f"optimizer {'adamw_torch' if optimizer == 'adamw' else optimizer} (" in log
    a, b = (load_file(d / "final" / "model.safetensors") for d in (straight, crashed))
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(
        f"kill after checkpoint-20 (latest complete {max(steps)}), resume: max |dw| vs uninterrupted = {diff:.2e}"
    )
    assert diff <= 1e-6, diff


def test_lr_multirun_isolated_jobs_and_summary(tmp_path, run_module):
    sweep = tmp_path / "sweep"
    short = ["trainer.max_steps=12", "trainer.save_steps=12", "trainer.eval_steps=12"]
    r = run_module(
        "vicuna_sft", "-m", *SMOKE, *short, "optimizer.lr=1e-3,3e-3", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((sweep / "summary.json").read_text())
    assert [row["job"] for row in rows] == ["0", "1"]
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert "optimizer.lr=0.001" in rows[0]["overrides"] and "optimizer.lr=0.003" in rows[1]["overrides"]
    assert (sweep / "summary.csv").read_text().count("\n") == 3
    assert not (sweep / "run.lock").exists()  # the sweep's lock (issue 19, item 8) ended with it
    for row, job in zip(rows, ("0", "1")):
        assert row["output_dir"] == str(sweep / job)
        assert (sweep / job / "final" / "model.safetensors").is_file()
        assert row["eval_loss"] is not None and row["final_train_loss"] is not None
    assert rows[0]["final_train_loss"] != rows[1]["final_train_loss"]
    # summary.png is the summary's rows drawn (launch.sweep.sweep_figure, unit-tested), same pixels
    import matplotlib.image
    import numpy as np

    from vicuna_sft.launch.sweep import sweep_figure
    from vicuna_sft.training.plots import save_figure

    again = save_figure(sweep_figure(rows), str(tmp_path / "again.png"))
    assert np.array_equal(matplotlib.image.imread(sweep / "summary.png"), matplotlib.image.imread(again))
    best = min(rows, key=lambda row: row["eval_loss"])
    assert [row["best"] for row in rows] == [row is best for row in rows]
    assert f"best: job {best['job']} optimizer.lr=" in r.stdout

    # the second job behaves exactly as it would alone (no state leaked from the first)
    alone = tmp_path / "alone"
    r = run_module("vicuna_sft", *overrides(alone, *short, "optimizer.lr=3e-3"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    solo = json.loads((alone / "result.json").read_text())
    assert solo["final_train_loss"] == rows[1]["final_train_loss"]
    assert solo["eval_loss"] == rows[1]["eval_loss"]


def test_fsdp_on_a_single_process(tmp_path, run_module):
    """`python -m vicuna_sft fsdp=full_shard` without torchrun (e.g. one GPU): the Trainer only runs
    FSDP under torch.distributed, so the app starts its one worker itself instead of failing."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    r = run_module(
        "vicuna_sft",
        *overrides(out, "fsdp=full_shard", "trainer.max_steps=6", "trainer.save_steps=3"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["global_step"] == 6
    assert (out / "checkpoint-6" / "pytorch_model_fsdp.bin").is_file()  # saved by accelerate's FSDP path
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.use_cache is True


def test_a_failing_sweep_job_does_not_stop_the_others(tmp_path, run_module):
    sweep = tmp_path / "sweep"
    r = run_module(
        "vicuna_sft",
        "-m",
        *SMOKE,
        "trainer.max_steps=4",
        "optimizer.lr=-1,1e-3",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "optimizer.lr must be > 0" in r.stderr and "1 of 2 sweep jobs failed" in r.stderr
    rows = json.loads((sweep / "summary.json").read_text())
    assert [(row["job"], row["status"]) for row in rows] == [("0", "failed"), ("1", "completed")]
    assert rows[1]["global_step"] == 4


POISON = "{_target_: vicuna_test_callbacks.PoisonWeights, step: 3}"  # nan weights after step 3
DIVERGES = [
    "trainer.max_steps=10",
    "trainer.logging_steps=2",
    "trainer.save_steps=2",
    "trainer.eval_strategy=no",
]


def test_a_diverged_run_stops_and_is_never_best(tmp_path, run_module):
    """Issue 19: nan weights used to train on to the end with a logged loss of 0.0 (transformers'
    nan filter), exit 0, and win a sweep. Now the run stops at the first check after it (step 4:
    logging_steps=2) without saving that step, says so in one line, exits 1, and its result.json
    says diverged."""
    out = tmp_path / "run"
    r = run_module("vicuna_sft", *overrides(out, *DIVERGES, f"trainer.callbacks=[{POISON}]"), cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "diverged" in x]
    assert line.startswith(
        "vicuna_sft: error: training diverged at step 4: grad_norm is nan (finite at step 2"
    )
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "diverged" and result["diverged_at_step"] == 4 and result["global_step"] == 4
    assert result["final_train_loss"] is None and result["final_dir"] is None and result["error"] in line
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # not checkpoint-4
    assert not (out / "final").exists()

    sweep = tmp_path / "sweep"
    r = run_module(
        "vicuna_sft",
        "-m",
        *SMOKE,
        *DIVERGES,
        f"trainer.callbacks=[],[{POISON}]",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert r.returncode == 1 and "1 of 2 sweep jobs failed: ['1']" in r.stderr, r.stderr[-3000:]
    rows = json.loads((sweep / "summary.json").read_text())
    assert [(row["job"], row["status"], row["best"]) for row in rows] == [
        ("0", "completed", True),
        ("1", "diverged", False),
    ]
    assert rows[1]["objective"] is None and rows[1]["error"].startswith("training diverged at step 4")
    assert rows[0]["global_step"] == 10 and math.isfinite(rows[0]["objective"])
    assert f"best: job 0 trainer.callbacks=[] eval_loss {rows[0]['objective']:.4f}" in r.stdout


def test_a_weighted_source_that_contributes_nothing_is_reported(tmp_path, run_module, sample_path):
    """Issue 19: `{path: one_record.json, weight: 0.4}` next to other data trained on none of it,
    silently. The log and data_stats.json now give each source's samples, and it gets a warning."""
    one = tmp_path / "one_record.json"
    one.write_text(json.dumps(json.loads(sample_path.read_text())[:1]))
    out = tmp_path / "run"
    path = f"data.path=[{sample_path},{{path: {one}, weight: 0.4}}]"
    r = run_module(
        "vicuna_sft", *overrides(out, path, "trainer.max_steps=2", "trainer.eval_strategy=no"), cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((out / "data_stats.json").read_text())["records"]
    sample, single = stats[str(sample_path)], stats[str(one)]
    assert (single["weight"], single["train_samples"]) == (0.4, 0)
    assert sample["train_samples"] == sample["train_records"] > 0
    assert sample["train_records"] + single["train_records"] + stats_eval(out) == sample["kept"] + 1
    log = r.stdout + r.stderr
    (line,) = [x for x in log.splitlines() if "contributes no training sample" in x]
    assert f"data {one} contributes no training sample" in line and "weight 0.4" in line
    assert f"; weight 1: {sample['train_samples']} training samples" in log


def stats_eval(out) -> int:
    """Conversations held out for eval (data.eval_fraction of every source, before weighting)."""
    return json.loads((out / "data_stats.json").read_text())["eval"]["read"]


def test_trainer_callbacks_add_a_real_transformers_callback(tmp_path, run_module):
    """`trainer.callbacks`: EarlyStoppingCallback from the config. With a threshold no eval can beat,
    patience 1 stops the run at the second evaluation (step 2 of 40)."""
    out = tmp_path / "run"
    early = (
        "trainer.callbacks=[{_target_: transformers.EarlyStoppingCallback, "
        "early_stopping_patience: 1, early_stopping_threshold: 100.0}]"
    )
    args = overrides(
        out, early, "trainer.eval_strategy=steps", "trainer.eval_steps=1", "trainer.save_steps=100"
    )
    r = run_module("vicuna_sft", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["global_step"] == 2


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            "{_target_: transformers.NoSuchCallback}",
            "trainer.callbacks[0]: cannot instantiate transformers.NoSuchCallback",
        ),
        (
            "{_target_: collections.OrderedDict}",
            "trainer.callbacks[0]: collections.OrderedDict is not a transformers.TrainerCallback",
        ),
        ("{patience: 3}", "trainer.callbacks[0] needs a _target_"),
    ],
)
def test_a_bad_callback_is_a_clear_error(tmp_path, run_module, node, message):
    r = run_module("vicuna_sft", *overrides(tmp_path / "run", f"trainer.callbacks=[{node}]"), cwd=tmp_path)
    assert r.returncode == 1 and message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    # the lock, taken before Hydra wrote .hydra/, is released (its file removed) on the way out
    assert (tmp_path / "run" / ".hydra").is_dir() and not (tmp_path / "run" / "run.lock").exists()


def test_the_default_command_learns_visibly(tmp_path, run_module):
    """`python -m vicuna_sft` as a first run: the builtin tiny model has random weights, so at the
    Vicuna recipe's lr 2e-5 its loss stayed flat (6.21 -> 6.20 in 60 steps); its own lr
    (conf/model/tiny.yaml) must make the loss fall by a real margin, on train and eval alike."""
    out = tmp_path / "run"
    r = run_module("vicuna_sft", "trainer.max_steps=60", f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    first, last = result["first_train_loss"], result["final_train_loss"]
    assert first > 6.0  # a random model on a ~1k-token vocabulary: about ln(vocab)
    assert last < first - 1.5, (first, last)
    assert result["eval_loss"] < first - 1.5, result
    # the run removed its lock file when it ended (a dead pid in it would look like a stale lock)
    assert not (out / "run.lock").exists()
