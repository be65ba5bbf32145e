"""The Python API over libaddcow: :func:`create`, :func:`open`, :class:`Image`, ...

Errors: every failing C call raises :class:`OSError` built as ``OSError(errno, message)``,
so Python picks the subclass (``FileNotFoundError`` for ENOENT, ``PermissionError`` for
EPERM and EACCES, plain :class:`OSError` for EBUSY, EFBIG, EINVAL, ...). ``.errno`` is the errno, ``.strerror`` the library's message (it starts with the
C function's name), ``.operation`` the C function's name and, for calls on a path,
``.filename`` the path. Negative offsets or sizes raise ``OSError(EINVAL)`` as :func:`os.pread`
does; negative lengths raise :class:`ValueError`. Using a closed :class:`Image` raises
:class:`ValueError`.
"""

from __future__ import annotations

import ctypes
import errno
import io
import operator
import os
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

from . import _lib
from ._buffers import pin_readable, pin_writable
from ._handle import Handle
from ._job import HydrateJob
from ._lib import check, invalid, lib

__all__ = [
    "Header",
    "Image",
    "ImageFile",
    "Extent",
    "create",
    "open",
    "probe",
    "read_header",
    "version",
]

#: A filesystem path: ``str``, ``bytes`` or :class:`os.PathLike`.
PathType = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

_U64_MAX = (1 << 64) - 1


def version() -> str:
    """The C library's version, e.g. ``"0.1.0"``."""
    v: bytes = lib.addcow_version()
    return v.decode("ascii", "replace")


def probe(data: Any) -> int:
    """How sure libaddcow is that ``data`` (any bytes-like object) starts an add-cow file:
    100 for layout 1's magic and version 1 (12 bytes are enough) or layout 2's magic
    ``b"ACOW"`` (4 bytes), 0 otherwise."""
    with pin_readable(data, "data") as (addr, n):
        return check(lib.addcow_probe(addr, n, None), "addcow_probe")


def _u64(value: Any, what: str, operation: str) -> int:
    """``value`` as an unsigned 64-bit integer; OSError(EINVAL) when negative or too large."""
    v = operator.index(value)
    if v < 0 or v > _U64_MAX:
        invalid(operation, f"{what} {v} is out of range")
    return v


def _u32(value: Any, what: str, operation: str) -> int:
    """``value`` as an unsigned 32-bit integer; OSError(EINVAL) when negative or too large."""
    v = operator.index(value)
    if v < 0 or v > 0xFFFFFFFF:
        invalid(operation, f"{what} {v} is out of range")
    return v


def _fs(path: PathType) -> bytes:
    return os.fsencode(path)


def create(
    path: PathType,
    image_file: PathType,
    backing_file: Optional[PathType] = None,
    size: Optional[int] = None,
    backing_fmt: Optional[str] = None,
    confine: bool = False,
    layout: int = 1,
    cluster_size: Optional[int] = None,
    exact_size: bool = False,
) -> None:
    """Creates the ``.add-cow`` file at ``path`` (replacing any file there that is not in use)
    and, as ``size`` says, the raw image file. Atomic: the ``.add-cow`` file appears complete
    or not at all, and a failure removes the files this call created.

    ``image_file`` and ``backing_file`` are stored as given; relative names resolve against
    ``path``'s directory. ``size``: above 0, the image file is created if missing and resized
    to ``size``; ``None`` or 0, the image file must exist and gives the size, or, when it is
    missing and there is a backing file, it is created with the backing file's length.
    ``backing_fmt``: ``None`` or ``"raw"`` (default), or ``"add-cow"``. ``confine=True``:
    both names must resolve beneath ``path``'s directory (as :func:`open` checks them with
    ``confine=True``). ``exact_size=True`` (``ADDCOW_CREATE_SIZE_EXACT``): ``size`` is the
    virtual size even when it is 0 or ``None``, so the image file is created if missing and
    resized to it (0 makes an empty image, as ``qemu-img create IMG 0``).

    ``layout``: 1 (default; the 2012 layout, 64 KiB clusters) or 2 (the 2013 layout: names by
    offset and length, feature bits, the backing format recorded in the header so that
    :func:`open` needs no ``backing_fmt``). ``cluster_size`` in bytes: ``None`` or 0 for the
    layout's default (65536); layout 1 allows only 65536, layout 2 a power of two from 4096
    to 2 MiB (``OSError(EINVAL)`` otherwise). Other layouts raise ``OSError(ENOTSUP)``.

    Raises ``OSError(EBUSY)`` when the ``.add-cow`` file being replaced or the image file is
    in use (locked by another open image, here or in another process), ``OSError(EFBIG)`` for
    a size above :data:`addcow.MAX_SIZE`, :class:`PermissionError` (EACCES) for a name that
    leaves the directory under ``confine``.
    """
    opts = _lib.AddCowCreateOptions()
    opts.struct_size = ctypes.sizeof(_lib.AddCowCreateOptions)
    opts.layout = _u32(layout, "layout", "addcow_create")
    opts.image_file = _fs(image_file)
    opts.backing_file = _fs(backing_file) if backing_file is not None else None
    opts.backing_fmt = backing_fmt.encode() if backing_fmt is not None else None
    opts.size = _u64(0 if size is None else size, "size", "addcow_create")
    opts.cluster_size = _u32(cluster_size or 0, "cluster_size", "addcow_create")
    opts.flags = (_lib.CREATE_CONFINE if confine else 0) | (_lib.CREATE_SIZE_EXACT if exact_size else 0)
    check(lib.addcow_create(_fs(path), ctypes.byref(opts)), "addcow_create", path)


@dataclass(frozen=True)
class Header:
    """A parsed ``.add-cow`` header of either layout (see :func:`read_header`). The fields
    after ``backing_file`` default to what every layout-1 header reports."""

    #: 1 for the 2012 v9 layout, 2 for the 2013 one.
    layout: int
    #: Cluster size in bytes (65536 for layout 1; 4096 to 2 MiB for layout 2).
    cluster_size: int
    #: The raw image file's name as stored (relative to the ``.add-cow`` file's directory).
    image_file: str
    #: The backing file's name as stored, or ``None``.
    backing_file: Optional[str]
    #: The backing file's format as the header records it (``"raw"`` or ``"add-cow"``);
    #: ``None`` without a backing file and for layout 1, whose header does not record it (the
    #: opener chooses: :func:`open`'s ``backing_fmt``).
    backing_format: Optional[str] = None
    #: The image file's format: ``"raw"``.
    image_format: str = "raw"
    #: Compatible feature bits as stored (layout 2; 0 for layout 1):
    #: :data:`addcow.COMPAT_ALL_ALLOCATED` is set once every cluster is allocated.
    compatible_features: int = 0
    #: Incompatible feature bits: always 0 (a header with any set is refused, ENOTSUP).
    incompatible_features: int = 0
    #: Where the COW bitmap starts in the ``.add-cow`` file: the header's length (2560 for
    #: layout 1, max(4096, cluster size) for layout 2).
    bitmap_offset: int = 2560


def read_header(path: PathType) -> Header:
    """Reads and validates the header of the ``.add-cow`` file at ``path`` without opening
    the files it names. Names are decoded with :func:`os.fsdecode`."""
    h = _lib.HeaderPtr()
    check(lib.addcow_header_read(_fs(path), ctypes.byref(h)), "addcow_header_read", path)
    try:
        image = lib.addcow_header_image_file(h)
        backing = lib.addcow_header_backing_file(h)
        backing_format = lib.addcow_header_backing_format(h)
        return Header(
            layout=int(lib.addcow_header_layout(h)),
            cluster_size=int(lib.addcow_header_cluster_size(h)),
            image_file=os.fsdecode(image) if image is not None else "",
            backing_file=os.fsdecode(backing) if backing is not None else None,
            backing_format=backing_format.decode("ascii") if backing_format is not None else None,
            image_format=lib.addcow_header_image_format(h).decode("ascii"),
            compatible_features=int(lib.addcow_header_compatible_features(h)),
            incompatible_features=int(lib.addcow_header_incompatible_features(h)),
            bitmap_offset=int(lib.addcow_header_bitmap_offset(h)),
        )
    finally:
        lib.addcow_header_free(h)


class Extent(NamedTuple):
    """A run of bytes in one allocation state, as yielded by :meth:`Image.map`."""

    offset: int
    length: int
    allocated: bool


class BlockStatus(NamedTuple):
    """What a run of bytes reads, from :meth:`Image.block_status`: the image file
    (``allocated``), zeros (``zero``: a hole of the image file, or unallocated past the
    backing file's end), or the backing file (``backing``)."""

    length: int
    allocated: bool
    zero: bool
    backing: bool


_MODES = {"r": False, "rb": False, "r+": True, "rb+": True, "r+b": True}
_BACKING_FMTS = {"raw": 0, "add-cow": _lib.OPEN_BACKING_ADDCOW}


def open(  # noqa: A001 - mirrors io.open / gzip.open
    path: PathType,
    mode: str = "r",
    writethrough: bool = False,
    backing: bool = True,
    backing_fmt: str = "raw",
    force_share: bool = False,
    confine: bool = False,
    bitmap_cache_size: Optional[int] = None,
    direct: bool = False,
    copy_on_read: bool = False,
) -> "Image":
    """Opens the ``.add-cow`` file at ``path`` and the files its header names, and locks them
    as QEMU locks its images.

    ``mode``: ``"r"`` read-only (writes raise :class:`PermissionError`) or ``"r+"``
    read-write. ``writethrough``: every write is durable when it returns (default:
    writeback until :meth:`Image.flush` or :meth:`Image.close`). ``backing=False``: do not
    open the backing file; unallocated clusters read as zeros. ``backing_fmt``: ``"raw"`` or
    ``"add-cow"`` (the backing file is itself an add-cow image).

    Locks: ``"r+"`` excludes every other user of the ``.add-cow`` and image files, ``"r"``
    excludes writers, and every backing file down the chain is kept from writers; a conflict
    raises ``OSError(EBUSY)`` naming the file -- also for a second ``"r+"`` open of the same
    image in this process. ``force_share=True`` (``"r"`` only, ``OSError(EINVAL)`` with
    ``"r+"``) takes no conflicting lock, like ``qemu-img -U``: a peek at an image in use,
    whose content may change underneath.

    ``confine=True``: every name in every header of the chain must resolve beneath the
    directory of the ``.add-cow`` file naming it (no absolute names, ``..`` or symlinks out):
    :class:`PermissionError` (EACCES) otherwise. Use it for images you did not make.

    ``bitmap_cache_size``: the most bytes of bitmap kept in memory (``None`` or 0: the
    library's default). Images larger than :data:`addcow.MAX_SIZE` raise ``OSError(EFBIG)``.

    ``direct=True``: direct I/O, QEMU's ``cache=none`` (``ADDCOW_OPEN_DIRECT``): every file of
    the chain is opened with ``O_DIRECT`` and bypasses the page cache. Any offset, length and
    buffer works (unaligned requests are copied through aligned buffers inside the library;
    page-aligned buffers such as an ``mmap`` of whole blocks at block-aligned offsets are not
    copied). A file system without direct I/O raises ``OSError(EINVAL)``.

    ``copy_on_read=True`` (``"r+"`` only, ``OSError(EINVAL)`` with ``"r"``): a read of
    unallocated clusters within the backing data also hydrates them (QEMU's
    ``copy-on-read``), as :meth:`Image.hydrate` does.
    """
    try:
        writable = _MODES[mode]
    except KeyError:
        raise ValueError(f"mode must be 'r' or 'r+', not {mode!r}") from None
    try:
        flags = _BACKING_FMTS[backing_fmt]
    except KeyError:
        raise ValueError(f"backing_fmt must be 'raw' or 'add-cow', not {backing_fmt!r}") from None
    if writable:
        flags |= _lib.OPEN_RDWR
    if writethrough:
        flags |= _lib.OPEN_WRITETHROUGH
    if not backing:
        flags |= _lib.OPEN_NO_BACKING
    if force_share:
        flags |= _lib.OPEN_FORCE_SHARE
    if confine:
        flags |= _lib.OPEN_CONFINE
    if direct:
        flags |= _lib.OPEN_DIRECT
    if copy_on_read:
        flags |= _lib.OPEN_COPY_ON_READ
    opts = _lib.AddCowOpenOptions()
    opts.struct_size = ctypes.sizeof(_lib.AddCowOpenOptions)
    opts.flags = flags
    cache = 0 if bitmap_cache_size is None else bitmap_cache_size
    opts.bitmap_cache_size = _u64(cache, "bitmap_cache_size", "addcow_open_ext")
    handle = _lib.ImagePtr()
    rc = lib.addcow_open_ext(_fs(path), ctypes.byref(opts), ctypes.byref(handle))
    check(rc, "addcow_open_ext", path)
    return Image(handle, path, "r+" if writable else "r")


class Image(Handle):
    """An open add-cow image. Create it with :func:`addcow.open`.

    Thread-safe: any method may be called from many threads at once. The library runs the
    calls in parallel (the GIL is released during each call). :meth:`close` waits for calls
    in progress on other threads and makes every later call raise :class:`ValueError`.
    :meth:`truncate` is safe to call concurrently too, but other calls racing with it see
    either the old or the new size: order it yourself when that matters.

    A context manager: leaving the ``with`` block closes (and so flushes) the image.
    """

    _closed_message = "I/O operation on a closed add-cow image"

    def __init__(self, handle: Any, path: PathType, mode: str) -> None:
        """Wraps a live ``AddCowImage*``; use :func:`addcow.open` instead."""
        super().__init__(handle)
        #: The path the image was opened with.
        self.name = path
        #: ``"r"`` or ``"r+"``.
        self.mode = mode
        self._cluster_size = int(check(lib.addcow_get_cluster_size(handle), "addcow_get_cluster_size"))

    # --- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Flushes and closes the image. Idempotent. Waits for calls in progress on other
        threads; raises :class:`OSError` when the final flush fails (the image is closed
        anyway)."""
        handle = self._take()
        if handle is not None:
            check(lib.addcow_close(handle), "addcow_close", self.name)

    def __enter__(self) -> "Image":
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is None:
            return
        try:
            warnings.warn(f"unclosed add-cow image {self.name!r}", ResourceWarning, stacklevel=2, source=self)
            self.close()
        except Exception:  # noqa: BLE001 - nothing to report to during finalization
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"size={self.size}"
        return f"<addcow.Image {self.name!r} mode={self.mode!r} {state}>"

    # --- properties ----------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """Whether the image was opened read-write."""
        return self.mode == "r+"

    @property
    def size(self) -> int:
        """The virtual size in bytes (the image file's length)."""
        h = self._acquire()
        try:
            return check(lib.addcow_get_length(h), "addcow_get_length")
        finally:
            self._release()

    @property
    def cluster_size(self) -> int:
        """The cluster size in bytes (65536 for layout 1)."""
        self._check_open()
        return self._cluster_size

    @property
    def backing_length(self) -> int:
        """Length of the data unallocated clusters read from: the backing file's length, 0
        without one or when opened with ``backing=False``. Needs a library that exports
        ``addcow_get_backing_length`` (:class:`NotImplementedError` otherwise)."""
        fn = getattr(lib, "addcow_get_backing_length", None)
        if fn is None:
            raise NotImplementedError("this libaddcow has no addcow_get_backing_length")
        h = self._acquire()
        try:
            return check(fn(h), "addcow_get_backing_length")
        finally:
            self._release()

    # --- I/O -----------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """Reads ``length`` bytes at ``offset``: allocated clusters from the image file, the
        others from the backing file (zeros past its end). ``OSError(EINVAL)`` past the end.
        """
        length = operator.index(length)
        if length < 0:
            raise ValueError(f"negative length {length}")
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset: int, buffer: Any) -> int:
        """Fills ``buffer`` (any writable C-contiguous buffer: bytearray, memoryview, mmap,
        array, numpy array, ...) from ``offset`` without copying; returns its size in
        bytes. Read-only buffers raise :class:`TypeError`, non-contiguous ones
        :class:`ValueError`."""
        off = _u64(offset, "offset", "addcow_pread")
        with pin_writable(buffer, "buffer") as (addr, n):
            h = self._acquire()
            try:
                check(lib.addcow_pread(h, off, addr, n), "addcow_pread")
            finally:
                self._release()
        return n

    def write(self, offset: int, data: Any) -> int:
        """Writes ``data`` (any bytes-like object) at ``offset`` without copying; returns the
        number of bytes written. A cluster written for the first time is completed from the
        backing file. :class:`PermissionError` on a read-only image, ``OSError(EINVAL)``
        past the end."""
        off = _u64(offset, "offset", "addcow_pwrite")
        with pin_readable(data, "data") as (addr, n):
            h = self._acquire()
            try:
                check(lib.addcow_pwrite(h, off, addr, n), "addcow_pwrite")
            finally:
                self._release()
        return n

    def readv(self, offset: int, buffers: Iterable[Any]) -> int:
        """Fills ``buffers`` (writable buffers, in order) from ``offset`` in one call; returns
        the total number of bytes. At most :data:`addcow.IOV_MAX` buffers."""
        off = _u64(offset, "offset", "addcow_readv")
        with ExitStack() as stack:
            iov, total = _iovecs(stack, buffers, pin_writable)
            h = self._acquire()
            try:
                check(lib.addcow_readv(h, off, iov, len(iov)), "addcow_readv")
            finally:
                self._release()
        return total

    def writev(self, offset: int, buffers: Iterable[Any]) -> int:
        """Writes ``buffers`` (bytes-like objects, in order) at ``offset`` in one call;
        returns the total number of bytes. At most :data:`addcow.IOV_MAX` buffers."""
        off = _u64(offset, "offset", "addcow_writev")
        with ExitStack() as stack:
            iov, total = _iovecs(stack, buffers, pin_readable)
            h = self._acquire()
            try:
                check(lib.addcow_writev(h, off, iov, len(iov)), "addcow_writev")
            finally:
                self._release()
        return total

    def is_allocated(self, offset: int, length: int) -> Tuple[bool, int]:
        """Whether the byte at ``offset`` lives in the image file, and the length of the run
        of bytes from ``offset`` in the same state, clamped to ``length`` and the image end.
        ``(False, 0)`` at or past the end, or for ``length`` 0."""
        off = _u64(offset, "offset", "addcow_is_allocated")
        n = _u64(length, "length", "addcow_is_allocated")
        pnum = ctypes.c_uint64()
        h = self._acquire()
        try:
            rc = check(lib.addcow_is_allocated(h, off, n, ctypes.byref(pnum)), "addcow_is_allocated")
        finally:
            self._release()
        return bool(rc), int(pnum.value)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False, no_fallback: bool = False) -> None:
        """Makes ``length`` bytes at ``offset`` read zeros without writing zero bytes where
        whole clusters allow it: punched out of the image file (``may_unmap``) or zeroed in
        place, and allocated without copying the backing file. ``no_fallback``: raise
        ``OSError(ENOTSUP)`` rather than write zeros. :class:`PermissionError` on a read-only
        image, ``OSError(EINVAL)`` past the end."""
        off = _u64(offset, "offset", "addcow_write_zeroes")
        n = _u64(length, "length", "addcow_write_zeroes")
        flags = (_lib.ZERO_MAY_UNMAP if may_unmap else 0) | (_lib.ZERO_NO_FALLBACK if no_fallback else 0)
        h = self._acquire()
        try:
            check(lib.addcow_write_zeroes(h, off, n, flags), "addcow_write_zeroes")
        finally:
            self._release()

    def discard(self, offset: int, length: int) -> None:
        """Discards the whole clusters of ``length`` bytes at ``offset`` (parts of clusters
        are left): they read zeros afterwards, never backing data, and are punched out of the
        image file. :class:`PermissionError` on a read-only image."""
        off = _u64(offset, "offset", "addcow_discard")
        n = _u64(length, "length", "addcow_discard")
        h = self._acquire()
        try:
            check(lib.addcow_discard(h, off, n), "addcow_discard")
        finally:
            self._release()

    def block_status(self, offset: int, length: int) -> BlockStatus:
        """The :class:`BlockStatus` of the run of bytes from ``offset`` (at most ``length``,
        never past the end; ``length`` 0 at or past the end)."""
        off = _u64(offset, "offset", "addcow_block_status")
        n = _u64(length, "length", "addcow_block_status")
        pnum, flags = ctypes.c_uint64(), ctypes.c_uint32()
        h = self._acquire()
        try:
            check(
                lib.addcow_block_status(h, off, n, ctypes.byref(pnum), ctypes.byref(flags)),
                "addcow_block_status",
            )
        finally:
            self._release()
        f = flags.value
        return BlockStatus(
            int(pnum.value),
            bool(f & _lib.STATUS_ALLOCATED),
            bool(f & _lib.STATUS_ZERO),
            bool(f & _lib.STATUS_BACKING),
        )

    def map(self, offset: int = 0, length: Optional[int] = None) -> Iterator[Extent]:
        """Yields :class:`Extent` ``(offset, length, allocated)`` runs covering
        ``offset .. offset + length`` (default: the whole image), adjacent runs in the
        same state merged."""
        size = self.size
        pos = _u64(offset, "offset", "addcow_is_allocated")
        end = size if length is None else min(size, pos + _u64(length, "length", "addcow_is_allocated"))
        run: Optional[List[Any]] = None
        while pos < end:
            allocated, n = self.is_allocated(pos, end - pos)
            if n == 0:  # the image shrank under us
                break
            if run is not None and run[2] == allocated:
                run[1] += n
            else:
                if run is not None:
                    yield Extent(*run)
                run = [pos, n, allocated]
            pos += n
        if run is not None:
            yield Extent(*run)

    def allocation(self) -> Tuple[int, int]:
        """``(allocated, total)`` clusters; equal once the image file is the whole disk (then
        :func:`addcow.detach` succeeds). Writes running beside it may or may not be counted."""
        allocated, total = ctypes.c_uint64(), ctypes.c_uint64()
        h = self._acquire()
        try:
            check(lib.addcow_get_allocation(h, ctypes.byref(allocated), ctypes.byref(total)), "addcow_get_allocation")
        finally:
            self._release()
        return int(allocated.value), int(total.value)

    def truncate(self, size: int) -> None:
        """Shrinks or grows the image to ``size`` bytes; growing never exposes backing data.
        :class:`PermissionError` on a read-only image."""
        n = _u64(size, "size", "addcow_truncate")
        h = self._acquire()
        try:
            check(lib.addcow_truncate(h, n), "addcow_truncate")
        finally:
            self._release()

    def set_backing_file(self, name: Optional[PathType], backing_fmt: Optional[str] = None) -> None:
        """Makes the header name ``name`` as the backing file (``None`` or ``""`` removes it);
        ``backing_fmt`` ``None``/``"raw"`` or ``"add-cow"``. Waits for writes and flushes in
        flight; crash-safe (the file names the old or the new backing file). The image keeps
        reading the backing file it opened: the new one is read after the next :func:`open`.
        :class:`PermissionError` on a read-only image, ``OSError(EINVAL)`` for a name the
        layout cannot hold."""
        n = _fs(name) if name is not None else None
        f = backing_fmt.encode() if backing_fmt is not None else None
        h = self._acquire()
        try:
            check(lib.addcow_set_backing_file(h, n, f), "addcow_set_backing_file")
        finally:
            self._release()

    def flush(self) -> None:
        """Makes every completed write durable: image data first, then the bitmap."""
        h = self._acquire()
        try:
            check(lib.addcow_flush(h), "addcow_flush")
        finally:
            self._release()

    def _range(self, offset: int, length: Optional[int], operation: str) -> Tuple[int, int]:
        off = _u64(offset, "offset", operation)
        if length is None:
            return off, max(0, self.size - off)
        return off, _u64(length, "length", operation)

    def hydrate(self, offset: int = 0, length: Optional[int] = None) -> int:
        """Hydrates every cluster that ``offset .. offset + length`` touches (default: to the
        end of the image) on this thread: copies the unallocated ones from the backing file
        into the image file and marks them allocated; returns how many it copied. Safe beside
        reads and writes on other threads (a guest write always wins). Durable as writes are
        (with :meth:`flush`). :class:`PermissionError` on a read-only image,
        ``OSError(EINVAL)`` past the end or when opened with ``backing=False``."""
        off, n = self._range(offset, length, "addcow_hydrate")
        done = ctypes.c_uint64()
        h = self._acquire()
        try:
            check(lib.addcow_hydrate(h, off, n, ctypes.byref(done)), "addcow_hydrate")
        finally:
            self._release()
        return int(done.value)

    def hydrate_start(
        self, offset: int = 0, length: Optional[int] = None, rate: int = 0, batch: int = 0
    ) -> HydrateJob:
        """Starts hydrating ``offset .. offset + length`` (default: to the end of the image)
        in the background, on a thread of the library, and returns the job. ``rate``: most
        bytes copied per second (0: no limit); ``batch``: bytes of contiguous clusters per
        copy (0: 1 MiB), the longest a guest write waits for it. ``OSError(EINVAL)`` for an
        empty range. The job flushes about every
        second and when it ends; a new job over the same range copies only what is left.
        :meth:`close` cancels the image's jobs first. Errors as :meth:`hydrate`."""
        off, n = self._range(offset, length, "addcow_hydrate_start")
        opts = _lib.AddCowHydrateOptions()
        opts.struct_size = ctypes.sizeof(_lib.AddCowHydrateOptions)
        if n == 0:
            invalid("addcow_hydrate_start", "an empty range (length=None: to the end)")
        opts.offset = off
        opts.bytes = n
        opts.rate = _u64(rate, "rate", "addcow_hydrate_start")
        opts.batch = _u64(batch, "batch", "addcow_hydrate_start")
        job = ctypes.c_void_p()
        h = self._acquire()
        try:
            rc = lib.addcow_hydrate_start(h, ctypes.byref(opts), ctypes.byref(job))
            check(rc, "addcow_hydrate_start")
        finally:
            self._release()
        return HydrateJob(int(job.value or 0))

    def as_file(self) -> "ImageFile":
        """A seekable :class:`io.RawIOBase` view of the image (its own position, starting
        at 0). Closing the view does not close the image. Wrap it in
        :class:`io.BufferedRandom` or :class:`io.BufferedReader` for buffered access."""
        self._check_open()
        return ImageFile(self)


def _iovecs(stack: ExitStack, buffers: Iterable[Any], pin: Any) -> Tuple[Any, int]:
    pinned = [stack.enter_context(pin(b, "buffer")) for b in buffers]
    iov = (_lib.Iovec * len(pinned))()
    total = 0
    for i, (addr, n) in enumerate(pinned):
        iov[i].iov_base = addr
        iov[i].iov_len = n
        total += n
    return iov, total


class ImageFile(io.RawIOBase):
    """A file-like, seekable raw view of an :class:`Image` (see :meth:`Image.as_file`).

    Reads stop at the end of the image; writes at the end fail with ``ENOSPC`` and writes
    crossing it are cut short, as on a block device. ``truncate`` resizes the image.
    """

    def __init__(self, image: Image) -> None:
        super().__init__()
        self._image = image
        self._pos = 0

    @property
    def image(self) -> Image:
        """The underlying image."""
        return self._image

    @property
    def name(self) -> Any:
        return self._image.name

    @property
    def mode(self) -> str:
        return "rb+" if self._image.writable else "rb"

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed file")

    def readable(self) -> bool:
        self._check_open()
        return True

    def writable(self) -> bool:
        self._check_open()
        return self._image.writable

    def seekable(self) -> bool:
        self._check_open()
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        offset = operator.index(offset)
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._image.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        with memoryview(buffer) as mv, mv.cast("B") as flat:
            n = max(0, min(flat.nbytes, self._image.size - self._pos))
            if n == 0:
                return 0
            self._image.readinto(self._pos, flat[:n])
        self._pos += n
        return n

    def write(self, data: Any) -> int:
        self._check_open()
        if not self._image.writable:
            raise io.UnsupportedOperation("not writable")
        with memoryview(data) as mv, mv.cast("B") as flat:
            if flat.nbytes == 0:
                return 0
            n = min(flat.nbytes, self._image.size - self._pos)
            if n <= 0:
                _lib.raise_errno(
                    errno.ENOSPC, "write", "write: no space past the end of the image", self.name
                )
            self._image.write(self._pos, flat[:n] if n < flat.nbytes else flat)
        self._pos += n
        return n

    def truncate(self, size: Optional[int] = None) -> int:
        self._check_open()
        if size is None:
            size = self._pos
        self._image.truncate(size)
        return size

    def flush(self) -> None:
        if self.closed:
            return
        if self._image.writable and not self._image.closed:
            self._image.flush()
