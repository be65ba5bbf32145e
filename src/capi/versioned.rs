//! Structs that grow over time: the caller says how large its version is in the first field
//! (`uint32_t struct_size`). In structs the caller fills (options), fields past it take their
//! zero default, and a larger struct from a newer header is accepted only when its extra bytes
//! are zero. In structs the library fills (results), it writes the fields the caller's version
//! holds and zeros past its own.

use super::boundary::bad_arg;
use crate::error::{Error, Result};
use std::mem::size_of;

/// A `#[repr(C)]` struct whose first field is `struct_size: u32` and for which all-zero bytes
/// are a valid value (integers and nullable pointers only).
///
/// # Safety
/// Implement only for such structs.
pub(super) unsafe trait Versioned: Copy {
    /// The struct's name in messages.
    const NAME: &'static str;
    /// The bytes every caller must provide.
    const MIN_SIZE: usize;
}

/// The caller's `struct_size`, checked against `T::MIN_SIZE`.
///
/// # Safety
/// `p` is non-NULL and points at a readable `u32`.
pub(super) unsafe fn caller_size<T: Versioned>(p: *const T) -> Result<usize> {
    // SAFETY: every version starts with struct_size, readable per the caller.
    let size = unsafe { p.cast::<u32>().read_unaligned() } as usize;
    if size < T::MIN_SIZE {
        return Err(bad_arg(&format!(
            "{}: struct_size {size} is smaller than {}",
            T::NAME,
            T::MIN_SIZE
        )));
    }
    Ok(size)
}

/// Reads the caller's version of `T` from `opts`.
///
/// # Safety
/// `opts` is non-NULL and points at `struct_size` readable bytes, `struct_size` being its first
/// field.
pub(super) unsafe fn read<T: Versioned>(opts: *const T) -> Result<T> {
    // SAFETY: the caller's guarantee, forwarded.
    let size = unsafe { caller_size(opts)? };
    let ours = size_of::<T>();
    let base = opts.cast::<u8>();
    if size > ours {
        // SAFETY: the caller's struct holds `size` bytes.
        let extra = unsafe { std::slice::from_raw_parts(base.add(ours), size - ours) };
        if extra.iter().any(|&b| b != 0) {
            return Err(Error::Unsupported(format!(
                "{} has non-zero fields this library does not know",
                T::NAME
            )));
        }
    }
    // SAFETY: `Versioned` promises that all-zero bytes are a valid T.
    let mut out: T = unsafe { std::mem::zeroed() };
    // SAFETY: copies min(size, ours) bytes of plain data between non-overlapping structs.
    unsafe { std::ptr::copy_nonoverlapping(base, (&raw mut out).cast::<u8>(), size.min(ours)) };
    Ok(out)
}

/// Stores `value` in the caller's version of `T` at `out`, whose `struct_size` is `size` (from
/// [`caller_size`]): the fields that version holds, zeros in the bytes of a newer, larger
/// version past ours; `struct_size` stays the caller's.
///
/// # Safety
/// `out` is non-NULL and points at `size` writable bytes, `size >= T::MIN_SIZE`.
pub(super) unsafe fn write<T: Versioned>(out: *mut T, size: usize, value: &T) {
    let skip = size_of::<u32>();
    let ours = size_of::<T>();
    let base = out.cast::<u8>();
    // SAFETY: copies the bytes after struct_size, up to the smaller of both versions, between
    // non-overlapping structs (`value` is ours, `out` the caller's, `size` bytes long).
    unsafe {
        std::ptr::copy_nonoverlapping(
            std::ptr::from_ref(value).cast::<u8>().add(skip),
            base.add(skip),
            size.min(ours) - skip,
        )
    };
    if size > ours {
        // SAFETY: the caller's struct holds `size` bytes.
        unsafe { base.add(ours).write_bytes(0, size - ours) };
    }
}
