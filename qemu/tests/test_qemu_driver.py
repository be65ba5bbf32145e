"""End-to-end tests of QEMU's add-cow driver (qemu/add-cow.c) through the patched tools.

QEMU_BUILD names the patched QEMU build directory (scripts/qemu-build.sh prints it); the
``addcow`` Python package (over this tree's libaddcow) is the reference: images made through
QEMU are read back with it, and the same workload applied through both must give identical
files. Layout 1 and layout 2 (4 KiB clusters) where the layout matters.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest

import addcow

BUILD = Path(os.environ.get("QEMU_BUILD", ""))
QEMU_IMG, QEMU_IO, QEMU_NBD = (BUILD / t for t in ("qemu-img", "qemu-io", "qemu-nbd"))
if not QEMU_IMG.is_file():
    # scripts/test-qemu.sh always sets QEMU_BUILD; a missing build is an error, never a skip.
    raise RuntimeError(f"QEMU_BUILD={BUILD} holds no patched qemu-img (scripts/qemu-build.sh)")

MIB = 1 << 20
SIZE = 4 * MIB
LAYOUTS = [pytest.param((1, 65536), id="layout1"), pytest.param((2, 4096), id="layout2-4k")]


def run(*args: object, cwd: Path | None = None) -> str:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    return r.stdout


def qemu_io(image: Path | str, *cmds: str, fmt: str = "add-cow") -> str:
    args: list[object] = [QEMU_IO, "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    out = run(*args, image)
    bad = [ln for ln in out.splitlines() if "fail" in ln.lower() or "error" in ln.lower()]
    assert not bad, out
    return out


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_base(d: Path) -> Path:
    base = d / "base.raw"
    base.write_bytes(pattern(SIZE - 12345, 7))  # shorter than the image: its tail reads zeros
    return base


def create(d: Path, layout: tuple[int, int], name: str = "t.add-cow") -> Path:
    make_base(d)
    img = d / name
    run(QEMU_IMG, "create", "-f", "add-cow", "-o",
        f"image_file={name}.raw,backing_file=base.raw,backing_fmt=raw,"
        f"layout={layout[0]},cluster_size={layout[1]}", img, SIZE, cwd=d)
    return img


def expected_from_backing(d: Path) -> bytearray:
    data = bytearray((d / "base.raw").read_bytes())
    return data + bytearray(SIZE - len(data))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_create_info_map_check(tmp_path: Path, layout: tuple[int, int]) -> None:
    img = create(tmp_path, layout)
    info = json.loads(run(QEMU_IMG, "info", "--output=json", img))
    assert info["format"] == "add-cow" and info["virtual-size"] == SIZE
    assert info["cluster-size"] == layout[1] and info["backing-filename"] == "base.raw"
    h = addcow.read_header(img)
    assert (h.layout, h.image_file, h.backing_file) == (layout[0], "t.add-cow.raw", "base.raw")

    qemu_io(img, "write -P 0x5a 100000 5000")
    m = json.loads(run(QEMU_IMG, "map", "--output=json", img))
    cs = layout[1]
    first = 100000 // cs * cs
    mine = [e for e in m if e["depth"] == 0 and e["data"]]
    # the allocated clusters, mapped at the same offset of the image file
    assert len(mine) == 1 and mine[0]["start"] == first and mine[0]["offset"] == first
    assert first + mine[0]["length"] >= 105000
    assert "No errors were found" in run(QEMU_IMG, "check", img)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_mix_image_backing_and_zeros(tmp_path: Path, layout: tuple[int, int]) -> None:
    img = create(tmp_path, layout)
    qemu_io(img, "write -P 0x11 70000 300", "write -P 0x22 3000000 70000")
    want = expected_from_backing(tmp_path)
    want[70000:70300] = b"\x11" * 300
    want[3000000:3070000] = b"\x22" * 70000
    with addcow.open(img) as a:
        assert a.read(0, SIZE) == bytes(want)
    out = tmp_path / "out.raw"
    run(QEMU_IMG, "convert", "-O", "raw", img, out)
    assert out.read_bytes() == bytes(want)
    assert "identical" in run(QEMU_IMG, "compare", "-f", "add-cow", "-F", "raw", img, out)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_workload_through_qemu_and_library(tmp_path: Path, layout: tuple[int, int]) -> None:
    """Random writes (sub-cluster, across clusters, overlapping) through qemu-io and through
    the library over the same backing file give byte-identical image files and bitmaps."""
    q, lib = tmp_path / "q", tmp_path / "l"
    q.mkdir()
    lib.mkdir()
    qimg = create(q, layout)
    make_base(lib)
    addcow.create(lib / "t.add-cow", "t.add-cow.raw", backing_file="base.raw", size=SIZE,
                  layout=layout[0], cluster_size=layout[1])
    rng = random.Random(layout[0])
    cmds = []
    with addcow.open(lib / "t.add-cow", "r+") as a:
        for i in range(60):
            off = rng.randrange(SIZE - 1)
            n = rng.randint(1, min(SIZE - off, 200000))
            a.write(off, bytes([i + 1]) * n)
            cmds.append(f"write -P {i + 1} {off} {n}")
    qemu_io(qimg, *cmds)
    assert (q / "t.add-cow.raw").read_bytes() == (lib / "t.add-cow.raw").read_bytes()
    assert (q / "t.add-cow").read_bytes() == (lib / "t.add-cow").read_bytes()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_resize_never_exposes_backing(tmp_path: Path, layout: tuple[int, int]) -> None:
    img = create(tmp_path, layout)
    run(QEMU_IMG, "resize", "--shrink", img, 1 * MIB)
    run(QEMU_IMG, "resize", img, SIZE)  # the backing file is longer than 1 MiB: zeros there
    want = expected_from_backing(tmp_path)
    want[MIB:] = bytes(SIZE - MIB)
    with addcow.open(img) as a:
        assert a.size == SIZE and a.read(0, SIZE) == bytes(want)
    assert "No errors were found" in run(QEMU_IMG, "check", img)


def test_commit_and_rebase(tmp_path: Path) -> None:
    img = create(tmp_path, (1, 65536))
    qemu_io(img, "write -P 0x33 0 100000")
    run(QEMU_IMG, "commit", img)
    assert (tmp_path / "base.raw").read_bytes()[:100000] == b"\x33" * 100000
    # rebase onto a copy with different content: the overlay keeps reading what it read
    new = tmp_path / "new.raw"
    new.write_bytes(bytes(SIZE))
    before = (tmp_path / "out1.raw")
    run(QEMU_IMG, "convert", "-O", "raw", img, before)
    run(QEMU_IMG, "rebase", "-b", "new.raw", "-F", "raw", img, cwd=tmp_path)
    assert addcow.read_header(img).backing_file == "new.raw"
    assert "identical" in run(QEMU_IMG, "compare", "-f", "add-cow", "-F", "raw", img, before)
    # unsafe rebase only renames
    run(QEMU_IMG, "rebase", "-u", "-b", "base.raw", "-F", "raw", img, cwd=tmp_path)
    assert addcow.read_header(img).backing_file == "base.raw"


def test_write_zeroes_and_discard_read_zeros(tmp_path: Path) -> None:
    img = create(tmp_path, (2, 4096))
    qemu_io(img, "write -z 8192 8192", "write -z -u 65536 100000", "discard 1048576 65536",
            "read -P 0 8192 8192", "read -P 0 65536 100000", "read -P 0 1048576 65536")
    with addcow.open(img) as a:
        assert a.read(8192, 8192) == bytes(8192)
        assert a.is_allocated(8192, 8192)[0]


def test_qemu_nbd_serves_add_cow(tmp_path: Path) -> None:
    img = create(tmp_path, (1, 65536))
    qemu_io(img, "write -P 0x44 0 65536")
    sock = tmp_path / "nbd.sock"
    srv = subprocess.Popen([str(QEMU_NBD), "-f", "add-cow", "-k", str(sock), "-t", str(img)],
                           stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)
        uri = f"nbd+unix:///?socket={sock}"
        out = tmp_path / "out.raw"
        run(QEMU_IMG, "convert", "-f", "raw", "-O", "raw", uri, out)
        want = expected_from_backing(tmp_path)
        want[:65536] = b"\x44" * 65536
        assert out.read_bytes() == bytes(want)
        qemu_io(uri, "write -P 0x55 200000 1000", fmt="raw")
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    with addcow.open(img) as a:
        assert a.read(200000, 1000) == b"\x55" * 1000


def test_qcow2_overlay_on_add_cow_base(tmp_path: Path) -> None:
    img = create(tmp_path, (2, 4096))
    qemu_io(img, "write -P 0x66 0 8192")
    ov = tmp_path / "ov.qcow2"
    run(QEMU_IMG, "create", "-f", "qcow2", "-b", img.name, "-F", "add-cow", ov, cwd=tmp_path)
    qemu_io(ov, "write -P 0x77 4096 4096", "read -P 0x66 0 4096", "read -P 0x77 4096 4096",
            fmt="qcow2")
    run(QEMU_IMG, "commit", ov)
    with addcow.open(img) as a:
        assert a.read(0, 8192) == b"\x66" * 4096 + b"\x77" * 4096


def test_concurrent_writes_at_depth(tmp_path: Path) -> None:
    """qemu-img bench at queue depth 256 over unallocated clusters: every allocation
    transaction and busy wait completes (no hang), and the result checks clean."""
    img = create(tmp_path, (2, 4096))
    n, step = 1500, 2048  # overlapping: each 4 KiB request shares a cluster with two others
    run(QEMU_IMG, "bench", "-w", "-f", "add-cow", "-c", n, "-d", "256", "-s", "4096",
        "-S", step, "--pattern=0x5c", img)
    assert "No errors were found" in run(QEMU_IMG, "check", img)
    end = (n - 1) * step + 4096
    want = expected_from_backing(tmp_path)
    want[:end] = b"\x5c" * end
    with addcow.open(img) as a:
        assert a.read(0, SIZE) == bytes(want)


def test_create_over_a_stale_image_file_starts_empty(tmp_path: Path) -> None:
    """As qcow2's data file: a new image's image file holds nothing, even when an earlier
    image left one with data under the same name (check would count it as leaks)."""
    img = create(tmp_path, (1, 65536))
    qemu_io(img, "write -P 0x12 0 1M")
    img.unlink()
    img = create(tmp_path, (1, 65536))
    assert "No errors were found" in run(QEMU_IMG, "check", img)
    with addcow.open(img) as a:
        assert a.read(0, SIZE) == bytes(expected_from_backing(tmp_path))
    assert not any((tmp_path / "t.add-cow.raw").read_bytes())
