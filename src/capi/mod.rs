//! The stable C ABI (`include/addcow.h`, generated from this module by cbindgen).
//!
//! Return convention (QEMU's): 0, or the documented non-negative value, on success; a negative
//! errno on failure, with a message for `addcow_last_error`:
//! `EINVAL` bad argument or malformed header, `ENOTSUP` unknown version or layout, `ENOENT`
//! missing file, `EPERM` write or truncate on a read-only image, `EBUSY` a file in use (a
//! conflicting lock) or an image not ready (a detach before every cluster is allocated),
//! `EACCES` a name refused by a confined open, `EFBIG` a size beyond `ADDCOW_MAX_SIZE`, host
//! errors (`EIO`, `ENOSPC`, …) passed through. A panic inside the
//! library returns `-EIO`; none unwinds into C.
//!
//! Threads: every function may be called from many threads at once on one image, except
//! `addcow_close` (the caller makes sure no other call on the image is running or follows;
//! it stops the image's hydration jobs first, `hydrate.rs`).
//! `addcow_truncate` waits for the calls in flight, and calls made meanwhile wait for it.
//!
//! The mapping core (`addcow_core_*`, `mapping.rs`) is the format logic without data I/O, for
//! hosts that do their own: its contract is on `AddCowCore`. Files a host supplies as callback
//! tables (`AddCowIo`) become byte sources in `host.rs`.

mod boundary;
mod check;
mod create;
mod header;
mod host;
mod hydrate;
mod iov;
mod lifecycle;
mod mapping;
mod metadata;
mod open;
mod versioned;
mod zero;

pub use check::{
    addcow_check, addcow_check_count, addcow_check_finding, addcow_check_free, AddCowCheckResult,
    ADDCOW_CHECK_ALLOCATED_CLUSTERS, ADDCOW_CHECK_CORRUPTION, ADDCOW_CHECK_CORRUPTIONS,
    ADDCOW_CHECK_CORRUPTIONS_FIXED, ADDCOW_CHECK_FINDINGS, ADDCOW_CHECK_LEAK, ADDCOW_CHECK_LEAKS,
    ADDCOW_CHECK_LEAKS_FIXED, ADDCOW_CHECK_NOTE, ADDCOW_CHECK_REPAIR, ADDCOW_CHECK_REPAIRED,
    ADDCOW_CHECK_TOTAL_CLUSTERS,
};
pub use create::{
    addcow_create, addcow_create_io, AddCowCreateOptions, ADDCOW_CREATE_CONFINE,
    ADDCOW_CREATE_SIZE_EXACT,
};
pub use header::{
    addcow_header_backing_file, addcow_header_backing_format, addcow_header_bitmap_offset,
    addcow_header_cluster_size, addcow_header_compatible_features, addcow_header_free,
    addcow_header_image_file, addcow_header_image_format, addcow_header_incompatible_features,
    addcow_header_layout, addcow_header_read, addcow_header_read_io, AddCowHeader,
    ADDCOW_COMPAT_ALL_ALLOCATED,
};
pub use host::AddCowIo;
pub use hydrate::{
    addcow_hydrate, addcow_hydrate_start, addcow_job_cancel, addcow_job_free, addcow_job_pause,
    addcow_job_progress, addcow_job_resume, addcow_job_wait, AddCowHydrateOptions, AddCowJob,
    AddCowJobProgress, ADDCOW_JOB_CANCELLED, ADDCOW_JOB_COMPLETED, ADDCOW_JOB_FAILED,
    ADDCOW_JOB_PAUSED, ADDCOW_JOB_RUNNING,
};
pub use iov::ADDCOW_IOV_MAX;

pub use lifecycle::{
    addcow_commit, addcow_detach, addcow_get_allocation, ADDCOW_COMMIT_BACKING_ADDCOW,
    ADDCOW_COMMIT_EMPTY, ADDCOW_DETACH_REMOVE,
};
pub use mapping::{
    addcow_core_abort, addcow_core_begin_write, addcow_core_begin_zero, addcow_core_close,
    addcow_core_commit, addcow_core_generation, addcow_core_get_cluster_size,
    addcow_core_get_length, addcow_core_map, addcow_core_open, addcow_core_set_backing_length,
    addcow_core_writeback_begin, addcow_core_writeback_end, addcow_core_writeback_write,
    addcow_writeback_pages, AddCowCore, AddCowTxn, AddCowWriteBack, AddCowWriteStep, ADDCOW_BUSY,
    ADDCOW_MAP_BACKING, ADDCOW_MAP_DATA, ADDCOW_MAP_ZERO, ADDCOW_STEP_ALLOCATE, ADDCOW_STEP_BUSY,
    ADDCOW_STEP_IN_PLACE,
};
pub use metadata::{
    addcow_core_is_fully_allocated, addcow_core_reload, addcow_core_set_all_allocated,
    addcow_core_set_backing_file, addcow_set_backing_file,
};
pub use open::{
    addcow_open, addcow_open_ext, addcow_open_io, addcow_open_io_ext, AddCowOpenOptions,
    ADDCOW_OPEN_BACKING_ADDCOW, ADDCOW_OPEN_CONFINE, ADDCOW_OPEN_COPY_ON_READ, ADDCOW_OPEN_DIRECT,
    ADDCOW_OPEN_FORCE_SHARE, ADDCOW_OPEN_NO_BACKING, ADDCOW_OPEN_RDWR, ADDCOW_OPEN_WRITETHROUGH,
};
pub use zero::{
    addcow_block_status, addcow_discard, addcow_write_zeroes, ADDCOW_STATUS_ALLOCATED,
    ADDCOW_STATUS_BACKING, ADDCOW_STATUS_ZERO, ADDCOW_ZERO_MAY_UNMAP, ADDCOW_ZERO_NO_FALLBACK,
};

use crate::engine::Image;
use crate::error::{Error, Result};
use boundary::{bad_arg, ffi};
use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

/// The largest virtual size the library supports: 2^56 bytes (64 PiB). Larger sizes give
/// -EFBIG at open, create and truncate.
// A literal, so that cbindgen writes the number into the header.
pub const ADDCOW_MAX_SIZE: u64 = 72_057_594_037_927_936;
const _: () = assert!(ADDCOW_MAX_SIZE == crate::layout::MAX_SIZE);

/// An open add-cow image. Opaque: create it with `addcow_open` or `addcow_open_io`, free it
/// with `addcow_close`.
pub struct AddCowImage {
    /// Shared with the threads of its hydration jobs.
    image: Arc<Image>,
    /// Its hydration jobs, stopped by `addcow_close`.
    jobs: hydrate::Jobs,
}

impl AddCowImage {
    fn new(image: Image) -> AddCowImage {
        AddCowImage {
            image: Arc::new(image),
            jobs: hydrate::Jobs::default(),
        }
    }
}

/// # Safety
/// `img` is NULL or a live handle from `addcow_open`/`addcow_open_io`.
unsafe fn image<'a>(img: *mut AddCowImage) -> Result<&'a Image> {
    // SAFETY: the caller's guarantee; NULL is refused.
    unsafe { img.as_ref() }
        .map(|h| &*h.image)
        .ok_or_else(|| bad_arg("img is NULL"))
}

/// How sure it is that `buf` starts an add-cow file: 100 for the magic and version 1 (12 bytes
/// are enough), 0 otherwise. `filename` is ignored (QEMU's probe signature); it may be NULL.
/// Returns 0..100, or -EINVAL for a NULL `buf` with `len > 0`.
///
/// # Safety
/// `buf` is NULL or points at `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn addcow_probe(
    buf: *const u8,
    len: usize,
    filename: *const c_char,
) -> c_int {
    let _ = filename;
    ffi("addcow_probe", || {
        // SAFETY: the caller's guarantee; NULL with len > 0 is refused.
        let bytes = unsafe { iov::write_buf(buf.cast(), len)? };
        Ok(c_int::from(crate::layout::probe(bytes)))
    })
}

/// Stops the image's hydration jobs (cancels them and waits for their threads, one batch and
/// a flush each; their handles stay valid for `addcow_job_*` until `addcow_job_free`), then
/// flushes and closes the image, freeing the handle even when the flush fails (then returns
/// its -errno). NULL is a no-op returning 0. No other call on the handle may run during or
/// after this one.
///
/// # Safety
/// `img` is NULL or a live handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn addcow_close(img: *mut AddCowImage) -> c_int {
    ffi("addcow_close", || {
        if img.is_null() {
            return Ok(0);
        }
        // SAFETY: a live handle from Box::into_raw, handed back exactly once.
        let handle = unsafe { Box::from_raw(img) };
        handle.jobs.stop_all();
        // Every job thread has ended and dropped its reference.
        let image = Arc::try_unwrap(handle.image)
            .map_err(|_| Error::invalid("the image is still held by a hydration job"))?;
        image.close().map(|()| 0)
    })
}

/// The virtual size in bytes, or -EINVAL for NULL.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_get_length(img: *mut AddCowImage) -> i64 {
    ffi("addcow_get_length", || {
        // SAFETY: the caller's guarantee.
        let size = unsafe { image(img)? }.size();
        i64::try_from(size).map_err(|_| Error::invalid("the image is larger than 2^63 bytes"))
    })
}

/// The cluster size in bytes (65536 for layout 1), or -EINVAL for NULL.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_get_cluster_size(img: *mut AddCowImage) -> i64 {
    ffi("addcow_get_cluster_size", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { image(img)? }.cluster_size() as i64)
    })
}

/// The length in bytes of the data unallocated clusters read from: the backing file's length,
/// or 0 when the image has no backing file or was opened with `ADDCOW_OPEN_NO_BACKING`.
/// Unallocated bytes at or past it read as zeros. -EINVAL for NULL, or the host's -errno.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_get_backing_length(img: *mut AddCowImage) -> i64 {
    ffi("addcow_get_backing_length", || {
        // SAFETY: the caller's guarantee.
        let len = match unsafe { image(img)? }.backing() {
            Some(backing) => backing.size()?,
            None => 0,
        };
        i64::try_from(len).map_err(|_| Error::invalid("the backing file is larger than 2^63 bytes"))
    })
}

/// Reads `iov` from `offset`: allocated clusters from the image file, others from the backing
/// file (zeros past its end or without one). 0, or -EINVAL (NULL handle, bad `iov`/`iovcnt`,
/// beyond the end), or the host's -errno.
///
/// # Safety
/// `img` is NULL or a live handle; `iov` is NULL or points at `iovcnt` iovecs whose buffers are
/// writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_readv(
    img: *mut AddCowImage,
    offset: u64,
    iov: *const libc::iovec,
    iovcnt: c_int,
) -> c_int {
    ffi("addcow_readv", || {
        // SAFETY: the caller's guarantees.
        let (image, mut bufs) = unsafe { (image(img)?, iov::read_bufs(iov, iovcnt)?) };
        image.read(offset, &mut bufs).map(|()| 0)
    })
}

/// Writes `iov` at `offset`; a cluster written for the first time is completed from the backing
/// file. 0, or -EPERM (read-only), -EINVAL (NULL handle, bad `iov`/`iovcnt`, beyond the end), or
/// the host's -errno.
///
/// # Safety
/// `img` is NULL or a live handle; `iov` is NULL or points at `iovcnt` iovecs whose buffers are
/// readable.
#[no_mangle]
pub unsafe extern "C" fn addcow_writev(
    img: *mut AddCowImage,
    offset: u64,
    iov: *const libc::iovec,
    iovcnt: c_int,
) -> c_int {
    ffi("addcow_writev", || {
        // SAFETY: the caller's guarantees.
        let (image, bufs) = unsafe { (image(img)?, iov::write_bufs(iov, iovcnt)?) };
        image.write(offset, &bufs).map(|()| 0)
    })
}

/// `addcow_readv` with one buffer.
///
/// # Safety
/// `img` is NULL or a live handle; `buf` is NULL or points at `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn addcow_pread(
    img: *mut AddCowImage,
    offset: u64,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    ffi("addcow_pread", || {
        // SAFETY: the caller's guarantees.
        let (image, buf) = unsafe { (image(img)?, iov::read_buf(buf, len)?) };
        image.read_at(offset, buf).map(|()| 0)
    })
}

/// `addcow_writev` with one buffer.
///
/// # Safety
/// `img` is NULL or a live handle; `buf` is NULL or points at `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn addcow_pwrite(
    img: *mut AddCowImage,
    offset: u64,
    buf: *const c_void,
    len: usize,
) -> c_int {
    ffi("addcow_pwrite", || {
        // SAFETY: the caller's guarantees.
        let (image, buf) = unsafe { (image(img)?, iov::write_buf(buf, len)?) };
        image.write_at(offset, buf).map(|()| 0)
    })
}

/// Whether the byte at `offset` lives in the image file: returns 1 (allocated) or 0 (read from
/// the backing file), and stores in `*pnum` the length of the run of bytes from `offset` in the
/// same state, clamped to `bytes` and the image end. `offset` at or past the end, or `bytes` 0:
/// returns 0 with `*pnum` = 0. -EINVAL for NULL `img` or `pnum`.
///
/// # Safety
/// `img` is NULL or a live handle; `pnum` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_is_allocated(
    img: *mut AddCowImage,
    offset: u64,
    bytes: u64,
    pnum: *mut u64,
) -> c_int {
    ffi("addcow_is_allocated", || {
        // SAFETY: the caller's guarantee.
        let image = unsafe { image(img)? };
        if pnum.is_null() {
            return Err(bad_arg("pnum is NULL"));
        }
        let (allocated, n) = image.is_allocated(offset, bytes)?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe { pnum.write(n) };
        Ok(c_int::from(allocated))
    })
}

/// Shrinks or grows the image to `size` bytes; growing never exposes backing data. 0, -EPERM
/// (read-only), -EFBIG (beyond `ADDCOW_MAX_SIZE`), -ENOTSUP (a host image without a truncate
/// callback), or -errno. It waits for the calls in flight on the image, and calls made
/// meanwhile wait for it. A shrink that fails after the image file was cut (syncing it, or
/// cutting the bitmap) leaves the new size; every other failure leaves the old one.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_truncate(img: *mut AddCowImage, size: u64) -> c_int {
    ffi("addcow_truncate", || {
        // SAFETY: the caller's guarantee.
        unsafe { image(img)? }.truncate(size).map(|()| 0)
    })
}

/// Makes every completed write durable: image data first, then the bitmap. 0 or -errno; pages
/// whose write-back failed stay dirty and are written by the next flush.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_flush(img: *mut AddCowImage) -> c_int {
    ffi("addcow_flush", || {
        // SAFETY: the caller's guarantee.
        unsafe { image(img)? }.flush().map(|()| 0)
    })
}

/// The message of this thread's last failed call ("" if none). Never NULL; valid until this
/// thread's next failing call.
#[no_mangle]
pub extern "C" fn addcow_last_error() -> *const c_char {
    ffi("addcow_last_error", || Ok(boundary::last_error()))
}

/// The library version, e.g. "0.1.0". Never NULL; static.
#[no_mangle]
pub extern "C" fn addcow_version() -> *const c_char {
    ffi("addcow_version", || {
        Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast())
    })
}
