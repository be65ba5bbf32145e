"""Finding and loading ``libaddcow.so`` and declaring its C ABI (``include/addcow.h``).

Every exported function is declared here with ``argtypes`` and ``restype``. The library is
loaded with :class:`ctypes.CDLL`, so every call releases the GIL: threads really run in
parallel inside the library, and ``addcow_last_error()`` (kept per OS thread by the library)
is read right after a failing call on the same thread.

Lookup order (the first that loads wins):

1. the path in the environment variable ``ADDCOW_LIB``;
2. a ``libaddcow.so*`` file in this package's directory;
3. the system loader: ``ctypes.util.find_library("addcow")``, then ``libaddcow.so.1``
   (the SONAME) and ``libaddcow.so``.

When none loads, :class:`LibraryNotFoundError` (an :class:`ImportError`) names every place
tried and why it failed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import glob
import os
import warnings
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Callable, List, NoReturn, Optional, Sequence, Tuple

__all__ = [
    "ENV_VAR",
    "SONAME",
    "LibraryNotFoundError",
    "AddCowImage",
    "AddCowHeader",
    "AddCowIo",
    "AddCowCreateOptions",
    "AddCowOpenOptions",
    "Iovec",
    "OPEN_RDWR",
    "OPEN_WRITETHROUGH",
    "OPEN_NO_BACKING",
    "OPEN_BACKING_ADDCOW",
    "OPEN_FORCE_SHARE",
    "OPEN_CONFINE",
    "OPEN_DIRECT",
    "OPEN_COPY_ON_READ",
    "AddCowHydrateOptions",
    "AddCowJobProgress",
    "CREATE_CONFINE",
    "CREATE_SIZE_EXACT",
    "COMPAT_ALL_ALLOCATED",
    "MAX_SIZE",
    "IOV_MAX",
    "declare",
    "load_library",
    "lib",
    "library_path",
    "last_error",
    "raise_errno",
    "check",
]

#: Environment variable holding an explicit path to ``libaddcow.so``.
ENV_VAR = "ADDCOW_LIB"
#: The shared library's SONAME.
SONAME = "libaddcow.so.1"

# Open flags (ADDCOW_OPEN_*).
OPEN_RDWR = 1 << 0
OPEN_WRITETHROUGH = 1 << 1
OPEN_NO_BACKING = 1 << 2
OPEN_BACKING_ADDCOW = 1 << 3
OPEN_FORCE_SHARE = 1 << 4
OPEN_CONFINE = 1 << 5
OPEN_DIRECT = 1 << 6
OPEN_COPY_ON_READ = 1 << 7

# Hydration job states (ADDCOW_JOB_*): addcow.JobState.
JOB_RUNNING = 1
JOB_PAUSED = 2
JOB_COMPLETED = 3
JOB_CANCELLED = 4
JOB_FAILED = 5

# Create flags (ADDCOW_CREATE_*).
CREATE_CONFINE = 1 << 0
CREATE_SIZE_EXACT = 1 << 1

#: Layout 2's compatible feature bit 0 (ADDCOW_COMPAT_ALL_ALLOCATED): every cluster is
#: allocated, the image file alone is the disk.
COMPAT_ALL_ALLOCATED = 1 << 0

# Write-zeroes flags (ADDCOW_ZERO_*) and block-status flags (ADDCOW_STATUS_*).
ZERO_MAY_UNMAP = 1 << 0
ZERO_NO_FALLBACK = 1 << 1
STATUS_ALLOCATED = 1 << 0
STATUS_ZERO = 1 << 1
STATUS_BACKING = 1 << 2

# The mapping core's answers (ADDCOW_MAP_*, ADDCOW_STEP_*, ADDCOW_BUSY). The core is for block
# layers doing their own I/O; this package does not use it, but declares its functions.
MAP_DATA = 1
MAP_BACKING = 2
MAP_ZERO = 3
STEP_IN_PLACE = 1
STEP_ALLOCATE = 2
STEP_BUSY = 3
BUSY = 1

# Detach, commit and check (ADDCOW_DETACH_*, ADDCOW_COMMIT_*, ADDCOW_CHECK_*).
DETACH_REMOVE = 1 << 0
COMMIT_EMPTY = 1 << 0
COMMIT_BACKING_ADDCOW = 1 << 1
CHECK_REPAIR = 1 << 0
CHECK_CORRUPTIONS = 0
CHECK_LEAKS = 1
CHECK_CORRUPTIONS_FIXED = 2
CHECK_LEAKS_FIXED = 3
CHECK_ALLOCATED_CLUSTERS = 4
CHECK_TOTAL_CLUSTERS = 5
CHECK_FINDINGS = 6
CHECK_CORRUPTION = 1
CHECK_LEAK = 2
CHECK_NOTE = 3
CHECK_REPAIRED = 256

#: The largest virtual size the library supports (ADDCOW_MAX_SIZE, 2^56 bytes): larger sizes
#: give EFBIG at open, create and truncate.
MAX_SIZE = 1 << 56

#: The most buffers one ``readv``/``writev`` accepts (ADDCOW_IOV_MAX, Linux's IOV_MAX): more
#: raise EINVAL.
IOV_MAX = 1024


class LibraryNotFoundError(ImportError):
    """``libaddcow`` could not be loaded from any of the places tried.

    ``tried`` lists ``(place, reason)`` pairs in the order they were tried.
    """

    def __init__(self, tried: Sequence[Tuple[str, str]]) -> None:
        self.tried: List[Tuple[str, str]] = list(tried)
        lines = "\n".join(f"  - {place}: {reason}" for place, reason in self.tried)
        super().__init__(
            "cannot load libaddcow (the add-cow C library). Tried, in order:\n"
            f"{lines}\n"
            f"Build it with `cargo build --release` and set {ENV_VAR} to the path of "
            "target/release/libaddcow.so, copy it beside the addcow package, or install it "
            "where the system loader finds it."
        )


# --- C types -------------------------------------------------------------------------------


class AddCowImage(Structure):
    """Opaque ``struct AddCowImage``."""


class AddCowHeader(Structure):
    """Opaque ``struct AddCowHeader``."""


class Iovec(Structure):
    """``struct iovec`` from ``<sys/uio.h>``."""

    _fields_ = [("iov_base", c_void_p), ("iov_len", c_size_t)]


IovecPtr = POINTER(Iovec)
ImagePtr = POINTER(AddCowImage)
HeaderPtr = POINTER(AddCowHeader)

PREADV_FN = CFUNCTYPE(c_int, c_void_p, c_uint64, IovecPtr, c_int)
PWRITEV_FN = CFUNCTYPE(c_int, c_void_p, c_uint64, IovecPtr, c_int)
FLUSH_FN = CFUNCTYPE(c_int, c_void_p)
GET_LENGTH_FN = CFUNCTYPE(c_int64, c_void_p)
TRUNCATE_FN = CFUNCTYPE(c_int, c_void_p, c_uint64)


class AddCowIo(Structure):
    """``struct AddCowIo``: host-provided I/O callbacks (for ``addcow_open_io``)."""

    _fields_ = [
        ("opaque", c_void_p),
        ("preadv", PREADV_FN),
        ("pwritev", PWRITEV_FN),
        ("flush", FLUSH_FN),
        ("get_length", GET_LENGTH_FN),
        ("truncate", TRUNCATE_FN),
    ]


class AddCowCreateOptions(Structure):
    """``struct AddCowCreateOptions``; set ``struct_size`` to ``ctypes.sizeof`` of it."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("layout", c_uint32),
        ("image_file", c_char_p),
        ("backing_file", c_char_p),
        ("backing_fmt", c_char_p),
        ("size", c_uint64),
        ("cluster_size", c_uint32),
        ("flags", c_uint32),
    ]


class AddCowOpenOptions(Structure):
    """``struct AddCowOpenOptions`` (for ``addcow_open_ext``); set ``struct_size`` to
    ``ctypes.sizeof`` of it."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("flags", c_uint32),
        ("bitmap_cache_size", c_uint64),
    ]


class AddCowHydrateOptions(Structure):
    """``struct AddCowHydrateOptions`` (for ``addcow_hydrate_start``); set ``struct_size`` to
    ``ctypes.sizeof`` of it."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("flags", c_uint32),
        ("offset", c_uint64),
        ("bytes", c_uint64),
        ("rate", c_uint64),
        ("batch", c_uint64),
    ]


class AddCowJobProgress(Structure):
    """``struct AddCowJobProgress`` (filled by ``addcow_job_progress``); set ``struct_size``
    to ``ctypes.sizeof`` of it."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("state", c_uint32),
        ("total_clusters", c_uint64),
        ("done_clusters", c_uint64),
        ("copied_clusters", c_uint64),
        ("bytes_per_sec", c_uint64),
        ("error", c_int),
    ]


# (name, restype, argtypes, required). Optional functions are declared when the loaded
# library exports them (newer additions to the header).
_DECLARATIONS: List[Tuple[str, object, List[object], bool]] = [
    ("addcow_probe", c_int, [c_void_p, c_size_t, c_char_p], True),
    ("addcow_open", c_int, [c_char_p, c_uint32, POINTER(ImagePtr)], True),
    ("addcow_open_ext", c_int, [c_char_p, POINTER(AddCowOpenOptions), POINTER(ImagePtr)], True),
    (
        "addcow_open_io",
        c_int,
        [POINTER(AddCowIo), POINTER(AddCowIo), POINTER(AddCowIo), c_uint32, POINTER(ImagePtr)],
        True,
    ),
    (
        "addcow_open_io_ext",
        c_int,
        [
            POINTER(AddCowIo),
            POINTER(AddCowIo),
            POINTER(AddCowIo),
            POINTER(AddCowOpenOptions),
            POINTER(ImagePtr),
        ],
        True,
    ),
    ("addcow_close", c_int, [ImagePtr], True),
    ("addcow_get_length", c_int64, [ImagePtr], True),
    ("addcow_get_cluster_size", c_int64, [ImagePtr], True),
    ("addcow_get_backing_length", c_int64, [ImagePtr], False),
    ("addcow_readv", c_int, [ImagePtr, c_uint64, IovecPtr, c_int], True),
    ("addcow_writev", c_int, [ImagePtr, c_uint64, IovecPtr, c_int], True),
    ("addcow_pread", c_int, [ImagePtr, c_uint64, c_void_p, c_size_t], True),
    ("addcow_pwrite", c_int, [ImagePtr, c_uint64, c_void_p, c_size_t], True),
    ("addcow_is_allocated", c_int, [ImagePtr, c_uint64, c_uint64, POINTER(c_uint64)], True),
    ("addcow_truncate", c_int, [ImagePtr, c_uint64], True),
    ("addcow_write_zeroes", c_int, [ImagePtr, c_uint64, c_uint64, c_uint32], False),
    ("addcow_discard", c_int, [ImagePtr, c_uint64, c_uint64], False),
    (
        "addcow_block_status",
        c_int,
        [ImagePtr, c_uint64, c_uint64, POINTER(c_uint64), POINTER(c_uint32)],
        False,
    ),
    ("addcow_flush", c_int, [ImagePtr], True),
    ("addcow_last_error", c_char_p, [], True),
    ("addcow_version", c_char_p, [], True),
    ("addcow_create", c_int, [c_char_p, POINTER(AddCowCreateOptions)], True),
    ("addcow_header_read", c_int, [c_char_p, POINTER(HeaderPtr)], True),
    ("addcow_header_read_io", c_int, [POINTER(AddCowIo), POINTER(HeaderPtr)], True),
    ("addcow_header_layout", c_uint32, [HeaderPtr], True),
    ("addcow_header_cluster_size", c_uint32, [HeaderPtr], True),
    ("addcow_header_image_file", c_char_p, [HeaderPtr], True),
    ("addcow_header_backing_file", c_char_p, [HeaderPtr], True),
    ("addcow_header_backing_format", c_char_p, [HeaderPtr], True),
    ("addcow_header_image_format", c_char_p, [HeaderPtr], True),
    ("addcow_header_compatible_features", c_uint64, [HeaderPtr], True),
    ("addcow_header_incompatible_features", c_uint64, [HeaderPtr], True),
    ("addcow_header_bitmap_offset", c_uint64, [HeaderPtr], True),
    ("addcow_header_free", None, [HeaderPtr], True),
    # Hydration (opaque job handles as void pointers): optional, newer than the rest.
    ("addcow_hydrate", c_int, [ImagePtr, c_uint64, c_uint64, POINTER(c_uint64)], False),
    (
        "addcow_hydrate_start",
        c_int,
        [ImagePtr, POINTER(AddCowHydrateOptions), POINTER(c_void_p)],
        False,
    ),
    ("addcow_job_progress", c_int, [c_void_p, POINTER(AddCowJobProgress)], False),
    ("addcow_job_pause", c_int, [c_void_p], False),
    ("addcow_job_resume", c_int, [c_void_p], False),
    ("addcow_job_cancel", c_int, [c_void_p], False),
    ("addcow_job_wait", c_int, [c_void_p, c_int64], False),
    ("addcow_job_free", None, [c_void_p], False),
    # The mapping core (opaque handles as void pointers): optional, unused by this package.
    (
        "addcow_core_open",
        c_int,
        [POINTER(AddCowIo), c_uint64, POINTER(AddCowOpenOptions), POINTER(c_void_p)],
        False,
    ),
    ("addcow_core_close", c_int, [c_void_p], False),
    ("addcow_core_get_length", c_int64, [c_void_p], False),
    ("addcow_core_get_cluster_size", c_int64, [c_void_p], False),
    ("addcow_core_set_backing_length", c_int, [c_void_p, c_int64], False),
    ("addcow_core_map", c_int, [c_void_p, c_uint64, c_uint64, POINTER(c_uint64)], False),
    ("addcow_core_begin_write", c_int, [c_void_p, c_uint64, c_uint64, c_void_p], False),
    ("addcow_core_commit", c_int, [c_void_p, c_void_p], False),
    ("addcow_core_abort", c_int, [c_void_p, c_void_p], False),
    ("addcow_core_generation", c_uint64, [c_void_p], False),
    ("addcow_core_writeback_begin", c_int, [c_void_p, POINTER(c_void_p), POINTER(c_uint64)], False),
    ("addcow_writeback_pages", c_int64, [c_void_p], False),
    ("addcow_core_writeback_write", c_int, [c_void_p, c_void_p], False),
    ("addcow_core_writeback_end", c_int, [c_void_p, c_void_p, c_int], False),
    ("addcow_core_begin_zero", c_int, [c_void_p, c_uint64, c_uint64, c_void_p], False),
    ("addcow_core_is_fully_allocated", c_int, [c_void_p], False),
    ("addcow_core_set_all_allocated", c_int, [c_void_p, c_int], False),
    ("addcow_core_set_backing_file", c_int, [c_void_p, c_char_p, c_char_p], False),
    ("addcow_core_reload", c_int, [c_void_p], False),
    ("addcow_set_backing_file", c_int, [ImagePtr, c_char_p, c_char_p], False),
    ("addcow_create_io", c_int, [POINTER(AddCowIo), POINTER(AddCowCreateOptions)], False),
    ("addcow_get_allocation", c_int, [ImagePtr, POINTER(c_uint64), POINTER(c_uint64)], False),
    ("addcow_detach", c_int, [c_char_p, c_uint32], False),
    ("addcow_commit", c_int, [c_char_p, c_uint32], False),
    ("addcow_check", c_int, [c_char_p, c_uint32, POINTER(c_void_p)], False),
    ("addcow_check_count", c_int64, [c_void_p, c_uint32], False),
    ("addcow_check_finding", c_int, [c_void_p, c_uint64, POINTER(c_char_p)], False),
    ("addcow_check_free", None, [c_void_p], False),
]


def declare(dll: ctypes.CDLL) -> ctypes.CDLL:
    """Sets ``argtypes``/``restype`` on every function of the C ABI.

    Raises :class:`AttributeError` when a required function is missing (not libaddcow, or
    too old).
    """
    for name, restype, argtypes, required in _DECLARATIONS:
        try:
            fn = getattr(dll, name)
        except AttributeError:
            if required:
                raise
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    return dll


def _package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _try_load(name: str) -> ctypes.CDLL:
    # CDLL (not PyDLL): calls release the GIL.
    return declare(ctypes.CDLL(name))


def load_library(
    env: Optional[str] = None,
    package_dir: Optional[str] = None,
    system: bool = True,
    system_names: Optional[Sequence[str]] = None,
    find_library: Callable[[str], Optional[str]] = ctypes.util.find_library,
) -> Tuple[ctypes.CDLL, str]:
    """Finds and loads libaddcow; returns the declared library and the place it came from.

    ``env`` is the value of ``ADDCOW_LIB`` (``None`` reads the environment; ``""`` skips it),
    ``package_dir`` the directory searched for ``libaddcow.so*`` (``None``: this package's),
    ``system`` whether to ask the system loader, ``system_names`` the names it is asked for
    after ``find_library("addcow")`` (default: the SONAME, then ``libaddcow.so``).
    Raises :class:`LibraryNotFoundError` naming every place tried.
    """
    tried: List[Tuple[str, str]] = []
    if env is None:
        env = os.environ.get(ENV_VAR, "")
    if env:
        try:
            return _try_load(env), env
        except (OSError, AttributeError) as e:
            tried.append((f"{ENV_VAR}={env}", str(e)))
    pkg = package_dir if package_dir is not None else _package_dir()
    beside = sorted(glob.glob(os.path.join(glob.escape(pkg), "libaddcow.so*")))
    if not beside:
        tried.append((os.path.join(pkg, "libaddcow.so*"), "no such file"))
    for path in beside:
        try:
            dll = _try_load(path)
        except (OSError, AttributeError) as e:
            tried.append((path, str(e)))
            continue
        _warn_env_fallback(env, path)
        return dll, path
    if system:
        found = find_library("addcow")
        if found:
            candidates = [found]
        else:
            tried.append(("ctypes.util.find_library('addcow')", "not found"))
            candidates = []
        names = list(system_names) if system_names is not None else [SONAME, "libaddcow.so"]
        candidates += [n for n in names if n not in candidates]
        for name in candidates:
            try:
                dll = _try_load(name)
            except (OSError, AttributeError) as e:
                tried.append((f"system loader: {name}", str(e)))
                continue
            _warn_env_fallback(env, name)
            return dll, name
    raise LibraryNotFoundError(tried)


def _warn_env_fallback(env: str, used: str) -> None:
    if env:
        warnings.warn(
            f"{ENV_VAR}={env} could not be loaded; using {used} instead",
            RuntimeWarning,
            stacklevel=4,
        )


lib: ctypes.CDLL
#: Where the loaded library came from (a path, or a name given to the system loader).
library_path: str
lib, library_path = load_library()


# --- errors --------------------------------------------------------------------------------


def last_error() -> str:
    """This thread's last libaddcow error message (``""`` if none)."""
    msg = lib.addcow_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def raise_errno(errno: int, operation: str, message: str, filename: Optional[object] = None) -> NoReturn:
    """Raises ``OSError(errno, message[, filename])`` (Python picks the subclass: ENOENT ->
    FileNotFoundError, EPERM -> PermissionError, ...) with ``.operation`` set."""
    if not message:
        message = f"{operation}: {os.strerror(errno)}"
    if filename is None:
        err = OSError(errno, message)
    else:
        err = OSError(errno, message, os.fspath(filename))  # type: ignore[call-overload]
    err.operation = operation  # type: ignore[attr-defined]
    raise err


def check(rc: int, operation: str, filename: Optional[object] = None) -> int:
    """Returns ``rc`` when it is non-negative; otherwise raises the matching :class:`OSError`
    carrying ``-rc`` as ``.errno``, ``operation`` as ``.operation`` and the library's message
    (read at once, on this thread) as ``.strerror``."""
    if rc >= 0:
        return rc
    raise_errno(-rc, operation, last_error(), filename)


def invalid(operation: str, message: str) -> NoReturn:
    """Raises an ``OSError(EINVAL)`` detected on the Python side (as ``os.pread`` does for a
    negative offset)."""
    raise_errno(_errno.EINVAL, operation, f"{operation}: {message}")
