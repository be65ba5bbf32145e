//! Byte sources a host supplies through callbacks (a C block layer's child node, nbdkit, a test
//! double): the `AddCowIo` table of the C ABI, and [`HostStorage`], a [`Storage`] over one.
//!
//! A table is checked once, when a [`HostStorage`] is made from it: the callbacks the library
//! will call must be there ([`Needs`]), and a missing one is an `EINVAL` naming it. After that
//! every call goes through a plain function pointer.

use super::boundary::bad_arg;
use crate::error::{Error, Op, Result};
use crate::storage::{iov_len, Storage};
use std::ffi::{c_int, c_void};
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// Host-provided I/O. Every callback returns 0 (or the documented non-negative value) on
/// success and a negative errno on failure; reads and writes transfer the whole range, never
/// zero bytes. `iovcnt` may exceed `ADDCOW_IOV_MAX` by two (a guest's `ADDCOW_IOV_MAX` buffers
/// with the head and tail of a cluster copied around them): a host that forwards to
/// `preadv(2)`/`pwritev(2)` splits. The callbacks may be called from several threads at once,
/// with the same `opaque`. Which callbacks may be NULL is said by each function taking a table;
/// the library checks them when it takes the table (-EINVAL naming the missing one) and calls
/// no NULL one.
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

/// The roles of host files in messages.
pub(super) const META: &str = "add-cow file (host I/O)";
pub(super) const IMAGE: &str = "image file (host I/O)";
pub(super) const BACKING: &str = "backing (host I/O)";

type Vectored = unsafe extern "C" fn(*mut c_void, u64, *const libc::iovec, c_int) -> c_int;
type Flush = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetLength = unsafe extern "C" fn(*mut c_void) -> i64;
type Truncate = unsafe extern "C" fn(*mut c_void, u64) -> c_int;

/// Which callbacks the library will call on a table, so which must not be NULL.
#[derive(Clone, Copy)]
pub(super) enum Needs {
    /// `preadv` and `get_length`: the library only reads (a header, a read-only core).
    Read,
    /// `preadv`, `pwritev` and `get_length`: a read-write core (the host flushes the `.add-cow`
    /// file itself).
    ReadWrite,
    /// `preadv`, `pwritev`, `flush` and `get_length`: a file of an image the library flushes
    /// (`addcow_open_io`).
    ReadWriteFlush,
}

impl Needs {
    fn callbacks(self) -> &'static str {
        match self {
            Needs::Read => "preadv and get_length",
            Needs::ReadWrite => "preadv, pwritev and get_length",
            Needs::ReadWriteFlush => "preadv, pwritev, flush and get_length",
        }
    }
}

/// Stands in for a `pwritev` or `flush` the host left NULL on a table the library only reads
/// (or never flushes): the file refuses them as a file opened read-only refuses writes. Never
/// called unless the library breaks its own [`Needs`].
extern "C" fn refuse_write(_: *mut c_void, _: u64, _: *const libc::iovec, _: c_int) -> c_int {
    -libc::EBADF
}

/// See [`refuse_write`].
extern "C" fn refuse_flush(_: *mut c_void) -> c_int {
    -libc::EBADF
}

/// A table whose required callbacks were checked: plain function pointers.
struct Callbacks {
    opaque: *mut c_void,
    preadv: Vectored,
    pwritev: Vectored,
    flush: Flush,
    /// Optional in every table: resizing without it is `ENOTSUP`.
    truncate: Option<Truncate>,
}

/// An [`AddCowIo`] as a [`Storage`]. The length is read once, then tracked across writes and
/// resizes, so that reads past the end can be zero-filled without asking the host again.
/// `AddCowIo` has no punch or zero-range callback (adding one would change its layout): the
/// trait's defaults answer `EOPNOTSUPP` and know no holes, so write-zeroes and discard write
/// zeros through `pwritev`.
pub(super) struct HostStorage {
    io: Callbacks,
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

impl HostStorage {
    /// Takes the host table `table`, passed as the argument `arg`, for the file `role` (both
    /// for messages): checks that the callbacks `needs` names are there, then asks the host for
    /// the current length. `EINVAL` for a NULL table or a missing callback, the host's errno
    /// from `get_length`.
    ///
    /// # Safety
    /// `table` is NULL or points at a valid `AddCowIo` whose non-NULL callbacks keep the
    /// C ABI's contract for as long as the storage lives.
    pub(super) unsafe fn new(
        table: *const AddCowIo,
        (arg, role): (&str, &str),
        needs: Needs,
    ) -> Result<HostStorage> {
        // SAFETY: the caller's guarantee; NULL is refused.
        let io = unsafe { table.as_ref() }.ok_or_else(|| bad_arg(&format!("{arg} is NULL")))?;
        let missing = |name: &str| {
            bad_arg(&format!(
                "{arg}: the {name} callback is NULL ({} are required)",
                needs.callbacks()
            ))
        };
        let preadv = io.preadv.ok_or_else(|| missing("preadv"))?;
        let pwritev = match (io.pwritev, needs) {
            (Some(f), _) => f,
            (None, Needs::Read) => refuse_write,
            (None, _) => return Err(missing("pwritev")),
        };
        let flush = match (io.flush, needs) {
            (Some(f), _) => f,
            (None, Needs::Read | Needs::ReadWrite) => refuse_flush,
            (None, Needs::ReadWriteFlush) => return Err(missing("flush")),
        };
        let get_length: GetLength = io.get_length.ok_or_else(|| missing("get_length"))?;
        // SAFETY: a non-NULL get_length, callable with its opaque pointer per the caller.
        let len = unsafe { get_length(io.opaque) };
        let len = u64::try_from(len).map_err(|_| {
            let errno = i32::try_from(len.saturating_neg()).unwrap_or(libc::EIO);
            Error::io(Op::GetLength, role, 0, io::Error::from_raw_os_error(errno))
        })?;
        Ok(HostStorage {
            io: Callbacks {
                opaque: io.opaque,
                preadv,
                pwritev,
                flush,
                truncate: io.truncate,
            },
            len: AtomicU64::new(len),
        })
    }

    /// Calls the host's preadv, unless there is nothing to read: a zero-length read may lie
    /// past the end (the empty tail of a cluster), which the host is promised never to see.
    fn preadv(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        if iov_len(bufs) == 0 {
            return Ok(());
        }
        let cnt =
            c_int::try_from(bufs.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: IoSliceMut is ABI-compatible with struct iovec; the buffers are valid and
        // writable for the call, and the host promised a callable preadv.
        check(unsafe { (self.io.preadv)(self.io.opaque, offset, bufs.as_ptr().cast(), cnt) })
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
        let cnt =
            c_int::try_from(bufs.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: IoSlice is ABI-compatible with struct iovec; the buffers are valid for the
        // call, and the host promised a callable pwritev that only reads them.
        check(unsafe { (self.io.pwritev)(self.io.opaque, offset, bufs.as_ptr().cast(), cnt) })?;
        self.len
            .fetch_max(offset.saturating_add(iov_len(bufs)), Ordering::AcqRel);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        // SAFETY: the host promised a callable flush taking its opaque pointer.
        check(unsafe { (self.io.flush)(self.io.opaque) })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Backing, Image, OpenOptions, Parts};
    use crate::layout::Header;
    use crate::storage::MemStorage;
    use std::cell::Cell;

    /// A host file over memory that counts the reads it is asked for past its end.
    struct HostFile {
        bytes: Vec<u8>,
        reads: Cell<usize>,
        reads_past_end: Cell<usize>,
    }

    unsafe extern "C" fn host_preadv(
        opaque: *mut c_void,
        offset: u64,
        iov: *const libc::iovec,
        iovcnt: c_int,
    ) -> c_int {
        // SAFETY: `opaque` is the test's HostFile, alive and used by one thread; `iov` holds
        // `iovcnt` valid entries, per the AddCowIo contract.
        let (h, entries) = unsafe {
            (
                &*opaque.cast::<HostFile>(),
                std::slice::from_raw_parts(iov, iovcnt as usize),
            )
        };
        h.reads.set(h.reads.get() + 1);
        let mut pos = offset as usize;
        for e in entries {
            if pos + e.iov_len > h.bytes.len() || pos > h.bytes.len() {
                h.reads_past_end.set(h.reads_past_end.get() + 1);
                return -libc::EIO;
            }
            // SAFETY: a valid buffer of `iov_len` bytes, per the contract.
            let buf = unsafe { std::slice::from_raw_parts_mut(e.iov_base.cast::<u8>(), e.iov_len) };
            buf.copy_from_slice(&h.bytes[pos..pos + e.iov_len]);
            pos += e.iov_len;
        }
        0
    }

    unsafe extern "C" fn host_pwritev(
        _: *mut c_void,
        _: u64,
        _: *const libc::iovec,
        _: c_int,
    ) -> c_int {
        -libc::EROFS
    }

    unsafe extern "C" fn host_flush(_: *mut c_void) -> c_int {
        0
    }

    unsafe extern "C" fn host_get_length(opaque: *mut c_void) -> i64 {
        // SAFETY: as in host_preadv.
        unsafe { &*opaque.cast::<HostFile>() }.bytes.len() as i64
    }

    fn host_table(file: &HostFile) -> AddCowIo {
        AddCowIo {
            opaque: (file as *const HostFile).cast_mut().cast(),
            preadv: Some(host_preadv),
            pwritev: Some(host_pwritev),
            flush: Some(host_flush),
            get_length: Some(host_get_length),
            truncate: None,
        }
    }

    /// Found by fuzz/capi (fuzz/regressions/capi/zero-length-backing-read-past-end): a write of a
    /// whole cluster past the end of a host-supplied backing file read its empty head from the
    /// backing file, so the host's preadv was called at an offset past its end, which the AddCowIo
    /// contract promises never happens. Zero-length transfers no longer reach the host.
    #[test]
    fn empty_reads_past_a_host_backing_end_do_not_reach_the_host() {
        const CS: usize = 65536;
        let backing = HostFile {
            bytes: vec![7; 1000],
            reads: Cell::new(0),
            reads_past_end: Cell::new(0),
        };
        // SAFETY: a valid table over `backing`, which outlives the storage.
        let host = unsafe {
            HostStorage::new(
                &host_table(&backing),
                ("backing", BACKING),
                Needs::ReadWriteFlush,
            )
        }
        .unwrap();
        host.read_vectored_at(&mut [IoSliceMut::new(&mut [])], 5000)
            .unwrap();
        let mut two = [1u8; 2];
        host.read_at(&mut two, 999).unwrap();
        assert_eq!(two, [7, 0], "the part past the end reads zeros");
        assert_eq!((backing.reads.get(), backing.reads_past_end.get()), (1, 0));

        let header = Header::new(b"img", Some(b"base")).unwrap().to_bytes();
        let parts = Parts {
            meta: (
                Box::new(MemStorage::from_bytes(header.to_vec())),
                "meta".into(),
            ),
            image: (
                Box::new(MemStorage::from_bytes(vec![0; 2 * CS])),
                "image".into(),
            ),
            backing: Some(Backing::raw(Box::new(host), "backing")),
        };
        let opts = OpenOptions {
            writable: true,
            ..OpenOptions::default()
        };
        let img = Image::open_parts(parts, &opts).unwrap();
        img.write_at(CS as u64, &[9; CS]).unwrap();
        img.write_at(10, &[9; 10]).unwrap();
        let mut head = [0u8; 12];
        img.read_at(0, &mut head).unwrap();
        assert_eq!(head, [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 9, 9]);
        drop(img);
        assert_eq!(
            backing.reads_past_end.get(),
            0,
            "reads past the backing file's end"
        );
    }

    /// A missing callback is refused when the table is taken, naming it; `Needs::Read` takes
    /// a table without `pwritev` and `flush`, whose writes then fail with `EBADF`.
    #[test]
    fn missing_callbacks_are_refused_at_construction() {
        let file = HostFile {
            bytes: vec![7; 100],
            reads: Cell::new(0),
            reads_past_end: Cell::new(0),
        };
        let full = host_table(&file);
        let take = |io: &AddCowIo, needs| {
            // SAFETY: a valid table over `file`, which outlives the storage.
            unsafe { HostStorage::new(io, ("meta", META), needs) }
        };
        let cases: [(&str, AddCowIo, Needs); 5] = [
            (
                "preadv",
                AddCowIo {
                    preadv: None,
                    ..full
                },
                Needs::Read,
            ),
            (
                "get_length",
                AddCowIo {
                    get_length: None,
                    ..full
                },
                Needs::Read,
            ),
            (
                "pwritev",
                AddCowIo {
                    pwritev: None,
                    ..full
                },
                Needs::ReadWrite,
            ),
            (
                "pwritev",
                AddCowIo {
                    pwritev: None,
                    ..full
                },
                Needs::ReadWriteFlush,
            ),
            (
                "flush",
                AddCowIo {
                    flush: None,
                    ..full
                },
                Needs::ReadWriteFlush,
            ),
        ];
        for (name, io, needs) in cases {
            let e = take(&io, needs).err().expect(name);
            assert_eq!(e.errno(), libc::EINVAL);
            assert!(
                e.to_string()
                    .contains(&format!("meta: the {name} callback is NULL")),
                "{e}"
            );
        }
        // SAFETY: NULL is refused before anything is read.
        let null = unsafe { HostStorage::new(std::ptr::null(), ("meta", META), Needs::Read) };
        assert_eq!(null.err().unwrap().to_string(), "meta is NULL");

        let reader = AddCowIo {
            pwritev: None,
            flush: None,
            ..full
        };
        let storage = take(&reader, Needs::Read).unwrap();
        let mut two = [0u8; 2];
        storage.read_at(&mut two, 0).unwrap();
        assert_eq!(two, [7, 7]);
        let write = storage.write_at(&[1], 0).unwrap_err();
        assert_eq!(write.raw_os_error(), Some(libc::EBADF));
        assert_eq!(
            storage.flush().unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        let writer = AddCowIo {
            flush: None,
            ..full
        };
        let storage = take(&writer, Needs::ReadWrite).unwrap();
        assert_eq!(
            storage.flush().unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        let resize = storage.resize(0).unwrap_err();
        assert_eq!(
            resize.raw_os_error(),
            Some(libc::ENOTSUP),
            "no truncate callback"
        );
    }

    unsafe extern "C" fn failing_get_length(_: *mut c_void) -> i64 {
        -i64::from(libc::ENOSPC)
    }

    #[test]
    fn a_failing_get_length_is_the_hosts_errno() {
        let file = HostFile {
            bytes: Vec::new(),
            reads: Cell::new(0),
            reads_past_end: Cell::new(0),
        };
        let io = AddCowIo {
            get_length: Some(failing_get_length),
            ..host_table(&file)
        };
        // SAFETY: a valid table over `file`, which outlives the storage.
        let e = unsafe { HostStorage::new(&io, ("meta", META), Needs::Read) }
            .err()
            .unwrap();
        assert_eq!(e.errno(), libc::ENOSPC);
        assert!(
            e.to_string()
                .starts_with("get length of add-cow file (host I/O)"),
            "{e}"
        );
    }
}
