"""Python bindings for libaddcow, the add-cow disk-image format, over its C ABI (ctypes).

add-cow gives a raw image a backing file: a small ``.add-cow`` file names the raw *image
file* and a *backing file* and keeps one bit per cluster (0: read the backing file, 1: read
the image file). The first write to a cluster copies the rest of it from the backing file.
Two on-disk layouts: 1 (the default; 64 KiB clusters) and 2 (clusters of 4 KiB to 2 MiB,
feature bits): ``create(..., layout=2, cluster_size=4096)``.

Example::

    import addcow
    addcow.create("disk.add-cow", "disk.raw", backing_file="base.raw")
    with addcow.open("disk.add-cow", "r+") as img:
        img.write(0, b"hello")
        print(img.read(0, 5), list(img.map()))

The C library is found through ``$ADDCOW_LIB``, then a ``libaddcow.so*`` beside this
package, then the system loader (see :mod:`addcow._lib`); importing fails with
:class:`LibraryNotFoundError` (an :class:`ImportError`) naming every place tried.
"""

from ._image import (
    BlockStatus,
    Extent,
    Header,
    Image,
    ImageFile,
    create,
    open,
    probe,
    read_header,
    version,
)
from ._job import HydrateJob, JobState, Progress
from ._lib import COMPAT_ALL_ALLOCATED, IOV_MAX, MAX_SIZE, LibraryNotFoundError, library_path
from ._lifecycle import CheckResult, Finding, check, commit, detach

__version__ = "0.1.0"

__all__ = [
    "BlockStatus",
    "COMPAT_ALL_ALLOCATED",
    "CheckResult",
    "Extent",
    "Finding",
    "Header",
    "HydrateJob",
    "IOV_MAX",
    "Image",
    "ImageFile",
    "JobState",
    "LibraryNotFoundError",
    "MAX_SIZE",
    "Progress",
    "check",
    "commit",
    "create",
    "detach",
    "library_path",
    "open",
    "probe",
    "read_header",
    "version",
]
