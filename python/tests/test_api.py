"""Every function and method of the addcow package, on real files."""

from __future__ import annotations

import array
import ctypes
import errno
import io
import math
import mmap
import os
import re
import sys
from pathlib import Path
from typing import Tuple

import pytest
from conftest import CLUSTER, HEADER_SIZE, bitmap_bits, skip_unless_ci

import addcow
from addcow import _buffers, _lib

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is optional
    np = None

needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")

Base = Tuple[Path, bytes]


# --- module-level functions ----------------------------------------------------------------


def test_version_matches_cargo_toml() -> None:
    v = addcow.version()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", v)
    cargo = Path(__file__).resolve().parents[2] / "Cargo.toml"
    if not cargo.exists():
        skip_unless_ci("Cargo.toml not found")
    m = re.search(r'^version\s*=\s*"([^"]+)"', cargo.read_text(), re.M)
    assert m and m.group(1) == v


def test_library_is_cdll_so_calls_release_the_gil() -> None:
    assert isinstance(_lib.lib, ctypes.CDLL)
    assert not isinstance(_lib.lib, ctypes.PyDLL)
    assert addcow.library_path


def test_every_header_function_is_declared() -> None:
    header = Path(__file__).resolve().parents[2] / "include" / "addcow.h"
    if not header.exists():
        skip_unless_ci("include/addcow.h not found")
    names = set(re.findall(r"\b(addcow_[a-z_]+)\s*\(", header.read_text()))
    declared = {d[0] for d in _lib._DECLARATIONS}
    assert names, "no functions found in addcow.h"
    assert names <= declared, f"not declared: {sorted(names - declared)}"
    assert declared <= names, f"declared, not in addcow.h: {sorted(declared - names)}"
    for name in names:
        fn = getattr(_lib.lib, name)
        assert fn.argtypes is not None, name


def _header_text() -> str:
    header = Path(__file__).resolve().parents[2] / "include" / "addcow.h"
    if not header.exists():
        skip_unless_ci("include/addcow.h not found")
    return header.read_text()


def test_constants_match_the_header() -> None:
    """Every ``#define ADDCOW_X value`` of addcow.h is ``addcow._lib.X`` with that value, and
    every integer constant of ``addcow._lib`` is one of them."""
    defines = dict(re.findall(r"^#define ADDCOW_([A-Z_]+) (.+)$", _header_text(), re.M))
    assert {"MAX_SIZE", "IOV_MAX", "OPEN_RDWR", "MAP_DATA"} <= set(defines), defines
    for name, value in defines.items():
        assert re.fullmatch(r"[0-9()<< ]+", value), (name, value)
        assert hasattr(_lib, name), f"ADDCOW_{name} has no counterpart in addcow._lib"
        assert getattr(_lib, name) == eval(value), name  # digits, <<, parentheses only
    ours = {n for n, v in vars(_lib).items() if n.isupper() and type(v) is int}
    assert ours == set(defines), f"not in addcow.h: {sorted(ours - set(defines))}"
    assert addcow.MAX_SIZE == _lib.MAX_SIZE
    assert addcow.IOV_MAX == _lib.IOV_MAX


_C_TYPES = {"uint32_t": ctypes.c_uint32, "uint64_t": ctypes.c_uint64, "const char *": ctypes.c_char_p}
# The structs the package declares, with their LP64 sizes (header_check pins the same).
_STRUCTS = {
    "AddCowCreateOptions": 48,
    "AddCowOpenOptions": 16,
    "AddCowIo": 48,
    "AddCowHydrateOptions": 40,
    "AddCowJobProgress": 48,
}
# Structs of addcow.h the package does not declare, and why.
_NOT_DECLARED = {"AddCowWriteStep": "the core's functions are declared with void pointers"}


def test_every_header_struct_is_declared() -> None:
    """Each struct addcow.h defines (with a body) is in _STRUCTS or, with a reason,
    _NOT_DECLARED: a new struct in the header fails here until it is one or the other."""
    structs = set(re.findall(r"^typedef struct (\w+) \{", _header_text(), re.M))
    assert structs == set(_STRUCTS) | set(_NOT_DECLARED)
    assert not set(_STRUCTS) & set(_NOT_DECLARED)


@pytest.mark.parametrize("struct", sorted(_STRUCTS))
def test_structs_match_the_header(struct: str) -> None:
    """The ctypes structures have the header's fields, in order, with its integer and string
    types (callbacks and void pointers: names only), and the LP64 sizes header_check pins."""
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (struct, struct), _header_text(), re.S)
    assert body, struct
    code = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)  # drop the doc comments
    fields = []  # (C type, name); a callback `int (*preadv)(...)` gives ("int (*", "preadv")
    for decl in filter(None, (d.strip() for d in code.split(";"))):
        m = re.fullmatch(r"(.*?)(\w+)(\)\(.*\))?", decl, re.S)
        assert m, decl
        fields.append((m.group(1).strip(), m.group(2)))
    cls = getattr(_lib, struct)
    assert [name for _, name in fields] == [f[0] for f in cls._fields_]
    for (ctype, name), (_, pytype) in zip(fields, cls._fields_):
        if ctype in _C_TYPES:
            assert pytype is _C_TYPES[ctype], (struct, name)
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert ctypes.sizeof(cls) == _STRUCTS[struct]


def test_probe(overlay: Path) -> None:
    head = overlay.read_bytes()[:HEADER_SIZE]
    assert addcow.probe(head) == 100
    assert addcow.probe(head[:12]) == 100
    assert addcow.probe(bytearray(head[:512])) == 100
    assert addcow.probe(memoryview(head)[:12]) == 100
    assert addcow.probe(head[:11]) == 0
    assert addcow.probe(b"") == 0
    assert addcow.probe(b"QFI\xfb" + bytes(508)) == 0
    v2 = head[:8] + (2).to_bytes(4, "big") + head[12:]
    assert addcow.probe(v2) == 0
    assert addcow.probe(b"ACOW") == 100  # layout 2's magic: 4 bytes decide
    assert addcow.probe(b"ACO") == 0


def test_create_sizes_and_paths(tmp_path: Path, base: Base) -> None:
    _, data = base
    # size None with a backing file: the backing file's length; bytes and str paths.
    addcow.create(bytes(tmp_path / "a.add-cow"), b"a.raw", backing_file=b"base.raw")
    assert (tmp_path / "a.raw").stat().st_size == len(data)
    # an explicit size without a backing file; os.PathLike paths.
    addcow.create(tmp_path / "b.add-cow", Path("b.raw"), size=3 * CLUSTER + 7)
    assert (tmp_path / "b.raw").stat().st_size == 3 * CLUSTER + 7
    clusters = math.ceil((3 * CLUSTER + 7) / CLUSTER)
    assert (tmp_path / "b.add-cow").stat().st_size == HEADER_SIZE + math.ceil(clusters / 8)
    # size None: an existing image file gives the size.
    (tmp_path / "c.raw").write_bytes(bytes(12345))
    addcow.create(str(tmp_path / "c.add-cow"), "c.raw")
    with addcow.open(tmp_path / "c.add-cow") as img:
        assert img.size == 12345


def test_create_missing_image_without_size_or_backing_is_enoent(tmp_path: Path) -> None:
    """addcow.h: "ENOENT missing file"; size 0 needs an existing image file."""
    with pytest.raises(FileNotFoundError) as e:
        addcow.create(tmp_path / "d.add-cow", "d.raw")
    assert e.value.errno == errno.ENOENT
    assert "d.raw" in e.value.strerror
    assert not (tmp_path / "d.add-cow").exists()


def test_create_with_add_cow_backing(tmp_path: Path, base: Base, overlay: Path) -> None:
    _, data = base
    with addcow.open(overlay, "r+") as mid:
        mid.write(10, b"middle")
    addcow.create(tmp_path / "top.add-cow", "top.raw", backing_file="disk.add-cow", backing_fmt="add-cow")
    assert (tmp_path / "top.raw").stat().st_size == len(data)
    hdr = addcow.read_header(tmp_path / "top.add-cow")
    assert hdr.backing_file == "disk.add-cow"
    with addcow.open(tmp_path / "top.add-cow", "r+", backing_fmt="add-cow") as top:
        assert top.read(0, 30) == data[:10] + b"middle" + data[16:30]
        assert top.read(CLUSTER, 10) == data[CLUSTER : CLUSTER + 10]
        assert top.is_allocated(0, 10) == (False, 10)
        top.write(CLUSTER, b"top")
    with addcow.open(overlay) as mid:
        assert mid.read(CLUSTER, 3) == data[CLUSTER : CLUSTER + 3]


def test_read_header(tmp_path: Path, overlay: Path) -> None:
    h = addcow.read_header(overlay)
    assert h == addcow.Header(layout=1, cluster_size=CLUSTER, image_file="disk.raw", backing_file="base.raw")
    addcow.create(tmp_path / "solo.add-cow", "solo.raw", size=CLUSTER)
    h2 = addcow.read_header(str(tmp_path / "solo.add-cow").encode())
    assert h2.backing_file is None and h2.image_file == "solo.raw"


# --- open, close, context manager ----------------------------------------------------------


def test_open_arguments_are_checked(overlay: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        addcow.open(overlay, "w")
    with pytest.raises(ValueError, match="backing_fmt"):
        addcow.open(overlay, backing_fmt="qcow2")


def test_context_manager_and_close(overlay: Path, base: Base) -> None:
    with addcow.open(overlay, "r+") as img:
        assert not img.closed and img.writable and img.mode == "r+"
        assert "disk.add-cow" in repr(img)
        img.write(0, b"x")
    assert img.closed
    img.close()  # idempotent
    assert "closed" in repr(img)
    for call in (
        lambda: img.size,
        lambda: img.cluster_size,
        lambda: img.read(0, 1),
        lambda: img.readinto(0, bytearray(1)),
        lambda: img.write(0, b"x"),
        lambda: img.readv(0, [bytearray(1)]),
        lambda: img.writev(0, [b"x"]),
        lambda: img.is_allocated(0, 1),
        lambda: list(img.map()),
        lambda: img.truncate(10),
        lambda: img.flush(),
        lambda: img.as_file(),
        lambda: img.__enter__(),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    # close flushed: the bit is on disk.
    assert bitmap_bits(overlay, 1) == [True]


def test_unclosed_image_is_closed_by_gc(overlay: Path) -> None:
    img = addcow.open(overlay, "r+")
    img.write(0, b"gc")
    with pytest.warns(ResourceWarning):
        img.__del__()
    assert img.closed
    assert bitmap_bits(overlay, 1) == [True]


def test_size_and_cluster_size(overlay: Path, base: Base) -> None:
    with addcow.open(overlay) as img:
        assert img.size == len(base[1])
        assert img.cluster_size == CLUSTER
        assert img.backing_length == len(base[1])
    with addcow.open(overlay, backing=False) as img:
        assert img.backing_length == 0


# --- reads ---------------------------------------------------------------------------------


def test_read_backing_then_zeros_past_backing(big_overlay: Path, base: Base) -> None:
    _, data = base
    with addcow.open(big_overlay) as img:
        assert img.size == 8 * CLUSTER
        assert img.read(0, len(data)) == data
        assert img.read(len(data) - 10, 20) == data[-10:] + bytes(10)
        assert img.read(6 * CLUSTER, CLUSTER) == bytes(CLUSTER)
        assert img.read(img.size, 0) == b""
    with addcow.open(big_overlay, backing=False) as img:
        assert img.read(0, 2 * CLUSTER) == bytes(2 * CLUSTER)


def test_readinto_targets(overlay: Path, base: Base) -> None:
    _, data = base
    with addcow.open(overlay) as img:
        ba = bytearray(100)
        assert img.readinto(5, ba) == 100
        assert ba == data[5:105]
        # a memoryview slice writes straight into the underlying bytearray (no copy)
        big = bytearray(b"\xee" * 64)
        assert img.readinto(1000, memoryview(big)[8:24]) == 16
        assert big[:8] == b"\xee" * 8 and big[8:24] == data[1000:1016] and big[24:] == b"\xee" * 40
        big.extend(b"ok")  # no export left behind: the bytearray can be resized again
        # array.array of 16-bit items: nbytes, not len
        arr = array.array("H", [0] * 50)
        assert img.readinto(0, arr) == 100
        assert arr.tobytes() == data[:100]
        # anonymous mmap
        with mmap.mmap(-1, 4096) as m:
            assert img.readinto(CLUSTER - 10, m) == 4096
            assert m[:] == data[CLUSTER - 10 : CLUSTER - 10 + 4096]
        # ctypes array
        carr = (ctypes.c_char * 7)()
        img.readinto(3, carr)
        assert carr.raw == data[3:10]
        # read-only buffers and non-contiguous buffers are refused
        with pytest.raises(TypeError):
            img.readinto(0, bytes(10))
        with pytest.raises(TypeError):
            img.readinto(0, memoryview(bytearray(10)).toreadonly())
        with pytest.raises(ValueError, match="contiguous"):
            img.readinto(0, memoryview(bytearray(10))[::2])
        with pytest.raises(TypeError):
            img.readinto(0, "not a buffer")


@needs_numpy
def test_readinto_and_write_numpy(overlay: Path, base: Base) -> None:
    _, data = base
    with addcow.open(overlay, "r+") as img:
        a = np.zeros((4, 8), dtype=np.uint32)  # 2-D, C-contiguous
        assert img.readinto(0, a) == 128
        assert a.tobytes() == data[:128]
        with pytest.raises(ValueError):
            img.readinto(0, np.zeros((8, 8), dtype=np.uint8)[:, ::2])
        ro = np.arange(64, dtype=np.uint16)
        ro.flags.writeable = False
        with pytest.raises(TypeError):
            img.readinto(0, ro)
        assert img.write(200, ro) == 128
        assert img.read(200, 128) == ro.tobytes()
        view = np.frombuffer(bytearray(256), dtype=np.uint8)
        img.readinto(200, view[:128])
        assert view[:128].tobytes() == ro.tobytes()


# --- writes --------------------------------------------------------------------------------


def test_write_sources(overlay: Path, base: Base) -> None:
    _, data = base
    with addcow.open(overlay, "r+") as img:
        assert img.write(0, b"bytes") == 5
        assert img.write(5, bytearray(b"bytearray")) == 9
        ro = memoryview(b"__readonly-view__")[2:-2]  # read-only, not bytes: no copy either
        assert img.write(14, ro) == 13
        assert img.write(27, array.array("B", b"array")) == 5
        with mmap.mmap(-1, 6) as m:
            m[:] = b"mmap!!"
            assert img.write(32, m) == 6
        assert img.write(38, b"") == 0
        assert img.read(0, 40) == b"bytesbytearrayreadonly-viewarraymmap!!" + data[38:40]
        with pytest.raises(ValueError, match="contiguous"):
            img.write(0, memoryview(b"abcdef")[::2])
        with pytest.raises(TypeError):
            img.write(0, "str is not bytes")


def test_first_write_copies_the_rest_of_the_cluster(tmp_path: Path, overlay: Path, base: Base) -> None:
    _, data = base
    with addcow.open(overlay, "r+") as img:
        img.write(CLUSTER + 100, b"guest")
        assert img.is_allocated(CLUSTER, CLUSTER) == (True, CLUSTER)
        assert img.is_allocated(0, 2 * CLUSTER) == (False, CLUSTER)
    expected = data[CLUSTER : CLUSTER + 100] + b"guest" + data[CLUSTER + 105 : 2 * CLUSTER]
    raw = (tmp_path / "disk.raw").read_bytes()
    assert raw[CLUSTER : 2 * CLUSTER] == expected
    with addcow.open(overlay, backing=False) as img:  # the image file alone holds the cluster
        assert img.read(CLUSTER, CLUSTER) == expected
        assert img.read(0, CLUSTER) == bytes(CLUSTER)


def test_readv_writev(overlay: Path, base: Base) -> None:
    _, data = base
    with addcow.open(overlay, "r+") as img:
        parts = [b"a" * 10, bytearray(b"b" * (CLUSTER - 5)), memoryview(b"c" * 20)]
        n = img.writev(CLUSTER - 10, parts)
        assert n == 10 + CLUSTER - 5 + 20
        out = [bytearray(7), bytearray(CLUSTER), array.array("B", bytes(13))]
        assert img.readv(CLUSTER - 12, out) == 7 + CLUSTER + 13
        joined = bytes(out[0]) + bytes(out[1]) + out[2].tobytes()
        expected = data[CLUSTER - 12 : CLUSTER - 10] + b"a" * 10 + b"b" * (CLUSTER - 5) + b"c" * 20
        assert joined == expected[: len(joined)]
        assert img.readv(0, []) == 0
        assert img.writev(0, []) == 0
        with pytest.raises(TypeError):
            img.readv(0, [bytearray(1), b"read-only"])
        with pytest.raises(OSError) as e:
            img.readv(0, [bytearray(1)] * (addcow.IOV_MAX + 1))
        assert e.value.errno == errno.EINVAL and "iovcnt" in e.value.strerror
        assert img.readv(0, [bytearray(1)] * addcow.IOV_MAX) == addcow.IOV_MAX


# --- allocation ----------------------------------------------------------------------------


def test_is_allocated(big_overlay: Path) -> None:
    with addcow.open(big_overlay, "r+") as img:
        size = img.size
        assert img.is_allocated(0, size) == (False, size)
        img.write(2 * CLUSTER + 5, b"x" * (CLUSTER + 1))  # clusters 2 and 3
        assert img.is_allocated(0, size) == (False, 2 * CLUSTER)
        assert img.is_allocated(10, 100) == (False, 100)
        assert img.is_allocated(2 * CLUSTER, size) == (True, 2 * CLUSTER)
        assert img.is_allocated(3 * CLUSTER + 1, size) == (True, CLUSTER - 1)
        assert img.is_allocated(4 * CLUSTER, size) == (False, 4 * CLUSTER)
        assert img.is_allocated(size - 1, 100) == (False, 1)
        assert img.is_allocated(size, 100) == (False, 0)
        assert img.is_allocated(size + 5 * CLUSTER, 100) == (False, 0)
        assert img.is_allocated(0, 0) == (False, 0)


def test_map(big_overlay: Path) -> None:
    with addcow.open(big_overlay, "r+") as img:
        size = img.size
        assert list(img.map()) == [(0, size, False)]
        img.write(CLUSTER, b"x")
        img.write(2 * CLUSTER, b"y")  # adjacent: one merged run
        img.write(5 * CLUSTER, b"z")
        assert list(img.map()) == [
            (0, CLUSTER, False),
            (CLUSTER, 2 * CLUSTER, True),
            (3 * CLUSTER, 2 * CLUSTER, False),
            (5 * CLUSTER, CLUSTER, True),
            (6 * CLUSTER, 2 * CLUSTER, False),
        ]
        ext = next(img.map())
        assert isinstance(ext, addcow.Extent) and ext.allocated is False
        assert list(img.map(CLUSTER + 10, CLUSTER)) == [(CLUSTER + 10, CLUSTER, True)]
        assert list(img.map(size)) == []
        img.writev(0, [bytes(size)])
        assert list(img.map()) == [(0, size, True)]
        img.truncate(0)
        assert list(img.map()) == []


# --- truncate, flush, durability -----------------------------------------------------------


def test_truncate_grow_over_longer_backing_allocates_zeros(overlay: Path, base: Base) -> None:
    _, data = base
    with addcow.open(overlay, "r+") as img:
        img.truncate(CLUSTER + 100)  # shrink: backing now longer than the image
        assert img.size == CLUSTER + 100
        assert img.read(0, CLUSTER + 100) == data[: CLUSTER + 100]
        img.truncate(4 * CLUSTER)
        assert img.size == 4 * CLUSTER
        # the partial cluster is completed from the backing file, the rest is zeros
        assert img.read(CLUSTER, 100) == data[CLUSTER : CLUSTER + 100]
        assert img.read(CLUSTER + 100, 3 * CLUSTER - 100) == bytes(3 * CLUSTER - 100)
        assert list(img.map()) == [(0, CLUSTER, False), (CLUSTER, 3 * CLUSTER, True)]
    with addcow.open(overlay) as img:
        assert img.size == 4 * CLUSTER
        assert img.read(CLUSTER + 100, 3 * CLUSTER - 100) == bytes(3 * CLUSTER - 100)
    assert overlay.stat().st_size == HEADER_SIZE + 1


def test_truncate_grow_over_shorter_backing_stays_unallocated(big_overlay: Path, base: Base) -> None:
    _, data = base
    with addcow.open(big_overlay, "r+") as img:
        img.truncate(20 * CLUSTER)
        assert img.read(8 * CLUSTER, 12 * CLUSTER) == bytes(12 * CLUSTER)
        assert list(img.map()) == [(0, 20 * CLUSTER, False)]
        assert img.read(0, len(data)) == data
    assert big_overlay.stat().st_size == HEADER_SIZE + math.ceil(20 / 8)


def _direct_fds(directory: Path) -> Tuple[int, int]:
    """How many of this process's descriptors name files in ``directory``, and how many of
    them are ``O_DIRECT`` (from /proc/self/fdinfo)."""
    files = direct = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        if target.parent != directory.resolve():
            continue
        flags = re.search(r"^flags:\s+([0-7]+)$", Path(f"/proc/self/fdinfo/{fd.name}").read_text(), re.M)
        assert flags, fd
        files += 1
        direct += bool(int(flags.group(1), 8) & os.O_DIRECT)
    return files, direct


def test_direct_io(tmp_path: Path, overlay: Path, base: Base) -> None:
    """``direct=True`` opens every file with O_DIRECT (the temporary directory must be on a
    file system with direct I/O); requests of any alignment read and write the same bytes as
    without it."""
    _, data = base
    model = bytearray(data[: 5 * CLUSTER + 1000])
    with addcow.open(overlay, "r+", direct=True) as img:
        assert _direct_fds(tmp_path) == (3, 3)  # disk.add-cow, disk.raw, base.raw
        for off, payload in [
            (7, b"unaligned"),
            (CLUSTER - 3, bytes(range(256)) * 20),
            (2 * CLUSTER, b"\x11" * 4096),
            (5 * CLUSTER + 999, b"!"),
        ]:
            img.write(off, payload)
            model[off : off + len(payload)] = payload
        img.writev(3 * CLUSTER + 1, [b"a" * 511, bytearray(b"b" * 1000)])
        model[3 * CLUSTER + 1 : 3 * CLUSTER + 1512] = b"a" * 511 + b"b" * 1000
        with mmap.mmap(-1, 2 * 4096) as m:  # page-aligned: no copy inside the library
            assert img.readinto(2 * CLUSTER, m) == 2 * 4096
            assert m[:] == model[2 * CLUSTER : 2 * CLUSTER + 2 * 4096]
            m[:] = b"\x22" * len(m)
            img.write(CLUSTER, m)
            model[CLUSTER : CLUSTER + len(m)] = m[:]
        assert img.read(0, len(model)) == model
    assert (tmp_path / "disk.raw").stat().st_size == len(model)
    with addcow.open(overlay) as img:
        assert _direct_fds(tmp_path) == (3, 0)
        assert img.read(0, len(model)) == model


def test_flush_writes_bitmap_writethrough_needs_no_flush(overlay: Path, base: Base) -> None:
    with addcow.open(overlay, "r+") as img:
        img.write(3 * CLUSTER, b"x")
        img.flush()
        assert bitmap_bits(overlay, 6) == [False, False, False, True, False, False]
        img.write(0, b"y")
        img.flush()
        assert bitmap_bits(overlay, 6)[0] is True
    with addcow.open(overlay, "r+", writethrough=True) as img:
        img.write(CLUSTER, b"z")
        assert bitmap_bits(overlay, 6) == [True, True, False, True, False, False]
    with addcow.open(overlay) as img:
        assert img.read(CLUSTER, 1) == b"z"
        img.flush()  # a no-op on read-only images


# --- the file-like view --------------------------------------------------------------------


def test_as_file(overlay: Path, base: Base) -> None:
    _, data = base
    with addcow.open(overlay, "r+") as img:
        f = img.as_file()
        assert isinstance(f, io.RawIOBase)
        assert f.readable() and f.writable() and f.seekable()
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        assert f.write(b"HELLO") == 5
        assert f.seek(-5, io.SEEK_CUR) == 10
        assert f.read(5) == b"HELLO"
        assert f.seek(-3, io.SEEK_END) == len(data) - 3
        assert f.read() == data[-3:]
        assert f.read(10) == b""
        with pytest.raises(OSError) as e:
            f.write(b"past the end")
        assert e.value.errno == errno.ENOSPC
        f.seek(len(data) - 2)
        assert f.write(b"abcd") == 2  # cut short at the end
        buffered = io.BufferedReader(img.as_file(), buffer_size=4096)
        assert buffered.read(15) == data[:10] + b"HELLO"
        f.close()
        assert f.closed and not img.closed
        with pytest.raises(ValueError):
            f.read(1)
        g = img.as_file()
        assert g.truncate(2 * CLUSTER) == 2 * CLUSTER and img.size == 2 * CLUSTER
        with pytest.raises(ValueError):
            g.seek(-1)
    with addcow.open(overlay) as img:
        f = img.as_file()
        assert not f.writable()
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")


# --- zero-copy pinning ---------------------------------------------------------------------


def test_pinning_does_not_copy() -> None:
    b = b"0123456789abcdef"
    with _buffers.pin_readable(b) as (addr, n):
        assert n == 16
        assert addr == id(b) + sys.getsizeof(b"") - 1  # the bytes object's own storage
        assert ctypes.string_at(addr, n) == b
    ba = bytearray(b)
    own = ctypes.addressof((ctypes.c_char * len(ba)).from_buffer(ba))
    with _buffers.pin_readable(ba) as (addr, n):
        assert addr == own
    with _buffers.pin_writable(memoryview(ba)[4:]) as (addr, n):
        assert addr == own + 4 and n == 12
    with _buffers.pin_readable(memoryview(b)[3:]) as (addr, n):
        assert addr == id(b) + sys.getsizeof(b"") - 1 + 3 and n == 13
    ba.extend(b"!")  # every export was released


def test_installed_package_is_typed() -> None:
    assert (Path(addcow.__file__).parent / "py.typed").is_file()


def test_readme_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    if not readme.exists():
        skip_unless_ci("README.md not found")
    text = readme.read_text()
    section = text[text.index("## Using libaddcow from Python") :]
    code = section[section.index("```python\n") + 10 :]
    code = code[: code.index("```")]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "b'golden data' b'hello'" in out
    assert "Extent(offset=65536, length=65536, allocated=True)" in out


def test_header_read_io_through_python_callbacks(overlay: Path) -> None:
    """The AddCowIo table and addcow_header_read_io as declared in _lib, called for real."""
    meta = overlay.read_bytes()
    calls = []

    @_lib.PREADV_FN
    def preadv(opaque: int, offset: int, iov: ctypes.Array, iovcnt: int) -> int:
        calls.append("preadv")
        pos = offset
        for i in range(iovcnt):
            n = iov[i].iov_len
            ctypes.memmove(iov[i].iov_base, meta[pos : pos + n], n)
            pos += n
        return 0

    @_lib.PWRITEV_FN
    def pwritev(opaque: int, offset: int, iov: ctypes.Array, iovcnt: int) -> int:
        return -errno.EROFS

    @_lib.FLUSH_FN
    def flush(opaque: int) -> int:
        return 0

    @_lib.GET_LENGTH_FN
    def get_length(opaque: int) -> int:
        calls.append("get_length")
        return len(meta)

    io_table = _lib.AddCowIo(None, preadv, pwritev, flush, get_length, _lib.TRUNCATE_FN())
    h = _lib.HeaderPtr()
    assert _lib.lib.addcow_header_read_io(ctypes.byref(io_table), ctypes.byref(h)) == 0
    try:
        assert _lib.lib.addcow_header_layout(h) == 1
        assert _lib.lib.addcow_header_cluster_size(h) == CLUSTER
        assert _lib.lib.addcow_header_image_file(h) == b"disk.raw"
        assert _lib.lib.addcow_header_backing_file(h) == b"base.raw"
    finally:
        _lib.lib.addcow_header_free(h)
    assert "preadv" in calls and "get_length" in calls
    # NULL handles: the documented defaults, no crash
    assert _lib.lib.addcow_header_layout(None) == 0
    assert _lib.lib.addcow_header_image_file(None) is None
    assert _lib.lib.addcow_header_backing_format(None) is None
    assert _lib.lib.addcow_header_image_format(None) is None
    assert _lib.lib.addcow_header_compatible_features(None) == 0
    assert _lib.lib.addcow_header_bitmap_offset(None) == 0
    assert _lib.lib.addcow_get_length(None) == -errno.EINVAL
    assert _lib.lib.addcow_close(None) == 0


def test_create_exact_size_zero_makes_empty_image(tmp_path: Path, base: Base) -> None:
    # Without exact_size, size 0 takes the backing file's length; with it, 0 is the size.
    addcow.create(tmp_path / "sized.add-cow", "sized.raw", backing_file="base.raw", size=0)
    with addcow.open(tmp_path / "sized.add-cow") as img:
        assert img.size == len(base[1])
    addcow.create(tmp_path / "empty.add-cow", "empty.raw", backing_file="base.raw", size=0, exact_size=True)
    with addcow.open(tmp_path / "empty.add-cow") as img:
        assert img.size == 0
    assert (tmp_path / "empty.raw").stat().st_size == 0


def test_set_backing_file_rewrites_header(tmp_path: Path, overlay: Path, base: Base) -> None:
    (tmp_path / "other.raw").write_bytes(base[1])
    with addcow.open(overlay, "r+") as img:
        img.set_backing_file("other.raw")
    assert addcow.read_header(overlay).backing_file == "other.raw"
    with addcow.open(overlay, "r+") as img:
        img.set_backing_file(None)
    assert addcow.read_header(overlay).backing_file is None
    with addcow.open(overlay) as img:
        with pytest.raises(PermissionError):
            img.set_backing_file("other.raw")
