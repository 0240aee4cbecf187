"""loss=chunked against loss=full with 2 real processes (torchrun, gloo) under fsdp=full_shard:
lm_head (or the tied embedding it shares) is a sharded DTensor, all-gathered for the forward
inside which the chunked loss runs, and its gradient reduce-scattered. Per model (untied and
tied embeddings): eval loss, training loss (gradient accumulation 2, num_items_in_batch across
ranks) and every parameter's full gradient equal."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from vicuna_reference import vicuna_encoder

pytestmark = pytest.mark.slow

WORKER = pathlib.Path(__file__).with_name("loss_fsdp_worker.py")
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def eight_samples(bpe_tokenizer, sample_path) -> list[dict]:
    """2 ranks x 2 per device x accumulation 2: eight samples, all with prompt and reply."""
    from vicuna_sft.data.records import load_conversations

    convs, _ = load_conversations(str(sample_path), skip_errors=False)
    encoded = [e for e in vicuna_encoder(bpe_tokenizer, 192).encode_batch(convs[:32]) if e.trained_tokens > 0]
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded[:8]]


@pytest.fixture(scope="module")
def two_rank_runs(tiny_dir, tied_dir, eight_samples, tmp_path_factory) -> dict:
    """One torchrun launch: both models, loss=full then loss=chunked each."""
    tmp = tmp_path_factory.mktemp("loss-fsdp")
    data = tmp / "samples.json"
    data.write_text(json.dumps(eight_samples))
    out = tmp / "result.pt"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(data), str(out), str(tiny_dir), str(tied_dir)],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return torch.load(out)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_chunked_equals_full_under_full_shard_on_two_ranks(two_rank_runs, tiny_dir, tied_dir, tied):
    model_dir = str(tied_dir if tied else tiny_dir)
    full, chunked = two_rank_runs[model_dir, "full"], two_rank_runs[model_dir, "chunked"]
    assert full["world_size"] == chunked["world_size"] == 2
    assert (full["loss_installed"], chunked["loss_installed"]) == ("None", "LossKind.chunked")
    # really sharded: every parameter a DTensor, lm_head's weight (or the embedding it is tied to) included
    assert all(chunked["sharded"].values()) and all(full["sharded"].values())
    assert ("lm_head.weight" in chunked["grads"]) != tied and "model.embed_tokens.weight" in chunked["grads"]
    assert 2.0 < full["train"] < 10.0
    for key in ("train", "eval"):
        torch.testing.assert_close(torch.tensor(chunked[key]), torch.tensor(full[key]), **TOL, msg=key)
    assert chunked["grads"].keys() == full["grads"].keys() and len(full["grads"]) > 10
    assert all(g.abs().sum() > 0 for g in full["grads"].values())
    worst = max((g - full["grads"][n]).abs().max().item() for n, g in chunked["grads"].items())
    print(f"2 ranks full_shard, tied={tied}: max |grad chunked - full| {worst:.1e}")
    for name, g in chunked["grads"].items():
        assert g.shape == full["grads"][name].shape
        torch.testing.assert_close(g, full["grads"][name], **TOL, msg=lambda m, n=name: f"{n}: {m}")
