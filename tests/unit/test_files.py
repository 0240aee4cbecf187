"""final/ and final_adapter/ are replaced so that a kill at any instant leaves one whole directory
(issue 19.9): before, the old one was deleted first and a kill then left a partial final/."""

from __future__ import annotations

import os

import pytest

from vicuna_sft import files
from vicuna_sft.chat import locate


def make(path, text):
    path.mkdir()
    (path / "config.json").write_text(text)
    (path / "model.safetensors").write_text(text * 3)


def content(path):
    return {p.name: p.read_text() for p in path.iterdir()}


def test_replace_puts_the_new_directory_in_and_removes_the_old(tmp_path):
    make(tmp_path / "final", "old")
    make(tmp_path / "final.partial", "new")
    files.replace_dir(str(tmp_path / "final.partial"), str(tmp_path / "final"))
    assert content(tmp_path / "final")["config.json"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


@pytest.mark.parametrize("killed", ["before the new one is in", "before the old one is deleted"])
def test_a_kill_between_the_renames_leaves_a_whole_directory_that_readers_recover(
    tmp_path, monkeypatch, killed
):
    make(tmp_path / "final", "old")
    make(tmp_path / "final.partial", "new")
    real_replace, calls = os.replace, []

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies here

    def replace(a, b):
        calls.append(a)
        if len(calls) == 2:  # the second rename: the new one in
            die()
        real_replace(a, b)

    if killed == "before the new one is in":
        monkeypatch.setattr(os, "replace", replace)
    else:
        monkeypatch.setattr(files.shutil, "rmtree", die)
    with pytest.raises(KeyboardInterrupt):
        files.replace_dir(str(tmp_path / "final.partial"), str(tmp_path / "final"))
    monkeypatch.undo()
    # never a partial final/: either none (the old one whole aside) or the new one whole
    if (tmp_path / "final").exists():
        assert content(tmp_path / "final") == {"config.json": "new", "model.safetensors": "new" * 3}
    else:
        assert content(tmp_path / "final.old") == {"config.json": "old", "model.safetensors": "old" * 3}
    found = locate(str(tmp_path))  # a reader (the chat command) given the run directory
    assert found.path == str(tmp_path / "final")
    assert content(tmp_path / "final")["config.json"] == ("old" if "new one is in" in killed else "new")
    assert not (tmp_path / "final.old").exists()


def test_replacing_writes_a_directory_whole_or_not_at_all(tmp_path):
    """files.replacing also takes a directory written aside (the data cache's entries, the tiny
    model): renamed in on success, removed on failure, the destination untouched then."""
    dest = tmp_path / "entry"
    with pytest.raises(RuntimeError), files.replacing(str(dest)) as tmp:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "a"), "w") as f:
            f.write("half")
        raise RuntimeError("killed while writing")
    assert sorted(os.listdir(tmp_path)) == []
    dest.mkdir()  # an empty directory is replaced
    with files.replacing(str(dest)) as tmp:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "a"), "w") as f:
            f.write("whole")
    assert sorted(os.listdir(tmp_path)) == ["entry"] and (dest / "a").read_text() == "whole"
