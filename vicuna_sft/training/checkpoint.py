"""Which checkpoint to resume from, and how a checkpoint is known to be complete.

The Trainer writes a checkpoint's files one after another; a crash in between leaves a directory
that looks like a checkpoint. Here a checkpoint counts only once every rank has finished writing
it and rank 0 has then written `COMPLETE` into it (atomically), holding the checkpoint's manifest
(every file, its size and checksum: manifest.py). Resume never picks one without, checks the
manifest first (a checkpoint damaged since is set aside and the next older one is used), and
`save_total_limit` only ever deletes complete checkpoints older than the newest complete one.

Loading a checkpoint unpickles parts of it (torch's distributed checkpoint metadata and
optimizer state): resume only from checkpoints of a trusted origin. The manifest and the
allow-list check of `.metadata` files (manifest.check_dcp_metadata) catch damage and a planted
metadata file, not a forger who rewrites the manifest too.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import time
from typing import Any

from ..errors import UserError
from ..files import replacing
from ..process import exchange, launcher_store, rank, world_size
from ..validation import TRAINER_ARGS_RESUME_SAFE, trainer_args
from . import manifest

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
SET_ASIDE = "set_aside"  # checkpoints this run will not continue from (see set_aside_newer)
KEEP_SET_ASIDE = 3  # set_aside/ keeps this many newest entries (each can be a full model)
# `checkpoint-<step>.<time>[.<why>][-<n>]` (see set_aside_newer)
_SET_ASIDE_NAME = re.compile(r"^checkpoint-(\d+)\.(\d{8}-\d{6})(?:\.[a-z_]+)?(?:-(\d+))?$")
RUN_FILE = "vicuna_sft_run.json"  # the math-relevant config of the run that wrote the checkpoint
MARKER_TMP = f".{COMPLETE}.tmp"
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


# how long ranks > 0 wait for rank 0 to verify and choose the checkpoint (80 GB at ~1 GB/s: ~2 min)
DECISION_TIMEOUT_S = 3600


def resolve_resume(
    resume: str,
    output_dir: str,
    fingerprint: dict[str, Any] | None = None,
    allow_change: bool = False,
    end: tuple[int, float] | None = None,
) -> str | None:
    """`never` -> None; `auto` -> newest intact complete checkpoint in output_dir (or None) not
    past the run's `end` (trainer.max_steps, trainer.num_train_epochs; see `past_end`); else a
    path. With a `fingerprint` (see `run_fingerprint`), a checkpoint of a run whose math differs is
    refused unless `allow_change`. Checkpoints of the output dir that this run will not continue
    from and that are newer than its starting point are set aside (never deleted, never trusted
    later). Rank 0 decides (it reads the checkpoints once) and tells the other ranks."""
    store = launcher_store(DECISION_TIMEOUT_S) if world_size() > 1 else None
    if store is not None and rank() != 0:
        decision = json.loads(exchange("resume", "", store)[0])
        if "error" in decision:
            raise UserError(decision["error"])
        return decision["path"]
    try:
        path = _choose(resume, output_dir, fingerprint, allow_change, end)
    except UserError as e:
        if store is not None:
            exchange("resume", json.dumps({"error": str(e)}), store)
        raise
    if store is not None:
        exchange("resume", json.dumps({"path": path}), store)
    return path


def _choose(
    resume: str,
    output_dir: str,
    fingerprint: dict[str, Any] | None,
    allow_change: bool,
    end: tuple[int, float] | None = None,
) -> str | None:
    if resume == "never":
        path = None
    elif resume == "auto":
        path = newest_intact(output_dir, end)
    elif not os.path.isdir(resume):
        raise UserError(f"trainer.resume: checkpoint directory not found: {resume}")
    elif not is_complete(resume):
        if not os.path.isfile(os.path.join(resume, "trainer_state.json")):
            raise UserError(f"trainer.resume: {resume} is not a complete checkpoint (no trainer_state.json)")
        if found := manifest.check_dcp_metadata(resume):  # no manifest: at least nothing runs code
            raise UserError(f"trainer.resume: {resume} is unsafe to load ({'; '.join(found)})")
        log.warning(
            "%s has no %s marker (not written by vicuna_sft?): resuming as you asked", resume, COMPLETE
        )
        path = resume
    elif found := damage(resume):
        raise UserError(f"trainer.resume: {resume} is damaged ({'; '.join(found)})")
    else:
        path = resume
    if path and fingerprint is not None:
        check_compatible(path, fingerprint, allow_change)
    set_aside_newer(output_dir, step_of(path) if path else 0, protect=path)
    return path


def damage(path: str) -> list[str]:
    """What is wrong with a complete checkpoint (empty: intact), from its manifest, before anything
    of it is loaded."""
    try:
        with open(os.path.join(path, COMPLETE)) as f:
            marker = json.load(f)
    except (OSError, ValueError) as e:
        return [f"its {COMPLETE} marker is unreadable ({e})"]
    files = marker.get("manifest") if isinstance(marker, dict) else None
    if files is None:
        log.warning("%s was marked complete without a manifest (an older vicuna_sft): not verified", path)
        return manifest.check_dcp_metadata(path)
    return manifest.problems(path, files) or manifest.check_dcp_metadata(path)


def past_end(path: str, end: tuple[int, float]) -> bool:
    """Whether a checkpoint is beyond where this run ends (`end`: max_steps, and num_train_epochs
    when max_steps <= 0): a run asked to be shorter than what is there does not resume past its
    own end (that would train nothing and save the longer run's weights as its own)."""
    max_steps, epochs = end
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return False  # unreadable: damage() reports it
    if max_steps > 0:
        return step_of(path) > max_steps
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return isinstance(epoch, int | float) and epoch > epochs + 1e-6


def newest_intact(output_dir: str, end: tuple[int, float] | None = None) -> str | None:
    """The newest complete checkpoint whose files match its manifest, and not past `end`. Damaged
    newer ones are set aside with a warning; when every complete checkpoint is damaged, nothing is
    moved and the run stops with what was found (resuming from step 0 instead would silently lose
    the work). Those past `end` are set aside by set_aside_newer (never deleted)."""
    broken = []
    complete = [p for _, p in checkpoints(output_dir) if is_complete(p)]
    beyond = [p for p in complete if end is not None and past_end(p, end)]
    if beyond:
        log.warning(
            "%s: past this run's end (trainer.max_steps=%d, num_train_epochs=%g): this run starts before them, "
            "and sets them aside",
            ", ".join(beyond),
            *end,
        )
    for path in reversed([p for p in complete if p not in beyond]):
        found = damage(path)
        if not found:
            for b, why in broken:
                log.warning("%s is damaged (%s): falling back to %s", b, why, path)
                set_aside(output_dir, b, "damaged")
            return path
        broken.append((path, "; ".join(found)))
    if broken:
        raise UserError(
            f"no intact checkpoint to resume in {output_dir}:\n  "
            + "\n  ".join(f"{b}: {why}" for b, why in broken)
            + "\nPoint trainer.resume=PATH at a checkpoint you trust, or start over with trainer.resume=never "
            "(both set the damaged ones aside)"
        )
    return None


def step_of(path: str) -> int:
    """The step a checkpoint was written at, from its own state (its name may be anything: a
    set-aside `checkpoint-8.<time>`, a copy); the `checkpoint-N` name only when it holds none."""
    for name in (COMPLETE, "trainer_state.json"):
        try:
            with open(os.path.join(path, name)) as f:
                step = json.load(f).get("global_step")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(step, int) and step >= 0:
            return step
    m = _CKPT.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else 0


def set_aside_newer(output_dir: str, start: int, protect: str | None = None) -> None:
    """Rank 0 moves checkpoints newer than the starting step (a crashed write, or an earlier run's
    later steps under resume=never) into `set_aside/`, so that nothing of another timeline is
    resumed or overwritten in place. Nothing is deleted; `protect` (the checkpoint being resumed,
    possibly one in set_aside/) is never pruned from set_aside/."""
    if rank() != 0:
        return
    for step, path in checkpoints(output_dir):
        if step > start:
            state = "complete" if is_complete(path) else "incomplete (a crash interrupted its write)"
            dest = set_aside(output_dir, path, protect=protect)
            log.warning(
                "this run starts at step %d: set aside %s checkpoint %s -> %s", start, state, path, dest
            )


# what a finished run leaves in its directory besides checkpoints (config.yaml is rewritten first)
RUN_OUTPUTS = ("result.json", "final", "final_adapter", "plots", "data_stats.json")
_PREVIOUS = re.compile(r"^previous-run\.(\d{8}-\d{6})(?:-(\d+))?$")


def set_aside_previous_outputs(output_dir: str) -> str | None:
    """Rank 0, at the start of a run: the outputs an earlier run left here (result.json, final/,
    ...) move into `set_aside/previous-run.<time>/`, so nothing in the directory claims to be from
    this run unless it is, even if this run is interrupted before writing its own. The 3 newest
    such folders are kept. Returns where they went (None: there were none)."""
    found = [n for n in RUN_OUTPUTS if os.path.lexists(os.path.join(output_dir, n))]
    if rank() != 0 or not found:
        return None
    base = dest = os.path.join(output_dir, SET_ASIDE, "previous-run." + time.strftime("%Y%m%d-%H%M%S"))
    n = 1
    while os.path.exists(dest):
        dest, n = f"{base}-{n}", n + 1
    os.makedirs(dest)
    for name in found:
        os.replace(os.path.join(output_dir, name), os.path.join(dest, name))
    log.warning("set aside the previous run's %s -> %s", ", ".join(found), dest)
    earlier = sorted(
        ((m.group(1), int(m.group(2) or 0)), name)
        for name in os.listdir(os.path.dirname(dest))
        if (m := _PREVIOUS.match(name))
    )
    for _, name in earlier[: max(len(earlier) - KEEP_SET_ASIDE, 0)]:
        shutil.rmtree(os.path.join(os.path.dirname(dest), name), ignore_errors=True)
    return dest


def set_aside(output_dir: str, path: str, why: str = "", protect: str | None = None) -> str | None:
    """Rank 0 moves a checkpoint into `set_aside/<name>.<time>[.<why>]` (a rename: it needs no
    space), then keeps only the newest there (prune_set_aside)."""
    if rank() != 0:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S") + (f".{why}" if why else "")
    dest = base = os.path.join(output_dir, SET_ASIDE, f"{os.path.basename(path)}.{stamp}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    n = 1
    while os.path.exists(dest):
        dest, n = f"{base}-{n}", n + 1
    os.replace(path, dest)
    if why:
        log.warning("set aside %s -> %s", path, dest)
    prune_set_aside(output_dir, KEEP_SET_ASIDE, protect=protect)
    return dest


def prune_set_aside(output_dir: str, keep: int, protect: str | None = None) -> None:
    """Delete all but the `keep` newest checkpoints in `set_aside/` (by the time they were set aside,
    from their names; within one second, by step); anything else found there is left alone."""
    directory = os.path.join(output_dir, SET_ASIDE)
    if not os.path.isdir(directory):
        return
    entries = sorted(
        ((m.group(2), int(m.group(3) or 0), int(m.group(1))), name)
        for name in os.listdir(directory)
        if (m := _SET_ASIDE_NAME.match(name))
    )
    protected = os.path.realpath(protect) if protect else None
    for _, name in entries[: max(len(entries) - keep, 0)]:
        if os.path.realpath(os.path.join(directory, name)) == protected:
            continue  # the checkpoint this run resumes from
        log.warning("%s/ keeps the %d newest set-aside checkpoints: deleting %s", directory, keep, name)
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def write_failure(output_dir: str, path: str, error: BaseException) -> UserError:
    """A checkpoint write that failed (disk full, quota, I/O error): rank 0 sets the partial
    checkpoint aside, and the run stops with one line saying where, why, and what resumes."""
    reason = write_error_reason(error, output_dir)
    moved = set_aside(output_dir, path, "write_failed") if os.path.isdir(path) else None
    resume = latest_complete(output_dir)
    return UserError(
        f"could not write checkpoint {path}: {reason}"
        + (f"; the partial checkpoint was set aside to {moved}" if moved else "")
        + "; free some space and run the same command to resume from "
        + (resume if resume else "the start (no complete checkpoint yet)")
    )


def write_error_reason(error: BaseException, directory: str) -> str:
    """What went wrong writing into `directory`, with the space left there. torch.save reports a
    full disk as a RuntimeError without errno ("basic_ios::clear: iostream error"), hence the
    free space next to whatever the error says."""
    import errno

    cause: BaseException | None = error
    while cause is not None and not (isinstance(cause, OSError) and cause.errno):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        text = cause.strerror or str(cause)
    else:
        text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return text
    if free < 64 * 2**20 and not (isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)):
        text = f"No space left on device ({text})"
    return f"{text}, {free / 2**20:.1f} MiB free in {directory}"


def rotate(output_dir: str, keep: int | None, protect: str | None = None) -> None:
    """Keep the `keep` newest complete checkpoints, and `protect` (the best one so far, which
    trainer.args.load_best_model_at_end loads at the end). Runs after the newest is marked
    complete (the Trainer's own rotation runs before that, and could leave no complete checkpoint)."""
    if not keep:
        return
    complete = [p for _, p in checkpoints(output_dir) if is_complete(p)]
    kept = os.path.realpath(protect) if protect else None
    for path in complete[:-keep]:
        if os.path.realpath(path) == kept:
            continue
        log.info("deleting old checkpoint %s (trainer.save_total_limit=%d)", path, keep)
        shutil.rmtree(path, ignore_errors=True)


def run_fingerprint(
    cfg: Any,
    world_size: int,
    data_digests: dict[str, str] | None = None,
    model_digests: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What a checkpoint's run must share with this one for resuming to continue the same math:
    the config that shapes it, the content of its data files (`data_digests`: path -> hash,
    data.sources.data_digests) and of the model's and tokenizer's files (`model_digests`,
    model.identity), so a file changed under the same path is noticed."""
    from ..validation import gradient_accumulation

    m, d, t = cfg.model, cfg.data, cfg.trainer
    value = lambda x: getattr(x, "value", x)  # noqa: E731  (enums as their values)
    global_batch = t.per_device_train_batch_size * gradient_accumulation(t, world_size) * world_size
    return {
        "model.name_or_path": m.name_or_path,
        "model.revision": m.revision,
        "model.dtype": value(m.dtype),
        "model.activation_checkpointing": m.activation_checkpointing,
        "data.path": d.path,
        "data.eval_path": d.eval_path,
        "data.eval_fraction": d.eval_fraction,
        "data.template": d.template,
        "data.template_kwargs": dict(d.template_kwargs),
        "data.train_on": value(d.train_on),
        "data.reasoning": value(d.reasoning),
        "data.max_length": d.max_length,
        "global_batch_size": global_batch,
        "trainer.seed": t.seed,
        "trainer.precision": value(t.precision),
        "trainer.num_train_epochs": t.num_train_epochs,
        "trainer.max_steps": t.max_steps,
        # the optimizer and its schedule: all of them change the weights a resumed run ends with
        **{f"optimizer.{k}": value(v) for k, v in vars(cfg.optimizer).items()},
        "data.long": value(d.long),
        **{f"data content ({path})": digest for path, digest in sorted((data_digests or {}).items())},
        **{f"model content ({path})": digest for path, digest in sorted((model_digests or {}).items())},
        # what trains (and the frozen base's quantization): a checkpoint's adapter fits only its own config
        **{
            f"adapter.{k}": value(v) if not isinstance(v, list) else list(v)
            for k, v in vars(cfg.adapter).items()
        },
        # TrainingArguments passed through; those in RESUME_SAFE may change at resume
        **{f"trainer.args.{k}": v for k, v in sorted(trainer_args(t.args).items())},
    }


# Fingerprint keys a resumed run may change without asking: how long it trains, not what a step
# does (a longer or shorter run continues the same weights and optimizer state; the lr schedule
# is that of the new length from the resumed step on). Logging, eval and save cadence,
# report_to and save_total_limit are not in the fingerprint at all.
RESUME_SAFE = (
    "trainer.max_steps",
    "trainer.num_train_epochs",
    *(f"trainer.args.{k}" for k in TRAINER_ARGS_RESUME_SAFE),
)


def write_fingerprint(path: str, fingerprint: dict[str, Any]) -> None:
    with open(os.path.join(path, RUN_FILE), "w") as f:
        json.dump(fingerprint, f, indent=2)


def check_compatible(path: str, fingerprint: dict[str, Any], allow_change: bool) -> None:
    """Refuse to resume `path` when a fingerprint key outside RESUME_SAFE differs (unless
    `allow_change`); changes of RESUME_SAFE keys are logged and resumed across."""
    file = os.path.join(path, RUN_FILE)
    if not os.path.isfile(file):
        log.warning("%s has no %s: cannot check that it comes from the same config", path, RUN_FILE)
        return
    with open(file) as f:
        saved = json.load(f)
    changed = [k for k in sorted(set(saved) | set(fingerprint)) if saved.get(k) != fingerprint.get(k)]
    diff = lambda k: f"{k}: {saved.get(k)!r} in the checkpoint, {fingerprint.get(k)!r} now"  # noqa: E731
    safe = [diff(k) for k in changed if k in RESUME_SAFE]
    unsafe = [diff(k) for k in changed if k not in RESUME_SAFE]
    if safe:
        log.info("resuming %s across changes that are safe to resume across: %s", path, "; ".join(safe))
    if not unsafe:
        return
    msg = f"the config differs from that of the run that wrote {path}:\n  " + "\n  ".join(unsafe)
    if allow_change:
        log.warning("resuming anyway (trainer.resume_on_config_change=true): %s", msg)
        return
    run_dir = os.path.dirname(os.path.abspath(path))
    n = 2
    while os.path.exists(f"{run_dir}-{n}"):
        n += 1
    raise UserError(
        f"refusing to resume: {msg}\nResuming would continue weights and optimizer state trained under "
        f"the other config. Start a new run in another directory (hydra.run.dir={run_dir}-{n}), or start "
        "over in this one with trainer.resume=never (its checkpoints are set aside); only if you know the "
        "change is harmless, trainer.resume_on_config_change=true resumes anyway"
    )


def mark_complete(path: str, step: int, files: dict[str, dict[str, Any]] | None = None) -> None:
    """Write the marker, with the manifest of `files` (manifest.hash_share; by default every file
    hashed here), atomically."""
    if files is None:
        files = manifest.hash_share(path, manifest.list_files(path, exclude=(COMPLETE, MARKER_TMP)), 0, 1)
    with replacing(os.path.join(path, COMPLETE), os.path.join(path, MARKER_TMP)) as tmp, open(tmp, "w") as f:
        json.dump({"global_step": step, "manifest": {"hash": manifest.HASH, "files": files}}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def umask_mode() -> int:
    """The mode a new file gets here (0o644 under the usual umask 022)."""
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def apply_umask(root: str) -> None:
    """safetensors writes its files 0600; give every file under `root` the usual mode, so that a
    shared cluster's group can read the model as it reads the rest."""
    mode = umask_mode()
    for dirpath, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(PermissionError):  # another user's file: leave it as is
                os.chmod(os.path.join(dirpath, name), mode)
