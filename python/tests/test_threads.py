"""Concurrent calls on one image from many Python threads (the GIL is released in C)."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Callable, List, Tuple

import pytest
from conftest import CLUSTER, SECTOR, rand_bytes

import addcow

THREADS = 12
CLUSTERS = 48
SECTORS_PER_CLUSTER = CLUSTER // SECTOR


def _run(workers: List[Callable[[], None]]) -> List[BaseException]:
    errors: List[BaseException] = []
    barrier = threading.Barrier(len(workers))

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait()
                fn()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(w)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _pattern(tid: int, cluster: int) -> bytes:
    return bytes([tid + 1, cluster]) * (SECTOR // 2)


@pytest.mark.parametrize("writethrough, direct", [(False, False), (True, False), (False, True)])
def test_concurrent_writers_and_readers(tmp_path: Path, writethrough: bool, direct: bool) -> None:
    backing = rand_bytes(CLUSTERS * CLUSTER, 7)
    (tmp_path / "base.raw").write_bytes(backing)
    path = tmp_path / "t.add-cow"
    addcow.create(path, "t.raw", backing_file="base.raw")

    # Thread t owns sector t of every cluster (disjoint sectors, same clusters: every cluster's
    # first write races between all writers) plus a private cluster range of whole sectors.
    def sector_offset(tid: int, cluster: int) -> int:
        return cluster * CLUSTER + tid * SECTOR

    def expected_sector(off: int) -> Tuple[bytes, bytes]:
        cluster, index = divmod(off, CLUSTER)
        tid = index // SECTOR
        old = backing[off : off + SECTOR]
        return (old, _pattern(tid, cluster)) if tid < THREADS else (old, old)

    stop = threading.Event()
    bad: List[str] = []

    with addcow.open(path, "r+", writethrough=writethrough, direct=direct) as img:

        def writer(tid: int) -> Callable[[], None]:
            def run() -> None:
                order = list(range(CLUSTERS))
                random.Random(tid).shuffle(order)
                for c in order:
                    if tid % 2:
                        img.write(sector_offset(tid, c), _pattern(tid, c))
                    else:
                        p = _pattern(tid, c)
                        img.writev(sector_offset(tid, c), [p[:100], bytearray(p[100:])])

            return run

        def reader(seed: int) -> Callable[[], None]:
            def run() -> None:
                rng = random.Random(seed)
                buf = bytearray(SECTOR)
                while not stop.is_set():
                    off = rng.randrange(CLUSTERS * SECTORS_PER_CLUSTER) * SECTOR
                    img.readinto(off, buf)
                    if bytes(buf) not in expected_sector(off):
                        bad.append(f"sector at {off}: neither backing nor the written data")
                    img.is_allocated(off, CLUSTER)

            return run

        readers = [reader(100 + i) for i in range(4)]
        writers = [writer(t) for t in range(THREADS)]
        done = threading.Barrier(THREADS + 1)

        def finishing(fn: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    fn()
                finally:
                    done.wait()

            return run

        def stopper() -> None:
            done.wait()
            stop.set()

        errors = _run([finishing(w) for w in writers] + readers + [stopper])
        assert errors == []
        assert bad == []
        assert list(img.map()) == [(0, CLUSTERS * CLUSTER, True)]

    with addcow.open(path) as img:
        data = img.read(0, CLUSTERS * CLUSTER)
    for c in range(CLUSTERS):
        for s in range(SECTORS_PER_CLUSTER):
            off = c * CLUSTER + s * SECTOR
            want = _pattern(s, c) if s < THREADS else backing[off : off + SECTOR]
            assert data[off : off + SECTOR] == want, f"cluster {c} sector {s}"


@pytest.mark.parametrize("writethrough, direct", [(False, False), (True, False), (False, True)])
def test_same_sector_writers_never_see_backing_copied_over(tmp_path: Path, writethrough: bool, direct: bool) -> None:
    """Many threads hit the same sector of unallocated clusters: the cluster ends up holding
    one writer's whole sector and the backing data around it."""
    backing = rand_bytes(8 * CLUSTER, 9)
    (tmp_path / "base.raw").write_bytes(backing)
    path = tmp_path / "s.add-cow"
    addcow.create(path, "s.raw", backing_file="base.raw")
    patterns = [bytes([0x80 + t]) * SECTOR for t in range(THREADS)]
    with addcow.open(path, "r+", writethrough=writethrough, direct=direct) as img:

        def writer(tid: int) -> Callable[[], None]:
            def run() -> None:
                for c in range(8):
                    img.write(c * CLUSTER + 1024, patterns[tid])

            return run

        assert _run([writer(t) for t in range(THREADS)]) == []
        for c in range(8):
            got = img.read(c * CLUSTER, CLUSTER)
            assert got[1024 : 1024 + SECTOR] in patterns
            assert got[:1024] == backing[c * CLUSTER : c * CLUSTER + 1024]
            assert got[1024 + SECTOR :] == backing[c * CLUSTER + 1024 + SECTOR : (c + 1) * CLUSTER]


def test_close_while_other_threads_use_the_image(tmp_path: Path) -> None:
    path = tmp_path / "c.add-cow"
    addcow.create(path, "c.raw", size=4 * CLUSTER)
    img = addcow.open(path, "r+")
    started = threading.Barrier(5)
    outcomes: List[str] = []

    def user(tid: int) -> None:
        buf = bytearray(CLUSTER)
        try:
            img.write(tid * CLUSTER, b"x" * 100)
            started.wait()
            while True:
                img.write(tid * CLUSTER, b"x" * 100)
                img.readinto(tid * CLUSTER, buf)
        except ValueError:
            outcomes.append("closed")
        except BaseException as e:  # noqa: BLE001
            outcomes.append(repr(e))

    threads = [threading.Thread(target=user, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    started.wait()
    img.close()
    for t in threads:
        t.join()
    assert outcomes == ["closed"] * 4
    with addcow.open(path) as again:
        for t in range(4):
            assert again.read(t * CLUSTER, 100) == b"x" * 100
