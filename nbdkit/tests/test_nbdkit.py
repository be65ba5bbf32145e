"""Interop tests: add-cow images served by nbdkit-addcow-plugin to QEMU's own tools.

Every test runs nbdkit in captive mode (``nbdkit -U - ... --run '...'``), or a background
nbdkit (``server``) for the lock tests, with qemu-img or qemu-io as the client, then checks
the result by reopening the image with the library (the ``addcow`` Python package) or against
a qcow2 overlay with an external data file, which QEMU itself maintains. NBDKIT_PLUGIN names
the plugin to test. The content tests run over layout 1 and over layout 2 at its smallest and
largest cluster size (the ``layout`` fixture); the lock, confinement and option tests do not
depend on the layout.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

import addcow

CS = 65536
#: (layout, cluster size) of the images the content tests serve.
L1, L2_4K, L2_2M = (1, CS), (2, 4096), (2, 2 << 20)
LAYOUTS = [pytest.param(L1, id="layout1"), pytest.param(L2_4K, id="layout2-4k"),
           pytest.param(L2_2M, id="layout2-2m")]
PLUGIN = os.environ.get("NBDKIT_PLUGIN", "")

MISSING = [
    name
    for name, found in (
        ("NBDKIT_PLUGIN", PLUGIN),
        ("nbdkit", shutil.which("nbdkit")),
        ("qemu-img", shutil.which("qemu-img")),
        ("qemu-io", shutil.which("qemu-io")),
    )
    if not found
]
if MISSING and os.environ.get("CI"):
    # In CI these tests must run: a missing tool fails the run instead of skipping it.
    raise RuntimeError(f"CI is set and the nbdkit tests cannot run: missing {', '.join(MISSING)}")

pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"SKIPPED LOUDLY: missing {', '.join(MISSING)}"
)


def serve(image: Path, run: str, *config: str, readonly: bool = False) -> subprocess.CompletedProcess[str]:
    """Serves `image` and runs the shell command `run` against "$uri"; returns the result."""
    cmd = ["nbdkit", "-U", "-", "-f"]
    if readonly:
        cmd.append("-r")
    cmd += [PLUGIN, f"file={image}", *config, "--run", run]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=image.parent)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Asserts that a served command succeeded without qemu-io error lines; returns stdout."""
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    bad = [line for line in text.splitlines() if "error" in line.lower() or "failed" in line.lower()]
    assert not bad, text
    return result.stdout


def qemu_io(image: Path, commands: list[str], *config: str) -> str:
    args = " ".join(f"-c '{c}'" for c in commands)
    return ok(serve(image, f'qemu-io -f raw {args} "$uri"', *config))


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(params=LAYOUTS)
def layout(request: pytest.FixtureRequest) -> tuple[int, int]:
    """(layout, cluster size) for make_image."""
    return request.param


def make_image(tmp: Path, size: int, backing_len: int | None, name: str = "vm",
               layout: tuple[int, int] = L1) -> tuple[Path, bytes]:
    """An add-cow image of `size` bytes over a patterned raw base of `backing_len` bytes, in
    `layout` (layout number, cluster size)."""
    base = pattern(backing_len or 0)
    backing = None
    if backing_len is not None:
        (tmp / "base.raw").write_bytes(base)
        backing = "base.raw"
    meta = tmp / f"{name}.add-cow"
    addcow.create(meta, f"{name}.raw", backing_file=backing, size=size, layout=layout[0],
                  cluster_size=layout[1])
    assert addcow.read_header(meta).cluster_size == layout[1]
    return meta, base


class Model:
    """What the guest should see, and which clusters are allocated."""

    def __init__(self, size: int, base: bytes, cs: int = CS) -> None:
        self.cs = cs
        self.data = bytearray(base[:size].ljust(size, b"\0"))
        self.allocated = [False] * ((size + cs - 1) // cs)

    def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data
        for c in range(offset // self.cs, (offset + len(data) - 1) // self.cs + 1):
            self.allocated[c] = True


def check_library(meta: Path, model: Model) -> None:
    with addcow.open(meta) as img:
        got = img.read(0, img.size)
        assert got == bytes(model.data), f"first difference at {first_diff(got, bytes(model.data))}"
        assert img.cluster_size == model.cs
        for c, want in enumerate(model.allocated):
            assert img.is_allocated(c * model.cs, model.cs)[0] == want, f"cluster {c}"


def first_diff(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_info_and_compare(tmp_path: Path, layout: tuple[int, int]) -> None:
    cs = layout[1]
    meta, base = make_image(tmp_path, 5 * cs + 4096, 3 * cs + 777, layout=layout)
    with addcow.open(meta, "r+") as img:
        img.write(cs + 5, b"written through the library")
        expected = img.read(0, img.size)
    (tmp_path / "expected.raw").write_bytes(expected)
    info = json.loads(ok(serve(meta, 'qemu-img info --output=json "$uri"')))
    assert info["virtual-size"] == 5 * cs + 4096
    ok(serve(meta, 'qemu-img compare -f raw -F raw "$uri" expected.raw'))
    (tmp_path / "other.raw").write_bytes(expected[:-1] + b"\x01")
    assert serve(meta, 'qemu-img compare -f raw -F raw "$uri" other.raw').returncode != 0


@pytest.mark.parametrize("config", [(), ("direct=true",)], ids=["cached", "direct"])
def test_qemu_io_patterns_sector_and_byte(tmp_path: Path, config: tuple[str, ...],
                                          layout: tuple[int, int]) -> None:
    """qemu-iotests 017/027/028/037 style writes through NBD, verified with the library; also
    with direct I/O."""
    cs = layout[1]
    size = 8 * cs
    meta, base = make_image(tmp_path, size, 5 * cs + 333, layout=layout)
    model = Model(size, base, cs)
    writes = [
        (0x11, 512, 512),  # 027: a sub-cluster write completes the cluster from the backing file
        (0x22, cs - 512, 1024),  # 037: across a cluster boundary
        (0x33, 2 * cs, 3 * cs),  # whole clusters
        (0x44, 5 * cs + 300, 100),  # 028: around the backing file's (odd) end
        (0x55, 7 * cs + 1, 3),  # bytes
        (0x66, 6 * cs + cs // 16 - 1, cs // 16 + 3),  # odd offset and length inside a cluster
    ]
    reads = []
    for byte, off, n in writes:
        model.write(off, bytes([byte]) * n)
        reads.append(f"read -P {byte:#x} {off} {n}")
    qemu_io(meta, [f"write -P {b:#x} {o} {n}" for b, o, n in writes] + reads + [f"read -P 0 {7 * cs + 4} 4"],
            *config)
    check_library(meta, model)


def test_convert_equals_library_read(tmp_path: Path, layout: tuple[int, int]) -> None:
    cs = layout[1]
    meta, _ = make_image(tmp_path, 4 * cs + 512, 2 * cs + 1, layout=layout)
    qemu_io(meta, [f"write -P 0x7e {cs + cs // 2 + 1} {cs + cs // 16 + 7}"])
    ok(serve(meta, 'qemu-img convert -f raw -O raw "$uri" out.raw'))
    with addcow.open(meta) as img:
        assert (tmp_path / "out.raw").read_bytes() == img.read(0, img.size)


def test_map_agrees_with_is_allocated(tmp_path: Path, layout: tuple[int, int]) -> None:
    cs = layout[1]
    meta, _ = make_image(tmp_path, 10 * cs, 4 * cs + 100, layout=layout)
    qemu_io(meta, ["write -P 1 0 10", f"write -P 2 {6 * cs} {cs}", f"write -z {8 * cs} {cs}"])
    extents = json.loads(ok(serve(meta, 'qemu-img map -f raw --output=json "$uri"')))
    with addcow.open(meta) as img:
        for e in extents:
            for off in range(e["start"], e["start"] + e["length"], 512):
                hole = e["zero"] and not e["data"]
                # A hole is exactly what block status says reads zeros: unallocated past the
                # backing file's end, or a hole of the image file.
                assert hole == img.block_status(off, 1).zero, (e, off)
        assert img.read(8 * cs, cs) == bytes(cs), "write -z reads zeros"
        assert img.is_allocated(8 * cs, cs)[0] is False, "zero past the backing end needs no allocation"
        assert img.is_allocated(6 * cs, cs) == (True, cs)


def test_write_zeroes_hides_backing_data(tmp_path: Path, layout: tuple[int, int]) -> None:
    cs = layout[1]
    n = cs + cs // 2  # from inside cluster 0 into cluster 1
    meta, _ = make_image(tmp_path, 4 * cs, 4 * cs, layout=layout)
    qemu_io(meta, [f"write -z 1000 {n}", f"read -P 0 1000 {n}", f"discard {3 * cs} {cs}"])
    with addcow.open(meta) as img:
        assert img.read(1000, n) == bytes(n)
        assert img.is_allocated(0, 4 * cs) == (True, 2 * cs)


def qcow2_overlay(tmp: Path, size: int, cs: int) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file=data.raw,cluster_size={cs}",
         "-b", "base.raw", "-F", "raw", "ref.qcow2", str(size)],
        check=True, cwd=tmp,
    )
    return tmp / "ref.qcow2"


def qcow2_allocation(ref: Path) -> list[tuple[int, int]]:
    out = subprocess.run(["qemu-img", "map", "-f", "qcow2", "--output=json", str(ref)],
                         check=True, capture_output=True, text=True, cwd=ref.parent).stdout
    return [(e["start"], e["length"]) for e in json.loads(out) if e["depth"] == 0 and e["present"]]


@pytest.mark.parametrize("seed, config, layout", [
    pytest.param(1, (), L1, id="1-layout1"),
    pytest.param(2, (), L1, id="2-layout1"),
    pytest.param(3, (), L1, id="3-layout1"),
    pytest.param(4, ("direct=true",), L1, id="4-layout1-direct"),
    pytest.param(5, (), L2_4K, id="5-layout2-4k"),
    pytest.param(6, ("direct=true",), L2_4K, id="6-layout2-4k-direct"),
    pytest.param(7, (), L2_2M, id="7-layout2-2m"),
])
def test_differential_against_qcow2(tmp_path: Path, seed: int, config: tuple[str, ...],
                                    layout: tuple[int, int]) -> None:
    """The same random qemu-io workload through the plugin and on a qcow2 overlay with a data
    file and the same cluster size over the same backing file: identical guest content and
    allocation per cluster (also with the plugin's direct I/O)."""
    rng = random.Random(seed)
    cs = layout[1]
    size = 12 * cs + 4096
    meta, _ = make_image(tmp_path, size, rng.choice([7 * cs + 777, 20 * cs, cs + 1]), layout=layout)
    ref = qcow2_overlay(tmp_path, size, cs)
    cmds = []
    for i in range(60):
        n = rng.choice([1, 17, 512, 4096, cs, 2 * cs + 3])
        off = rng.randrange(0, size - n)
        if rng.random() < 0.2:
            off -= off % 512
            n = 512 * rng.randint(1, 8)
        cmds.append(f"write -P {(i % 250) + 1:#x} {off} {n}")
    cmds.append(f"write -z {3 * cs} {cs + 512}")
    qemu_io(meta, cmds, *config)
    args = " ".join(f"-c '{c}'" for c in cmds)
    ok(subprocess.run(f"qemu-io -f qcow2 {args} ref.qcow2", shell=True, capture_output=True,
                      text=True, cwd=tmp_path))
    ok(serve(meta, 'qemu-img compare -f raw -F qcow2 "$uri" ref.qcow2'))
    allocated = [False] * ((size + cs - 1) // cs)
    for start, length in qcow2_allocation(ref):
        for c in range(start // cs, (start + length - 1) // cs + 1):
            allocated[c] = True
    with addcow.open(meta) as img:
        ours = [img.is_allocated(c * cs, cs)[0] for c in range(len(allocated))]
    # qcow2 may record zeroes past its backing file's end without allocating: compare only
    # clusters where both must agree, the rest must read zeros (checked by compare above).
    for c, (theirs, mine) in enumerate(zip(allocated, ours)):
        if c * cs < 3 * cs or c * cs >= 4 * cs + 512:
            assert theirs == mine, f"cluster {c}: qcow2 {theirs}, add-cow {mine}"


def test_two_clients_at_once(tmp_path: Path) -> None:
    size = 16 * CS
    meta, base = make_image(tmp_path, size, size)
    model = Model(size, base)
    a = [f"write -P 0xa1 {c * CS + 512} 1024" for c in range(0, 16, 2)]
    b = [f"write -P 0xb2 {c * CS} {CS}" for c in range(1, 16, 2)]
    for c in range(0, 16, 2):
        model.write(c * CS + 512, b"\xa1" * 1024)
    for c in range(1, 16, 2):
        model.write(c * CS, b"\xb2" * CS)
    run = " ".join(
        f'qemu-io -f raw {" ".join(f"-c {chr(39)}{c}{chr(39)}" for c in cmds)} "$uri" & '
        for cmds in (a, b)
    ) + "wait"
    ok(serve(meta, run))
    check_library(meta, model)


@pytest.mark.parametrize("layout", [L1, L2_4K], ids=["layout1", "layout2-4k"])
def test_chain_and_writethrough_config(tmp_path: Path, layout: tuple[int, int]) -> None:
    """An add-cow backing image: layout 1 needs backing_fmt=add-cow; layout 2 records it in
    its header, so no key is given."""
    cs = layout[1]
    mid, base = make_image(tmp_path, 3 * cs, 3 * cs, name="mid", layout=layout)
    with addcow.open(mid, "r+") as img:
        img.write(cs, b"mid")
    top = tmp_path / "top.add-cow"
    addcow.create(top, "top.raw", backing_file="mid.add-cow", backing_fmt="add-cow", layout=layout[0],
                  cluster_size=cs)
    fmt = ("backing_fmt=add-cow",) if layout == L1 else ()
    out = qemu_io(top, [f"read -P 0x6d {cs} 1", "write -P 9 0 1"], *fmt, "writethrough=true")
    assert "read 1/1" in out
    with addcow.open(top, backing_fmt="add-cow" if layout == L1 else "raw") as img:
        assert img.read(0, 2) == b"\x09" + base[1:2]
        assert img.read(cs, 3) == b"mid"
        assert img.is_allocated(0, 3 * cs) == (True, cs)


def test_errors_reach_the_client(tmp_path: Path) -> None:
    meta, _ = make_image(tmp_path, 2 * CS, CS)
    (tmp_path / "vm.raw").unlink()
    r = serve(meta, 'qemu-img info "$uri"')
    assert r.returncode != 0
    assert "vm.raw" in r.stderr and "No such file" in r.stderr, r.stderr
    meta2, _ = make_image(tmp_path, 2 * CS, CS, name="ro")
    # A read-only export: the client is refused write access when it opens the export.
    r = serve(meta2, "qemu-io -f raw -c 'write 0 512' \"$uri\"", readonly=True)
    assert r.returncode == 1 and "Permission denied" in r.stderr, (r.returncode, r.stderr)
    r = subprocess.run(["nbdkit", "-U", "-", PLUGIN, f"file={meta}", "backing_fmt=qcow2", "--run", "true"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "backing_fmt" in r.stderr


@contextmanager
def server(image: Path, *config: str, readonly: bool = False) -> Iterator[str]:
    """A background nbdkit serving `image` (held open, so locked, for the whole block); yields
    its NBD URI. Stopped with SIGTERM (nbdkit closes, so flushes, the image) and waited for."""
    sock, pidfile = image.parent / "held.sock", image.parent / "held.pid"
    cmd = ["nbdkit", "-U", str(sock), "-P", str(pidfile), "-f"] + (["-r"] if readonly else [])
    proc = subprocess.Popen(cmd + [PLUGIN, f"file={image}", *config], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # a bound for a hung start, not a timing assertion
        while not pidfile.exists():  # nbdkit writes it once it accepts connections
            assert proc.poll() is None, f"nbdkit exited: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "nbdkit did not become ready"
            time.sleep(0.05)
        yield f"nbd+unix:///?socket={sock}"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_second_server_on_an_image_in_use_fails_at_startup(tmp_path: Path) -> None:
    """A second nbdkit on an image another nbdkit holds read-write fails before serving, with
    the library's EBUSY message; the first server's acknowledged, flushed writes are intact."""
    meta, base = make_image(tmp_path, 4 * CS, 4 * CS)
    model = Model(4 * CS, base)
    with server(meta) as uri:
        ok(subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1000 70000", "-c", "flush", uri],
                          capture_output=True, text=True, timeout=300))
        model.write(1000, b"\x5a" * 70000)
        for config, readonly in (((), False), (("readonly=true",), True), ((), True)):
            r = serve(meta, "touch served", *config, readonly=readonly)
            assert r.returncode != 0
            assert "vm.add-cow" in r.stderr and "in use" in r.stderr, r.stderr
            assert not (tmp_path / "served").exists(), "the second server served"
        # The library and QEMU see the locks too: no reader, and no QEMU writer on the image file.
        with pytest.raises(OSError) as e:
            addcow.open(meta)
        assert e.value.errno == errno.EBUSY
        r = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xee 1000 1", str(tmp_path / "vm.raw")],
                           capture_output=True, text=True, timeout=60)
        assert "Failed to get" in r.stderr and "lock" in r.stderr, r.stdout + r.stderr
        # The first server is unaffected.
        ok(subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 1000 70000", uri],
                          capture_output=True, text=True, timeout=300))
        with addcow.open(meta, force_share=True) as peek:  # flushed: already on disk
            assert peek.read(0, 4 * CS) == bytes(model.data)
    check_library(meta, model)
    ok(serve(meta, "qemu-img info \"$uri\""))  # the lock went with the first server


def test_last_connection_close_flushes(tmp_path: Path) -> None:
    """A client that disconnects without flushing (qemu-io with a writeback cache sends no FUA,
    and its abort command kills it after an acknowledged write) still gets its writes durable: the server flushes when its last
    connection closes."""
    meta, base = make_image(tmp_path, 2 * CS, 2 * CS)
    with server(meta) as uri:
        r = subprocess.run(["qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 0x21 70000 100",
                            "-c", "abort", uri],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == -signal.SIGABRT, r.stdout + r.stderr  # no clean close, no flush
        # nbdkit closes the dead connection on its own time: wait for it, up to a bound.
        deadline = time.monotonic() + 30
        while True:
            with addcow.open(meta, force_share=True) as peek:  # what the files hold
                allocated = peek.is_allocated(CS, CS)
                if allocated[0] or time.monotonic() > deadline:
                    break
            time.sleep(0.05)
        assert allocated == (True, CS), "the bit never reached the .add-cow file"
        with addcow.open(meta, force_share=True) as peek:
            assert peek.read(70000, 100) == b"\x21" * 100
            assert peek.read(CS, 100) == base[CS : CS + 100]


def test_readonly_servers_share_an_image(tmp_path: Path) -> None:
    meta, base = make_image(tmp_path, 2 * CS, 2 * CS)
    (tmp_path / "expected.raw").write_bytes(base)
    with server(meta, "readonly=true", readonly=True):
        ok(serve(meta, 'qemu-img compare -f raw -F raw "$uri" expected.raw', "readonly=true", readonly=True))
        r = serve(meta, "true")  # a writer is refused
        assert r.returncode != 0 and "in use" in r.stderr, r.stderr
    # readonly=true without -r: the export itself is read-only.
    r = serve(meta, "qemu-io -f raw -c 'write 0 512' \"$uri\"", "readonly=true")
    assert r.returncode != 0 and "Permission denied" in r.stdout + r.stderr, r.stdout + r.stderr
    with addcow.open(meta) as img:
        assert img.read(0, 2 * CS) == base


def test_confine_refuses_a_hostile_header(tmp_path: Path) -> None:
    """An uploaded image whose header names a file outside its directory."""
    (tmp_path / "secret.raw").write_bytes(b"secret" * 1000)
    up = tmp_path / "uploads"
    up.mkdir()
    for image, backing in (("../secret.raw", None), (str(tmp_path / "secret.raw"), None),
                           ("img.raw", "../secret.raw")):
        meta = up / "evil.add-cow"
        addcow.create(meta, image, backing_file=backing, size=CS if backing else None)
        ok(serve(meta, 'qemu-img info "$uri"'))  # the default trusts the header
        r = serve(meta, "touch served", "confine=true")
        assert r.returncode != 0
        assert "leaves directory" in r.stderr and (backing or image) in r.stderr, r.stderr
        assert not (up / "served").exists()
    good = up / "good.add-cow"
    addcow.create(good, "good.raw", size=2 * CS)
    out = qemu_io(good, ["write -P 7 0 512", "read -P 7 0 512"], "confine=true")
    assert "read 512/512" in out
    r = subprocess.run(["nbdkit", "-U", "-", PLUGIN, f"file={good}", "confine=maybe", "--run", "true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "maybe" in r.stderr


# The --run command's shell is nbdkit's child: it lists nbdkit's open files with their flags.
LIST_FDS = 'for f in /proc/$PPID/fd/*; do echo "$(readlink "$f") $(grep ^flags: /proc/$PPID/fdinfo/${f##*/})"; done'


@pytest.mark.parametrize("direct", [False, True])
def test_direct_opens_every_file_with_o_direct(tmp_path: Path, direct: bool) -> None:
    meta, _ = make_image(tmp_path, 2 * CS, 2 * CS)
    out = ok(serve(meta, LIST_FDS, f"direct={str(direct).lower()}"))
    flags = {}
    for line in out.splitlines():
        path, _, value = line.rpartition(" flags:\t")
        if Path(path).parent == tmp_path.resolve():
            flags[Path(path).name] = int(value, 8)
    assert sorted(flags) == ["base.raw", "vm.add-cow", "vm.raw"], out
    for name, f in flags.items():
        assert bool(f & os.O_DIRECT) == direct, (name, oct(f))
    r = subprocess.run(["nbdkit", "-U", "-", PLUGIN, f"file={meta}", "direct=maybe", "--run", "true"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "maybe" in r.stderr


def test_help_documents_the_keys() -> None:
    out = subprocess.run(["nbdkit", PLUGIN, "--help"], capture_output=True, text=True, timeout=60).stdout
    for key in ("file=", "backing_fmt=", "writethrough=", "readonly=", "confine=", "direct=",
                "copy-on-read=", "hydrate=", "hydrate-rate="):
        assert key in out, out


# --- hydration ------------------------------------------------------------------------------


def on_disk_allocation(meta: Path) -> list[bool]:
    """The clusters the `.add-cow` file says are allocated, read beside the server that holds
    the image (force_share takes no conflicting lock)."""
    with addcow.open(meta, force_share=True) as img:
        return [img.is_allocated(c * CS, 1)[0] for c in range((img.size + CS - 1) // CS)]


def wait_hydrated(meta: Path) -> None:
    """Waits until every cluster is allocated on disk (the job flushes every second and at the
    end); the deadline bounds a hung job, it is not a timing assertion."""
    deadline = time.monotonic() + 120
    while not all(on_disk_allocation(meta)):
        assert time.monotonic() < deadline, "hydration did not complete"
        time.sleep(0.1)


def test_hydrate_while_qemu_io_writes(tmp_path: Path) -> None:
    """hydrate=true: the job copies the backing file while qemu-io writes through NBD; at the
    end the writes won, every cluster is allocated, and the raw image file alone reads what
    the export reads (what a detach needs)."""
    size = 48 * CS + 4096
    meta, base = make_image(tmp_path, size, 40 * CS + 77)
    model = Model(size, base)
    writes = [(0x10 + i, (i * 7 % 48) * CS + i * 999, 5000 + i * 300) for i in range(12)]
    # 1 MiB/s: the job runs for about three seconds, beside the writes.
    with server(meta, "hydrate=true", "hydrate-rate=1M") as uri:
        for byte, off, n in writes:
            model.write(off, bytes([byte]) * n)
            out = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {byte:#x} {off} {n}", uri],
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0 and "error" not in out.stdout.lower(), out
        wait_hydrated(meta)
        ok(subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(tmp_path / "export.raw")],
                          capture_output=True, text=True, timeout=120))
    model.allocated = [True] * len(model.allocated)
    check_library(meta, model)
    assert (tmp_path / "export.raw").read_bytes() == bytes(model.data)
    assert (tmp_path / "vm.raw").read_bytes() == bytes(model.data)


def test_hydrate_stops_at_unload_and_resumes_next_time(tmp_path: Path) -> None:
    size = 64 * CS
    meta, base = make_image(tmp_path, size, size)
    # One cluster a second: the server stops long before the job could finish.
    ok(serve(meta, 'qemu-io -f raw -c "write -P 0x5a 100 10" "$uri"', "hydrate=true", "hydrate-rate=64K"))
    model = Model(size, base)
    model.write(100, b"\x5a" * 10)
    first = on_disk_allocation(meta)
    assert not all(first)
    with addcow.open(meta) as img:
        assert img.read(0, size) == bytes(model.data)
    # The next run starts where this one stopped, and finishes.
    with server(meta, "hydrate=true"):
        wait_hydrated(meta)
    model.allocated = [True] * len(model.allocated)
    check_library(meta, model)


def test_copy_on_read(tmp_path: Path) -> None:
    meta, base = make_image(tmp_path, 8 * CS, 5 * CS)
    out = ok(serve(meta, f'qemu-io -f raw -c "read -v {CS - 8} 16" "$uri"', "copy-on-read=true"))
    assert base[CS - 8 : CS + 8].hex()[:8] in out.replace(" ", "")
    assert on_disk_allocation(meta) == [True, True] + [False] * 6
    r = subprocess.run(["nbdkit", "-U", "-", PLUGIN, f"file={meta}", "readonly=true", "copy-on-read=true",
                        "--run", "true"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "readonly" in r.stderr


NBDINFO = shutil.which("nbdinfo")


def qcow2_zero_clusters(ref: Path, size: int) -> list[bool]:
    """Per cluster of a qcow2 overlay: whether qemu-img map says the whole cluster reads zeros."""
    out = subprocess.run(["qemu-img", "map", "-f", "qcow2", "--output=json", str(ref)],
                         check=True, capture_output=True, text=True, cwd=ref.parent).stdout
    return map_zero_clusters(json.loads(out), size)


def map_zero_clusters(extents: list[dict], size: int) -> list[bool]:
    zero = [True] * ((size + CS - 1) // CS)
    for e in extents:
        for c in range(e["start"] // CS, (e["start"] + e["length"] - 1) // CS + 1):
            zero[c] = zero[c] and e["zero"]
    return zero


@pytest.mark.parametrize("seed", [1, 2])
def test_zero_and_trim_against_qcow2(tmp_path: Path, seed: int) -> None:
    """Writes, `write -z -u` and `discard` through the plugin and on a qcow2 overlay with a data
    file over the same base: the same content, and the same clusters reading zeros in `qemu-img
    map` (qcow2's zero clusters are the plugin's zero holes); trimmed clusters hold no data in
    the image file."""
    rng = random.Random(seed)
    size = 12 * CS
    meta, _ = make_image(tmp_path, size, 9 * CS + 4096)
    ref = qcow2_overlay(tmp_path, size, CS)
    cmds = []
    for i in range(40):
        c = rng.randrange(0, 12)
        n = rng.choice([CS, 2 * CS, 3 * CS, 100, 70000])
        off = c * CS + (rng.randrange(0, CS) if n < CS or rng.random() < 0.3 else 0)
        n = min(n, size - off)
        kind = rng.random()
        if kind < 0.4:
            cmds.append(f"write -P {(i % 250) + 1:#x} {off} {n}")
        elif kind < 0.7:
            cmds.append(f"write -z -u {off} {n}")
        else:
            cmds.append(f"discard {off} {n}")
    qemu_io(meta, cmds)
    args = " ".join(f"-c '{c}'" for c in cmds)
    ok(subprocess.run(f"qemu-io -f qcow2 {args} ref.qcow2", shell=True, capture_output=True,
                      text=True, cwd=tmp_path))
    ok(serve(meta, 'qemu-img compare -f raw -F qcow2 "$uri" ref.qcow2'))
    ours = map_zero_clusters(json.loads(ok(serve(meta, 'qemu-img map -f raw --output=json "$uri"'))), size)
    theirs = qcow2_zero_clusters(ref, size)
    assert ours == theirs, f"zero clusters: plugin {ours}, qcow2 {theirs}\n{cmds}"
    assert any(theirs[:9]), "some clusters over the backing data were zeroed"
    with addcow.open(meta) as img:
        for c in range(12):
            if ours[c] and c < 9:
                assert img.is_allocated(c * CS, CS) == (True, CS), f"cluster {c} hides the backing data"


def test_fast_zero_only_where_nothing_is_written(tmp_path: Path) -> None:
    """`write -z -n` (NBD fast zero) of whole clusters punches them; of part of a cluster over
    backing data it fails with ENOTSUP and leaves the image as it was."""
    meta, base = make_image(tmp_path, 4 * CS, 4 * CS)
    qemu_io(meta, [f"write -z -n -u {CS} {2 * CS}", f"read -P 0 {CS} {2 * CS}"])
    result = serve(meta, 'qemu-io -f raw -c "write -z -n 100 1000" "$uri"')
    assert "not supported" in (result.stdout + result.stderr).lower(), result
    with addcow.open(meta) as img:
        assert img.read(0, CS) == base[:CS]
        assert img.is_allocated(0, 4 * CS) == (False, CS)
        assert img.block_status(CS, 4 * CS) == addcow.BlockStatus(2 * CS, True, True, False)


def test_nbdinfo_map_shows_zero_holes(tmp_path: Path) -> None:
    """nbdinfo --map over the plugin: data for written and backing clusters, "hole,zero" for
    discarded clusters and for unallocated clusters past the backing file's end."""
    if NBDINFO is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI is set and nbdinfo (libnbd-bin) is missing")
        pytest.skip("SKIPPED LOUDLY: nbdinfo (libnbd-bin) is missing")
    meta, _ = make_image(tmp_path, 6 * CS, 4 * CS)
    qemu_io(meta, ["write -P 7 0 100", f"discard {CS} {2 * CS}"])
    out = ok(serve(meta, 'nbdinfo --map --json "$uri"'))
    extents = [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]
    assert extents == [(0, CS, 0), (CS, 2 * CS, 3), (3 * CS, CS, 0), (4 * CS, 2 * CS, 3)], extents
