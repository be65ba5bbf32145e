//! The end of an image's life from C: how much is allocated, detach, commit.

use super::boundary::{bad_arg, c_str, ffi};
use super::{image, AddCowImage};
use crate::engine::{commit, detach, BackingFormat, OpenOptions};
use std::ffi::{c_char, c_int, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `addcow_detach` flag: remove the `.add-cow` file (durably: its directory is synced).
pub const ADDCOW_DETACH_REMOVE: u32 = 1 << 0;
/// `addcow_commit` flag: after the commit, make every cluster unallocated again and punch the
/// image file (the space goes back where the file system can punch holes).
pub const ADDCOW_COMMIT_EMPTY: u32 = 1 << 0;
/// `addcow_commit` flag: a layout-1 image's backing file is an add-cow image (as
/// `ADDCOW_OPEN_BACKING_ADDCOW`; a layout-2 header names its backing format itself).
pub const ADDCOW_COMMIT_BACKING_ADDCOW: u32 = 1 << 1;

/// Counts the allocated clusters of `img` into `*allocated` and `*total` (the last cluster may
/// be partial). Returns 1 when every cluster is allocated (the image file is the whole disk:
/// `addcow_detach` will succeed), 0 otherwise, -EINVAL for a NULL argument, or the host's
/// -errno. Takes no lock: writes running beside it may or may not be counted. Costs one pass
/// over the stored bitmap (holes of a sparse `.add-cow` file are skipped); nothing for a
/// layout-2 image whose "all allocated" bit is set.
///
/// # Safety
/// `img` is NULL or a live handle; `allocated` and `total` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_get_allocation(
    img: *mut AddCowImage,
    allocated: *mut u64,
    total: *mut u64,
) -> c_int {
    ffi("addcow_get_allocation", || {
        // SAFETY: the caller's guarantee.
        let image = unsafe { image(img)? };
        if allocated.is_null() || total.is_null() {
            return Err(bad_arg("allocated or total is NULL"));
        }
        let a = image.allocation()?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe {
            allocated.write(a.allocated);
            total.write(a.total);
        }
        Ok(c_int::from(a.is_full()))
    })
}

/// # Safety
/// `path` is NULL or NUL-terminated and outlives `'a`.
unsafe fn path<'a>(path: *const c_char) -> crate::error::Result<&'a Path> {
    // SAFETY: the caller's guarantee.
    let p = unsafe { c_str(path, "path")? };
    Ok(Path::new(OsStr::from_bytes(p.to_bytes())))
}

fn check_flags(flags: u32, known: u32, what: &str) -> crate::error::Result<()> {
    match flags & !known {
        0 => Ok(()),
        unknown => Err(bad_arg(&format!("unknown {what} flags {unknown:#x}"))),
    }
}

/// Detaches the image at `path` from its `.add-cow` file, leaving the raw image file as a
/// standalone disk holding every byte the guest saw. Opens the image read-write (locked as
/// `addcow_open` locks: -EBUSY while another user has it; the backing file is not opened, nor
/// needed), checks that every cluster is allocated (-EBUSY otherwise, the message giving the
/// count: hydrate or write the rest first; nothing is changed), flushes (image data, bitmap,
/// then layout 2's "all allocated" bit), and with `ADDCOW_DETACH_REMOVE` removes the `.add-cow`
/// file and syncs its directory while still holding the lock. Without the flag the image stays
/// usable. A crash at any point leaves either a complete image or the standalone raw file.
/// 0, -EINVAL (NULL path, unknown flags, a malformed header), or -errno as for `addcow_open`.
///
/// # Safety
/// `path` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn addcow_detach(path: *const c_char, flags: u32) -> c_int {
    ffi("addcow_detach", || {
        check_flags(flags, ADDCOW_DETACH_REMOVE, "detach")?;
        // SAFETY: the caller's guarantee.
        let path = unsafe { self::path(path)? };
        detach(path, flags & ADDCOW_DETACH_REMOVE != 0).map(|()| 0)
    })
}

/// Commits the image at `path` into its backing file, as `qemu-img commit` does: opens the
/// image and its backing file read-write (both locked for writing: -EBUSY while another user
/// has either), flushes the image, grows a shorter backing file to the image's size, writes
/// every allocated cluster into the backing file (an add-cow backing image through its own
/// write path), and flushes it. With `ADDCOW_COMMIT_EMPTY`, only then are the clusters made
/// unallocated again (layout 2's "all allocated" bit cleared first, the bitmap zeroed and
/// synced) and the image file punched. The image reads the same throughout: a crash at any
/// point leaves it reading what it read before. 0, -EINVAL (NULL path, unknown flags, no
/// backing file), -EPERM (an add-cow backing image that cannot be written), or -errno.
///
/// # Safety
/// `path` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn addcow_commit(path: *const c_char, flags: u32) -> c_int {
    ffi("addcow_commit", || {
        check_flags(
            flags,
            ADDCOW_COMMIT_EMPTY | ADDCOW_COMMIT_BACKING_ADDCOW,
            "commit",
        )?;
        // SAFETY: the caller's guarantee.
        let path = unsafe { self::path(path)? };
        let opts = OpenOptions {
            backing_format: match flags & ADDCOW_COMMIT_BACKING_ADDCOW {
                0 => BackingFormat::Raw,
                _ => BackingFormat::AddCow,
            },
            ..OpenOptions::default()
        };
        commit(path, &opts, flags & ADDCOW_COMMIT_EMPTY != 0).map(|()| 0)
    })
}
