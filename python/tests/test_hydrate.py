"""Hydration: Image.hydrate, the background job object, copy-on-read."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Tuple

import pytest
from conftest import CLUSTER, bitmap_bits, overlay_over, rand_bytes

import addcow

Base = Tuple[Path, bytes]


def expected(base: Base, size: int) -> bytearray:
    want = bytearray(base[1][:size])
    want.extend(bytes(size - len(want)))
    return want


def test_hydrate_copies_everything_and_the_raw_file_stands_alone(big_overlay: Path, base: Base) -> None:
    size = 8 * CLUSTER
    want = expected(base, size)
    with addcow.open(big_overlay, "r+") as img:
        img.write(3 * CLUSTER + 10, b"guest")
        want[3 * CLUSTER + 10 : 3 * CLUSTER + 15] = b"guest"
        assert img.hydrate(CLUSTER, 1) == 1
        assert img.hydrate() == 6
        assert img.hydrate() == 0
        assert list(img.map()) == [addcow.Extent(0, size, True)]
        assert img.read(0, size) == want
    assert bitmap_bits(big_overlay, 8) == [True] * 8
    assert (big_overlay.parent / "big.raw").read_bytes() == want


def test_hydrate_errors(overlay: Path) -> None:
    with addcow.open(overlay) as img:
        with pytest.raises(PermissionError):
            img.hydrate()
        with pytest.raises(PermissionError):
            img.hydrate_start()
    with addcow.open(overlay, "r+") as img:
        with pytest.raises(OSError) as e:
            img.hydrate(img.size, 1)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError) as e:
            img.hydrate_start(0, 0)
        assert e.value.errno == errno.EINVAL
    with addcow.open(overlay, "r+", backing=False) as img:
        with pytest.raises(OSError) as e:
            img.hydrate()
        assert e.value.errno == errno.EINVAL and "backing file" in e.value.strerror


def test_job_completes_with_progress(big_overlay: Path, base: Base) -> None:
    with addcow.open(big_overlay, "r+") as img:
        with img.hydrate_start(batch=2 * CLUSTER) as job:
            assert job.wait()
            p = job.progress
            assert p == addcow.Progress(addcow.JobState.COMPLETED, 8, 8, 8, p.bytes_per_sec, 0)
            assert "COMPLETED 8/8" in repr(job)
        assert job.closed
        with pytest.raises(ValueError):
            job.progress
        assert img.read(0, 8 * CLUSTER) == expected(base, 8 * CLUSTER)
    assert bitmap_bits(big_overlay, 8) == [True] * 8


def test_job_pause_resume_cancel_and_resume_by_a_new_job(tmp_path: Path) -> None:
    size = 64 * CLUSTER
    data = rand_bytes(size, 3)
    path = overlay_over(tmp_path, data)
    with addcow.open(path, "r+") as img:
        # One cluster a second: it cannot finish during the test.
        job = img.hydrate_start(rate=CLUSTER, batch=CLUSTER)
        job.pause()
        assert job.wait(timeout=0.01) is False
        assert job.progress.state == addcow.JobState.PAUSED
        job.resume()
        assert job.progress.state == addcow.JobState.RUNNING
        job.cancel()
        assert job.wait() is True
        first = job.progress
        assert first.state == addcow.JobState.CANCELLED and first.copied < 64
        job.close()
        job.close()
        with img.hydrate_start() as job:
            assert job.wait()
            assert job.progress.copied == 64 - first.copied
        assert img.read(0, size) == data


def test_closing_the_image_cancels_its_job(overlay: Path) -> None:
    img = addcow.open(overlay, "r+")
    job = img.hydrate_start(rate=1, batch=CLUSTER)
    img.close()
    assert job.wait(timeout=0) is True
    assert job.progress.state == addcow.JobState.CANCELLED
    job.close()


def test_job_beside_writer_threads(tmp_path: Path) -> None:
    size = 32 * CLUSTER
    data = rand_bytes(size, 4)
    path = overlay_over(tmp_path, data)
    want = bytearray(data)
    writes = []
    for w in range(2):
        for k in range(20):
            off = ((k * 5) % 16 * 2 + w) * CLUSTER + k * 100
            writes.append((w, off, rand_bytes(700, 100 + w * 50 + k)))
    for _, off, buf in writes:
        want[off : off + len(buf)] = buf
    with addcow.open(path, "r+") as img:
        with img.hydrate_start(batch=CLUSTER) as job:
            threads = [
                threading.Thread(
                    target=lambda w=w: [img.write(off, buf) for ww, off, buf in writes if ww == w]
                )
                for w in range(2)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert job.wait()
        assert img.read(0, size) == want
    assert (tmp_path / "disk.raw").read_bytes() == want


def test_copy_on_read(big_overlay: Path, base: Base) -> None:
    with pytest.raises(OSError) as e:
        addcow.open(big_overlay, copy_on_read=True)
    assert e.value.errno == errno.EINVAL
    with addcow.open(big_overlay, "r+", copy_on_read=True) as img:
        assert img.read(CLUSTER - 1, 2) == base[1][CLUSTER - 1 : CLUSTER + 1]
        # Past the backing file's end (6 clusters) nothing is copied.
        assert img.read(7 * CLUSTER, 10) == bytes(10)
        assert list(img.map()) == [
            addcow.Extent(0, 2 * CLUSTER, True),
            addcow.Extent(2 * CLUSTER, 6 * CLUSTER, False),
        ]
