//! The stable C ABI (`include/addcow.h`, generated from this module by cbindgen).
//!
//! Return convention (QEMU's): 0, or the documented non-negative value, on success; a negative
//! errno on failure, with a message for `addcow_last_error`:
//! `EINVAL` bad argument or malformed header, `ENOTSUP` unknown version or layout, `ENOENT`
//! missing file, `EPERM` write or truncate on a read-only image, host errors (`EIO`, `ENOSPC`,
//! …) passed through. A panic inside the library returns `-EIO`; none unwinds into C.
//!
//! Threads: every function may be called from many threads at once on one image, except
//! `addcow_close` (the caller makes sure no other call on the image is running or follows) and
//! `addcow_truncate` (the caller orders it against the other calls; it waits for requests in
//! flight, but a request that starts after it sees the new size).

mod boundary;
mod create;
mod header;
mod iov;

pub use create::{addcow_create, AddCowCreateOptions};
pub use header::{
    addcow_header_backing_file, addcow_header_cluster_size, addcow_header_free,
    addcow_header_image_file, addcow_header_layout, addcow_header_read, addcow_header_read_io,
    AddCowHeader,
};

use crate::engine::{Backing, BackingFormat, Image, OpenOptions, Parts};
use crate::error::{Error, Result};
use crate::storage::{AddCowIo, HostStorage};
use boundary::{bad_arg, c_str, ffi};
use std::ffi::{c_char, c_int, c_void, OsStr};
use std::os::unix::ffi::OsStrExt;

/// Open for reading and writing (default: read-only).
pub const ADDCOW_OPEN_RDWR: u32 = 1 << 0;
/// Every write is durable when it returns (default: writeback until flush or close).
pub const ADDCOW_OPEN_WRITETHROUGH: u32 = 1 << 1;
/// Do not open the backing file: unallocated clusters read as zeros.
pub const ADDCOW_OPEN_NO_BACKING: u32 = 1 << 2;
/// The backing file is an add-cow image (default: raw). Its own backing file is opened as
/// add-cow when it carries the add-cow magic, as raw otherwise. Not for `addcow_open_io`.
pub const ADDCOW_OPEN_BACKING_ADDCOW: u32 = 1 << 3;

const KNOWN_FLAGS: u32 = ADDCOW_OPEN_RDWR
    | ADDCOW_OPEN_WRITETHROUGH
    | ADDCOW_OPEN_NO_BACKING
    | ADDCOW_OPEN_BACKING_ADDCOW;

/// An open add-cow image. Opaque: create it with `addcow_open` or `addcow_open_io`, free it
/// with `addcow_close`.
pub struct AddCowImage {
    image: Image,
}

fn open_options(flags: u32) -> Result<OpenOptions> {
    if flags & !KNOWN_FLAGS != 0 {
        return Err(bad_arg(&format!(
            "unknown open flags {:#x}",
            flags & !KNOWN_FLAGS
        )));
    }
    Ok(OpenOptions {
        writable: flags & ADDCOW_OPEN_RDWR != 0,
        writethrough: flags & ADDCOW_OPEN_WRITETHROUGH != 0,
        no_backing: flags & ADDCOW_OPEN_NO_BACKING != 0,
        backing_format: match flags & ADDCOW_OPEN_BACKING_ADDCOW {
            0 => BackingFormat::Raw,
            _ => BackingFormat::AddCow,
        },
        ..OpenOptions::default()
    })
}

/// # Safety
/// `img` is NULL or a live handle from `addcow_open`/`addcow_open_io`.
unsafe fn image<'a>(img: *const AddCowImage) -> Result<&'a Image> {
    // SAFETY: the caller's guarantee; NULL is refused.
    unsafe { img.as_ref() }
        .map(|h| &h.image)
        .ok_or_else(|| bad_arg("img is NULL"))
}

/// # Safety
/// `out` is NULL or writable.
unsafe fn hand_out(
    out: *mut *mut AddCowImage,
    open: impl FnOnce() -> Result<Image>,
) -> Result<c_int> {
    if out.is_null() {
        return Err(bad_arg("out is NULL"));
    }
    // SAFETY: non-NULL and writable per the caller; cleared first so that failure leaves NULL.
    unsafe { out.write(std::ptr::null_mut()) };
    let handle = Box::into_raw(Box::new(AddCowImage { image: open()? }));
    // SAFETY: as above.
    unsafe { out.write(handle) };
    Ok(0)
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

/// Opens the `.add-cow` file at `path` and the files its header names (relative names resolve
/// against `path`'s directory). `flags`: `ADDCOW_OPEN_*`; unknown bits give -EINVAL. On success
/// stores a new handle in `*out` and returns 0; on failure stores NULL and returns -errno
/// (-ENOENT for a missing file, -EINVAL for a malformed header or a name that points back at
/// the image, -ENOTSUP for an unknown version). Opening reads only the header.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_open(
    path: *const c_char,
    flags: u32,
    out: *mut *mut AddCowImage,
) -> c_int {
    ffi("addcow_open", || {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe {
            hand_out(out, || {
                let path = OsStr::from_bytes(c_str(path, "path")?.to_bytes());
                Image::open(path, &open_options(flags)?)
            })
        }
    })
}

/// # Safety
/// `io` is NULL or points at a valid `AddCowIo`.
unsafe fn host(io: *const AddCowIo, what: &str) -> Result<HostStorage> {
    // SAFETY: the caller's guarantee; NULL is refused.
    let table = unsafe { io.as_ref() }.ok_or_else(|| bad_arg(&format!("{what} is NULL")))?;
    HostStorage::new(*table).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => bad_arg(&format!(
            "{what}: preadv, pwritev, flush and get_length are required"
        )),
        _ => Error::io("get length of", what, 0, e),
    })
}

/// Opens an image whose files the host supplies: `meta` is the `.add-cow` file, `image` the raw
/// image file, `backing` the raw backing file or NULL for none. `flags` as for `addcow_open`
/// (`ADDCOW_OPEN_BACKING_ADDCOW` is refused: a host backing is raw). The tables are copied; the
/// host keeps each `opaque` valid, and its callbacks callable from any thread, until
/// `addcow_close` returns. Use `addcow_header_read_io` first to learn which files to supply.
///
/// # Safety
/// `meta`, `image`, `backing` are NULL or valid tables; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_open_io(
    meta: *const AddCowIo,
    image: *const AddCowIo,
    backing: *const AddCowIo,
    flags: u32,
    out: *mut *mut AddCowImage,
) -> c_int {
    ffi("addcow_open_io", || {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe {
            hand_out(out, || {
                let opts = open_options(flags)?;
                if opts.backing_format != BackingFormat::Raw {
                    return Err(bad_arg(
                        "a host-supplied backing file is raw: ADDCOW_OPEN_BACKING_ADDCOW is refused",
                    ));
                }
                let backing = match backing.is_null() || opts.no_backing {
                    true => None,
                    false => Some(Backing::raw(
                        Box::new(host(backing, "backing (host I/O)")?),
                        "backing (host I/O)",
                    )),
                };
                let parts = Parts {
                    meta: (
                        Box::new(host(meta, "add-cow file (host I/O)")?),
                        "add-cow file (host I/O)".into(),
                    ),
                    image: (
                        Box::new(host(image, "image file (host I/O)")?),
                        "image file (host I/O)".into(),
                    ),
                    backing,
                };
                Image::open_parts(parts, &opts)
            })
        }
    })
}

/// Flushes and closes the image, freeing the handle even when the flush fails (then returns
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
        handle.image.close().map(|()| 0)
    })
}

/// The virtual size in bytes, or -EINVAL for NULL.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_get_length(img: *const AddCowImage) -> i64 {
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
pub unsafe extern "C" fn addcow_get_cluster_size(img: *const AddCowImage) -> i64 {
    // SAFETY: the caller's guarantee.
    ffi("addcow_get_cluster_size", || {
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
pub unsafe extern "C" fn addcow_get_backing_length(img: *const AddCowImage) -> i64 {
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
/// (read-only), -ENOTSUP (a host image without a truncate callback), or -errno. The caller
/// orders it against other calls on the image.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_truncate(img: *mut AddCowImage, size: u64) -> c_int {
    // SAFETY: the caller's guarantee.
    ffi("addcow_truncate", || {
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
    // SAFETY: the caller's guarantee.
    ffi("addcow_flush", || {
        unsafe { image(img)? }.flush().map(|()| 0)
    })
}

/// The message of this thread's last failed call ("" if none). Never NULL; valid until this
/// thread's next failing call.
#[no_mangle]
pub extern "C" fn addcow_last_error() -> *const c_char {
    boundary::last_error()
}

/// The library version, e.g. "0.1.0". Never NULL; static.
#[no_mangle]
pub extern "C" fn addcow_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
