"""The end of an image's life from Python: allocation, detach, commit, check."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Tuple

import pytest

import addcow
from conftest import CLUSTER, HEADER_SIZE, rand_bytes


def test_allocation_and_detach(tmp_path: Path, overlay: Path, base: Tuple[Path, bytes]) -> None:
    with addcow.open(overlay, "r+") as img:
        assert img.allocation() == (0, 6)
        img.write(CLUSTER + 3, b"abc")
        assert img.allocation() == (1, 6)
        with pytest.raises(OSError) as e:
            addcow.detach(overlay)
        assert e.value.errno == errno.EBUSY  # in use
    with pytest.raises(OSError) as e:
        addcow.detach(overlay, remove=True)
    assert e.value.errno == errno.EBUSY and "5 of 6 clusters" in e.value.strerror
    with addcow.open(overlay, "r+") as img:
        seen = img.read(0, img.size)
        img.write(0, seen)  # every cluster allocated, as a hydration leaves it
        assert img.allocation() == (6, 6)
    addcow.detach(overlay, remove=True)
    assert not overlay.exists()
    assert (tmp_path / "disk.raw").read_bytes() == seen


def test_commit_empties_into_the_backing_file(overlay: Path, base: Tuple[Path, bytes]) -> None:
    path, data = base
    with addcow.open(overlay, "r+") as img:
        img.write(100, b"x" * 5000)
        seen = img.read(0, img.size)
    addcow.commit(overlay, empty=True)
    assert path.read_bytes() == seen
    with addcow.open(overlay) as img:
        assert img.allocation() == (0, 6)
        assert img.read(0, img.size) == seen
    with pytest.raises(OSError) as e:
        addcow.commit(overlay, backing_fmt="qcow2")
    assert e.value.errno == errno.EINVAL


def test_check_finds_and_repairs_a_leak(overlay: Path) -> None:
    r = addcow.check(overlay)
    assert r == addcow.CheckResult(0, 0, 0, 0, 0, 0, 6, ())
    # Bits past the last of the 6 clusters (the spare bits of the only byte).
    raw = bytearray(overlay.read_bytes())
    raw[HEADER_SIZE] |= 0xC0
    overlay.write_bytes(bytes(raw))
    r = addcow.check(overlay)
    assert (r.exit_code, r.leaks, r.corruptions) == (3, 1, 0)
    assert r.findings[0].kind == "leak" and not r.findings[0].repaired
    assert "past the last cluster" in r.findings[0].message
    r = addcow.check(overlay, repair=True)
    assert (r.exit_code, r.leaks, r.leaks_fixed) == (0, 0, 1)
    assert r.findings[0].repaired
    assert addcow.check(overlay).findings == ()


def test_check_reports_corruptions_and_errors(tmp_path: Path, overlay: Path) -> None:
    raw = bytearray(overlay.read_bytes())
    raw[0] = ord("X")
    overlay.write_bytes(bytes(raw))
    r = addcow.check(overlay, repair=True)
    assert (r.exit_code, r.corruptions) == (2, 1)
    assert r.findings[0].kind == "corruption" and "magic" in r.findings[0].message
    with pytest.raises(FileNotFoundError):
        addcow.check(tmp_path / "missing.add-cow")


def test_open_refuses_a_short_bitmap_until_repaired(tmp_path: Path) -> None:
    meta = tmp_path / "img.add-cow"
    addcow.create(meta, "img.raw", size=2 * CLUSTER)
    with open(tmp_path / "img.raw", "r+b") as f:
        f.truncate(100 * CLUSTER)  # grown outside the library: clusters without bits
    with pytest.raises(OSError) as e:
        addcow.open(meta, "r+")
    assert e.value.errno == errno.EINVAL and "addcow_check" in e.value.strerror
    r = addcow.check(meta, repair=True)
    assert (r.exit_code, r.corruptions_fixed) == (0, 1)
    with addcow.open(meta, "r+") as img:
        img.write(99 * CLUSTER, rand_bytes(10, 2))
