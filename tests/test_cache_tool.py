"""`ablate cache`: shows the decode cache's folder, entries and sizes; `--clear` removes only its files."""

from __future__ import annotations

import os
import time
import warnings

import pytest
import torch

import datamodules.cache as cache_module
from datamodules.cache import DiskCache
from experiments.cli import main


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("ABLATE_CACHE_DIR", str(folder))
    monkeypatch.chdir(tmp_path)
    return folder


def _entry(cache: DiskCache, prefix: str, numbers: int = 1000):
    return cache.save(prefix, cache_module.hash_strings(prefix), {"images": torch.zeros(numbers, dtype=torch.uint8)})


def test_lists_folder_entries_sizes_and_total(cache_dir, capsys) -> None:
    cache = DiskCache(cache_dir)
    first, second = _entry(cache, "cifar10-train-folder-1234abcd", 5000), _entry(cache, "cifar10-zca-1234abcd")
    (cache_dir / "notes.txt").write_text("not the cache's")
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"cache folder: {cache_dir} ($ABLATE_CACHE_DIR)" in out
    assert first.name in out and second.name in out and "notes.txt" not in out
    total = first.stat().st_size + second.stat().st_size
    assert f"total: 2 files, {total / 1000:.1f} kB" in out


def test_missing_folder_is_an_empty_cache(cache_dir, capsys) -> None:
    assert main(["cache"]) == 0
    assert "total: 0 files, 0 B (empty)" in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert not cache_dir.exists()


def test_clear_removes_only_the_cache_files(cache_dir, tmp_path, capsys) -> None:
    cache = DiskCache(cache_dir)
    entry = _entry(cache, "mnist-train-idx-0badf00d")
    stale = cache_dir / f".{entry.name}.4242.0123abcd.tmp"
    fresh = cache_dir / f".{entry.name}.4343.89abcdef.tmp"
    for temporary in (stale, fresh):
        temporary.write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    # Neither a link named like an entry (pointing out of the folder) nor a folder or a stranger's file.
    outside = tmp_path / "precious-0123456789abcdef01234567.pt"
    outside.write_bytes(b"not the cache's")
    (cache_dir / "linked-0123456789abcdef01234567.pt").symlink_to(outside)
    (cache_dir / "sub-0123456789abcdef01234567.pt").mkdir()
    (cache_dir / "notes.txt").write_text("mine")

    assert main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert not entry.exists() and not stale.exists()
    assert fresh.exists() and "a write in progress, kept" in out
    assert outside.read_bytes() == b"not the cache's"
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        [fresh.name, "linked-0123456789abcdef01234567.pt", "sub-0123456789abcdef01234567.pt", "notes.txt"]
    )
    assert "removed 2 files" in out


def test_entry_cleared_while_a_run_reads_it_is_a_quiet_miss(cache_dir, monkeypatch) -> None:
    """The window between the reader's existence check and its load: the entry vanishes, the data is rebuilt."""
    cache = DiskCache(cache_dir)
    prefix, key = "cifar10-test-folder-0badf00d", cache_module.hash_strings("x")
    cache.save(prefix, key, {"images": torch.ones(3)})
    real_load = torch.load

    def clear_then_load(*args, **kwargs):
        assert main(["cache", "--clear"]) == 0
        return real_load(*args, **kwargs)

    monkeypatch.setattr(cache_module.torch, "load", clear_then_load)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even the unreadable-entry warning
        entry = cache.get_or_build(prefix, key, lambda: {"images": torch.zeros(3)})
    assert torch.equal(entry["images"], torch.zeros(3))
    assert cache.path(prefix, key).is_file()  # rebuilt and written again


def test_cache_dir_option_and_a_file_in_its_place(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    assert main(["cache", "--cache_dir", str(tmp_path / "a_file"), "--clear"]) == 0
    out = capsys.readouterr().out
    assert "(--cache_dir)" in out and "is not a folder" in out
    assert (tmp_path / "a_file").exists()
