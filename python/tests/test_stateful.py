"""A hypothesis state machine: random writes, write-zeroes, discards, reads, block status,
truncates, flushes and reopens against a plain in-memory model of add-cow semantics (README,
"Semantics")."""

from __future__ import annotations

import errno
import math
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Set, Tuple

import pytest
from conftest import CLUSTER, HEADER_SIZE, SECTOR, bitmap_bits, rand_bytes
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import addcow

MAX_CLUSTERS = 6


class Model:
    """What the image must read back, and which clusters are allocated."""

    def __init__(self, backing: bytes, size: int) -> None:
        self.backing = backing
        self.data = bytearray(self.backing_view(0, size))
        self.alloc: Set[int] = set()

    @property
    def size(self) -> int:
        return len(self.data)

    def backing_view(self, start: int, end: int) -> bytes:
        b = self.backing[start:end]
        return b + bytes(end - start - len(b))

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        self.data[offset : offset + len(data)] = data
        self.alloc.update(range(offset // CLUSTER, (offset + len(data) - 1) // CLUSTER + 1))

    def whole_clusters(self, offset: int, length: int) -> Tuple[range, List[Tuple[int, int]]]:
        """The whole clusters of the range (the last one whole when the range reaches the
        end), and the byte ranges outside them."""
        end = offset + length
        start = -(-offset // CLUSTER) * CLUSTER
        stop = end if end == self.size else end // CLUSTER * CLUSTER
        if start >= stop:
            return range(0), [(offset, end)]
        return range(start // CLUSTER, -(-stop // CLUSTER)), [(offset, start), (stop, end)]

    def write_zeroes(self, offset: int, length: int) -> None:
        """Whole clusters are allocated without copying, except unallocated ones past the
        backing data; parts of clusters over backing data or allocated are written."""
        whole, parts = self.whole_clusters(offset, length)
        self.alloc.update(c for c in whole if c in self.alloc or c * CLUSTER < len(self.backing))
        for a, b in parts:
            if a >= b:
                continue  # an empty part touches no cluster
            for c in range(a // CLUSTER, -(-b // CLUSTER)):
                if max(a, c * CLUSTER) < len(self.backing):
                    self.alloc.add(c)
        self.data[offset : offset + length] = bytes(length)

    def discard(self, offset: int, length: int) -> None:
        """Whole clusters are allocated without copying and read zeros; parts are left."""
        for c in self.whole_clusters(offset, length)[0]:
            self.alloc.add(c)
            end = min((c + 1) * CLUSTER, self.size)
            self.data[c * CLUSTER : end] = bytes(end - c * CLUSTER)

    def truncate(self, new: int) -> None:
        old = self.size
        if new < old:
            del self.data[new:]
            self.alloc = {c for c in self.alloc if c * CLUSTER < new}
        elif new > old:
            if len(self.backing) > old:
                # the partial cluster at the old end is completed from the backing file and
                # the new area is allocated (and reads zeros)
                self.alloc.update(range(old // CLUSTER, math.ceil(new / CLUSTER)))
            self.data.extend(bytes(new - old))

    def is_allocated(self, offset: int, length: int) -> Tuple[bool, int]:
        if offset >= self.size or length == 0:
            return False, 0
        end = min(offset + length, self.size)
        state = offset // CLUSTER in self.alloc
        c = offset // CLUSTER
        while c * CLUSTER < end and (c in self.alloc) == state:
            c += 1
        return state, min(c * CLUSTER, end) - offset

    def extents(self) -> List[Tuple[int, int, bool]]:
        out: List[Tuple[int, int, bool]] = []
        pos = 0
        while pos < self.size:
            state, n = self.is_allocated(pos, self.size - pos)
            if out and out[-1][2] == state:
                out[-1] = (out[-1][0], out[-1][1] + n, state)
            else:
                out.append((pos, n, state))
            pos += n
        return out


def _offset_and_length(data: st.DataObject, size: int, max_len: int = 2 * CLUSTER + 1000) -> Tuple[int, int]:
    aligned = data.draw(st.booleans(), label="sector aligned")
    if aligned:
        off = data.draw(st.integers(0, size // SECTOR), label="sector") * SECTOR
        n = data.draw(st.integers(0, min(size - off, max_len) // SECTOR), label="sectors") * SECTOR
    else:
        off = data.draw(st.integers(0, size), label="offset")
        n = data.draw(st.integers(0, min(size - off, max_len)), label="length")
    return off, n


def _split(data: st.DataObject, payload: bytes) -> List[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=3), label="cuts"))
    edges = [0] + cuts + [len(payload)]
    return [payload[edges[i] : edges[i + 1]] for i in range(len(edges) - 1)]


class AddCowMachine(RuleBasedStateMachine):
    #: Open with direct I/O (O_DIRECT).
    DIRECT = False

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="addcow-hyp-"))
        self.img: Optional[addcow.Image] = None
        self.model: Optional[Model] = None
        self.seed = 0

    def _next_seed(self) -> int:
        self.seed += 1
        return self.seed

    @initialize(
        backing_len=st.one_of(
            st.just(0),
            st.integers(1, MAX_CLUSTERS * CLUSTER + 3000),
            st.integers(1, MAX_CLUSTERS).map(lambda c: c * CLUSTER),
        ),
        size=st.one_of(
            st.just(0),
            st.integers(1, MAX_CLUSTERS * CLUSTER),
            st.integers(1, MAX_CLUSTERS).map(lambda c: c * CLUSTER),
        ),
        has_backing=st.booleans(),
    )
    def setup(self, backing_len: int, size: int, has_backing: bool) -> None:
        backing = rand_bytes(backing_len, 12345 + backing_len) if has_backing else b""
        meta = self.dir / "disk.add-cow"
        if has_backing:
            (self.dir / "base.raw").write_bytes(backing)
        if size == 0:
            (self.dir / "disk.raw").write_bytes(b"")
        addcow.create(meta, "disk.raw", backing_file="base.raw" if has_backing else None, size=size or None)
        self.model = Model(backing, size)
        self.img = addcow.open(meta, "r+", direct=self.DIRECT)

    # --- rules -----------------------------------------------------------------------------

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        assert self.img and self.model
        off, n = _offset_and_length(data, self.model.size)
        payload = rand_bytes(n, self._next_seed())
        if data.draw(st.booleans(), label="vectored"):
            assert self.img.writev(off, _split(data, payload)) == n
        else:
            assert self.img.write(off, payload) == n
        self.model.write(off, payload)

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        assert self.img and self.model
        off, n = _offset_and_length(data, self.model.size)
        want = bytes(self.model.data[off : off + n])
        if data.draw(st.booleans(), label="vectored"):
            bufs = [bytearray(len(p)) for p in _split(data, bytes(n))]
            assert self.img.readv(off, bufs) == n
            got = b"".join(bufs)
        else:
            got = self.img.read(off, n)
        assert got == want, f"read({off}, {n}) differs"

    @rule(data=st.data())
    def is_allocated(self, data: st.DataObject) -> None:
        assert self.img and self.model
        off = data.draw(st.integers(0, self.model.size + CLUSTER), label="offset")
        n = data.draw(st.integers(0, (MAX_CLUSTERS + 1) * CLUSTER), label="bytes")
        assert self.img.is_allocated(off, n) == self.model.is_allocated(off, n)

    @rule(data=st.data())
    def write_zeroes(self, data: st.DataObject) -> None:
        assert self.img and self.model
        off, n = _offset_and_length(data, self.model.size, 3 * CLUSTER)
        self.img.write_zeroes(off, n, may_unmap=data.draw(st.booleans(), label="may_unmap"))
        self.model.write_zeroes(off, n)

    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        assert self.img and self.model
        off, n = _offset_and_length(data, self.model.size, 3 * CLUSTER)
        self.img.discard(off, n)
        self.model.discard(off, n)

    @rule(data=st.data())
    def block_status(self, data: st.DataObject) -> None:
        """The run's flags agree with the model: allocation, zeros only where it reads zeros,
        and unallocated bytes read zeros exactly past the backing data."""
        assert self.img and self.model
        size = self.model.size
        off = data.draw(st.integers(0, size + CLUSTER), label="offset")
        n = data.draw(st.integers(0, (MAX_CLUSTERS + 1) * CLUSTER), label="bytes")
        s = self.img.block_status(off, n)
        if off >= size or n == 0:
            assert s.length == 0
            return
        assert 0 < s.length <= min(n, size - off)
        run = range(off // CLUSTER, (off + s.length - 1) // CLUSTER + 1)
        assert all((c in self.model.alloc) == s.allocated for c in run)
        if s.zero:
            assert not any(self.model.data[off : off + s.length])
        if not s.allocated:
            assert s.zero == (off >= len(self.model.backing))
        assert s.backing == (not s.allocated and not s.zero)

    @rule()
    def map(self) -> None:
        assert self.img and self.model
        assert [tuple(e) for e in self.img.map()] == self.model.extents()

    @rule(
        new=st.one_of(
            st.integers(0, MAX_CLUSTERS * CLUSTER + 5000),
            st.integers(0, MAX_CLUSTERS).map(lambda c: c * CLUSTER),
        )
    )
    def truncate(self, new: int) -> None:
        assert self.img and self.model
        self.img.truncate(new)
        self.model.truncate(new)

    @rule()
    def flush_and_check_disk(self) -> None:
        """After a flush, the files on disk hold the model: the bitmap bits, the `.add-cow`
        length, and for allocated clusters the raw image file's bytes."""
        assert self.img and self.model
        self.img.flush()
        clusters = math.ceil(self.model.size / CLUSTER)
        meta = self.dir / "disk.add-cow"
        assert meta.stat().st_size == HEADER_SIZE + math.ceil(clusters / 8)
        assert bitmap_bits(meta, clusters) == [c in self.model.alloc for c in range(clusters)]
        raw = (self.dir / "disk.raw").read_bytes()
        assert len(raw) == self.model.size
        for c in self.model.alloc:
            span = slice(c * CLUSTER, min((c + 1) * CLUSTER, self.model.size))
            assert raw[span] == self.model.data[span], f"image file cluster {c}"

    @rule(writethrough=st.booleans())
    def reopen(self, writethrough: bool) -> None:
        assert self.img
        self.img.close()
        self.img = addcow.open(self.dir / "disk.add-cow", "r+", writethrough=writethrough, direct=self.DIRECT)

    @rule(data=st.data())
    def out_of_range(self, data: st.DataObject) -> None:
        assert self.img and self.model
        size = self.model.size
        off = data.draw(st.integers(0, size + 10), label="offset")
        n = data.draw(st.integers(max(1, size - off + 1), size - off + CLUSTER + 1), label="length")
        with pytest.raises(OSError) as e:
            if data.draw(st.booleans(), label="write"):
                self.img.write(off, bytes(n))
            else:
                self.img.read(off, n)
        assert e.value.errno == errno.EINVAL

    @precondition(lambda self: self.model is not None and self.model.size <= 2 * CLUSTER)
    @rule()
    def read_all(self) -> None:
        assert self.img and self.model
        assert self.img.read(0, self.model.size) == bytes(self.model.data)

    @invariant()
    def size_matches(self) -> None:
        if self.img is not None and self.model is not None:
            assert self.img.size == self.model.size

    def teardown(self) -> None:
        try:
            if self.img is not None:
                self.img.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


TestAddCowStateMachine = AddCowMachine.TestCase


class DirectAddCowMachine(AddCowMachine):
    """The same machine with ``direct=True`` (the temporary directory must have direct I/O)."""

    DIRECT = True


TestDirectAddCowStateMachine = DirectAddCowMachine.TestCase
TestDirectAddCowStateMachine.settings = settings(settings.default, max_examples=40)
