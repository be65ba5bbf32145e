//! The one place where Rust meets C: every exported function runs its body through [`ffi`],
//! which turns errors into negative errno values with a message for `addcow_last_error`, and
//! catches panics so that none unwinds into C (they become `-EIO`).
//!
//! Panic strategy: the library is built with `panic = "unwind"` so that `catch_unwind` here can
//! stop a panic at the boundary; `panic = "abort"` would instead kill the host process.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// What an exported function returns on failure: the negated errno.
pub(super) trait FfiReturn {
    fn from_errno(errno: i32) -> Self;
}

impl FfiReturn for c_int {
    fn from_errno(errno: i32) -> c_int {
        -errno
    }
}

impl FfiReturn for i64 {
    fn from_errno(errno: i32) -> i64 {
        -i64::from(errno)
    }
}

/// Getters that answer 0 for "none".
impl FfiReturn for u32 {
    fn from_errno(_: i32) -> u32 {
        0
    }
}

/// Counters that answer 0 for "none" (`addcow_core_generation`).
impl FfiReturn for u64 {
    fn from_errno(_: i32) -> u64 {
        0
    }
}

/// Getters of strings: NULL for "none".
impl FfiReturn for *const c_char {
    fn from_errno(_: i32) -> *const c_char {
        std::ptr::null()
    }
}

/// Functions without a result (`addcow_header_free`).
impl FfiReturn for () {
    fn from_errno(_: i32) {}
}

/// Runs `body` for the exported function `name`: its value on success; on an error or a panic,
/// the negative errno, with the message recorded for this thread.
pub(super) fn ffi<R: FfiReturn>(name: &str, body: impl FnOnce() -> Result<R>) -> R {
    let (errno, message) = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return value,
        Ok(Err(e)) => (e.errno(), format!("{name}: {e}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            (libc::EIO, format!("{name}: internal error (panic): {what}"))
        }
    };
    set_last_error(message);
    R::from_errno(errno)
}

fn set_last_error(message: String) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|cell| *cell.borrow_mut() = c);
}

/// This thread's last error message; valid until this thread's next failing call.
pub(super) fn last_error() -> *const c_char {
    LAST_ERROR.with(|cell| cell.borrow().as_ptr())
}

/// An `EINVAL` for a bad argument.
pub(super) fn bad_arg(msg: &str) -> Error {
    Error::invalid(msg)
}

/// Stores a new handle, the boxed value `make` returns, in `*out`: -EINVAL when `out` is NULL;
/// `*out` is cleared before `make` runs, so that every failure leaves NULL there.
///
/// # Safety
/// `out` is NULL or writable.
pub(super) unsafe fn store_handle<T>(
    out: *mut *mut T,
    make: impl FnOnce() -> Result<T>,
) -> Result<()> {
    if out.is_null() {
        return Err(bad_arg("out is NULL"));
    }
    // SAFETY: non-NULL and writable per the caller.
    unsafe { out.write(std::ptr::null_mut()) };
    let handle = Box::into_raw(Box::new(make()?));
    // SAFETY: as above.
    unsafe { out.write(handle) };
    Ok(())
}

/// A required, NUL-terminated string argument.
///
/// # Safety
/// `p` is NULL or points at a NUL-terminated string that outlives `'a`.
pub(super) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a CStr> {
    if p.is_null() {
        return Err(bad_arg(&format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, and the caller guarantees NUL termination and lifetime.
    Ok(unsafe { CStr::from_ptr(p) })
}

/// An optional string argument: NULL or "" is `None`.
///
/// # Safety
/// As [`c_str`].
pub(super) unsafe fn opt_c_str<'a>(p: *const c_char) -> Option<&'a CStr> {
    // SAFETY: the caller's guarantee, for non-NULL `p`.
    (!p.is_null())
        .then(|| unsafe { CStr::from_ptr(p) })
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Op;

    #[test]
    fn panics_become_eio_with_a_message() {
        let r: c_int = ffi("addcow_test", || -> Result<c_int> { panic!("boom") });
        assert_eq!(r, -libc::EIO);
        // SAFETY: last_error returns a valid NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(last_error()) }
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(msg, "addcow_test: internal error (panic): boom");
        let r: i64 = ffi("addcow_len", || Err(Error::ReadOnly(Op::Write)));
        assert_eq!(r, -i64::from(libc::EPERM));
    }
}
