"""Layout 2 through the Python API: create(layout=2, cluster_size=...), read_header for both
layouts, data and allocation at the cluster size, the "all allocated" bit, and the refusals."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Optional

import pytest

import addcow

from conftest import CLUSTER, HEADER_SIZE, overlay_over, rand_bytes

#: The smallest, the default and the largest layout-2 cluster size.
CLUSTER_SIZES = [4096, 65536, 2 << 20]


def l2_header_size(cs: int) -> int:
    return max(4096, cs)


def l2_meta_len(size: int, cs: int) -> int:
    """header_size + the bitmap, ceil(clusters / 8) bytes rounded up to whole clusters."""
    clusters = -(-size // cs)
    bitmap = (clusters + 7) // 8
    return l2_header_size(cs) + -(-bitmap // cs) * cs


@pytest.mark.parametrize("cs", CLUSTER_SIZES)
def test_create_and_reopen(tmp_path: Path, cs: int) -> None:
    for size in (1, cs, 69 * cs + 1):
        meta = tmp_path / f"{size}.add-cow"
        addcow.create(meta, f"{size}.raw", size=size, layout=2, cluster_size=cs)
        assert meta.stat().st_size == l2_meta_len(size, cs)
        assert (tmp_path / f"{size}.raw").stat().st_size == size
        assert addcow.read_header(meta) == addcow.Header(
            layout=2,
            cluster_size=cs,
            image_file=f"{size}.raw",
            backing_file=None,
            backing_format=None,
            image_format="raw",
            compatible_features=0,
            incompatible_features=0,
            bitmap_offset=l2_header_size(cs),
        )
        with addcow.open(meta, "r+") as img:
            assert img.size == size and img.cluster_size == cs
        assert addcow.probe(meta.read_bytes()[:4]) == 100


@pytest.mark.parametrize("cs", CLUSTER_SIZES)
def test_round_trip_over_backing(tmp_path: Path, cs: int) -> None:
    """A sub-cluster write allocates exactly its cluster, completed from the backing file."""
    data = rand_bytes(4 * cs, cs)
    meta = overlay_over(tmp_path, data, layout=2, cluster_size=cs)
    assert addcow.read_header(meta).backing_format == "raw"
    new = rand_bytes(1000, 7)
    want = data[: cs + 100] + new + data[cs + 1100 :]
    with addcow.open(meta, "r+") as img:
        img.write(cs + 100, new)
        assert img.read(0, 4 * cs) == want
    for _ in range(2):  # after close, and after a read-only reopen
        with addcow.open(meta) as img:
            assert img.read(0, 4 * cs) == want
            assert list(img.map()) == [
                addcow.Extent(0, cs, False),
                addcow.Extent(cs, cs, True),
                addcow.Extent(2 * cs, 2 * cs, False),
            ]
    assert (tmp_path / "disk.raw").read_bytes()[cs : 2 * cs] == want[cs : 2 * cs]
    assert meta.read_bytes()[l2_header_size(cs)] == 0b10


def test_header_fields_both_layouts(tmp_path: Path) -> None:
    (tmp_path / "base.raw").write_bytes(rand_bytes(CLUSTER, 1))
    addcow.create(tmp_path / "mid.add-cow", "mid.raw", backing_file="base.raw")
    for backing, fmt in ((None, None), ("base.raw", "raw"), ("mid.add-cow", "add-cow")):
        meta = tmp_path / "img.add-cow"
        addcow.create(meta, "img.raw", backing_file=backing, backing_fmt=fmt, size=CLUSTER)
        # Layout 1 records no backing format: the opener chooses.
        assert addcow.read_header(meta) == addcow.Header(
            layout=1,
            cluster_size=CLUSTER,
            image_file="img.raw",
            backing_file=backing,
            backing_format=None,
            image_format="raw",
            compatible_features=0,
            incompatible_features=0,
            bitmap_offset=HEADER_SIZE,
        )
        addcow.create(meta, "img.raw", backing_file=backing, backing_fmt=fmt, layout=2, cluster_size=8192)
        assert addcow.read_header(meta) == addcow.Header(
            layout=2,
            cluster_size=8192,
            image_file="img.raw",
            backing_file=backing,
            backing_format=fmt,
            image_format="raw",
            compatible_features=0,
            incompatible_features=0,
            bitmap_offset=8192,
        )
        addcow.create(meta, "img.raw", backing_file=backing, backing_fmt=fmt, layout=2)
        assert addcow.read_header(meta).cluster_size == 65536  # layout 2's default


def test_add_cow_backing_needs_no_open_flag(tmp_path: Path) -> None:
    """Layout 2 records its backing format: a chain opens with the default backing_fmt."""
    data = rand_bytes(3 * 4096, 3)
    (tmp_path / "base.raw").write_bytes(data)
    addcow.create(tmp_path / "mid.add-cow", "mid.raw", backing_file="base.raw", layout=2, cluster_size=4096)
    with addcow.open(tmp_path / "mid.add-cow", "r+") as mid:
        mid.write(4096, b"middle")
    top = tmp_path / "top.add-cow"
    addcow.create(top, "top.raw", backing_file="mid.add-cow", backing_fmt="add-cow", layout=2, cluster_size=4096)
    with addcow.open(top) as img:
        assert img.read(0, len(data)) == data[:4096] + b"middle" + data[4096 + 6 :]


def test_all_allocated_bit(tmp_path: Path) -> None:
    """Filling every cluster sets COMPAT_ALL_ALLOCATED at close; the backing file is then not
    needed."""
    cs = 4096
    data = rand_bytes(3 * cs, 4)
    meta = overlay_over(tmp_path, data, layout=2, cluster_size=cs)
    with addcow.open(meta, "r+") as img:
        img.write(0, b"x")
        img.write(cs, b"y")
        assert addcow.read_header(meta).compatible_features == 0
        img.write(2 * cs, b"z")
    h = addcow.read_header(meta)
    assert h.compatible_features == addcow.COMPAT_ALL_ALLOCATED
    assert h.backing_file == "base.raw"
    (tmp_path / "base.raw").unlink()
    with addcow.open(meta) as img:
        assert img.read(0, 3 * cs) == b"x" + data[1:cs] + b"y" + data[cs + 1 : 2 * cs] + b"z" + data[2 * cs + 1 :]


def test_incompatible_feature_refused(tmp_path: Path) -> None:
    meta = tmp_path / "disk.add-cow"
    addcow.create(meta, "disk.raw", size=4096, layout=2, cluster_size=4096)
    raw = bytearray(meta.read_bytes())
    raw[24 + 1] = 0x04  # incompatible bit 10
    meta.write_bytes(bytes(raw))
    for call in (addcow.read_header, addcow.open):
        with pytest.raises(OSError) as e:
            call(meta)
        assert e.value.errno == errno.ENOTSUP
        assert "incompatible feature bit 10" in e.value.strerror


@pytest.mark.parametrize(
    "layout, cluster_size, err",
    [
        (2, 512, errno.EINVAL),
        (2, 4095, errno.EINVAL),
        (2, 3 * 4096, errno.EINVAL),
        (2, 2048, errno.EINVAL),
        (2, 4 << 20, errno.EINVAL),
        (2, 1 << 31, errno.EINVAL),
        (1, 4096, errno.EINVAL),
        (1, 2 << 20, errno.EINVAL),
        (3, None, errno.ENOTSUP),
        (0xFFFFFFFF, 4096, errno.ENOTSUP),
        (-1, None, errno.EINVAL),
        (2, 1 << 32, errno.EINVAL),
    ],
)
def test_create_refusals(tmp_path: Path, layout: int, cluster_size: Optional[int], err: int) -> None:
    meta = tmp_path / "disk.add-cow"
    with pytest.raises(OSError) as e:
        addcow.create(meta, "disk.raw", size=CLUSTER, layout=layout, cluster_size=cluster_size)
    assert e.value.errno == err
    assert e.value.operation == "addcow_create"
    assert e.value.strerror
    assert not meta.exists() and not (tmp_path / "disk.raw").exists()
