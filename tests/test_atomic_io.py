"""Atomic writes: a finished write replaces the file whole; a failed one leaves the old file and no litter."""

from __future__ import annotations

from pathlib import Path

import pytest

from sam2.utils.atomic_io import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


def test_writes_create_folders_and_replace_the_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "folder" / "out.json"
    atomic_write_text(target, "first\n")
    assert target.read_text() == "first\n"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_failure_inside_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="checksum"), atomic_open(target, "wb", temp_suffix=".part") as out:
        out.write(b"half of the new")
        assert any(p.name.endswith(".part") for p in tmp_path.iterdir())
        raise RuntimeError("checksum mismatch")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_path_variant_replaces_on_success_and_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "pipeline.yaml"
    with atomic_path(target, temp_suffix=".yaml") as temp:
        assert temp.parent == tmp_path and temp.name.endswith(".yaml") and temp != target
        temp.write_text("new: 1\n")
        assert not target.exists()
    assert target.read_text() == "new: 1\n"
    with pytest.raises(ValueError, match="compile"), atomic_path(target) as temp:
        temp.write_text("half")
        raise ValueError("compile failed")
    assert target.read_text() == "new: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline.yaml"]
