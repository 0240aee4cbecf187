"""What a COMPLETE marker certifies: every file of the checkpoint, its size and its checksum.

Written when a checkpoint is marked complete (checkpoint.mark_complete), checked before a run
resumes from it (checkpoint.resolve_resume): a file deleted, truncated or rewritten since is found
before anything is loaded, and the run falls back to an older checkpoint instead of continuing
with, say, a fresh optimizer.

Cost: the checksum is xxh3-128 (not a cryptographic hash: it detects damage, not tampering).
Measured on the 2-core test machine under load: 21 GB/s in memory, 1.4-1.6 GB/s from the page
cache (copying out of the cache dominates), i.e. marking reads each byte of the checkpoint once
more, right after it was written, normally from the page cache. The files are shared round-robin
between the ranks: a sharded checkpoint (one file per rank) costs 1/N each; a full-state-dict 7B
checkpoint (~80 GB, of which one ~54 GB optimizer.pt) costs ~35-60 s, paid by the rank that
hashes the largest file. Before resuming, rank 0 reads the checkpoint once (~1 min for 80 GB at
1.5 GB/s; disk speed when it is no longer cached).
"""

import os
import pickle
import warnings
import zipfile
from typing import Any

from ..files import HASH, hash_file


def list_files(root: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Every regular file under `root` as a relative path (sharded checkpoints have subdirectories)."""
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel not in exclude:
                out.append(rel)
    return sorted(out)


def hash_share(root: str, files: list[str], rank: int, world: int) -> dict[str, dict[str, Any]]:
    """This rank's share of the manifest: files rank, rank + world, ... of the sorted list."""
    entries = {}
    for rel in files[rank::world]:
        size, digest = hash_file(os.path.join(root, rel))
        entries[rel] = {"size": size, HASH: digest}
    return entries


def problems(root: str, manifest: dict[str, Any]) -> list[str]:
    """What differs between the checkpoint on disk and its manifest (empty: intact). Sizes are
    compared first for every file (cheap), then checksums."""
    files = manifest.get("files")
    if not isinstance(files, dict) or manifest.get("hash") != HASH:
        return [f"its manifest is unreadable (expected files hashed with {HASH})"]
    found = []
    for rel, entry in files.items():
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            found.append(f"{rel} is missing")
        elif os.path.getsize(path) != entry["size"]:
            found.append(f"{rel} has {os.path.getsize(path)} bytes, {entry['size']} when written")
    if found:
        return found
    for rel, entry in files.items():
        if hash_file(os.path.join(root, rel))[1] != entry[HASH]:
            found.append(f"{rel} changed since it was written ({HASH} differs)")
    return found


# ---- torch distributed checkpoint metadata: parsed without running code --------------------------

# What a `.metadata` file of torch.distributed.checkpoint legitimately holds: its own dataclasses,
# torch dtypes/layouts/sizes/memory formats, paths and a few containers. torch reads the file with plain
# `pickle.load`, which runs any callable a planted file names; this check runs first.
_SAFE_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint.planner",
    "torch.distributed.checkpoint._extension",
)
_SAFE_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a torch.layout by its name, e.g. "torch.strided"
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("enum", "Enum"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype | torch.memory_format):
            return getattr(torch, name)
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module in _SAFE_MODULES and not name.startswith("__"):
            obj = super().find_class(module, name)
            if isinstance(obj, type):  # classes and enums only, never a function
                return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def check_dcp_metadata(root: str) -> list[str]:
    """Parse every `.metadata` of a sharded (torch.distributed.checkpoint) checkpoint with an
    allow-list unpickler, and load the non-tensor values it points at (which torch's default
    planner reads with `torch.load(weights_only=False)`) with `weights_only=True`: a file holding
    anything else is reported, never loaded."""
    found = []
    for rel in list_files(root):
        if os.path.basename(rel) != ".metadata":
            continue
        try:
            with open(os.path.join(root, rel), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except Exception as e:
            found.append(f"{rel} is not plain checkpoint metadata ({e})")
            continue
        found += _check_byte_items(os.path.dirname(os.path.join(root, rel)), metadata, rel)
    return found


def _check_byte_items(directory: str, metadata: Any, rel: str) -> list[str]:
    import io

    import torch
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    found = []
    byte_keys = {k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)}
    for index, info in metadata.storage_data.items():
        if index.fqn not in byte_keys:
            continue
        where = f"{os.path.dirname(rel) or '.'}/{info.relative_path}"
        if getattr(info, "transform_descriptors", None):
            found.append(f"{where}: value {index.fqn!r} is stored transformed and cannot be checked")
            continue
        try:
            with open(os.path.join(directory, info.relative_path), "rb") as f:
                f.seek(info.offset)
                torch.load(io.BytesIO(f.read(info.length)), weights_only=True)
        except Exception as e:
            found.append(f"{where}: value {index.fqn!r} is not plain data ({str(e).splitlines()[0]})")
    return found


# ---- torch.save files (optimizer.pt, scheduler.pt, rng_state.pth, *.bin): loaded as the Trainer will

TORCH_FILES = (".pt", ".pth", ".bin")
# written beside the states but never loaded at resume (a pickled TrainingArguments, which only a
# weights_only=False load reads): a record of the run, not something resuming trusts
NOT_LOADED = {"training_args.bin"}


def check_torch_files(root: str) -> list[str]:
    """Load every `torch.save` file of a checkpoint as transformers and accelerate will at resume
    (`weights_only=True`, transformers' numpy allow-list for the RNG state), memory-mapped so that
    no tensor data is read: a file holding anything else (a planted pickle) is reported before the
    run loads it. Nothing in it runs either way; this turns torch's UnpicklingError deep in the
    Trainer into a damaged checkpoint (set aside, the run falls back) or a refused trainer.resume."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    found = []
    for rel in list_files(root):
        if not rel.endswith(TORCH_FILES) or os.path.basename(rel) in NOT_LOADED:
            continue
        path = os.path.join(root, rel)
        try:
            # torch warns about the pickle protocol of a planted file: the refusal says enough
            with safe_globals(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # mmap needs torch's zip format (every torch.save since 1.6); a bare pickle is read whole
                torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as e:
            found.append(f"{rel} is not plain checkpoint data ({_why(e)})")
    return found


def _why(error: Exception) -> str:
    """torch's weights-only refusal is a paragraph: its informative line is the one that is not
    boilerplate (e.g. "Trying to load unsupported GLOBAL posix.system whose module posix is blocked")."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    boilerplate = ("Weights only load failed", "Check the documentation")
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.strip().startswith(boilerplate)]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def unsafe(root: str) -> list[str]:
    """What in a checkpoint would not load as plain data (empty: all of it would)."""
    return check_dcp_metadata(root) + check_torch_files(root)
