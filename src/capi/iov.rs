//! C `struct iovec` arrays and plain buffers as Rust I/O slices, validated.

use super::boundary::bad_arg;
use crate::error::Result;
use std::ffi::{c_int, c_void};
use std::io::{IoSlice, IoSliceMut};

/// The most iovecs one call accepts (`addcow_readv`, `addcow_writev`: -EINVAL beyond it), and
/// the most one system call of the library passes: Linux's `IOV_MAX`. Host callbacks
/// (`AddCowIo`) may be passed up to two more.
pub const ADDCOW_IOV_MAX: c_int = 1024;

/// Checks `iov`/`iovcnt` and every entry before any buffer is touched: `iovcnt` in
/// 0..=ADDCOW_IOV_MAX, `iov` non-NULL when `iovcnt > 0`, no NULL base with a non-zero length, and a
/// total length (checked arithmetic) of at most `SSIZE_MAX`.
///
/// # Safety
/// When `iov` is non-NULL it points at `iovcnt` readable `struct iovec`.
unsafe fn entries<'a>(iov: *const libc::iovec, iovcnt: c_int) -> Result<&'a [libc::iovec]> {
    if !(0..=ADDCOW_IOV_MAX).contains(&iovcnt) {
        return Err(bad_arg(&format!(
            "iovcnt {iovcnt} is outside 0..={ADDCOW_IOV_MAX}"
        )));
    }
    if iovcnt == 0 {
        return Ok(&[]);
    }
    if iov.is_null() {
        return Err(bad_arg("iov is NULL"));
    }
    // SAFETY: non-NULL, and the caller guarantees `iovcnt` readable entries.
    let entries = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
    if entries
        .iter()
        .any(|e| e.iov_base.is_null() && e.iov_len > 0)
    {
        return Err(bad_arg("an iovec has a NULL base and a non-zero length"));
    }
    let total = entries
        .iter()
        .try_fold(0usize, |sum, e| sum.checked_add(e.iov_len));
    if !matches!(total, Some(n) if n <= isize::MAX as usize) {
        return Err(bad_arg(
            "the iovec lengths add up to more than SSIZE_MAX bytes",
        ));
    }
    Ok(entries)
}

/// A plain buffer's length: at most `SSIZE_MAX`, as for one `pread`.
fn check_len(len: usize) -> Result<()> {
    match len <= isize::MAX as usize {
        true => Ok(()),
        false => Err(bad_arg(&format!("len {len} is more than SSIZE_MAX"))),
    }
}

/// # Safety
/// `base` is NULL only with `len == 0`; otherwise it points at `len` writable bytes that
/// nothing else accesses during the call.
unsafe fn bytes_mut<'a>(base: *mut c_void, len: usize) -> &'a mut [u8] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: the caller's guarantee.
    unsafe { std::slice::from_raw_parts_mut(base.cast(), len) }
}

/// # Safety
/// `base` is NULL only with `len == 0`; otherwise it points at `len` readable bytes.
unsafe fn bytes<'a>(base: *const c_void, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller's guarantee.
    unsafe { std::slice::from_raw_parts(base.cast(), len) }
}

/// The caller's buffers, to read into.
///
/// # Safety
/// `iov` as for [`entries`]; every buffer is writable for the call.
pub(super) unsafe fn read_bufs<'a>(
    iov: *const libc::iovec,
    iovcnt: c_int,
) -> Result<Vec<IoSliceMut<'a>>> {
    // SAFETY: forwarded caller guarantees; NULL bases were rejected for non-zero lengths.
    let entries = unsafe { entries(iov, iovcnt)? };
    Ok(entries
        .iter()
        .map(|e| {
            // SAFETY: the caller's guarantee that each buffer is writable; checked entries.
            IoSliceMut::new(unsafe { bytes_mut(e.iov_base, e.iov_len) })
        })
        .collect())
}

/// The caller's buffers, to write from.
///
/// # Safety
/// `iov` as for [`entries`]; every buffer is readable for the call.
pub(super) unsafe fn write_bufs<'a>(
    iov: *const libc::iovec,
    iovcnt: c_int,
) -> Result<Vec<IoSlice<'a>>> {
    // SAFETY: forwarded caller guarantees; NULL bases were rejected for non-zero lengths.
    let entries = unsafe { entries(iov, iovcnt)? };
    Ok(entries
        .iter()
        .map(|e| {
            // SAFETY: the caller's guarantee that each buffer is readable; checked entries.
            IoSlice::new(unsafe { bytes(e.iov_base, e.iov_len) })
        })
        .collect())
}

/// One plain buffer to read into.
///
/// # Safety
/// `buf` is NULL or points at `len` writable bytes.
pub(super) unsafe fn read_buf<'a>(buf: *mut c_void, len: usize) -> Result<&'a mut [u8]> {
    if buf.is_null() && len > 0 {
        return Err(bad_arg("buf is NULL"));
    }
    check_len(len)?;
    // SAFETY: checked NULL and length above; the caller guarantees the rest.
    Ok(unsafe { bytes_mut(buf, len) })
}

/// One plain buffer to write from.
///
/// # Safety
/// `buf` is NULL or points at `len` readable bytes.
pub(super) unsafe fn write_buf<'a>(buf: *const c_void, len: usize) -> Result<&'a [u8]> {
    if buf.is_null() && len > 0 {
        return Err(bad_arg("buf is NULL"));
    }
    check_len(len)?;
    // SAFETY: checked NULL and length above; the caller guarantees the rest.
    Ok(unsafe { bytes(buf, len) })
}
