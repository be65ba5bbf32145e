//! Deallocating a range of a local file (`fallocate(FALLOC_FL_PUNCH_HOLE)`), for the byte
//! sources over files: afterwards the range reads zeros and the file keeps its length.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Punches `offset..offset + len` out of `file`; `ENOTSUP` where the file system cannot.
pub(super) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (off, n) = match (i64::try_from(offset), i64::try_from(len)) {
        (Ok(off), Ok(n)) => (off, n),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate takes no pointers; the descriptor is open for as long as `file`.
    match unsafe { libc::fallocate(file.as_raw_fd(), mode, off, n) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}
