//! Byte sources: the files (or memory) an image is made of, and how local files are opened
//! (`open.rs`: types, confinement) and locked (`lock.rs`: QEMU's lock bytes). Byte sources a C
//! host supplies through callbacks live with the C ABI (`capi/host.rs`).
//! Local files are read and written through the page cache ([`FileStorage`]) or, opened with
//! `O_DIRECT`, around it (`DirectStorage`, with `align.rs`, `bounce.rs` and `range_lock.rs`).
//!
//! Contract of every [`Storage`]:
//! - positional and vectored: no shared file offset, so any number of threads may call at once;
//! - a read transfers the whole range or fails; bytes past the end read as zeros;
//! - a write transfers the whole range or fails, growing the storage when it ends past the end;
//! - `flush` makes every completed write durable;
//! - `resize` grows with zeros or shrinks;
//! - `next_data` never skips a nonzero byte (it may report data where there are zeros);
//!   `next_hole` never reports a hole over a nonzero byte;
//! - `punch_hole` and `zero_range` make a range read zeros without changing the length, or
//!   fail with `EOPNOTSUPP` (the default) so that the caller writes zeros instead.
//! - `copy_from` copies a prefix of the range (maybe none) or fails; the caller copies the rest.

mod align;
mod bounce;
mod copy;
mod direct;
mod file;
mod lock;
mod mem;
mod open;
mod range_lock;

pub(crate) use direct::DirectStorage;
pub use file::FileStorage;
pub(crate) use lock::{lock, Lock};
pub use mem::MemStorage;
pub(crate) use open::{open_path, Access, Create, Dir};

use std::io::{self, IoSlice, IoSliceMut};

/// A positional, vectored byte source.
// `len` is fallible I/O, not a container size: an `is_empty` would add nothing.
#[allow(clippy::len_without_is_empty)]
pub trait Storage: Send + Sync {
    /// Fills `bufs` from `offset`; zeros past the end.
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()>;
    /// Writes all of `bufs` at `offset`.
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Sets the length: growing reads as zeros.
    fn resize(&self, len: u64) -> io::Result<()>;

    /// The first offset at or after `offset` where data may be, or `None` when every byte from
    /// `offset` on reads as zero (a hole to the end, or past the end), so that callers can
    /// skip all-zero stretches of sparse files without reading them. The default knows no
    /// holes: "data may be at `offset`".
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok(Some(offset))
    }

    /// The first offset at or after `offset` where a hole (or the end) starts. The default
    /// knows no holes: the end of the storage.
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        Ok(self.len()?.max(offset))
    }

    /// Makes `offset..offset + len` read zeros by giving its space back (a hole), keeping the
    /// length (bytes past the end stay past it). `EOPNOTSUPP` where it cannot (the default).
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// Makes `offset..offset + len` read zeros keeping (or allocating) its space, and the
    /// length. `EOPNOTSUPP` where it cannot (the default).
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// Convenience: one buffer.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_vectored_at(&mut [IoSliceMut::new(buf)], offset)
    }

    /// Convenience: one buffer.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_vectored_at(&[IoSlice::new(buf)], offset)
    }

    /// The open regular file behind this source, when the kernel may move its bytes without
    /// going through the source (`copy_from`): `None` (the default) for memory, host callbacks
    /// and direct I/O.
    fn as_file(&self) -> Option<&std::fs::File> {
        None
    }

    /// Copies `len` bytes at `offset` of `src` to the same offset here inside the kernel,
    /// where both are files: how many bytes from `offset` it copied. Fewer than `len` (0, the
    /// default) when the rest must be copied another way (read, then write).
    fn copy_from(&self, src: &dyn Storage, offset: u64, len: u64) -> io::Result<u64> {
        let _ = (src, offset, len);
        Ok(0)
    }
}

/// Total bytes in an iovec list.
pub(crate) fn iov_len<B: std::ops::Deref<Target = [u8]>>(bufs: &[B]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// Fills every buffer with zeros.
pub(crate) fn zero_fill(bufs: &mut [IoSliceMut<'_>]) {
    for b in bufs {
        b.fill(0);
    }
}
