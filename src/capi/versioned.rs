//! Structs that grow over time: the caller says how large its version is in the first field
//! (`uint32_t struct_size`), fields past it take their zero default, and a larger struct from a
//! newer header is accepted only when its extra bytes are zero.

use super::boundary::bad_arg;
use crate::error::{Error, Result};
use std::mem::size_of;

/// A `#[repr(C)]` options struct whose first field is `struct_size: u32` and for which all-zero
/// bytes are a valid value (integers and nullable pointers only).
///
/// # Safety
/// Implement only for such structs.
pub(super) unsafe trait Versioned: Copy {
    /// The struct's name in messages.
    const NAME: &'static str;
    /// The bytes every caller must provide.
    const MIN_SIZE: usize;
}

/// Reads the caller's version of `T` from `opts`.
///
/// # Safety
/// `opts` is non-NULL and points at `struct_size` readable bytes, `struct_size` being its first
/// field.
pub(super) unsafe fn read<T: Versioned>(opts: *const T) -> Result<T> {
    // SAFETY: every version starts with struct_size, readable per the caller.
    let size = unsafe { opts.cast::<u32>().read_unaligned() } as usize;
    if size < T::MIN_SIZE {
        return Err(bad_arg(&format!(
            "{}: struct_size {size} is smaller than {}",
            T::NAME,
            T::MIN_SIZE
        )));
    }
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
