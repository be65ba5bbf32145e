"""Pinning Python buffers and handing their addresses to C without copying.

* Writable buffers (``bytearray``, writable ``memoryview``, ``mmap``, ``array.array``, numpy
  arrays, ...) are pinned with ``(c_char * n).from_buffer(...)`` on a byte-cast memoryview:
  no copy, and the exporter cannot be resized or closed while the C call runs.
* ``bytes`` objects are passed by their internal pointer (``c_char_p``), no copy.
* Other read-only buffers (a ``memoryview`` of ``bytes``, a read-only ``mmap`` or numpy
  array, ...) are pinned with ``PyObject_GetBuffer`` through ``ctypes.pythonapi`` (no copy).
  On interpreters without ``ctypes.pythonapi`` they are copied once.

Buffers must be C-contiguous (:class:`ValueError` otherwise); a read-only buffer where a
writable one is needed raises :class:`TypeError`.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from typing import Any, Iterator, Tuple

__all__ = ["pin_writable", "pin_readable"]

_PyBUF_SIMPLE = 0


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (stable ABI since 3.11, unchanged since 3.3)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


try:
    _get_buffer = ctypes.pythonapi.PyObject_GetBuffer
    _get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    _get_buffer.restype = ctypes.c_int
    _release_buffer = ctypes.pythonapi.PyBuffer_Release
    _release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
    _release_buffer.restype = None
    HAVE_PYTHONAPI = True
except (AttributeError, OSError):  # pragma: no cover - e.g. PyPy
    HAVE_PYTHONAPI = False


def _byte_view(obj: Any, what: str) -> memoryview:
    """A 1-D unsigned-byte view of ``obj``'s buffer (ValueError if not C-contiguous)."""
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError(f"{what} must support the buffer protocol, not {type(obj).__name__}") from None
    if not mv.c_contiguous:
        mv.release()
        raise ValueError(f"{what} must be a C-contiguous buffer")
    if mv.ndim == 1 and mv.format == "B":
        return mv
    try:
        return mv.cast("B")
    finally:
        mv.release()


@contextmanager
def pin_writable(obj: Any, what: str = "buffer") -> Iterator[Tuple[int, int]]:
    """Yields ``(address, nbytes)`` of ``obj``'s writable, C-contiguous buffer, pinned for the
    duration of the ``with`` block. No copy is made."""
    mv = _byte_view(obj, what)
    try:
        if mv.readonly:
            raise TypeError(f"{what} must be writable (got a read-only {type(obj).__name__})")
        n = mv.nbytes
        arr = (ctypes.c_char * n).from_buffer(mv)
        try:
            yield ctypes.addressof(arr), n
        finally:
            del arr
    finally:
        _release(mv)


@contextmanager
def pin_readable(obj: Any, what: str = "data") -> Iterator[Tuple[int, int]]:
    """Yields ``(address, nbytes)`` of ``obj``'s C-contiguous buffer, pinned for the duration
    of the ``with`` block. No copy for ``bytes``, writable buffers and (on CPython) read-only
    buffers; elsewhere read-only non-``bytes`` buffers are copied once."""
    if type(obj) is bytes:
        ptr = ctypes.c_char_p(obj)  # points into the bytes object itself
        yield ctypes.cast(ptr, ctypes.c_void_p).value or 0, len(obj)
        return
    mv = _byte_view(obj, what)
    try:
        n = mv.nbytes
        if not mv.readonly:
            arr = (ctypes.c_char * n).from_buffer(mv)
            try:
                yield ctypes.addressof(arr), n
            finally:
                del arr
        elif HAVE_PYTHONAPI:
            view = _PyBuffer()
            _get_buffer(mv, ctypes.byref(view), _PyBUF_SIMPLE)
            try:
                yield view.buf or 0, view.len
            finally:
                _release_buffer(ctypes.byref(view))
        else:  # pragma: no cover - interpreters without ctypes.pythonapi
            copy = ctypes.c_char_p(mv.tobytes())
            yield ctypes.cast(copy, ctypes.c_void_p).value or 0, n
    finally:
        _release(mv)


def _release(mv: memoryview) -> None:
    try:
        mv.release()
    except BufferError:  # pragma: no cover - an export still alive; the GC releases it
        pass
