//! The C exports of write-zeroes, discard and block status (`engine/zero.rs`).

use super::boundary::{bad_arg, ffi};
use super::{image, AddCowImage};
use crate::engine::ZeroFlags;
use crate::error::Error;
use std::ffi::c_int;

/// `addcow_write_zeroes`: whole clusters may become holes in the image file (QEMU's
/// `BDRV_REQ_MAY_UNMAP`); without it they are zeroed keeping their space (`FALLOC_FL_ZERO_RANGE`).
pub const ADDCOW_ZERO_MAY_UNMAP: u32 = 1 << 0;
/// `addcow_write_zeroes`: fail with -ENOTSUP rather than write zero bytes (QEMU's
/// `BDRV_REQ_NO_FALLBACK`, NBD's fast zero).
pub const ADDCOW_ZERO_NO_FALLBACK: u32 = 1 << 1;
const KNOWN_ZERO_FLAGS: u32 = ADDCOW_ZERO_MAY_UNMAP | ADDCOW_ZERO_NO_FALLBACK;

/// `addcow_block_status`: the run lives in the image file.
pub const ADDCOW_STATUS_ALLOCATED: u32 = 1 << 0;
/// `addcow_block_status`: the run reads zeros (a hole of the image file, or unallocated past the
/// backing file's end).
pub const ADDCOW_STATUS_ZERO: u32 = 1 << 1;
/// `addcow_block_status`: the run is unallocated and reads the backing file.
pub const ADDCOW_STATUS_BACKING: u32 = 1 << 2;

/// Makes `bytes` bytes at `offset` read zeros. Whole clusters are made to without writing zero
/// bytes: punched out of the image file with `ADDCOW_ZERO_MAY_UNMAP`, zeroed in place
/// (`FALLOC_FL_ZERO_RANGE`) without; unallocated ones are marked allocated without copying the
/// backing file, except those past the backing file's end, which read zeros already and stay
/// unallocated. Parts of clusters that do not read zeros already are written with zeros
/// (copy-on-write). Where the image file
/// cannot punch or zero a range (a host image: `AddCowIo` has no such callback), zeros are
/// written, unless `ADDCOW_ZERO_NO_FALLBACK`: then -ENOTSUP, returned before anything changed
/// when parts of clusters would need zeros written.
///
/// Returns 0, -EPERM (read-only), -EINVAL (NULL handle, unknown flags, beyond the end), -ENOTSUP
/// (above), or the host's -errno; on failure some clusters may read zeros already. Threads: as
/// `addcow_writev` (guest writes to the same clusters are ordered one way or the other, never
/// mixed within a cluster). Durability: as a write (image data before the bitmap bit that
/// points at it; with `ADDCOW_OPEN_WRITETHROUGH` durable on return).
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_write_zeroes(
    img: *mut AddCowImage,
    offset: u64,
    bytes: u64,
    flags: u32,
) -> c_int {
    ffi("addcow_write_zeroes", || {
        // SAFETY: the caller's guarantee.
        let image = unsafe { image(img)? };
        if flags & !KNOWN_ZERO_FLAGS != 0 {
            let unknown = flags & !KNOWN_ZERO_FLAGS;
            return Err(Error::invalid(format!("unknown zero flags {unknown:#x}")));
        }
        let flags = ZeroFlags {
            may_unmap: flags & ADDCOW_ZERO_MAY_UNMAP != 0,
            no_fallback: flags & ADDCOW_ZERO_NO_FALLBACK != 0,
        };
        image.write_zeroes(offset, bytes, flags).map(|()| 0)
    })
}

/// Discards the whole clusters of `bytes` bytes at `offset` (parts of clusters are left as they
/// are, as qcow2 does): afterwards they read zeros — never backing data — and are allocated,
/// punched out of the image file where it can punch (zeros written where it cannot). Unallocated
/// clusters are not copied from the backing file first.
///
/// Returns 0, -EPERM (read-only), -EINVAL (NULL handle, beyond the end), or the host's -errno.
/// Threads and durability: as `addcow_write_zeroes`.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_discard(img: *mut AddCowImage, offset: u64, bytes: u64) -> c_int {
    ffi("addcow_discard", || {
        // SAFETY: the caller's guarantee.
        unsafe { image(img)? }.discard(offset, bytes).map(|()| 0)
    })
}

/// What the bytes from `offset` read: stores in `*flags` a combination of
/// `ADDCOW_STATUS_ALLOCATED` (the image file), `ADDCOW_STATUS_ZERO` (zeros: an allocated hole
/// of the image file, found with `SEEK_DATA`/`SEEK_HOLE`, or unallocated past the backing
/// file's end) and `ADDCOW_STATUS_BACKING` (unallocated: the backing file), and in `*pnum` the
/// length of the run in that state (at least 1, at most `bytes`, never past the end; it may be
/// shorter than the state's: loop). Returns 0; `offset` at or past the end, or `bytes` 0: 0 with
/// `*pnum` = 0 and `*flags` = 0. -EINVAL for NULL `img`, `pnum` or `flags`, or the host's -errno.
/// Threads: any number, beside every other call.
///
/// # Safety
/// `img` is NULL or a live handle; `pnum` and `flags` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_block_status(
    img: *mut AddCowImage,
    offset: u64,
    bytes: u64,
    pnum: *mut u64,
    flags: *mut u32,
) -> c_int {
    ffi("addcow_block_status", || {
        // SAFETY: the caller's guarantee.
        let image = unsafe { image(img)? };
        if pnum.is_null() || flags.is_null() {
            return Err(bad_arg("pnum or flags is NULL"));
        }
        let s = image.block_status(offset, bytes)?;
        let bit = |on: bool, flag: u32| if on && s.len > 0 { flag } else { 0 };
        let bits = bit(s.allocated, ADDCOW_STATUS_ALLOCATED)
            | bit(s.zero, ADDCOW_STATUS_ZERO)
            | bit(s.backing(), ADDCOW_STATUS_BACKING);
        // SAFETY: non-NULL and writable per the caller.
        unsafe {
            pnum.write(s.len);
            flags.write(bits);
        }
        Ok(0)
    })
}
