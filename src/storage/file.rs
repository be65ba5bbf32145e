//! A file, read and written with `pread`/`pwrite` (one buffer) or `preadv`/`pwritev` (several):
//! positional, no shared offset.
//!
//! The common case is one system call straight on the caller's buffers; only a short transfer
//! (end of file, more than `ADDCOW_IOV_MAX` buffers, a signal) copies the iovec list to
//! continue.

use super::{iov_len, zero_fill, Storage};
// The C ABI's exported constant: one number says how many iovecs Linux takes.
use crate::capi::ADDCOW_IOV_MAX;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;

/// A regular file as a [`Storage`].
#[derive(Debug)]
pub struct FileStorage {
    file: File,
}

impl FileStorage {
    pub fn new(file: File) -> FileStorage {
        FileStorage { file }
    }

    /// The underlying file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Whether the file system answers `lseek(SEEK_DATA)` (where it does not, `next_data`
    /// reports data everywhere and cannot tell a hole from data).
    pub(crate) fn seeks_data(&self) -> io::Result<bool> {
        // SAFETY: lseek takes no pointers; the descriptor is open for as long as `self.file`.
        let at = unsafe { libc::lseek(self.file.as_raw_fd(), 0, libc::SEEK_DATA) };
        if at >= 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(true),
            Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(false),
            _ => Err(err),
        }
    }

    /// One read system call, retried on EINTR: `pread` for one buffer (measurably cheaper than
    /// `preadv` with one iovec at 4 KiB), `preadv` for several (at most `ADDCOW_IOV_MAX`,
    /// Linux's `IOV_MAX`). Returns the bytes read (0 at end of file).
    pub(super) fn read_once(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<u64> {
        let off = to_off(offset)?;
        let fd = self.file.as_raw_fd();
        loop {
            let n = match bufs {
                [one] => {
                    // SAFETY: `one` is a valid writable buffer of `one.len()` bytes, borrowed
                    // for the call.
                    unsafe { libc::pread(fd, one.as_mut_ptr().cast(), one.len(), off) }
                }
                _ => {
                    // SAFETY: IoSliceMut is ABI-compatible with struct iovec on Unix; the
                    // first `min(len, ADDCOW_IOV_MAX)` entries are valid writable buffers
                    // borrowed for the call.
                    unsafe {
                        libc::preadv(
                            fd,
                            bufs.as_mut_ptr().cast::<libc::iovec>(),
                            bufs.len().min(ADDCOW_IOV_MAX as usize) as libc::c_int,
                            off,
                        )
                    }
                }
            };
            if let Some(n) = syscall_result(n)? {
                return Ok(n);
            }
        }
    }

    /// One write system call, retried on EINTR: `pwrite` for one buffer, `pwritev` for several
    /// (at most `ADDCOW_IOV_MAX`, Linux's `IOV_MAX`). Returns the bytes written.
    pub(super) fn write_once(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<u64> {
        let off = to_off(offset)?;
        let fd = self.file.as_raw_fd();
        loop {
            let n = match bufs {
                [one] => {
                    // SAFETY: `one` is a valid readable buffer of `one.len()` bytes, borrowed
                    // for the call.
                    unsafe { libc::pwrite(fd, one.as_ptr().cast(), one.len(), off) }
                }
                _ => {
                    // SAFETY: IoSlice is ABI-compatible with struct iovec on Unix; the first
                    // `min(len, ADDCOW_IOV_MAX)` entries are valid readable buffers borrowed
                    // for the call.
                    unsafe {
                        libc::pwritev(
                            fd,
                            bufs.as_ptr().cast::<libc::iovec>(),
                            bufs.len().min(ADDCOW_IOV_MAX as usize) as libc::c_int,
                            off,
                        )
                    }
                }
            };
            if let Some(n) = syscall_result(n)? {
                return Ok(n);
            }
        }
    }

    /// Fills `bufs` from `offset` with `read_once` calls until done, zeros from the end of the
    /// file on. Before each call (the first too), `divert` may take over what is left (its
    /// buffers and offset) by returning `Some`: direct I/O bounces unaligned remainders.
    pub(super) fn read_all(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        mut offset: u64,
        mut divert: impl FnMut(&mut [IoSliceMut<'_>], u64) -> Option<io::Result<()>>,
    ) -> io::Result<()> {
        if let Some(done) = divert(bufs, offset) {
            return done;
        }
        let mut done = self.read_once(bufs, offset)?;
        if done == iov_len(bufs) {
            return Ok(());
        }
        let mut copy: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut rest = &mut copy[..];
        loop {
            if done == 0 {
                // End of file: the rest reads as zeros.
                zero_fill(rest);
                return Ok(());
            }
            IoSliceMut::advance_slices(&mut rest, done as usize);
            offset += done;
            if rest.is_empty() {
                return Ok(());
            }
            if let Some(done) = divert(rest, offset) {
                return done;
            }
            done = self.read_once(rest, offset)?;
        }
    }

    /// Writes all of `bufs` at `offset` with `write_once` calls; `divert` as for `read_all`.
    pub(super) fn write_all(
        &self,
        bufs: &[IoSlice<'_>],
        mut offset: u64,
        mut divert: impl FnMut(&[IoSlice<'_>], u64) -> Option<io::Result<()>>,
    ) -> io::Result<()> {
        if let Some(done) = divert(bufs, offset) {
            return done;
        }
        let mut done = self.write_once(bufs, offset)?;
        if done == iov_len(bufs) {
            return Ok(());
        }
        let mut copy = bufs.to_vec();
        let mut rest = &mut copy[..];
        loop {
            if done == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            IoSlice::advance_slices(&mut rest, done as usize);
            offset += done;
            if rest.is_empty() {
                return Ok(());
            }
            if let Some(done) = divert(rest, offset) {
                return done;
            }
            done = self.write_once(rest, offset)?;
        }
    }
}

/// `Ok(None)` asks to retry after EINTR.
fn syscall_result(n: isize) -> io::Result<Option<u64>> {
    if n >= 0 {
        return Ok(Some(n as u64));
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::Interrupted => Ok(None),
        _ => Err(err),
    }
}

fn to_off(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl Storage for FileStorage {
    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn copy_from(&self, src: &dyn Storage, offset: u64, len: u64) -> io::Result<u64> {
        match src.as_file() {
            Some(file) => super::copy::copy_file_range(file, &self.file, offset, len),
            None => Ok(0),
        }
    }

    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        self.read_all(bufs, offset, |_, _| None)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.write_all(bufs, offset, |_, _| None)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The end of the file by `lseek(SEEK_END)`, which gives block devices their size too (their
    /// `stat` size is 0). The file offset it moves is never used: all I/O is positional.
    fn len(&self) -> io::Result<u64> {
        // SAFETY: lseek on a valid descriptor takes no pointer.
        let end = unsafe { libc::lseek(self.file.as_raw_fd(), 0, libc::SEEK_END) };
        u64::try_from(end).map_err(|_| io::Error::last_os_error())
    }

    fn resize(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// `lseek(SEEK_DATA)`: moves the file offset, which nothing here uses. ENXIO (only holes
    /// from `offset` to the end, or past the end) is `None`; a file system without SEEK_DATA
    /// (EINVAL, EOPNOTSUPP) reports data everywhere.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        let off = to_off(offset)?;
        // SAFETY: lseek takes no pointers; the descriptor is open for as long as `self.file`.
        let at = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_DATA) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(Some(offset)),
            _ => Err(err),
        }
    }

    /// `lseek(SEEK_HOLE)`; past the end (ENXIO) the offset itself, and a file system without
    /// SEEK_HOLE (EINVAL, EOPNOTSUPP) has its only hole at the end.
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        let off = to_off(offset)?;
        // SAFETY: lseek takes no pointers; the descriptor is open for as long as `self.file`.
        let at = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_HOLE) };
        if at >= 0 {
            return Ok(at as u64);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(offset),
            Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(self.len()?.max(offset)),
            _ => Err(err),
        }
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(libc::FALLOC_FL_PUNCH_HOLE, offset, len)
    }

    /// `FALLOC_FL_ZERO_RANGE`; where the file system lacks it (tmpfs), QEMU's fallback
    /// (file-posix.c): punch a hole, then allocate the space again.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.fallocate(libc::FALLOC_FL_PUNCH_HOLE, offset, len)?;
                self.fallocate(0, offset, len)
            }
            done => done,
        }
    }
}

impl FileStorage {
    /// `fallocate(mode | FALLOC_FL_KEEP_SIZE)`, retried on EINTR. File systems without the mode
    /// answer EOPNOTSUPP, which callers treat as "write zeros instead".
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (off, n) = (to_off(offset)?, to_off(len)?);
        loop {
            // SAFETY: fallocate takes no pointers; the descriptor is open for as long as
            // `self.file`.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    mode | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    n,
                )
            };
            if syscall_result(r as isize)?.is_some() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage() -> (tempfile::NamedTempFile, FileStorage) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let s = FileStorage::new(tmp.reopen().unwrap());
        (tmp, s)
    }

    #[test]
    fn vectored_round_trip_and_zeros_past_end() {
        let (_t, s) = storage();
        s.write_vectored_at(&[IoSlice::new(b"hello "), IoSlice::new(b"world")], 10)
            .unwrap();
        assert_eq!(s.len().unwrap(), 21);
        let (mut a, mut b) = ([9u8; 16], [9u8; 10]);
        s.read_vectored_at(&mut [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)], 5)
            .unwrap();
        assert_eq!(&a, b"\0\0\0\0\0hello world");
        assert_eq!(b, [0; 10]);
        let mut far = [7u8; 4];
        s.read_at(&mut far, 1 << 30).unwrap();
        assert_eq!(far, [0; 4]);
    }

    #[test]
    fn one_buffer_short_transfers_continue() {
        let (_t, s) = storage();
        s.write_at(b"0123456789", 0).unwrap();
        let mut buf = [9u8; 20];
        s.read_at(&mut buf, 5).unwrap();
        assert_eq!(&buf, b"56789\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        s.write_at(b"ab", 30).unwrap();
        assert_eq!(s.len().unwrap(), 32);
        let mut back = [9u8; 4];
        s.read_at(&mut back, 29).unwrap();
        assert_eq!(&back, b"\0ab\0");
    }

    #[test]
    fn more_buffers_than_iov_max() {
        let (_t, s) = storage();
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let slices: Vec<IoSlice<'_>> = data
            .iter()
            .map(std::slice::from_ref)
            .map(IoSlice::new)
            .collect();
        s.write_vectored_at(&slices, 1).unwrap();
        let mut back = vec![0u8; 3000];
        let mut bufs: Vec<IoSliceMut<'_>> = back.chunks_mut(1).map(IoSliceMut::new).collect();
        s.read_vectored_at(&mut bufs, 1).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn next_data_skips_holes() {
        let (_t, s) = storage();
        s.resize(1 << 30).unwrap();
        s.write_at(b"x", 600 << 20).unwrap();
        let data = s.next_data(4096).unwrap().unwrap();
        assert!(data > 4096 && data <= 600 << 20, "{data}");
        assert_eq!(s.next_data(600 << 20).unwrap(), Some(600 << 20));
        assert_eq!(s.next_data((600 << 20) + (1 << 20)).unwrap(), None);
        assert_eq!(s.next_data(2 << 30).unwrap(), None, "past the end");
    }

    #[test]
    fn punch_and_zero_range_read_zeros_and_keep_the_length() {
        let (_t, s) = storage();
        s.write_at(&[7u8; 3 << 16], 0).unwrap();
        s.punch_hole(1 << 16, 1 << 16).unwrap();
        s.zero_range(2 << 16, 100).unwrap();
        s.punch_hole(3 << 16, 1 << 16).unwrap();
        assert_eq!(s.len().unwrap(), 3 << 16, "KEEP_SIZE");
        let mut back = vec![9u8; 3 << 16];
        s.read_at(&mut back, 0).unwrap();
        assert!(back[..1 << 16].iter().all(|&b| b == 7));
        assert!(back[1 << 16..(2 << 16) + 100].iter().all(|&b| b == 0));
        assert!(back[(2 << 16) + 100..].iter().all(|&b| b == 7));
        // A punched block is a hole (tmpfs, ext4, xfs, btrfs all punch 64 KiB).
        assert_eq!(s.next_hole(0).unwrap(), 1 << 16);
        assert_eq!(s.next_data(1 << 16).unwrap(), Some(2 << 16));
        assert_eq!(s.next_hole(5 << 16).unwrap(), 5 << 16, "past the end");
    }

    /// tmpfs has no `FALLOC_FL_ZERO_RANGE`: the range is punched and allocated again.
    #[test]
    fn zero_range_on_tmpfs_keeps_its_space() {
        let tmp = tempfile::NamedTempFile::new_in("/dev/shm")
            .expect("these tests need /dev/shm (tmpfs) for a file system without ZERO_RANGE");
        let s = FileStorage::new(tmp.reopen().unwrap());
        s.write_at(&[7u8; 3 << 16], 0).unwrap();
        s.zero_range(1 << 16, 1 << 16).unwrap();
        let mut back = vec![9u8; 3 << 16];
        s.read_at(&mut back, 0).unwrap();
        assert!(back[..1 << 16].iter().all(|&b| b == 7));
        assert!(back[1 << 16..2 << 16].iter().all(|&b| b == 0));
        assert!(back[2 << 16..].iter().all(|&b| b == 7));
        assert_eq!(s.len().unwrap(), 3 << 16);
        let blocks = std::os::unix::fs::MetadataExt::blocks(&s.file().metadata().unwrap());
        assert_eq!(blocks * 512, 3 << 16, "the zeroed range keeps its space");
    }

    #[test]
    fn resize_grows_with_zeros() {
        let (_t, s) = storage();
        s.write_at(b"abc", 0).unwrap();
        s.resize(1).unwrap();
        s.resize(5).unwrap();
        let mut buf = [9u8; 5];
        s.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"a\0\0\0\0");
        s.flush().unwrap();
    }
}
