//! Regression tests for the crashes the fuzz targets found (fuzz/, `scripts/fuzz.sh`).
//!
//! Each test states the contract the crash broke; the fuzz input that found it is in
//! fuzz/regressions/TARGET/. One lives beside the code it is about, since that code is internal
//! to the crate: `zero-length-backing-read-past-end` in `src/capi/host.rs`.

use addcow::capi::{
    addcow_close, addcow_create, addcow_last_error, addcow_open, addcow_pread, addcow_readv,
    addcow_writev, AddCowCreateOptions, AddCowImage, ADDCOW_OPEN_RDWR,
};
use addcow::layout::Header;
use addcow::storage::{MemStorage, Storage};
use addcow::{Image, OpenOptions, Parts};
use std::ffi::{c_void, CStr, CString};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A writable 1 MiB image in a temporary directory, through the C API.
struct CImage {
    _dir: tempfile::TempDir,
    img: *mut AddCowImage,
}

impl CImage {
    fn new() -> CImage {
        let dir = tempfile::tempdir().unwrap();
        let path = CString::new(dir.path().join("d.add-cow").as_os_str().as_bytes()).unwrap();
        let opts = AddCowCreateOptions {
            struct_size: std::mem::size_of::<AddCowCreateOptions>() as u32,
            layout: 0,
            image_file: c"d.raw".as_ptr(),
            backing_file: std::ptr::null(),
            backing_fmt: std::ptr::null(),
            size: 1 << 20,
            cluster_size: 0,
            flags: 0,
        };
        let mut img = std::ptr::null_mut();
        // SAFETY: valid strings and options; `img` is writable.
        unsafe {
            assert_eq!(addcow_create(path.as_ptr(), &opts), 0);
            assert_eq!(addcow_open(path.as_ptr(), ADDCOW_OPEN_RDWR, &mut img), 0);
        }
        CImage { _dir: dir, img }
    }
}

impl Drop for CImage {
    fn drop(&mut self) {
        // SAFETY: the live handle, closed once.
        unsafe { addcow_close(self.img) };
    }
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated.
    unsafe { CStr::from_ptr(addcow_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Found by fuzz/capi (fuzz/regressions/capi/readv-iov-len-past-ssize-max): an iovec length
/// past SSIZE_MAX must be refused with -EINVAL before the library touches (or makes a Rust
/// slice of) the buffer. `capi/iov.rs` used to build the slice first: undefined behaviour,
/// and debug builds aborted ("unsafe precondition(s) violated: slice::from_raw_parts_mut").
#[test]
fn readv_with_an_iovec_past_ssize_max_is_einval() {
    let image = CImage::new();
    let mut byte = 0u8;
    let iov = [libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: isize::MAX as usize + 1,
    }];
    // SAFETY: the call must be refused from the length alone; the buffer is never touched.
    let r = unsafe { addcow_readv(image.img, 0, iov.as_ptr(), 1) };
    assert_eq!(r, -libc::EINVAL, "{}", last_error());
}

/// As above for `addcow_pread`'s plain buffer.
#[test]
fn pread_past_ssize_max_is_einval() {
    let image = CImage::new();
    let mut byte = 0u8;
    let buf = (&mut byte as *mut u8).cast::<c_void>();
    // SAFETY: the call must be refused from the length alone; the buffer is never touched.
    let r = unsafe { addcow_pread(image.img, 0, buf, usize::MAX) };
    assert_eq!(r, -libc::EINVAL, "{}", last_error());
}

/// Seen while writing the fuzz/capi harness's fake iovec lengths: lengths whose sum overflows
/// u64 must give -EINVAL. `storage::iov_len` summed them unchecked: debug builds panicked (the
/// boundary turned it into -EIO); release builds wrapped, so here the range check saw a 10-byte
/// request while the iovecs claim 2^64 + 10 bytes, and the write read past the 1-byte
/// buffers.
#[test]
fn writev_with_iovec_lengths_overflowing_u64_is_einval() {
    let image = CImage::new();
    let mut bytes = [0u8; 3];
    let base = bytes.as_mut_ptr();
    let iov = [
        (base, isize::MAX as usize),
        (base.wrapping_add(1), isize::MAX as usize),
        (base.wrapping_add(2), 12),
    ]
    .map(|(p, len)| libc::iovec {
        iov_base: p.cast(),
        iov_len: len,
    });
    // SAFETY: the call must be refused from the lengths alone; the buffers are never touched.
    let r = unsafe { addcow_writev(image.img, 0, iov.as_ptr(), 3) };
    assert_eq!(r, -libc::EINVAL, "{}", last_error());
}

/// A sparse file of any length (as on tmpfs or XFS): it keeps its first 4 KiB, reads zeros
/// past them, and takes any resize.
struct Sparse {
    head: MemStorage,
    len: AtomicU64,
}

const SPARSE_HEAD: u64 = 4096;

impl Sparse {
    fn new(head: &[u8], len: u64) -> Sparse {
        Sparse {
            head: MemStorage::from_bytes(head.to_vec()),
            len: AtomicU64::new(len),
        }
    }
}

impl Storage for Sparse {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        if offset < SPARSE_HEAD {
            return self.head.read_vectored_at(bufs, offset);
        }
        bufs.iter_mut().for_each(|b| b.fill(0));
        Ok(())
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let end = offset + bufs.iter().map(|b| b.len() as u64).sum::<u64>();
        if end > SPARSE_HEAD {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.head.write_vectored_at(bufs, offset)?;
        self.len.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len.load(Ordering::Acquire))
    }

    fn resize(&self, len: u64) -> io::Result<()> {
        self.len.store(len, Ordering::Release);
        Ok(())
    }
}

/// A writable image over sparse storages whose image file claims `len` bytes.
fn open_claiming(len: u64) -> addcow::Result<Image> {
    let header = Header::new(b"img", None).unwrap().to_bytes();
    let meta = Sparse::new(&header, header.len() as u64);
    let parts = Parts {
        meta: (Box::new(meta), "meta".into()),
        image: (Box::new(Sparse::new(&[], len)), "image".into()),
        backing: None,
    };
    let opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    Image::open_parts(parts, &opts)
}

/// Found by fuzz/capi (fuzz/regressions/capi/oom-image-length-i64-max and
/// oom-create-size-i64-max-then-open): an image file (a host's `get_length`, a sparse file on
/// tmpfs) claiming 2^63 - 1 bytes must open, or be refused with an error, without aborting
/// the process. `Bitmap::new` used to allocate one slot per 4 KiB bitmap page up front: 2^32
/// slots, 128 GiB, and the allocation failure aborted.
#[test]
fn an_image_claiming_2_pow_63_bytes_does_not_abort() {
    match open_claiming(i64::MAX as u64) {
        Ok(img) => {
            assert_eq!(img.size(), i64::MAX as u64);
            assert_eq!(img.is_allocated(1 << 62, 1).unwrap(), (false, 1));
        }
        Err(e) => assert!([libc::EINVAL, libc::EFBIG].contains(&e.errno()), "{e}"),
    }
}

/// Found by fuzz/capi (fuzz/regressions/capi/oom-truncate-u64-max-host-accepts): truncate to
/// 2^64 - 1 must fail with an error (or succeed) when the `.add-cow` file can grow that far, as
/// a sparse file on tmpfs or XFS can. `Bitmap::resize` used to allocate a slot per page, 2^33
/// of them (256 GiB), and the allocation failure aborted.
#[test]
fn truncate_to_2_pow_64_minus_1_does_not_abort() {
    let img = open_claiming(1 << 20).unwrap();
    match img.truncate(u64::MAX) {
        Ok(()) => assert_eq!(img.size(), u64::MAX),
        Err(e) => {
            assert!([libc::EINVAL, libc::EFBIG].contains(&e.errno()), "{e}");
            assert_eq!(img.size(), 1 << 20);
        }
    }
}

/// Found by fuzz/capi (fuzz/regressions/capi/truncate-read-only-past-max-size-is-eperm): a
/// truncate of a read-only image is `EPERM` whatever the size; past `ADDCOW_MAX_SIZE` it gave
/// `EFBIG` (the size was checked first).
#[test]
fn truncate_of_a_read_only_image_is_eperm_at_any_size() {
    let header = Header::new(b"img", None).unwrap().to_bytes();
    let mut meta = header.to_vec();
    meta.push(0);
    let parts = Parts {
        meta: (Box::new(MemStorage::from_bytes(meta)), "meta".into()),
        image: (
            Box::new(MemStorage::from_bytes(vec![0; 4096])),
            "image".into(),
        ),
        backing: None,
    };
    let img = Image::open_parts(parts, &OpenOptions::default()).unwrap();
    for size in [0, 4096, 1 << 20, addcow::layout::MAX_SIZE + 1, u64::MAX] {
        assert_eq!(
            img.truncate(size).unwrap_err().errno(),
            libc::EPERM,
            "{size}"
        );
    }
    assert_eq!(img.size(), 4096);
}

/// The same path at 1 PiB (2^19 bitmap pages), which the old bitmap could hold: opening costs
/// no I/O, queries far into the image work, and it grows.
#[test]
fn an_image_claiming_a_pebibyte_opens_and_grows() {
    let img = open_claiming(1 << 50).unwrap();
    assert_eq!(img.size(), 1 << 50);
    assert_eq!(img.is_allocated((1 << 50) - 1, 1).unwrap(), (false, 1));
    let mut buf = [1u8; 4];
    img.read_at((1 << 50) - 4, &mut buf).unwrap();
    assert_eq!(buf, [0; 4]);
    img.truncate(1 << 51).unwrap();
    assert_eq!(img.size(), 1 << 51);
}

/// A `.add-cow` file whose flushes fail once `.1` of them succeeded.
struct FlushFails(MemStorage, AtomicU64);

impl Storage for FlushFails {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        self.0.read_vectored_at(bufs, offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.0.write_vectored_at(bufs, offset)
    }

    fn flush(&self) -> io::Result<()> {
        let left = self.1.load(Ordering::Acquire);
        if left == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.1.store(left - 1, Ordering::Release);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn resize(&self, len: u64) -> io::Result<()> {
        self.0.resize(len)
    }
}

/// Found by fuzz/capi (fuzz/regressions/capi/truncate-writethrough-grow-sync-fails-size-changed):
/// truncate.rs promises for a grow that "a failure at any step gives the bitmap back its old
/// length ... and the image file keeps its old length" (a failed shrink may keep the new size).
/// With writethrough, truncate grows, sets the new size, and only then syncs; when that sync
/// fails it returns the error with the new size in place.
#[test]
fn a_failed_writethrough_grow_keeps_the_old_size() {
    let header = Header::new(b"img", None).unwrap().to_bytes();
    let mut meta = header.to_vec();
    meta.push(0);
    let mut failures = 0;
    // The n-th flush of the `.add-cow` file fails, for every n the grow reaches.
    for good_flushes in 0..8 {
        let flushes = AtomicU64::new(good_flushes);
        let parts = Parts {
            meta: (
                Box::new(FlushFails(MemStorage::from_bytes(meta.clone()), flushes)),
                "meta".into(),
            ),
            image: (
                Box::new(MemStorage::from_bytes(vec![0; 3 << 16])),
                "image".into(),
            ),
            backing: None,
        };
        let opts = OpenOptions {
            writable: true,
            writethrough: true,
            ..OpenOptions::default()
        };
        let img = Image::open_parts(parts, &opts).unwrap();
        if let Err(e) = img.truncate(5 << 16) {
            failures += 1;
            assert_eq!(e.errno(), libc::EIO, "{e}");
            assert_eq!(
                img.size(),
                3 << 16,
                "a grow failing at flush {good_flushes}"
            );
        }
    }
    assert!(failures > 0, "no flush failure reached the grow");
}

/// A writable image of `len` bytes over memory, nothing allocated, with a backing file of
/// `backing_len` bytes of 0xAB when there is one.
fn mem_image(len: u64, backing_len: Option<u64>) -> Image {
    let header = Header::new(b"img", backing_len.map(|_| &b"base"[..])).unwrap();
    let mut meta = header.to_bytes().to_vec();
    meta.resize(meta.len() + len.div_ceil(1 << 16).div_ceil(8) as usize, 0);
    let parts = Parts {
        meta: (Box::new(MemStorage::from_bytes(meta)), "meta".into()),
        image: (
            Box::new(MemStorage::from_bytes(vec![0; len as usize])),
            "image".into(),
        ),
        backing: backing_len.map(|n| {
            addcow::Backing::raw(
                Box::new(MemStorage::from_bytes(vec![0xAB; n as usize])),
                "base",
            )
        }),
    };
    let opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    Image::open_parts(parts, &opts).unwrap()
}

/// Found by fuzz/lifecycle (fuzz/regressions/lifecycle/hydrate-zero-length-at-the-end): a
/// hydrate of zero bytes touches no cluster and copies nothing. It rounded its empty range
/// out to whole clusters, so that `hydrate(offset, 0)` inside a cluster (at the image end, of a
/// partial last cluster) hydrated that cluster.
#[test]
fn hydrating_zero_bytes_copies_nothing() {
    let size = 3 * (1 << 16) + 1000;
    let img = mem_image(size, Some(size));
    for offset in [0, 100, 1 << 16, size - 1, size] {
        assert_eq!(
            img.hydrate(offset, 0, 0).unwrap(),
            0,
            "hydrate({offset}, 0)"
        );
    }
    assert_eq!(img.allocation().unwrap().allocated, 0);
}
