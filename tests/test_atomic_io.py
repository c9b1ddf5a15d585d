"""Atomic writes: no half-written file on failure, normal permissions on success."""

from __future__ import annotations

import os
import stat

import pytest
from helpers import tiny_model

from forcefield.atomic_io import atomic_path, atomic_write_json
from forcefield.export import save_model


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_umask_permissions(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a" / "metrics.json", {"x": 1})
        save_model(tmp_path / "model.pt", tiny_model())
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "metrics.json").read_text() == '{\n  "x": 1\n}\n'
    assert _mode(tmp_path / "a" / "metrics.json") == 0o644
    assert _mode(tmp_path / "model.pt") == 0o644


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
