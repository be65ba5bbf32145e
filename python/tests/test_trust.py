"""Locks (EBUSY, force_share), confinement (EACCES), sizes (EFBIG) and bitmap_cache_size."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Tuple

import pytest
from conftest import CLUSTER

import addcow

Base = Tuple[Path, bytes]


def test_second_read_write_open_in_one_process_is_ebusy(overlay: Path, base: Base) -> None:
    _, data = base
    with addcow.open(overlay, "r+") as img:
        img.write(0, b"first")
        img.flush()
        for mode in ("r+", "r"):
            with pytest.raises(OSError) as e:
                addcow.open(overlay, mode)
            err = e.value
            assert type(err) is OSError
            assert err.errno == errno.EBUSY
            assert "disk.add-cow" in err.strerror
            assert err.filename == str(overlay)
            assert err.operation == "addcow_open_ext"
        # the refused opens took nothing from the holder
        img.write(5, b"-still-mine")
        assert img.read(0, 16) == b"first-still-mine"
    with addcow.open(overlay, "r+") as again:  # closing released the locks
        assert again.read(0, 16) == b"first-still-mine"
        assert again.read(16, 10) == data[16:26]


def test_readers_share_and_keep_writers_out(overlay: Path) -> None:
    with addcow.open(overlay) as r1, addcow.open(overlay) as r2:
        with pytest.raises(OSError) as e:
            addcow.open(overlay, "r+")
        assert e.value.errno == errno.EBUSY and "disk.add-cow" in e.value.strerror
        assert r1.read(0, 4) == r2.read(0, 4)
    addcow.open(overlay, "r+").close()


def test_backing_file_is_kept_from_writers(tmp_path: Path, overlay: Path) -> None:
    """An image whose image file is base.raw cannot be opened read-write while base.raw backs
    an open overlay."""
    addcow.create(tmp_path / "base-as-image.add-cow", "base.raw")
    with addcow.open(overlay, "r+"):
        with pytest.raises(OSError) as e:
            addcow.open(tmp_path / "base-as-image.add-cow", "r+")
        assert e.value.errno == errno.EBUSY and "base.raw" in e.value.strerror
        with addcow.open(tmp_path / "base-as-image.add-cow"):  # reading it is fine
            pass


def test_force_share_peeks_at_an_image_in_use(overlay: Path) -> None:
    with addcow.open(overlay, "r+") as writer:
        writer.write(CLUSTER, b"flushed")
        writer.flush()
        with addcow.open(overlay, force_share=True) as peek:
            assert peek.read(CLUSTER, 7) == b"flushed"
            assert peek.is_allocated(CLUSTER, CLUSTER) == (True, CLUSTER)
            with pytest.raises(PermissionError):
                peek.write(0, b"x")
        with pytest.raises(OSError) as e:
            addcow.open(overlay, "r+", force_share=True)
        assert type(e.value) is OSError
        assert e.value.errno == errno.EINVAL and "force share" in e.value.strerror
    # a force-share reader does not keep a writer out
    with addcow.open(overlay, force_share=True):
        addcow.open(overlay, "r+").close()


def test_create_refuses_files_in_use(tmp_path: Path, overlay: Path) -> None:
    before = overlay.read_bytes()
    with addcow.open(overlay):
        with pytest.raises(OSError) as e:
            addcow.create(overlay, "new.raw", size=CLUSTER)
        assert e.value.errno == errno.EBUSY and "disk.add-cow" in e.value.strerror
        assert overlay.read_bytes() == before
        assert not (tmp_path / "new.raw").exists()
        with pytest.raises(OSError) as e:
            addcow.create(tmp_path / "other.add-cow", "disk.raw", size=9 * CLUSTER)
        assert e.value.errno == errno.EBUSY and "disk.raw" in e.value.strerror
        assert not (tmp_path / "other.add-cow").exists()


@pytest.fixture
def confined(tmp_path: Path) -> Path:
    """<tmp>/d/img.raw and <tmp>/outside.raw (2 clusters each), a symlink d/link.raw to
    ../outside.raw; returns d."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "img.raw").write_bytes(bytes(2 * CLUSTER))
    (tmp_path / "outside.raw").write_bytes(b"\x01" * 2 * CLUSTER)
    os.symlink("../outside.raw", d / "link.raw")
    return d


@pytest.mark.parametrize(
    "image,backing",
    [
        ("../outside.raw", None),
        ("link.raw", None),
        ("{abs}", None),
        ("img.raw", "../outside.raw"),
        ("img.raw", "link.raw"),
        ("img.raw", "{abs}"),
    ],
)
def test_confine_refuses_names_leaving_the_directory(confined: Path, image: str, backing: str) -> None:
    outside = str(confined.parent / "outside.raw")
    image = image.format(abs=outside)
    backing = backing.format(abs=outside) if backing else None
    meta = confined / "img.add-cow"
    addcow.create(meta, image, backing_file=backing)  # stored as given without confine
    addcow.open(meta).close()
    named = backing or image
    for mode in ("r", "r+"):
        with pytest.raises(PermissionError) as e:
            addcow.open(meta, mode, confine=True)
        assert e.value.errno == errno.EACCES
        assert named in e.value.strerror
        assert e.value.filename == str(meta)


def test_confine_accepts_names_beneath(confined: Path) -> None:
    (confined / "sub").mkdir()
    (confined / "sub" / "base.raw").write_bytes(b"\x02" * CLUSTER)
    meta = confined / "img.add-cow"
    addcow.create(meta, "img.raw", backing_file="sub/base.raw", confine=True)
    with addcow.open(meta, "r+", confine=True) as img:
        assert img.read(0, 2) == b"\x02\x02"
        img.write(0, b"ok")


def test_create_confine_refuses_and_creates_nothing(confined: Path) -> None:
    meta = confined / "new.add-cow"
    for image, backing in (("../escaped.raw", None), ("img.raw", "../outside.raw"), ("link.raw", None)):
        with pytest.raises(PermissionError) as e:
            addcow.create(meta, image, backing_file=backing, size=CLUSTER, confine=True)
        assert e.value.errno == errno.EACCES
        assert (backing or image) in e.value.strerror
        assert not meta.exists()
        assert not (confined.parent / "escaped.raw").exists()
        assert (confined.parent / "outside.raw").stat().st_size == 2 * CLUSTER
    addcow.create(meta, "../escaped.raw", size=CLUSTER)  # without confine, as asked
    assert (confined.parent / "escaped.raw").stat().st_size == CLUSTER


def test_sizes_above_max_size_are_efbig(tmp_path: Path, overlay: Path, base: Base) -> None:
    assert addcow.MAX_SIZE == 1 << 56
    for size in (addcow.MAX_SIZE + 1, 2**64 - 1):
        with pytest.raises(OSError) as e:
            addcow.create(tmp_path / "huge.add-cow", "huge.raw", size=size)
        assert type(e.value) is OSError
        assert e.value.errno == errno.EFBIG
        assert str(addcow.MAX_SIZE) in e.value.strerror  # the library's limit, not the OS's
        assert not (tmp_path / "huge.add-cow").exists() and not (tmp_path / "huge.raw").exists()
    with addcow.open(overlay, "r+") as img:
        with pytest.raises(OSError) as e:
            img.truncate(addcow.MAX_SIZE + 1)
        assert e.value.errno == errno.EFBIG and str(addcow.MAX_SIZE) in e.value.strerror
        assert img.size == len(base[1])


def test_bitmap_cache_size_is_accepted(overlay: Path) -> None:
    for cache in (None, 0, 1, 4096, 64 << 20):
        with addcow.open(overlay, "r+", bitmap_cache_size=cache) as img:
            img.write(CLUSTER, b"c")
            assert img.read(CLUSTER, 1) == b"c"
    for bad in (-1, 2**64):
        with pytest.raises(OSError) as e:
            addcow.open(overlay, bitmap_cache_size=bad)
        assert e.value.errno == errno.EINVAL and "bitmap_cache_size" in e.value.strerror
