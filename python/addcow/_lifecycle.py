"""The end of an image's life: :func:`detach`, :func:`commit` and :func:`check` (with its
:class:`CheckResult`). Allocation of an open image: :meth:`addcow.Image.allocation`."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import List, Tuple

from . import _lib
from ._image import PathType, _fs
from ._lib import check as _check
from ._lib import invalid, lib

__all__ = ["CheckResult", "Finding", "check", "commit", "detach"]

# The counters of a check result, in CheckResult's field order.
_COUNTS = (
    _lib.CHECK_CORRUPTIONS,
    _lib.CHECK_LEAKS,
    _lib.CHECK_CORRUPTIONS_FIXED,
    _lib.CHECK_LEAKS_FIXED,
    _lib.CHECK_ALLOCATED_CLUSTERS,
    _lib.CHECK_TOTAL_CLUSTERS,
)
_KINDS = {_lib.CHECK_CORRUPTION: "corruption", _lib.CHECK_LEAK: "leak", _lib.CHECK_NOTE: "note"}


def detach(path: PathType, remove: bool = False) -> None:
    """Detaches the image at ``path``: checks that every cluster is allocated (``OSError``
    with errno EBUSY and the count otherwise; also EBUSY while another user has the image),
    flushes, and with ``remove=True`` deletes the ``.add-cow`` file (its directory synced).
    The raw image file is then a standalone disk; the backing file is not needed."""
    flags = _lib.DETACH_REMOVE if remove else 0
    _check(lib.addcow_detach(_fs(path), flags), "addcow_detach", path)


def commit(path: PathType, empty: bool = False, backing_fmt: str = "raw") -> None:
    """Writes every allocated cluster of the image at ``path`` into its backing file (which
    grows to the image's size when shorter) and flushes it; with ``empty=True`` then makes
    every cluster unallocated again and punches the image file. The image reads the same
    throughout. ``backing_fmt="add-cow"`` for a layout-1 image over an add-cow image (layout 2
    names its backing format itself). EBUSY while another user has the image or its backing
    file; EINVAL without a backing file."""
    if backing_fmt not in ("raw", "add-cow"):
        invalid("addcow_commit", f"backing_fmt {backing_fmt!r} is not 'raw' or 'add-cow'")
    flags = (_lib.COMMIT_EMPTY if empty else 0) | (_lib.COMMIT_BACKING_ADDCOW if backing_fmt == "add-cow" else 0)
    _check(lib.addcow_commit(_fs(path), flags), "addcow_commit", path)


@dataclass(frozen=True)
class Finding:
    """One thing :func:`check` found."""

    #: ``"corruption"``, ``"leak"`` or ``"note"`` (counted nowhere).
    kind: str
    message: str
    #: Repaired by this check.
    repaired: bool


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` found (``qemu-img check``'s model)."""

    #: 0 nothing left to repair, 2 corruptions left, 3 leaks left and no corruption.
    exit_code: int
    #: Corruptions and leaks found and not repaired.
    corruptions: int
    leaks: int
    #: Corruptions and leaks this check repaired.
    corruptions_fixed: int
    leaks_fixed: int
    allocated_clusters: int
    total_clusters: int
    findings: Tuple[Finding, ...]


def check(path: PathType, repair: bool = False) -> CheckResult:
    """Checks the image at ``path``; with ``repair=True`` repairs what needs no guess (see
    ``addcow_check`` in ``addcow.h``). Raises ``OSError`` only when the check could not be
    made (no ``.add-cow`` file, an I/O error, EBUSY for a repair of an image in use): a
    malformed header is a finding, not an error."""
    r = ctypes.c_void_p()
    flags = _lib.CHECK_REPAIR if repair else 0
    code = _check(lib.addcow_check(_fs(path), flags, ctypes.byref(r)), "addcow_check", path)
    try:
        counts = [_check(lib.addcow_check_count(r, i), "addcow_check_count") for i in _COUNTS]
        findings: List[Finding] = []
        for i in range(_check(lib.addcow_check_count(r, _lib.CHECK_FINDINGS), "addcow_check_count")):
            msg = ctypes.c_char_p()
            kind = _check(lib.addcow_check_finding(r, i, ctypes.byref(msg)), "addcow_check_finding")
            text = (msg.value or b"").decode("utf-8", "replace")
            findings.append(Finding(_KINDS[kind & ~_lib.CHECK_REPAIRED], text, bool(kind & _lib.CHECK_REPAIRED)))
    finally:
        lib.addcow_check_free(r)
    return CheckResult(code, *counts, findings=tuple(findings))
