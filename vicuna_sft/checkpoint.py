"""Which checkpoint to resume from, and how a checkpoint is known to be complete.

The Trainer writes a checkpoint's files one after another; a crash in between leaves a directory
that looks like a checkpoint. Here a checkpoint counts only once every rank has finished writing
it and rank 0 has then written `COMPLETE` into it (atomically). Resume never picks one without.
"""

import json
import logging
import os
import re
import shutil
from typing import Any

from .errors import UserError

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
RUN_FILE = "vicuna_sft_run.json"  # the math-relevant config of the run that wrote the checkpoint
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, COMPLETE)) and os.path.isfile(
        os.path.join(path, "trainer_state.json")
    )


def checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint directory, complete or not, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [
        (int(m.group(1)), os.path.join(output_dir, n))
        for n in os.listdir(output_dir)
        if (m := _CKPT.match(n))
    ]
    return sorted(found)


def latest_complete(output_dir: str) -> str | None:
    complete = [p for _, p in checkpoints(output_dir) if is_complete(p)]
    return complete[-1] if complete else None


def resolve_resume(
    resume: str,
    output_dir: str,
    fingerprint: dict[str, Any] | None = None,
    allow_change: bool = False,
) -> str | None:
    """`never` -> None; `auto` -> newest complete checkpoint in output_dir (or None); else a path.
    With a `fingerprint` (see `run_fingerprint`), a checkpoint of a run whose math differs is refused
    unless `allow_change`."""
    if resume == "never":
        return None
    if resume == "auto":
        path = latest_complete(output_dir)
        discard_incomplete(output_dir, after=path)
    elif not os.path.isdir(resume):
        raise UserError(f"trainer.resume: checkpoint directory not found: {resume}")
    elif not is_complete(resume):
        raise UserError(f"trainer.resume: {resume} is not a complete checkpoint (no {COMPLETE} marker)")
    else:
        path = resume
    if path and fingerprint is not None:
        check_compatible(path, fingerprint, allow_change)
    return path


def discard_incomplete(output_dir: str, after: str | None) -> None:
    """Rank 0 removes the half-written checkpoints newer than the one resumed from, so the rerun
    writes them afresh instead of into a directory holding a crashed write's files."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    start = int(_CKPT.match(os.path.basename(after)).group(1)) if after else -1
    for step, path in checkpoints(output_dir):
        if step > start and not is_complete(path):
            log.warning("removing incomplete checkpoint %s (a crash interrupted its write)", path)
            shutil.rmtree(path, ignore_errors=True)


def run_fingerprint(cfg: Any, world_size: int) -> dict[str, Any]:
    """What a checkpoint's run must share with this one for resuming to continue the same math."""
    from .arguments import gradient_accumulation

    m, d, t = cfg.model, cfg.data, cfg.trainer
    value = lambda x: getattr(x, "value", x)  # noqa: E731  (enums as their values)
    global_batch = t.per_device_train_batch_size * gradient_accumulation(t, world_size) * world_size
    return {
        "model.name_or_path": m.name_or_path,
        "model.revision": m.revision,
        "model.dtype": value(m.dtype),
        "data.path": d.path,
        "data.eval_path": d.eval_path,
        "data.eval_fraction": d.eval_fraction,
        "data.template": value(d.template),
        "data.max_length": d.max_length,
        "data.padding": value(d.padding),
        "global_batch_size": global_batch,
        "trainer.seed": t.seed,
    }


def write_fingerprint(path: str, fingerprint: dict[str, Any]) -> None:
    with open(os.path.join(path, RUN_FILE), "w") as f:
        json.dump(fingerprint, f, indent=2)


def check_compatible(path: str, fingerprint: dict[str, Any], allow_change: bool) -> None:
    file = os.path.join(path, RUN_FILE)
    if not os.path.isfile(file):
        log.warning("%s has no %s: cannot check that it comes from the same config", path, RUN_FILE)
        return
    with open(file) as f:
        saved = json.load(f)
    diffs = [
        f"{k}: {saved.get(k)!r} in the checkpoint, {fingerprint.get(k)!r} now"
        for k in sorted(set(saved) | set(fingerprint))
        if saved.get(k) != fingerprint.get(k)
    ]
    if not diffs:
        return
    msg = f"the config differs from that of the run that wrote {path}:\n  " + "\n  ".join(diffs)
    if allow_change:
        log.warning("resuming anyway (trainer.resume_on_config_change=true): %s", msg)
        return
    raise UserError(
        f"refusing to resume: {msg}\nSet trainer.resume_on_config_change=true to resume anyway, "
        "trainer.resume=never to start over, or another hydra.run.dir"
    )


class AlreadyFinished(Exception):
    """Raised at train begin when the resumed checkpoint already reached max_steps."""


def train(trainer: Any, resume: str | None) -> None:
    """`trainer.train`, except that a checkpoint already at max_steps trains no extra step: the
    Trainer would run one more before checking; `callbacks.StopWhenFinished` stops it first, after
    the checkpoint's weights and state are loaded."""
    try:
        trainer.train(resume_from_checkpoint=resume)
    except AlreadyFinished:
        log.info("%s is already at max_steps=%d: nothing left to train", resume, trainer.state.max_steps)


def mark_complete(path: str, step: int) -> None:
    tmp = os.path.join(path, f".{COMPLETE}.tmp")
    with open(tmp, "w") as f:
        json.dump({"global_step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, COMPLETE))
