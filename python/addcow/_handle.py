"""A C handle shared by threads, taken away by ``close`` (:class:`addcow.Image`,
:class:`addcow.HydrateJob`).

Calls hold the handle between :meth:`Handle._acquire` and :meth:`Handle._release`;
:meth:`Handle._take` makes every later call raise :class:`ValueError`, waits for the calls
in progress and hands the handle over to be freed exactly once.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

__all__ = ["Handle"]


class Handle:
    """Base of the classes that own a C handle."""

    #: The :class:`ValueError` message for a call after :meth:`_take`.
    _closed_message = "operation on a closed handle"

    def __init__(self, handle: Any) -> None:
        self._handle: Optional[Any] = handle
        self._active = 0
        self._cond = threading.Condition(threading.Lock())

    def _acquire(self) -> Any:
        with self._cond:
            if self._handle is None:
                raise ValueError(self._closed_message)
            self._active += 1
            return self._handle

    def _release(self) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._cond.notify_all()

    def _take(self) -> Optional[Any]:
        """The handle, once the calls in progress ended; ``None`` when it was taken before."""
        with self._cond:
            handle = self._handle
            if handle is None:
                return None
            self._handle = None
            while self._active:
                self._cond.wait()
        return handle

    def _check_open(self) -> None:
        if self._handle is None:
            raise ValueError(self._closed_message)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._handle is None
