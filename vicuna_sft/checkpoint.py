"""Which checkpoint to resume from, and how a checkpoint is known to be complete.

The Trainer writes a checkpoint's files one after another; a crash in between leaves a directory
that looks like a checkpoint. Here a checkpoint counts only once every rank has finished writing
it and rank 0 has then written `COMPLETE` into it (atomically). Resume never picks one without.
"""

import json
import os
import re

from .errors import UserError

COMPLETE = "COMPLETE"
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


def resolve_resume(resume: str, output_dir: str) -> str | None:
    """`never` -> None; `auto` -> newest complete checkpoint in output_dir (or None); else a path."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_complete(output_dir)
    if not os.path.isdir(resume):
        raise UserError(f"trainer.resume: checkpoint directory not found: {resume}")
    if not is_complete(resume):
        raise UserError(f"trainer.resume: {resume} is not a complete checkpoint (no {COMPLETE} marker)")
    return resume


def mark_complete(path: str, step: int) -> None:
    tmp = os.path.join(path, f".{COMPLETE}.tmp")
    with open(tmp, "w") as f:
        json.dump({"global_step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, COMPLETE))
