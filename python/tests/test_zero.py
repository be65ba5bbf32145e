"""write_zeroes, discard and block_status: zeros without copying, holes in the image file."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Tuple

import pytest

import addcow

from conftest import CLUSTER


def data_bytes(path: Path) -> int:
    """Bytes of ``path`` holding data (SEEK_DATA/SEEK_HOLE)."""
    total, at = 0, 0
    with path.open("rb") as f:
        fd = f.fileno()
        while True:
            try:
                d = os.lseek(fd, at, os.SEEK_DATA)
            except OSError as e:
                assert e.errno == errno.ENXIO
                return total
            at = os.lseek(fd, d, os.SEEK_HOLE)
            total += at - d


def test_write_zeroes_allocates_holes_without_copying(big_overlay: Path, base: Tuple[Path, bytes]) -> None:
    _, data = base
    with addcow.open(big_overlay, "r+") as img:
        img.write(0, b"\x07" * CLUSTER)
        img.write_zeroes(100, 8 * CLUSTER - 100, may_unmap=True)
        assert img.read(0, 100) == b"\x07" * 100
        assert img.read(100, 8 * CLUSTER - 100) == bytes(8 * CLUSTER - 100)
        assert img.block_status(0, 8 * CLUSTER) == addcow.BlockStatus(CLUSTER, True, False, False)
        # Clusters 1-5 hold backing data (5 clusters and 1000 bytes): allocated holes.
        assert img.block_status(CLUSTER, 8 * CLUSTER) == addcow.BlockStatus(5 * CLUSTER, True, True, False)
        # Clusters 6-7 are past the backing end: left unallocated, reading zeros.
        assert img.block_status(6 * CLUSTER, 8 * CLUSTER) == addcow.BlockStatus(2 * CLUSTER, False, True, False)
        img.flush()
    assert data_bytes(big_overlay.parent / "big.raw") == CLUSTER
    assert len(data) == 5 * CLUSTER + 1000


def test_discard_reads_zeros_and_leaves_partial_clusters(overlay: Path, base: Tuple[Path, bytes]) -> None:
    _, data = base
    with addcow.open(overlay, "r+") as img:
        assert img.block_status(0, 10) == addcow.BlockStatus(10, False, False, True)
        img.discard(10, 2 * CLUSTER)
        assert img.read(0, CLUSTER) == data[:CLUSTER]
        assert img.read(CLUSTER, CLUSTER) == bytes(CLUSTER)
        assert img.read(2 * CLUSTER, CLUSTER) == data[2 * CLUSTER : 3 * CLUSTER]
        assert list(img.map()) == [
            addcow.Extent(0, CLUSTER, False),
            addcow.Extent(CLUSTER, CLUSTER, True),
            addcow.Extent(2 * CLUSTER, len(data) - 2 * CLUSTER, False),
        ]


def test_no_fallback_and_errors(overlay: Path) -> None:
    with addcow.open(overlay, "r+") as img:
        with pytest.raises(OSError) as e:
            img.write_zeroes(1, CLUSTER, no_fallback=True)
        assert e.value.errno == errno.ENOTSUP
        assert img.is_allocated(0, CLUSTER) == (False, CLUSTER)
        with pytest.raises(OSError) as e:
            img.discard(img.size, 1)
        assert e.value.errno == errno.EINVAL
        assert img.block_status(img.size, 1).length == 0
    with addcow.open(overlay, "r") as img:
        with pytest.raises(PermissionError):
            img.write_zeroes(0, CLUSTER)
        with pytest.raises(PermissionError):
            img.discard(0, CLUSTER)


def test_empty_write_zeroes_and_discard_change_nothing(overlay: Path, base: Tuple[Path, bytes]) -> None:
    """A zero-length request at any offset, the end included, allocates nothing (the state
    machine's model once allocated the last cluster for one at the end)."""
    _, data = base
    with addcow.open(overlay, "r+") as img:
        before = list(img.map())
        for at in (0, 1, CLUSTER, img.size):
            img.write_zeroes(at, 0)
            img.write_zeroes(at, 0, may_unmap=True)
            img.discard(at, 0)
        assert list(img.map()) == before
