"""The background hydration job (:meth:`addcow.Image.hydrate_start`) as an object.

The job runs on a thread of the C library: it copies the unallocated clusters of a range
from the backing file into the image file while the image is read and written, flushes
about every second (so a crash loses little) and when it ends, and can be paused, resumed
and cancelled. Closing the image cancels its jobs (the job object then reports
``CANCELLED``).
"""

from __future__ import annotations

import ctypes
import enum
import errno as _errno
import time
from typing import Any, NamedTuple, Optional

from . import _lib
from ._handle import Handle
from ._lib import check, lib

__all__ = ["HydrateJob", "JobState", "Progress"]

# A wait is cut into slices this long, so that Ctrl-C and close() get through.
_SLICE_MS = 250


class JobState(enum.IntEnum):
    """Where a job is (``ADDCOW_JOB_*``)."""

    RUNNING = 1
    PAUSED = 2
    #: Every cluster of the range is allocated, and flushed.
    COMPLETED = 3
    #: Stopped by :meth:`HydrateJob.cancel`, :meth:`HydrateJob.close` or closing the image.
    CANCELLED = 4
    #: Stopped by an error (:attr:`Progress.errno`).
    FAILED = 5


class Progress(NamedTuple):
    """A job's progress; clusters count in the job's range."""

    state: JobState
    #: Clusters in the range.
    total: int
    #: Clusters the job has passed that are allocated (copied by it, or allocated before).
    done: int
    #: Clusters the job copied from the backing file.
    copied: int
    #: Bytes copied per second of running time.
    bytes_per_sec: int
    #: The errno a failed job stopped with; 0 otherwise.
    errno: int


class HydrateJob(Handle):
    """A background hydration job; make it with :meth:`addcow.Image.hydrate_start`.

    Thread-safe. A context manager: leaving the ``with`` block closes the job, which cancels
    it if it is still running -- call :meth:`wait` inside the block to let it finish::

        with img.hydrate_start(rate=50 << 20) as job:
            while not job.wait(timeout=1):
                print(job.progress)
    """

    _closed_message = "operation on a closed hydration job"

    def __init__(self, handle: int) -> None:
        """Wraps a live ``AddCowJob*``; use :meth:`addcow.Image.hydrate_start` instead."""
        super().__init__(handle)

    def _call(self, name: str, *args: Any) -> int:
        h = self._acquire()
        try:
            return check(getattr(lib, name)(h, *args), name)
        finally:
            self._release()

    @property
    def progress(self) -> Progress:
        """The job's state and counts."""
        p = _lib.AddCowJobProgress()
        p.struct_size = ctypes.sizeof(_lib.AddCowJobProgress)
        self._call("addcow_job_progress", ctypes.byref(p))
        return Progress(
            JobState(p.state),
            int(p.total_clusters),
            int(p.done_clusters),
            int(p.copied_clusters),
            int(p.bytes_per_sec),
            -int(p.error),
        )

    def pause(self) -> None:
        """Pauses after the batch in flight; nothing once the job ended."""
        self._call("addcow_job_pause")

    def resume(self) -> None:
        """Resumes a paused job; nothing once it ended."""
        self._call("addcow_job_resume")

    def cancel(self) -> None:
        """Asks the job to stop after the batch in flight (what it did is flushed); returns
        at once: :meth:`wait` waits for it."""
        self._call("addcow_job_cancel")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until the job ends, at most ``timeout`` seconds (``None``: without limit).
        ``True`` when it ended (completed or cancelled: see :attr:`progress`), ``False`` when
        it is still running or paused at the timeout. A failed job raises its
        :class:`OSError`."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            left_ms = _SLICE_MS
            if deadline is not None:
                left_ms = min(_SLICE_MS, max(0, int((deadline - time.monotonic()) * 1000)))
            h = self._acquire()
            try:
                rc = lib.addcow_job_wait(h, left_ms)
                if rc not in (0, -_errno.ECANCELED, -_errno.ETIMEDOUT):
                    check(rc, "addcow_job_wait")
            finally:
                self._release()
            if rc != -_errno.ETIMEDOUT:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def close(self) -> None:
        """Cancels the job unless it ended, waits for its thread (one batch and a flush) and
        frees it. Idempotent; waits for calls in progress on other threads (a :meth:`wait`
        gives way within a quarter of a second)."""
        handle = self._take()
        if handle is not None:
            lib.addcow_job_free(handle)

    def __enter__(self) -> "HydrateJob":
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<addcow.HydrateJob closed>"
        p = self.progress
        return f"<addcow.HydrateJob {p.state.name} {p.done}/{p.total} clusters>"
