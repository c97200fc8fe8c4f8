"""Atomic writes: umask-honouring permissions, no non-finite JSON, stale temp clean-up."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest

from chexgen.utils import atomic_path, atomic_write_json, atomic_write_text, clean_stale_temp_files


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_get_the_mode_a_plain_open_gets(tmp_path, umask_022):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    with atomic_path(tmp_path / "img.png", suffix=".png") as tmp:
        tmp.write_bytes(b"png")
    assert _mode(plain) == 0o644
    assert _mode(tmp_path / "atomic.txt") == _mode(plain)  # mkstemp would have given 0600
    assert _mode(tmp_path / "img.png") == _mode(plain)


def test_group_writable_umask_is_honoured(tmp_path):
    old = os.umask(0o002)
    try:
        atomic_write_json(tmp_path / "a.json", {"a": 1})
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o664


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_json_refuses_non_finite_numbers_and_names_the_key(tmp_path, bad):
    path = tmp_path / "m.json"
    with pytest.raises(ValueError) as err:
        atomic_write_json(path, {"metrics": {"fid": [1.0, bad]}})
    assert str(path) in str(err.value) and "metrics.fid[1]" in str(err.value)
    assert not path.exists() and list(tmp_path.iterdir()) == []  # nothing written, no temp left


def test_json_nan_as_null_is_strict_json(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"auroc": [0.5, math.nan]}, nan_as_null=True)
    text = path.read_text()
    assert "NaN" not in text
    assert json.loads(text) == {"auroc": [0.5, None]}


def test_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.jsonl") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_clean_stale_temp_files_removes_only_this_targets_leftovers(tmp_path):
    target = tmp_path / "openchest.jsonl"
    stale = [tmp_path / ".openchest.jsonl.ab12cd34.jsonl.tmp", tmp_path / ".openchest.jsonl.0123abcd.png"]
    keep = [tmp_path / ".other.jsonl.ab12cd34.jsonl.tmp", tmp_path / "openchest.jsonl",
            tmp_path / ".openchest.jsonl.notatemp"]
    for p in stale + keep:
        p.write_text("x")
    removed = clean_stale_temp_files(target)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_clean_stale_temp_files_knows_atomic_path_names(tmp_path):
    target = tmp_path / "openchest.jsonl"
    with atomic_path(target) as tmp:  # what a kill -9 inside the block leaves behind
        tmp.write_text("half")
        leftover = tmp.with_name(tmp.name)
        os.link(tmp, tmp_path / "hardlink")
    os.link(tmp_path / "hardlink", leftover)
    (tmp_path / "hardlink").unlink()
    assert clean_stale_temp_files(target) == [leftover]
    assert target.read_text() == "half" and not leftover.exists()
