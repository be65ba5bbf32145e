//! An image's metadata from C, beyond reads and writes: the "all allocated" state and layout
//! 2's feature bit, changing the backing file the header names (QEMU's change-backing-file,
//! for the core and for an open image), and reloading a core's cached metadata (QEMU's
//! invalidate-cache). Header rewrites never wait for each other: one beside another gives
//! -EBUSY (`mapping/header.rs`); a host serializes them.

use super::boundary::{ffi, opt_c_str};
use super::create::backing_format;
use super::mapping::{core_ref, AddCowCore};
use super::{image, AddCowImage};
use crate::error::Result;
use crate::layout::BackingFormat;
use std::ffi::{c_char, c_int, CStr};

/// The backing file named by `name` and `format` (NULL or "" name: none).
///
/// # Safety
/// `name` and `format` are NULL or NUL-terminated.
unsafe fn backing<'a>(
    name: *const c_char,
    format: *const c_char,
) -> Result<Option<(&'a [u8], BackingFormat)>> {
    // SAFETY: the caller's guarantee.
    let (name, format) = unsafe { (opt_c_str(name), opt_c_str(format)) };
    let format = backing_format(format)?;
    Ok(name.map(|n| (CStr::to_bytes(n), format)))
}

/// Whether every cluster is allocated (lives in the image file): 1, or 0, or -errno (-EINVAL
/// for NULL, the host's -errno reading bitmap pages). Cheap when asked repeatedly: each answer
/// resumes the scan where the last one found an unallocated cluster; layout 2 with its "all
/// allocated" bit answers 1 without reading. A host that sets the bit asks this *before*
/// `addcow_core_writeback_begin` (see `addcow_core_set_all_allocated`).
///
/// # Safety
/// `core` is NULL or a live core.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_is_fully_allocated(core: *mut AddCowCore) -> c_int {
    ffi("addcow_core_is_fully_allocated", || {
        // SAFETY: the caller's guarantee.
        let core = &unsafe { core_ref(core)? }.core;
        Ok(c_int::from(core.all_allocated() || core.fully_allocated()?))
    })
}

/// Layout 2's "all allocated" header bit (`ADDCOW_COMPAT_ALL_ALLOCATED`): while set, lookups
/// answer DATA without the bitmap and the backing file is not needed. Call it at the end of
/// the flush sequence with `on` = what `addcow_core_is_fully_allocated` answered before
/// `addcow_core_writeback_begin` of a write-back that ended durable (so every bit it saw is
/// durable before the header says so); 0 when it answered 0, which also rewrites a field
/// whose last write failed. Writes the 8-byte feature field alone (one sector-atomic write)
/// through `meta`'s `pwritev`, then calls `meta`'s `flush` (this and
/// `addcow_core_set_backing_file` are the only calls that flush the `.add-cow` file: the
/// order of a header change cannot be left to the host). Nothing is written when the field
/// already says `on`, and always for layout 1, which has no such bit. 0, or -EPERM (read-only
/// core: only when there is something to write), -EBUSY (beside `addcow_core_set_backing_file`
/// or `addcow_core_reload`), -EBADF (`meta` has no `flush`), or the host's -errno: then the
/// bit keeps its old value in memory, and the next call writes the field again.
///
/// # Safety
/// `core` is NULL or a live core.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_set_all_allocated(core: *mut AddCowCore, on: c_int) -> c_int {
    ffi("addcow_core_set_all_allocated", || {
        // SAFETY: the caller's guarantee.
        let core = &unsafe { core_ref(core)? }.core;
        core.set_all_allocated(on != 0).map(|()| 0)
    })
}

/// Makes the header name `name` (format `format`: NULL or "raw", or "add-cow") as the backing
/// file; NULL or "" `name` removes the backing file (stream and commit jobs' end). Only the
/// header changes: attach the new backing data with `addcow_core_set_backing_length`. Crash-
/// safe: layout 2 writes the new name into unused bytes of the header's name area, flushes
/// `meta`, then switches the offset, size and format fields in one write inside the first
/// sector and flushes again: a crash leaves the old or the new header. Layout 1 (which stores
/// no format: `format` is only checked) overwrites its fixed name field in one write, atomic
/// while both names are at most 500 bytes; longer, a crash may tear the name. 0, or -EPERM
/// (read-only core), -EINVAL (NULL core; a name with more bytes than the layout holds, the
/// image file's own name in layout 2, or no unused run of the name area long enough for it;
/// an unknown format), -EBUSY (beside another header rewrite), -EBADF (`meta` has no
/// `flush`), or the host's -errno: then the file names the old or the new backing file (call
/// again), and the core the old one.
///
/// # Safety
/// `core` is NULL or a live core; `name` and `format` are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_set_backing_file(
    core: *mut AddCowCore,
    name: *const c_char,
    format: *const c_char,
) -> c_int {
    ffi("addcow_core_set_backing_file", || {
        // SAFETY: the caller's guarantees.
        let (core, backing) = unsafe { (&core_ref(core)?.core, backing(name, format)?) };
        core.set_backing_file(backing).map(|()| 0)
    })
}

/// As `addcow_core_set_backing_file`, on an open image (read-write): waits for the writes and
/// flushes in flight, as `addcow_truncate` does. The image keeps reading the backing file it
/// opened: the new one is opened by the next `addcow_open`.
///
/// # Safety
/// `img` is NULL or a live handle; `name` and `format` are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn addcow_set_backing_file(
    img: *mut AddCowImage,
    name: *const c_char,
    format: *const c_char,
) -> c_int {
    ffi("addcow_set_backing_file", || {
        // SAFETY: the caller's guarantees.
        let (image, backing) = unsafe { (image(img)?, backing(name, format)?) };
        image.set_backing_file(backing).map(|()| 0)
    })
}

/// Drops the core's cached metadata and reads the header again (QEMU's invalidate-cache:
/// another process, e.g. a migration source, wrote the `.add-cow` file since the core was
/// opened): bitmap pages are read again on demand; names, feature bits and the "all
/// allocated" state come from the file as it is now. Run it with no write, zeroing or
/// write-back in flight and none starting (lookups beside it see the old or the new state);
/// the size, and the `.add-cow` file's length as `get_length` gave it at open, stay the core's
/// (after a resize elsewhere, open a new core). 0, or -EBUSY (a transaction or write-back open, dirty bitmap
/// pages: flush first; or beside another header rewrite), -EINVAL (NULL; a header on disk
/// with another cluster size: open a new core), or the host's -errno; on failure the core is
/// as it was.
///
/// # Safety
/// `core` is NULL or a live core.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_reload(core: *mut AddCowCore) -> c_int {
    ffi("addcow_core_reload", || {
        // SAFETY: the caller's guarantee.
        unsafe { core_ref(core)? }.core.reload().map(|()| 0)
    })
}
