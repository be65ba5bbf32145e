//! What direct I/O (`O_DIRECT`) requires of a file's requests: the alignment of buffer
//! addresses in memory and of file offsets and lengths.
//!
//! From `statx(STATX_DIOALIGN)` (`stx_dio_mem_align`, `stx_dio_offset_align`) where the kernel
//! and the file system report it; otherwise a block device's logical block size for both, and
//! 4096 for both on any other file (a multiple of every block size in common use).

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;

/// When nothing is reported for a file that is not a block device.
const FALLBACK: u64 = 4096;

/// Direct-I/O alignments, each a power of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Align {
    /// Buffer addresses.
    mem: u64,
    /// File offsets, and lengths of the request and of each buffer.
    block: u64,
}

impl Align {
    /// The alignment `file` needs (see the module docs).
    pub(super) fn of(file: &File) -> Align {
        if let Some(align) = statx_dio(file) {
            return align;
        }
        let block = match file.metadata() {
            Ok(m) if m.file_type().is_block_device() => logical_block_size(file),
            _ => None,
        };
        let n = block.unwrap_or(FALLBACK);
        Align { mem: n, block: n }
    }

    /// At least `block` for offsets and lengths (a power of two): to exercise the unaligned
    /// paths on file systems with small blocks.
    #[cfg(test)]
    pub(super) fn at_least(self, block: u64) -> Align {
        assert!(block.is_power_of_two());
        Align {
            block: self.block.max(block),
            ..self
        }
    }

    /// Offset and length alignment.
    pub(super) fn block(self) -> u64 {
        self.block
    }

    /// The alignment of bounce buffers: both requirements at once.
    pub(super) fn buffer(self) -> u64 {
        self.mem.max(self.block)
    }

    pub(super) fn down(self, n: u64) -> u64 {
        n & !(self.block - 1)
    }

    /// `n` rounded up; `n` is at most `i64::MAX` (a file offset), so this cannot overflow.
    pub(super) fn up(self, n: u64) -> u64 {
        (n + self.block - 1) & !(self.block - 1)
    }

    pub(super) fn is_aligned(self, n: u64) -> bool {
        n & (self.block - 1) == 0
    }

    fn fits_buffer(self, addr: *const u8, len: usize) -> bool {
        addr as u64 & (self.mem - 1) == 0 && self.is_aligned(len as u64)
    }

    /// Whether a write of `bufs` at `offset` can go to the kernel as it is.
    pub(super) fn fits(self, offset: u64, bufs: &[IoSlice<'_>]) -> bool {
        self.is_aligned(offset) && bufs.iter().all(|b| self.fits_buffer(b.as_ptr(), b.len()))
    }

    /// Whether a read into `bufs` at `offset` can go to the kernel as it is.
    pub(super) fn fits_mut(self, offset: u64, bufs: &[IoSliceMut<'_>]) -> bool {
        self.is_aligned(offset) && bufs.iter().all(|b| self.fits_buffer(b.as_ptr(), b.len()))
    }
}

/// `statx(STATX_DIOALIGN)`, or `None` when the kernel or the file system reports nothing (an
/// older kernel, a file system without the field, or a file it cannot do direct I/O on).
fn statx_dio(file: &File) -> Option<Align> {
    // SAFETY: `statx` is plain data; all-zero is valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, an empty NUL-terminated path with AT_EMPTY_PATH (the
    // descriptor itself), and a writable statx buffer.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    let (mem, block) = (
        u64::from(stx.stx_dio_mem_align),
        u64::from(stx.stx_dio_offset_align),
    );
    (mem.is_power_of_two() && block.is_power_of_two()).then_some(Align { mem, block })
}

/// A block device's logical block size (`BLKSSZGET`).
fn logical_block_size(file: &File) -> Option<u64> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
    let size = u64::try_from(size).ok()?;
    (r == 0 && size.is_power_of_two()).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_fits() {
        let a = Align {
            mem: 512,
            block: 4096,
        };
        assert_eq!((a.down(4095), a.down(4096), a.down(8191)), (0, 4096, 4096));
        assert_eq!(
            (a.up(0), a.up(1), a.up(4096), a.up(4097)),
            (0, 4096, 4096, 8192)
        );
        let buf = vec![0u8; 3 * 4096];
        let at = buf.as_ptr().align_offset(512);
        let ok = &buf[at..at + 4096];
        assert!(a.fits(8192, &[IoSlice::new(ok)]));
        assert!(!a.fits(512, &[IoSlice::new(ok)]), "offset");
        assert!(!a.fits(0, &[IoSlice::new(&ok[..512])]), "length");
        assert!(
            !a.fits(0, &[IoSlice::new(&buf[at + 1..at + 4097])]),
            "address"
        );
        assert!(
            !a.fits(0, &[IoSlice::new(ok), IoSlice::new(&ok[..100])]),
            "second buffer"
        );
    }

    /// A file without direct-I/O alignment (a character device) falls back to 4096.
    #[test]
    fn fallback_without_statx_dioalign() {
        let null = File::open("/dev/null").unwrap();
        assert_eq!(statx_dio(&null), None);
        assert_eq!(
            Align::of(&null),
            Align {
                mem: 4096,
                block: 4096
            }
        );
    }
}
