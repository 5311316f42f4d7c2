"""The rules of ``scratchgpt/staging.py``: an output folder appears complete or not at all, an existing one is refused
before any work (or replaced only when the new one is complete), and what lands has the usual permissions."""

import errno
import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchgpt.staging import refuse_existing, staged_output, usual_permissions


def contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_an_existing_output_is_refused_unless_it_is_an_empty_folder(tmp_path):
    refuse_existing(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    refuse_existing(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    for name in ("file", "full"):
        with pytest.raises(FileExistsError, match=f"{name}: already exists and is not empty"):
            refuse_existing(tmp_path / name)
        ran = []
        with pytest.raises(FileExistsError):
            with staged_output(tmp_path / name):
                ran.append(True)  # never reached: refused before anything is written
        assert not ran and leftovers(tmp_path) == []


@settings(max_examples=40, deadline=None)
@given(files=st.dictionaries(st.sampled_from(["a.json", "b.bin", "model.safetensors", "c.txt"]), st.binary(max_size=64),
                             min_size=1),
       existing=st.booleans(), fails_after=st.none() | st.integers(0, 3))
def test_the_output_is_the_new_folder_whole_or_what_was_there_before(tmp_path_factory, files, existing, fails_after):
    """Whatever the block writes and wherever it fails, afterwards the destination holds either all of the new
    files or exactly what it held before, and nothing hidden is left beside it."""
    parent = tmp_path_factory.mktemp("out")
    target = parent / "data"
    if existing:
        target.mkdir()
        (target / "old.txt").write_bytes(b"old")
    before = contents(target) if existing else None
    try:
        with staged_output(target, overwrite=True) as staging:
            for i, (name, data) in enumerate(files.items()):
                if fails_after == i:
                    raise RuntimeError("interrupted")
                (staging / name).write_bytes(data)
    except RuntimeError:
        assert fails_after is not None and fails_after < len(files)
        assert (contents(target) if target.exists() else None) == before
    else:
        assert contents(target) == files
    assert leftovers(parent) == []


def test_a_failed_write_names_the_destination_when_the_library_did_not(tmp_path):
    with pytest.raises(OSError) as raised:
        with staged_output(tmp_path / "data"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "data")
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


def test_what_lands_has_the_permissions_of_a_plain_write(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_output(tmp_path / "data") as staging:
            (staging / "weights").write_bytes(b"w")
            (staging / "weights").chmod(0o600)  # as safetensors' private temporary file leaves it
        assert stat.S_IMODE((tmp_path / "data" / "weights").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o755  # not mkdtemp's private 0700
        os.umask(0o077)
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "f").write_bytes(b"")
        (tmp_path / "x" / "f").chmod(0o644)
        usual_permissions(tmp_path / "x")  # the user's own umask decides, not a fixed mode
        assert stat.S_IMODE((tmp_path / "x" / "f").stat().st_mode) == 0o600
    finally:
        os.umask(old)
