"""Replacing a directory so that a kill at any instant leaves either the old or the new one whole.

`replace_dir(new, dest)`: dest is renamed aside (`dest.old`), new renamed in, the old one deleted.
A kill between the two renames leaves no `dest` but a whole `dest.old`; `recover_dir(dest)` (called
by the writer before it starts and by readers) puts it back. Renames are atomic on one file system.
"""

import os
import shutil

OLD = ".old"


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
