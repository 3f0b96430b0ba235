"""Atomic writes: the new file appears whole, a failed write leaves the old one and no temporary files."""

import os

import pytest

from partialconv.fileio import atomic_write, write_bytes_atomic, write_text_atomic


def test_write_replaces_the_file_and_creates_the_parent(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    write_text_atomic(path, "first")
    write_text_atomic(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_failed_write_leaves_the_old_file_and_no_temporary_files(tmp_path):
    path = tmp_path / "out.bin"
    write_bytes_atomic(path, b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_write(path) as f:
            f.write(b"new but incomplete")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_temporary_file_is_hidden_next_to_the_target_and_gets_ordinary_permissions(tmp_path):
    path = tmp_path / "image.png"
    with atomic_write(path) as f:
        (tmp,) = [p for p in tmp_path.iterdir()]
        assert tmp.name.startswith(".image.png.") and tmp.name.endswith(".tmp")
        f.write(b"\x89PNG")
    assert not tmp.exists() and path.read_bytes() == b"\x89PNG"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_rejects_modes_that_are_not_a_fresh_write(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "a"):
            pass


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
