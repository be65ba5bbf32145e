"""Negative errno values become the matching OSError subclasses, with the library's message."""

from __future__ import annotations

import ctypes
import errno
import threading
from pathlib import Path
from typing import Tuple

import pytest
from conftest import CLUSTER

import addcow


def _patched(src: Path, dst: Path, at: int, new: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[at : at + len(new)] = new
    dst.write_bytes(bytes(raw))
    return dst


def test_missing_add_cow_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.add-cow"
    for call, op in ((addcow.open, "addcow_open_ext"), (addcow.read_header, "addcow_header_read")):
        with pytest.raises(FileNotFoundError) as e:
            call(missing)
        err = e.value
        assert err.errno == errno.ENOENT
        assert err.operation == op
        assert err.strerror.startswith(op)
        assert "nope.add-cow" in err.strerror
        assert err.filename == str(missing)
        assert "nope.add-cow" in str(err)


def test_missing_image_and_backing_files(tmp_path: Path, overlay: Path, base: Tuple[Path, bytes]) -> None:
    (tmp_path / "disk.raw").rename(tmp_path / "moved.raw")
    with pytest.raises(FileNotFoundError) as e:
        addcow.open(overlay)
    assert "disk.raw" in e.value.strerror
    (tmp_path / "moved.raw").rename(tmp_path / "disk.raw")
    base[0].unlink()
    with pytest.raises(FileNotFoundError) as e:
        addcow.open(overlay)
    assert "base.raw" in e.value.strerror
    with addcow.open(overlay, backing=False) as img:  # does not need the backing file
        assert img.read(0, 4) == bytes(4)


@pytest.mark.parametrize(
    "at,new,reason",
    [
        (0, b"NOT_COW\xff", "magic"),
        (12 + 1023, b"x", "backing file"),  # name not NUL-terminated
        (2100, b"\x01", "reserved"),
    ],
)
def test_malformed_header_is_einval(tmp_path: Path, overlay: Path, at: int, new: bytes, reason: str) -> None:
    bad = _patched(overlay, tmp_path / "bad.add-cow", at, new)
    with pytest.raises(OSError) as e:
        addcow.open(bad)
    assert type(e.value) is OSError
    assert e.value.errno == errno.EINVAL
    assert reason in e.value.strerror
    assert "bad.add-cow" in e.value.strerror
    with pytest.raises(OSError) as e:
        addcow.read_header(bad)
    assert e.value.errno == errno.EINVAL
    assert reason in e.value.strerror
    assert e.value.filename == str(bad)
    assert "bad.add-cow" in str(e.value)


def test_truncated_header_is_einval(tmp_path: Path, overlay: Path) -> None:
    short = tmp_path / "short.add-cow"
    short.write_bytes(overlay.read_bytes()[:1000])
    with pytest.raises(OSError) as e:
        addcow.open(short)
    assert e.value.errno == errno.EINVAL and "truncated" in e.value.strerror


def test_version_2_is_enotsup(tmp_path: Path, overlay: Path) -> None:
    v2 = _patched(overlay, tmp_path / "v2.add-cow", 8, (2).to_bytes(4, "big"))
    for call in (addcow.open, addcow.read_header):
        with pytest.raises(OSError) as e:
            call(v2)
        assert e.value.errno == errno.ENOTSUP
        assert "version 2" in e.value.strerror


def test_read_only_image_refuses_writes(overlay: Path) -> None:
    with addcow.open(overlay) as img:
        for call, op in (
            (lambda: img.write(0, b"x"), "addcow_pwrite"),
            (lambda: img.writev(0, [b"x"]), "addcow_writev"),
            (lambda: img.truncate(CLUSTER), "addcow_truncate"),
        ):
            with pytest.raises(PermissionError) as e:
                call()
            assert e.value.errno == errno.EPERM
            assert e.value.operation == op
            assert "read-only" in e.value.strerror
        assert img.read(0, 1)  # still usable


def test_out_of_range_requests_are_einval(overlay: Path, base: Tuple[Path, bytes]) -> None:
    size = len(base[1])
    with addcow.open(overlay, "r+") as img:
        for call in (
            lambda: img.read(size - 1, 2),
            lambda: img.read(size + 1, 0),
            lambda: img.readinto(size, bytearray(1)),
            lambda: img.write(size - 3, b"four"),
            lambda: img.readv(size - 1, [bytearray(1), bytearray(1)]),
            lambda: img.writev(size, [b"x"]),
            lambda: img.read(2**64 - 1, 2),  # offset + length overflows
        ):
            with pytest.raises(OSError) as e:
                call()
            assert type(e.value) is OSError
            assert e.value.errno == errno.EINVAL
            assert "past the end" in e.value.strerror
        for call in (lambda: img.read(-1, 1), lambda: img.write(-5, b"x"), lambda: img.truncate(-1)):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.EINVAL
            assert "out of range" in e.value.strerror
        with pytest.raises(ValueError):
            img.read(0, -1)
        assert img.read(size, 0) == b""


def test_create_errors(tmp_path: Path, base: Tuple[Path, bytes]) -> None:
    with pytest.raises(OSError) as e:
        addcow.create(tmp_path / "x.add-cow", "x.raw", backing_file="base.raw", backing_fmt="vmdk")
    assert e.value.errno == errno.EINVAL and "vmdk" in e.value.strerror
    with pytest.raises(OSError) as e:
        addcow.create(tmp_path / "x.add-cow", "x.add-cow", size=CLUSTER)
    assert e.value.errno == errno.EINVAL and "itself" in e.value.strerror
    with pytest.raises(OSError) as e:
        addcow.create(tmp_path / "x.add-cow", "base.raw", backing_file="base.raw")
    assert e.value.errno == errno.EINVAL and "backing file" in e.value.strerror
    with pytest.raises(OSError) as e:
        addcow.create(tmp_path / "x.add-cow", "n" * 1024, size=CLUSTER)
    assert e.value.errno == errno.EINVAL and "1024" in e.value.strerror
    assert not (tmp_path / "x.add-cow").exists()
    with pytest.raises(FileNotFoundError):
        addcow.create(tmp_path / "x.add-cow", "x.raw", backing_file="missing.raw")
    with pytest.raises(FileNotFoundError):
        addcow.create(tmp_path / "no-such-dir" / "x.add-cow", "x.raw", size=CLUSTER)


def test_error_messages_are_per_thread(tmp_path: Path, overlay: Path) -> None:
    """Two threads failing differently at the same time each see their own message."""
    v2 = _patched(overlay, tmp_path / "v2.add-cow", 8, (2).to_bytes(4, "big"))
    missing = tmp_path / "missing.add-cow"
    barrier = threading.Barrier(2)
    failures = []

    def worker(path: Path, want_errno: int, want_text: str) -> None:
        barrier.wait()
        for _ in range(300):
            try:
                addcow.open(path)
            except OSError as e:
                if e.errno != want_errno or want_text not in e.strerror:
                    failures.append((want_text, e.errno, e.strerror))
            else:
                failures.append((want_text, "opened"))

    threads = [
        threading.Thread(target=worker, args=(v2, errno.ENOTSUP, "version 2")),
        threading.Thread(target=worker, args=(missing, errno.ENOENT, "missing.add-cow")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_raw_abi_argument_checks(tmp_path: Path, overlay: Path) -> None:
    """The C contract on bad arguments, through the declarations in addcow._lib."""
    from addcow import _lib

    lib = _lib.lib
    EINVAL = -errno.EINVAL
    # failing opens store NULL in *out
    target = _lib.AddCowImage()
    h = _lib.ImagePtr(target)
    assert bool(h)
    assert lib.addcow_open(str(tmp_path / "missing").encode(), 0, ctypes.byref(h)) == -errno.ENOENT
    assert not bool(h)
    hdr = _lib.HeaderPtr(_lib.AddCowHeader())
    assert lib.addcow_header_read(str(tmp_path / "missing").encode(), ctypes.byref(hdr)) == -errno.ENOENT
    assert not bool(hdr)
    assert lib.addcow_open(None, 0, ctypes.byref(h)) == EINVAL
    assert lib.addcow_open(bytes(overlay), 1 << 8, ctypes.byref(h)) == EINVAL
    assert "flags" in _lib.last_error()
    assert lib.addcow_open(bytes(overlay), 0, None) == EINVAL
    assert lib.addcow_probe(None, 1, None) == EINVAL
    assert lib.addcow_probe(None, 0, None) == 0
    assert lib.addcow_open(bytes(overlay), _lib.OPEN_RDWR, ctypes.byref(h)) == 0
    try:
        pnum = ctypes.c_uint64()
        assert lib.addcow_is_allocated(h, 0, 1, None) == EINVAL
        assert lib.addcow_readv(h, 0, None, 1) == EINVAL
        assert lib.addcow_readv(h, 0, None, -1) == EINVAL
        assert lib.addcow_readv(h, 0, None, 0) == 0
        assert lib.addcow_writev(h, 0, None, 1) == EINVAL
        assert lib.addcow_pread(h, 0, None, 1) == EINVAL
        assert lib.addcow_pwrite(h, 0, None, 1) == EINVAL
        assert lib.addcow_is_allocated(h, 0, 1, ctypes.byref(pnum)) == 0 and pnum.value == 1
    finally:
        assert lib.addcow_close(h) == 0
    # create options: versioned struct and reserved fields
    opts = _lib.AddCowCreateOptions(
        ctypes.sizeof(_lib.AddCowCreateOptions), 0, b"o.raw", None, None, CLUSTER, 0, 0
    )
    path = bytes(tmp_path / "o.add-cow")
    opts.layout = 3
    assert lib.addcow_create(path, ctypes.byref(opts)) == -errno.ENOTSUP
    opts.layout, opts.cluster_size = 1, 4096
    assert lib.addcow_create(path, ctypes.byref(opts)) == EINVAL
    # bits 0 and 1 are CREATE_CONFINE and CREATE_SIZE_EXACT; bit 2 is unknown
    opts.cluster_size, opts.flags = 65536, 1 << 2
    assert lib.addcow_create(path, ctypes.byref(opts)) == EINVAL
    opts.flags, opts.struct_size = 0, 8
    assert lib.addcow_create(path, ctypes.byref(opts)) == EINVAL
    assert lib.addcow_create(path, None) == EINVAL
    opts.struct_size = 40  # an older caller without cluster_size and flags
    assert lib.addcow_create(path, ctypes.byref(opts)) == 0, _lib.last_error()
    assert (tmp_path / "o.raw").stat().st_size == CLUSTER
