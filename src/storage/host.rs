//! A byte source backed by a host's callbacks (a C block layer's child node, nbdkit, a test
//! double): the `AddCowIo` table of the C ABI.

use super::{iov_len, Storage};
use std::ffi::{c_int, c_void};
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// Host-provided I/O. Every callback returns 0 (or the documented non-negative value) on
/// success and a negative errno on failure; reads and writes transfer the whole range, never
/// zero bytes. `iovcnt` may exceed `IOV_MAX` by two (a guest's 1024 buffers with the head and
/// tail of a cluster copied around them): a host that forwards to `preadv(2)`/`pwritev(2)`
/// splits. The callbacks may be called from several threads at once, with the same `opaque`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AddCowIo {
    /// Passed back to every callback.
    pub opaque: *mut c_void,
    /// Reads the whole range into `iov`. Reading past the end is never asked for.
    pub preadv: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            offset: u64,
            iov: *const libc::iovec,
            iovcnt: c_int,
        ) -> c_int,
    >,
    /// Writes the whole range from `iov`, growing the file when it ends past the end.
    pub pwritev: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            offset: u64,
            iov: *const libc::iovec,
            iovcnt: c_int,
        ) -> c_int,
    >,
    /// Makes completed writes durable.
    pub flush: Option<unsafe extern "C" fn(opaque: *mut c_void) -> c_int>,
    /// Length in bytes, or a negative errno.
    pub get_length: Option<unsafe extern "C" fn(opaque: *mut c_void) -> i64>,
    /// Sets the length (growing reads as zeros). May be NULL: resizing then fails with
    /// `-ENOTSUP`.
    pub truncate: Option<unsafe extern "C" fn(opaque: *mut c_void, size: u64) -> c_int>,
}

/// An [`AddCowIo`] as a [`Storage`]. The length is read once, then tracked across writes and
/// resizes, so that reads past the end can be zero-filled without asking the host again.
pub struct HostStorage {
    io: AddCowIo,
    len: AtomicU64,
}

// SAFETY: the C ABI's contract makes the host callbacks callable from any thread at once with
// the same opaque pointer; the table itself is immutable after construction.
unsafe impl Send for HostStorage {}
// SAFETY: as above; the only interior mutability is the atomic length.
unsafe impl Sync for HostStorage {}

fn check(ret: c_int) -> io::Result<()> {
    match ret {
        0.. => Ok(()),
        e => Err(io::Error::from_raw_os_error(e.saturating_neg())),
    }
}

fn missing(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("the host I/O has no {what} callback"),
    )
}

impl HostStorage {
    /// Wraps a host table; requires `preadv`, `pwritev`, `flush` and `get_length`, and asks the
    /// host for the current length.
    pub fn new(io: AddCowIo) -> io::Result<HostStorage> {
        if io.pwritev.is_none() || io.flush.is_none() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        HostStorage::reader(io)
    }

    /// Wraps a host table that is only read from: requires `preadv` and `get_length` (writes
    /// and flushes then fail).
    pub fn reader(io: AddCowIo) -> io::Result<HostStorage> {
        if io.preadv.is_none() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let get_length = io
            .get_length
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the host promised a callable get_length taking its opaque pointer.
        let len = unsafe { get_length(io.opaque) };
        let len = u64::try_from(len).map_err(|_| {
            io::Error::from_raw_os_error(i32::try_from(len.saturating_neg()).unwrap_or(libc::EIO))
        })?;
        Ok(HostStorage {
            io,
            len: AtomicU64::new(len),
        })
    }

    /// Calls the host's preadv, unless there is nothing to read: a zero-length read may lie
    /// past the end (the empty tail of a cluster), which the host is promised never to see.
    fn preadv(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        if iov_len(bufs) == 0 {
            return Ok(());
        }
        let f = self.io.preadv.ok_or_else(|| missing("preadv"))?;
        let cnt =
            c_int::try_from(bufs.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: IoSliceMut is ABI-compatible with struct iovec; the buffers are valid and
        // writable for the call, and the host promised a callable preadv.
        check(unsafe { f(self.io.opaque, offset, bufs.as_ptr().cast(), cnt) })
    }
}

impl Storage for HostStorage {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let total = iov_len(bufs);
        let inside = self
            .len
            .load(Ordering::Acquire)
            .saturating_sub(offset)
            .min(total);
        if inside == total {
            return self.preadv(bufs, offset);
        }
        // Read what lies inside; the rest is past the end and reads as zeros.
        let mut head = Vec::with_capacity(bufs.len());
        let mut want = inside as usize;
        for buf in bufs.iter_mut() {
            let take = buf.len().min(want);
            let (inner, past) = buf.split_at_mut(take);
            if !inner.is_empty() {
                head.push(IoSliceMut::new(inner));
            }
            past.fill(0);
            want -= take;
        }
        self.preadv(&mut head, offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        if iov_len(bufs) == 0 {
            return Ok(());
        }
        let f = self.io.pwritev.ok_or_else(|| missing("pwritev"))?;
        let cnt =
            c_int::try_from(bufs.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: IoSlice is ABI-compatible with struct iovec; the buffers are valid for the
        // call, and the host promised a callable pwritev that only reads them.
        check(unsafe { f(self.io.opaque, offset, bufs.as_ptr().cast(), cnt) })?;
        self.len
            .fetch_max(offset.saturating_add(iov_len(bufs)), Ordering::AcqRel);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let f = self.io.flush.ok_or_else(|| missing("flush"))?;
        // SAFETY: the host promised a callable flush taking its opaque pointer.
        check(unsafe { f(self.io.opaque) })
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len.load(Ordering::Acquire))
    }

    fn resize(&self, len: u64) -> io::Result<()> {
        let f = self
            .io
            .truncate
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTSUP))?;
        // SAFETY: the host promised a callable truncate taking its opaque pointer.
        check(unsafe { f(self.io.opaque, len) })?;
        self.len.store(len, Ordering::Release);
        Ok(())
    }
}
