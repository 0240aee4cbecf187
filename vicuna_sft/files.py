"""Files: their content hash, and replacing a directory so that a kill at any instant leaves
either the old or the new one whole.

`replacing(path)`: a temporary path next to `path`, renamed onto it when the block succeeds (and
removed when it fails): a reader never sees half a file, or half a directory written there.
`move(src, dest)`: a rename (atomic on one file system, needs no space). The only module that
renames (tests/unit/test_layout.py): every "write aside, then rename" goes through `replacing`.
`hash_file(path)`: (size, xxh3-128) read once in CHUNK pieces: the one hash of checkpoint
manifests, data files, model files and data-cache entries (memoized ones: data.sources.file_digest).

`replace_dir(new, dest)`: dest is renamed aside (`dest.old`), new renamed in, the old one deleted.
A kill between the two renames leaves no `dest` but a whole `dest.old`; `recover_dir(dest)` (called
by the writer before it starts and by readers) puts it back. Renames are atomic on one file system.
"""

import contextlib
import os
import shutil
from collections.abc import Iterator

import xxhash

OLD = ".old"
HASH = "xxh3_128"
CHUNK = 8 << 20  # bytes read at a time: the hash streams, memory stays flat


def hash_file(path: str) -> tuple[int, str]:
    """(size, xxh3-128 hex digest) of a file, read once (~20 GB/s in memory: the read is the cost)."""
    h, size = xxhash.xxh3_128(), 0
    buf = bytearray(CHUNK)  # one buffer, filled in place: no 8 MiB allocation and copy per read
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return size, h.hexdigest()


def recover_dir(dest: str) -> None:
    """Undo a replacement interrupted between its two renames (no dest, a whole dest.old)."""
    old = dest + OLD
    if os.path.isdir(old):
        if os.path.isdir(dest):  # the new one is in: the old one was about to be deleted
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, dest)


def replace_dir(new: str, dest: str) -> None:
    recover_dir(dest)
    old = dest + OLD
    if os.path.isdir(dest):
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def move(src: str, dest: str) -> None:
    os.replace(src, dest)


@contextlib.contextmanager
def replacing(path: str, tmp: str | None = None) -> Iterator[str]:
    """Yields where to write `path`'s new content (`tmp`, default `<path>.<pid>.tmp`): a file, or a
    directory the block creates (`path` then must be absent or an empty directory); on success it
    replaces `path` atomically, on failure `tmp` is removed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = tmp or f"{path}.{os.getpid()}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.unlink(tmp)
