//! The C entry points with hostile arguments.
//!
//! An image is opened with `addcow_open_io` over three host tables whose callbacks are Rust
//! `extern "C"` functions over memory, with fuzzed faults (failing calls with any return value,
//! "successes" that transfer nothing, lying lengths, a missing truncate callback), then driven
//! by a fuzzed call sequence: NULL handles and pointers, iovcnt negative or past ADDCOW_IOV_MAX,
//! iovecs with NULL bases, lengths summing past the end, past SSIZE_MAX or past 2^64, huge
//! offsets, unknown flags; `addcow_probe`, `addcow_header_read_io` and the getters, and
//! `addcow_create` with a fuzzed `AddCowCreateOptions` into a tmpfs directory.
//!
//! The harness never hands the library a buffer shorter than the length it states, unless the
//! arguments alone (counts, sums past SSIZE_MAX or 2^64, the end of the image) oblige the
//! library to refuse the call. Checked after every call: 0 or the documented value, or a
//! negative errno, the errno where the contract fixes it, `addcow_last_error()` non-NULL (and
//! non-empty after a failure). A panic anywhere aborts (libFuzzer's panic hook), even one the
//! boundary would turn into -EIO.
#![no_main]

use addcow::capi::*;
use addcow::layout::Header;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::ffi::{c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

const CS: u64 = 65536;
/// The most a host file may grow to; writes and truncates past it fail with EFBIG.
const HOST_CAP: u64 = 1 << 20;
const SSIZE_MAX: u128 = isize::MAX as u128;
const MAX_CALLS: usize = 32;

// Bugs this target found, all fixed, with their inputs in fuzz/regressions/capi/: lengths past
// SSIZE_MAX or summing past 2^64 made into slices before any check; the bitmap's up-front slot
// per page (a 2^63-byte image or a truncate to 2^64 - 1 aborted); a zero-length read past a
// host's end; a writethrough grow whose final sync failed kept the new size.

// ---------------------------------------------------------------------------------------------
// Host files in memory, with faults.

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Failure {
    /// -errno, errno in 1..=133.
    Errno(u8),
    /// `INT_MIN`.
    IntMin,
    /// Claims success with a positive count but transfers nothing.
    Positive(i32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Length {
    Honest,
    /// -errno.
    Errno(u8),
    Min,
    Max,
    /// 2^36: large (its bitmap has 32 pages), yet quick to scan.
    Large,
    /// The real length plus up to 4 GiB.
    Plus(u32),
    /// The real length minus up to 64 KiB.
    Minus(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct HostPlan {
    /// The callback call (counted over every callback of this host) that fails first.
    fail_at: Option<u8>,
    failure: Failure,
    /// Every call after the first failure fails too.
    sticky: bool,
    length: Length,
    has_truncate: bool,
}

struct HostFile {
    bytes: Vec<u8>,
    plan: HostPlan,
    calls: u32,
    failed: bool,
    /// The host has told no lie yet: the library's view of its length is the truth.
    honest: bool,
}

impl HostPlan {
    const HONEST: HostPlan = HostPlan {
        fail_at: None,
        failure: Failure::Errno(5),
        sticky: false,
        length: Length::Honest,
        has_truncate: true,
    };
}

/// Faults of the three hosts; without them every host is honest and every call must succeed
/// unless its arguments are bad.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Faults {
    meta: HostPlan,
    image: HostPlan,
    backing: HostPlan,
}

impl HostFile {
    fn new(bytes: Vec<u8>, plan: HostPlan) -> Box<HostFile> {
        let honest = matches!(plan.length, Length::Honest);
        Box::new(HostFile {
            bytes,
            plan,
            calls: 0,
            failed: false,
            honest,
        })
    }

    /// The injected result of this call, if it fails.
    fn inject(&mut self) -> Option<c_int> {
        let n = self.calls;
        self.calls += 1;
        let due = self.plan.fail_at.is_some_and(|at| u32::from(at) == n)
            || (self.failed && self.plan.sticky);
        if !due {
            return None;
        }
        self.failed = true;
        Some(match self.plan.failure {
            Failure::Errno(e) => -(c_int::from(e % 133) + 1),
            Failure::IntMin => c_int::MIN,
            Failure::Positive(v) => {
                self.honest = false;
                v.checked_abs().unwrap_or(i32::MAX).max(1)
            }
        })
    }

    fn table(self: &mut Box<HostFile>, callbacks: Callbacks) -> AddCowIo {
        AddCowIo {
            opaque: (&mut **self as *mut HostFile).cast(),
            preadv: callbacks.preadv.then_some(host_preadv as _),
            pwritev: callbacks.pwritev.then_some(host_pwritev as _),
            flush: callbacks.flush.then_some(host_flush as _),
            get_length: callbacks.get_length.then_some(host_get_length as _),
            truncate: self.plan.has_truncate.then_some(host_truncate as _),
        }
    }
}

/// # Safety
/// `opaque` is the `HostFile` of a table made by `HostFile::table`, alive and used by no one
/// else during the call (the harness is single-threaded).
unsafe fn host<'a>(opaque: *mut c_void) -> &'a mut HostFile {
    unsafe { &mut *opaque.cast::<HostFile>() }
}

/// The iovecs the library passes: a valid array of valid buffers.
///
/// # Safety
/// As the callbacks' contract: `iov` points at `iovcnt` entries.
unsafe fn host_iov<'a>(iov: *const libc::iovec, iovcnt: c_int) -> &'a [libc::iovec] {
    assert!(
        iovcnt > 0 && iovcnt <= ADDCOW_IOV_MAX + 2,
        "the library passed iovcnt {iovcnt} to a host callback (AddCowIo: at most \
         ADDCOW_IOV_MAX + 2)"
    );
    assert!(
        !iov.is_null(),
        "the library passed a NULL iov to a host callback"
    );
    let entries = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
    for e in entries {
        assert!(
            !e.iov_base.is_null() || e.iov_len == 0,
            "NULL base passed to the host"
        );
    }
    entries
}

unsafe extern "C" fn host_preadv(
    opaque: *mut c_void,
    offset: u64,
    iov: *const libc::iovec,
    iovcnt: c_int,
) -> c_int {
    let h = unsafe { host(opaque) };
    let entries = unsafe { host_iov(iov, iovcnt) };
    let total: u64 = entries.iter().map(|e| e.iov_len as u64).sum();
    if h.honest {
        assert!(
            offset
                .checked_add(total)
                .is_some_and(|end| end <= h.bytes.len() as u64),
            "the library read {total} bytes at {offset} past the host's end {}",
            h.bytes.len()
        );
    }
    if let Some(r) = h.inject() {
        return r;
    }
    let mut pos = offset;
    for e in entries {
        if e.iov_len == 0 {
            continue;
        }
        let buf = unsafe { std::slice::from_raw_parts_mut(e.iov_base.cast::<u8>(), e.iov_len) };
        // Zeros past the end (only a lying host is asked for those).
        let start = usize::try_from(pos)
            .unwrap_or(usize::MAX)
            .min(h.bytes.len());
        let n = (h.bytes.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&h.bytes[start..start + n]);
        buf[n..].fill(0);
        pos += e.iov_len as u64;
    }
    0
}

unsafe extern "C" fn host_pwritev(
    opaque: *mut c_void,
    offset: u64,
    iov: *const libc::iovec,
    iovcnt: c_int,
) -> c_int {
    let h = unsafe { host(opaque) };
    let entries = unsafe { host_iov(iov, iovcnt) };
    if let Some(r) = h.inject() {
        return r;
    }
    let total: u64 = entries.iter().map(|e| e.iov_len as u64).sum();
    let Some(end) = offset.checked_add(total).filter(|&e| e <= HOST_CAP) else {
        return -libc::EFBIG;
    };
    if end as usize > h.bytes.len() {
        h.bytes.resize(end as usize, 0);
    }
    let mut pos = offset as usize;
    for e in entries {
        if e.iov_len == 0 {
            continue;
        }
        let buf = unsafe { std::slice::from_raw_parts(e.iov_base.cast::<u8>(), e.iov_len) };
        h.bytes[pos..pos + buf.len()].copy_from_slice(buf);
        pos += buf.len();
    }
    0
}

unsafe extern "C" fn host_flush(opaque: *mut c_void) -> c_int {
    unsafe { host(opaque) }.inject().unwrap_or(0)
}

unsafe extern "C" fn host_get_length(opaque: *mut c_void) -> i64 {
    let h = unsafe { host(opaque) };
    let real = h.bytes.len() as i64;
    match h.plan.length {
        Length::Honest => real,
        Length::Errno(e) => -(i64::from(e % 133) + 1),
        Length::Min => i64::MIN,
        Length::Max => i64::MAX,
        Length::Large => 1 << 36,
        Length::Plus(d) => real + i64::from(d),
        Length::Minus(d) => (real - i64::from(d)).max(0),
    }
}

unsafe extern "C" fn host_truncate(opaque: *mut c_void, size: u64) -> c_int {
    let h = unsafe { host(opaque) };
    if let Some(r) = h.inject() {
        return r;
    }
    if size > HOST_CAP {
        return -libc::EFBIG;
    }
    h.bytes.resize(size as usize, 0);
    0
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Callbacks {
    preadv: bool,
    pwritev: bool,
    flush: bool,
    get_length: bool,
}

impl Callbacks {
    const ALL: Callbacks = Callbacks {
        preadv: true,
        pwritev: true,
        flush: true,
        get_length: true,
    };
}

// ---------------------------------------------------------------------------------------------
// Checking one call.

fn last_error() -> String {
    let p = addcow_last_error();
    assert!(!p.is_null(), "addcow_last_error() is NULL");
    // SAFETY: non-NULL, NUL-terminated per the contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Checks the common contract of a call that returned `r`: non-negative or a negative errno
/// with a message.
fn returned(what: &str, r: i64) -> i64 {
    let msg = last_error();
    if r < 0 {
        assert!(!msg.is_empty(), "{what} returned {r} without a message");
        assert!(!msg.contains("panic"), "{what}: {msg}");
    }
    r
}

/// `r` must be `-errno` for one of `errnos`.
fn expect_err(what: &str, r: i64, errnos: &[c_int]) {
    assert!(
        errnos.iter().any(|&e| r == -i64::from(e)),
        "{what} returned {r} ({}), want one of {errnos:?}",
        last_error()
    );
}

// ---------------------------------------------------------------------------------------------
// The fuzzed plan.

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Off {
    Small(u16),
    Near(u8, i16),
    /// Relative to the image's length.
    End(i16),
    Raw(u64),
    Max,
}

impl Off {
    fn at(self, len: u64) -> u64 {
        match self {
            Off::Small(n) => u64::from(n),
            Off::Near(k, d) => (u64::from(k % 8) * CS).saturating_add_signed(i64::from(d)),
            Off::End(d) => len.saturating_add_signed(i64::from(d)),
            Off::Raw(v) => v,
            Off::Max => u64::MAX,
        }
    }
}

/// A length the harness has no buffer for: the library must refuse it from arithmetic alone.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fake {
    SsizeMax,
    SsizeMaxPlus1,
    SizeMax,
    /// 2^40: past the end of any image here, below SSIZE_MAX.
    Tib,
    Raw(u64),
}

impl Fake {
    fn len(self) -> usize {
        match self {
            Fake::SsizeMax => isize::MAX as usize,
            Fake::SsizeMaxPlus1 => isize::MAX as usize + 1,
            Fake::SizeMax => usize::MAX,
            Fake::Tib => 1 << 40,
            Fake::Raw(v) => (v as usize).max(1 << 30),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Entry {
    Buf(u16),
    NullEmpty,
    /// A NULL base with a non-zero length.
    NullLen(u16),
    /// A 1-byte buffer claiming `Fake::len` bytes.
    Fake(Fake),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Count {
    Exact,
    /// `-1 - n`.
    Negative(u16),
    /// ADDCOW_IOV_MAX + 1 (the entries array is not that long: must be refused by count alone).
    PastMax,
    IntMax,
}

#[derive(Arbitrary, Debug, Clone)]
struct IovPlan {
    count: Count,
    null_iov: bool,
    entries: Vec<Entry>,
    /// Appends this many 1-byte entries, to reach ADDCOW_IOV_MAX (1000 + n % 40).
    many: Option<u8>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum BufPlan {
    Buf(u16),
    Null(u16),
    Fake(Fake),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum NullCall {
    GetLength,
    GetClusterSize,
    GetBackingLength,
    Readv,
    Writev,
    Pread,
    Pwrite,
    IsAllocated,
    Truncate,
    Flush,
    Close,
    HeaderGetters,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HeaderPlan {
    Meta,
    NullTable,
    NullOut,
    MissingCallbacks(Callbacks),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    Image,
    Backing,
    BackingAddCow,
    /// The `.add-cow` file itself.
    Meta,
    Empty,
    /// In a directory that does not exist.
    Missing,
    /// A directory.
    Dot,
    /// 1023 bytes: fits the header, too long for the file system.
    Long1023,
    /// 1024 bytes: does not fit the header.
    Long1024,
    Absolute,
}

impl Name {
    fn bytes(self, dir: &Path) -> Vec<u8> {
        match self {
            Name::Image => b"img.raw".to_vec(),
            Name::Backing => b"base.raw".to_vec(),
            Name::BackingAddCow => b"base.add-cow".to_vec(),
            Name::Meta => b"meta.add-cow".to_vec(),
            Name::Empty => Vec::new(),
            Name::Missing => b"no/such/dir/img".to_vec(),
            Name::Dot => b".".to_vec(),
            Name::Long1023 => vec![b'a'; 1023],
            Name::Long1024 => vec![b'a'; 1024],
            Name::Absolute => {
                use std::os::unix::ffi::OsStrExt;
                dir.join("abs.raw").as_os_str().as_bytes().to_vec()
            }
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fmt {
    Null,
    Raw,
    AddCow,
    Empty,
    Bogus,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum CreateSize {
    Zero,
    Small(u32),
    Tib,
    I64Max,
    Max,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum StructSize {
    Exact,
    /// 0..=255.
    Tiny(u8),
    /// sizeof + n, n < 4096, the extra bytes zero or not.
    Larger(u16, bool),
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum CPath {
    Normal,
    Null,
    Empty,
    Dir,
    Missing,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct CreatePlan {
    path: CPath,
    null_opts: bool,
    struct_size: StructSize,
    layout: u32,
    image: Name,
    backing: Option<Name>,
    fmt: Fmt,
    size: CreateSize,
    cluster_size: u32,
    flags: u32,
    /// Length of base.raw, up to 256 KiB.
    base_len: u32,
}

#[derive(Arbitrary, Debug, Clone)]
enum Call {
    Readv {
        offset: Off,
        iov: IovPlan,
    },
    Writev {
        offset: Off,
        iov: IovPlan,
        seed: u8,
    },
    Pread {
        offset: Off,
        buf: BufPlan,
    },
    Pwrite {
        offset: Off,
        buf: BufPlan,
        seed: u8,
    },
    IsAllocated {
        offset: Off,
        bytes: Off,
        null_pnum: bool,
    },
    Truncate {
        size: Off,
    },
    Flush,
    Lengths,
    Null(NullCall),
    Probe {
        buf: BufPlan,
        filename: bool,
    },
    HeaderReadIo(HeaderPlan),
    Create(CreatePlan),
    Reopen {
        flags: u32,
    },
}

#[derive(Arbitrary, Debug, Clone)]
enum MetaBytes {
    /// A valid header, with or without a backing name, then these bitmap bytes (at most 16).
    Valid { backing: bool, bitmap: Vec<u8> },
    /// Arbitrary bytes (at most 4096).
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Table {
    Given(Callbacks),
    Null,
}

impl Table {
    const FULL: Table = Table::Given(Callbacks::ALL);
}

#[derive(Arbitrary, Debug, Clone)]
struct Input {
    meta: MetaBytes,
    faults: Option<Faults>,
    image_size: u32,
    /// The backing file's length, if there is one.
    backing: Option<u32>,
    /// Broken tables (NULL, or with callbacks missing); `None`: all three complete.
    tables: Option<[Table; 3]>,
    flags: u32,
    null_out: bool,
    calls: Vec<Call>,
}

// ---------------------------------------------------------------------------------------------
// Running the plan.

struct Harness {
    meta: Box<HostFile>,
    image: Box<HostFile>,
    backing: Option<Box<HostFile>>,
    img: *mut AddCowImage,
    writable: bool,
    writethrough: bool,
}

/// Flags mostly among the ones `addcow_open_io` takes, sometimes anything.
fn open_flags(raw: u32) -> u32 {
    match raw >> 28 {
        0xf => raw,
        _ => raw & 0b0111,
    }
}

const KNOWN_FLAGS: u32 = ADDCOW_OPEN_RDWR
    | ADDCOW_OPEN_WRITETHROUGH
    | ADDCOW_OPEN_NO_BACKING
    | ADDCOW_OPEN_BACKING_ADDCOW
    | ADDCOW_OPEN_FORCE_SHARE
    | ADDCOW_OPEN_CONFINE
    | ADDCOW_OPEN_DIRECT;

impl Harness {
    fn hosts_honest(&self) -> bool {
        self.meta.honest
            && self.image.honest
            && self.backing.as_ref().is_none_or(|b| b.honest)
            && self.meta.plan.fail_at.is_none()
            && self.image.plan.fail_at.is_none()
            && self
                .backing
                .as_ref()
                .is_none_or(|b| b.plan.fail_at.is_none())
    }

    fn open(&mut self, tables: [Table; 3], flags: u32, null_out: bool) {
        let t = [
            tables[0].given().map(|c| self.meta.table(c)),
            tables[1].given().map(|c| self.image.table(c)),
            match (&mut self.backing, tables[2]) {
                (Some(b), Table::Given(c)) => Some(b.table(c)),
                _ => None,
            },
        ];
        let ptr = |t: &Option<AddCowIo>| t.as_ref().map_or(null(), |t| t as *const AddCowIo);
        let mut out = std::ptr::dangling_mut::<AddCowImage>();
        let out_ptr = if null_out {
            null_mut()
        } else {
            &mut out as *mut _
        };
        // SAFETY: tables are NULL or valid, their opaques alive until close; out is NULL or
        // writable.
        let r = unsafe { addcow_open_io(ptr(&t[0]), ptr(&t[1]), ptr(&t[2]), flags, out_ptr) };
        let r = returned("addcow_open_io", r.into());
        let complete = |t: &Option<AddCowIo>| {
            t.as_ref().is_some_and(|t| {
                t.preadv.is_some()
                    && t.pwritev.is_some()
                    && t.flush.is_some()
                    && t.get_length.is_some()
            })
        };
        let backing_used = t[2].is_some() && flags & ADDCOW_OPEN_NO_BACKING == 0;
        // A host backing is raw, names nothing to confine and takes no O_DIRECT; FORCE_SHARE is
        // for read-only.
        let bad_flags = flags & !KNOWN_FLAGS != 0
            || flags & (ADDCOW_OPEN_BACKING_ADDCOW | ADDCOW_OPEN_CONFINE | ADDCOW_OPEN_DIRECT) != 0
            || flags & (ADDCOW_OPEN_FORCE_SHARE | ADDCOW_OPEN_RDWR)
                == ADDCOW_OPEN_FORCE_SHARE | ADDCOW_OPEN_RDWR;
        if null_out || bad_flags {
            expect_err("addcow_open_io", r, &[libc::EINVAL]);
        }
        if !complete(&t[0]) || !complete(&t[1]) || (backing_used && !complete(&t[2])) {
            assert!(r < 0, "addcow_open_io accepted an incomplete table");
        }
        if !bad_flags && !null_out && complete(&t[0]) && complete(&t[1]) && self.hosts_honest() {
            let header_ok = Header::parse(&self.meta.bytes).is_ok();
            if header_ok && (!backing_used || complete(&t[2])) {
                assert_eq!(r, 0, "addcow_open_io: {}", last_error());
            }
        }
        if r == 0 {
            assert!(
                !out.is_null() && out != std::ptr::dangling_mut(),
                "open_io: no handle"
            );
            self.img = out;
            self.writable = flags & ADDCOW_OPEN_RDWR != 0;
            self.writethrough = flags & ADDCOW_OPEN_WRITETHROUGH != 0;
        } else {
            assert!(r < 0, "open_io returned {r}");
            if !null_out {
                assert!(out.is_null(), "open_io failed without storing NULL");
            }
            self.img = null_mut();
        }
    }

    fn close(&mut self) {
        // SAFETY: a live handle or NULL, not used again.
        let r = unsafe { addcow_close(self.img) };
        returned("addcow_close", r.into());
        if self.img.is_null() {
            assert_eq!(r, 0);
        }
        self.img = null_mut();
    }

    fn length(&self) -> Option<u64> {
        // SAFETY: a live handle or NULL.
        let r = unsafe { addcow_get_length(self.img) };
        returned("addcow_get_length", r);
        if self.img.is_null() {
            expect_err("addcow_get_length", r, &[libc::EINVAL]);
            return None;
        }
        assert!(r >= 0, "addcow_get_length on a live handle: {r}");
        Some(r as u64)
    }
}

impl Table {
    fn given(self) -> Option<Callbacks> {
        match self {
            Table::Given(c) => Some(c),
            Table::Null => None,
        }
    }
}

/// Buffers for an iovec plan, and what the library must do with it.
struct Iov {
    _bufs: Vec<Vec<u8>>,
    /// The array `iov` points into (kept alive for the call).
    _entries: Vec<libc::iovec>,
    iovcnt: c_int,
    iov: *const libc::iovec,
    /// Bad count, NULL iov with a positive count, a NULL base with a length, a sum past
    /// SSIZE_MAX: must be -EINVAL.
    bad_args: bool,
    total: u128,
    has_fake: bool,
}

fn build_iov(plan: &IovPlan, seed: u8) -> Iov {
    let mut entries_plan: Vec<Entry> = plan.entries.iter().take(16).copied().collect();
    if let Some(n) = plan.many {
        entries_plan.extend(std::iter::repeat_n(
            Entry::Buf(1),
            1000 + usize::from(n % 40),
        ));
    }
    let mut bufs = Vec::new();
    let mut entries = Vec::new();
    let (mut total, mut null_len, mut has_fake) = (0u128, false, false);
    for e in &entries_plan {
        let (base, len) = match *e {
            Entry::Buf(n) => {
                let buf: Vec<u8> = (0..n).map(|i| seed ^ i as u8).collect();
                bufs.push(buf);
                let b = bufs.last_mut().unwrap();
                (b.as_mut_ptr().cast::<c_void>(), b.len())
            }
            Entry::NullEmpty => (null_mut(), 0),
            Entry::NullLen(n) => {
                null_len = true;
                (null_mut(), usize::from(n).max(1))
            }
            Entry::Fake(f) => {
                has_fake = true;
                bufs.push(vec![seed]);
                (
                    bufs.last_mut().unwrap().as_mut_ptr().cast::<c_void>(),
                    f.len(),
                )
            }
        };
        total += len as u128;
        entries.push(libc::iovec {
            iov_base: base,
            iov_len: len,
        });
    }
    let n = entries.len();
    let iovcnt = match plan.count {
        Count::Exact => c_int::try_from(n).unwrap(),
        Count::Negative(k) => -1 - c_int::from(k),
        Count::PastMax => ADDCOW_IOV_MAX + 1,
        Count::IntMax => c_int::MAX,
    };
    // A count past the array is only ever refused (it is past ADDCOW_IOV_MAX); otherwise exact.
    let count_ok = matches!(plan.count, Count::Exact) && n <= ADDCOW_IOV_MAX as usize;
    let iov = if plan.null_iov {
        null()
    } else {
        entries.as_ptr()
    };
    let bad_args = !count_ok
        || (plan.null_iov && iovcnt > 0)
        || (iovcnt > 0 && !plan.null_iov && (null_len || total > SSIZE_MAX));
    Iov {
        _bufs: bufs,
        _entries: entries,
        iovcnt,
        iov,
        bad_args,
        total,
        has_fake,
    }
}

/// `len` bytes of a fixed pattern, a window chosen by `seed`. Computed once: byte loops in a
/// fuzz target are instrumented and slow, slice copies are not.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    const MAX: usize = 6 * CS as usize;
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let all = BYTES.get_or_init(|| {
        (0..MAX + 256)
            .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
            .collect()
    });
    let start = usize::from(seed);
    all[start..start + len].to_vec()
}

impl Harness {
    fn readv_writev(&mut self, write: bool, offset: Off, plan: &IovPlan, seed: u8) {
        let what = if write {
            "addcow_writev"
        } else {
            "addcow_readv"
        };
        let len = self.length();
        let iov = build_iov(plan, seed);
        let offset = offset.at(len.unwrap_or(0));
        let past_end = len.is_none_or(|len| u128::from(offset) + iov.total > u128::from(len));
        // Fake lengths only where the arguments alone oblige a refusal.
        if iov.has_fake && !iov.bad_args && !past_end && !self.img.is_null() {
            return;
        }
        // SAFETY: a live handle or NULL; every buffer is real unless the call must be refused.
        let r = unsafe {
            match write {
                true => addcow_writev(self.img, offset, iov.iov, iov.iovcnt),
                false => addcow_readv(self.img, offset, iov.iov, iov.iovcnt),
            }
        };
        let r = returned(what, r.into());
        let ro = write && !self.writable;
        if self.img.is_null() || iov.bad_args || past_end {
            let errnos: &[c_int] = if ro {
                &[libc::EINVAL, libc::EPERM]
            } else {
                &[libc::EINVAL]
            };
            expect_err(what, r, errnos);
        } else if ro {
            expect_err(what, r, &[libc::EPERM]);
        } else if self.hosts_honest() {
            assert_eq!(
                r,
                0,
                "{what} at {offset}, {} bytes: {}",
                iov.total,
                last_error()
            );
        } else {
            assert!(r <= 0, "{what} returned {r}");
        }
    }

    fn pread_pwrite(&mut self, write: bool, offset: Off, plan: BufPlan, seed: u8) {
        let what = if write {
            "addcow_pwrite"
        } else {
            "addcow_pread"
        };
        let len = self.length();
        let offset = offset.at(len.unwrap_or(0));
        let (mut buf, ptr, n, null_len, fake) = match plan {
            BufPlan::Buf(n) => {
                let mut b = pattern(seed, n.into());
                let p = b.as_mut_ptr().cast::<c_void>();
                (b, p, usize::from(n), false, false)
            }
            BufPlan::Null(n) => (Vec::new(), null_mut(), usize::from(n), n > 0, false),
            BufPlan::Fake(f) => {
                let mut b = vec![seed];
                let p = b.as_mut_ptr().cast::<c_void>();
                (b, p, f.len(), false, true)
            }
        };
        let too_long = n as u128 > SSIZE_MAX;
        let past_end = len.is_none_or(|len| u128::from(offset) + n as u128 > u128::from(len));
        if fake && !too_long && !past_end && !self.img.is_null() {
            return;
        }
        // SAFETY: a live handle or NULL; the buffer is real unless the call must be refused.
        let r = unsafe {
            match write {
                true => addcow_pwrite(self.img, offset, ptr, n),
                false => addcow_pread(self.img, offset, ptr, n),
            }
        };
        let r = returned(what, r.into());
        let ro = write && !self.writable;
        if self.img.is_null() || null_len || too_long || past_end {
            let errnos: &[c_int] = if ro {
                &[libc::EINVAL, libc::EPERM]
            } else {
                &[libc::EINVAL]
            };
            expect_err(what, r, errnos);
            return;
        }
        if ro {
            expect_err(what, r, &[libc::EPERM]);
            return;
        }
        if !self.hosts_honest() {
            assert!(r <= 0, "{what} returned {r}");
            return;
        }
        assert_eq!(r, 0, "{what} at {offset}, {n} bytes: {}", last_error());
        if write && n > 0 {
            // What was written reads back.
            let mut back = vec![!seed; n];
            // SAFETY: a live handle; `back` holds `n` bytes.
            let r = unsafe { addcow_pread(self.img, offset, back.as_mut_ptr().cast(), n) };
            returned("addcow_pread", r.into());
            assert_eq!(r, 0, "read back: {}", last_error());
            buf.truncate(n);
            assert!(
                back == buf,
                "pwrite at {offset}, {n} bytes: reads back differently"
            );
        }
    }

    fn is_allocated(&mut self, offset: Off, bytes: Off, null_pnum: bool) {
        let len = self.length();
        let offset = offset.at(len.unwrap_or(0));
        let bytes = bytes.at(len.unwrap_or(0));
        let mut pnum = u64::MAX;
        let p = if null_pnum {
            null_mut()
        } else {
            &mut pnum as *mut u64
        };
        // SAFETY: a live handle or NULL; pnum NULL or writable.
        let r = unsafe { addcow_is_allocated(self.img, offset, bytes, p) };
        let r = returned("addcow_is_allocated", r.into());
        let Some(len) = len.filter(|_| !null_pnum) else {
            expect_err("addcow_is_allocated", r, &[libc::EINVAL]);
            return;
        };
        if r < 0 {
            assert!(
                !self.hosts_honest(),
                "addcow_is_allocated failed: {}",
                last_error()
            );
            return;
        }
        assert!(r == 0 || r == 1, "addcow_is_allocated returned {r}");
        if offset >= len || bytes == 0 {
            assert_eq!(
                (r, pnum),
                (0, 0),
                "is_allocated({offset}, {bytes}) at the end"
            );
        } else {
            assert!(
                pnum > 0 && pnum <= bytes && pnum <= len - offset,
                "is_allocated({offset}, {bytes}) of {len}: pnum {pnum}"
            );
        }
    }

    fn truncate(&mut self, size: Off) {
        let len = self.length();
        let size = size.at(len.unwrap_or(0));
        // SAFETY: a live handle or NULL.
        let r = unsafe { addcow_truncate(self.img, size) };
        let r = returned("addcow_truncate", r.into());
        if self.img.is_null() {
            expect_err("addcow_truncate", r, &[libc::EINVAL]);
        } else if !self.writable {
            expect_err("addcow_truncate", r, &[libc::EPERM]);
        } else if r == 0 {
            assert_eq!(self.length(), Some(size), "length after truncate");
        } else if len.is_some_and(|len| size < len) {
            // A failed shrink may have cut the image file: then it has its new size.
            let now = self.length();
            assert!(
                now == len || now == Some(size),
                "a failed truncate: length {now:?}"
            );
        } else {
            assert_eq!(self.length(), len, "a failed grow changed the length");
        }
    }

    fn lengths(&mut self) {
        let len = self.length();
        // SAFETY: a live handle or NULL.
        let (cs, bl) = unsafe {
            (
                addcow_get_cluster_size(self.img),
                addcow_get_backing_length(self.img),
            )
        };
        returned("lengths", cs);
        returned("lengths", bl);
        match len {
            None => {
                expect_err("addcow_get_cluster_size", cs, &[libc::EINVAL]);
                expect_err("addcow_get_backing_length", bl, &[libc::EINVAL]);
            }
            Some(_) => {
                // The header's cluster size: 64 KiB for the layout-1 headers this harness
                // writes, whatever a fuzzed layout-2 header says.
                let want = Header::parse(&self.meta.bytes).map_or(CS, |h| 1 << h.cluster_bits());
                assert_eq!(cs, want as i64);
                assert!(bl >= 0 || !self.hosts_honest(), "backing length {bl}");
            }
        }
    }

    fn flush(&mut self) {
        // SAFETY: a live handle or NULL.
        let r = unsafe { addcow_flush(self.img) };
        let r = returned("addcow_flush", r.into());
        if self.img.is_null() {
            expect_err("addcow_flush", r, &[libc::EINVAL]);
        } else if self.hosts_honest() {
            assert_eq!(r, 0, "flush: {}", last_error());
        }
    }
}

fn null_call(c: NullCall) {
    let img = null_mut();
    let mut byte = 0u8;
    let mut pnum = 0u64;
    let iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // SAFETY: NULL handles; every other pointer is valid.
    let r: i64 = unsafe {
        match c {
            NullCall::GetLength => addcow_get_length(img),
            NullCall::GetClusterSize => addcow_get_cluster_size(img),
            NullCall::GetBackingLength => addcow_get_backing_length(img),
            NullCall::Readv => addcow_readv(img, 0, &iov, 1).into(),
            NullCall::Writev => addcow_writev(img, 0, &iov, 1).into(),
            NullCall::Pread => addcow_pread(img, 0, (&mut byte as *mut u8).cast(), 1).into(),
            NullCall::Pwrite => addcow_pwrite(img, 0, (&byte as *const u8).cast(), 1).into(),
            NullCall::IsAllocated => addcow_is_allocated(img, 0, 1, &mut pnum).into(),
            NullCall::Truncate => addcow_truncate(img, 0).into(),
            NullCall::Flush => addcow_flush(img).into(),
            NullCall::Close => {
                assert_eq!(addcow_close(img), 0);
                return;
            }
            NullCall::HeaderGetters => {
                assert_eq!(addcow_header_layout(null()), 0);
                assert_eq!(addcow_header_cluster_size(null()), 0);
                assert!(addcow_header_image_file(null()).is_null());
                assert!(addcow_header_backing_file(null()).is_null());
                addcow_header_free(null_mut());
                return;
            }
        }
    };
    returned("a call on a NULL handle", r);
    expect_err(&format!("{c:?} on a NULL handle"), r, &[libc::EINVAL]);
}

fn probe(plan: BufPlan, filename: bool) {
    let data = b"ADD_COW\xff\0\0\0\x01 and then some";
    let name = c"disk.add-cow";
    let fname = if filename { name.as_ptr() } else { null() };
    let (ptr, len, real) = match plan {
        BufPlan::Buf(n) => {
            let n = usize::from(n) % (data.len() + 1);
            (data.as_ptr(), n, true)
        }
        BufPlan::Null(n) => (null(), usize::from(n), false),
        BufPlan::Fake(f) if f.len() as u128 > SSIZE_MAX => (data.as_ptr(), f.len(), false),
        BufPlan::Fake(_) => return,
    };
    // SAFETY: `len` readable bytes, or NULL, or a length no buffer can have.
    let r = returned(
        "addcow_probe",
        unsafe { addcow_probe(ptr, len, fname) }.into(),
    );
    match (real, len) {
        (true, n) => assert_eq!(r, if n >= 12 { 100 } else { 0 }, "probe of {n} bytes"),
        (false, 0) => assert_eq!(r, 0, "probe of NULL, 0"),
        (false, _) => expect_err("addcow_probe", r, &[libc::EINVAL]),
    }
}

impl Harness {
    fn header_read_io(&mut self, plan: HeaderPlan, meta: &MetaBytes) {
        let mut out = std::ptr::dangling_mut::<AddCowHeader>();
        let table = match plan {
            HeaderPlan::Meta | HeaderPlan::NullOut => Some(self.meta.table(Callbacks::ALL)),
            HeaderPlan::NullTable => None,
            HeaderPlan::MissingCallbacks(c) => Some(self.meta.table(c)),
        };
        let tp = table.as_ref().map_or(null(), |t| t as *const AddCowIo);
        let op = if matches!(plan, HeaderPlan::NullOut) {
            null_mut()
        } else {
            &mut out as *mut _
        };
        // SAFETY: the table is NULL or valid; out is NULL or writable.
        let r = unsafe { addcow_header_read_io(tp, op) };
        let r = returned("addcow_header_read_io", r.into());
        let missing = match plan {
            HeaderPlan::MissingCallbacks(c) => !(c.preadv && c.get_length),
            _ => false,
        };
        if matches!(plan, HeaderPlan::NullOut | HeaderPlan::NullTable) || missing {
            expect_err("addcow_header_read_io", r, &[libc::EINVAL]);
        }
        if matches!(plan, HeaderPlan::NullOut) {
            return;
        }
        if r != 0 {
            assert!(out.is_null(), "header_read_io failed without storing NULL");
            return;
        }
        // SAFETY: a live header until freed below.
        unsafe {
            let (layout, cs) = (addcow_header_layout(out), addcow_header_cluster_size(out));
            match layout {
                1 => assert_eq!(cs, CS as u32),
                2 => assert!(cs.is_power_of_two() && (4096..=2 << 20).contains(&cs)),
                _ => panic!("addcow_header_layout {layout}"),
            }
            let image = CStr::from_ptr(addcow_header_image_file(out))
                .to_bytes()
                .to_vec();
            let backing = addcow_header_backing_file(out);
            let backing = (!backing.is_null()).then(|| CStr::from_ptr(backing).to_bytes().to_vec());
            if let (MetaBytes::Valid { .. }, true) = (meta, self.meta.honest) {
                let h = Header::parse(&self.meta.bytes).expect("a header the library parsed");
                assert_eq!(image, h.image_file);
                assert_eq!(backing, h.backing_file);
                assert_eq!((layout, cs), (h.layout_number(), 1 << h.cluster_bits()));
            }
            addcow_header_free(out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// addcow_create into a tmpfs directory.

/// This process's private tree (on tmpfs when there is one: `addcow_create` syncs): names
/// resolve in `root/d`, and a `.add-cow` path that is a directory or empty resolves them in
/// `root` or the working directory, which is `root` too; nothing lands outside `root`.
fn root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_stale(&base);
        let dir = base.join(format!("addcow-fuzz-capi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("work directory");
        std::env::set_current_dir(&dir).expect("cd to the work directory");
        extern "C" fn remove_root() {
            let _ = std::fs::remove_dir_all(root());
        }
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_root) };
        dir
    })
}

/// Removes the trees of earlier runs that ended without running `atexit` (a crash).
fn remove_stale(base: &Path) {
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("addcow-fuzz-capi-"));
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// An empty `root/d`.
fn work_dir() -> PathBuf {
    let root = root();
    let _ = std::fs::remove_dir_all(root);
    let dir = root.join("d");
    std::fs::create_dir_all(&dir).expect("work directory");
    std::env::set_current_dir(root).expect("cd to the work directory");
    dir
}

fn cstring(b: Vec<u8>) -> CString {
    CString::new(b).expect("no NUL in names")
}

fn create(plan: &CreatePlan) {
    let dir = &work_dir();
    let base_len = plan.base_len % (256 << 10);
    std::fs::write(dir.join("base.raw"), pattern(7, base_len as usize)).unwrap();
    let sub = Header::new(b"base.raw", None).unwrap().to_bytes();
    let mut base_meta = sub.to_vec();
    base_meta.resize(
        sub.len() + (base_len as u64).div_ceil(CS).div_ceil(8) as usize,
        0,
    );
    std::fs::write(dir.join("base.add-cow"), base_meta).unwrap();

    use std::os::unix::ffi::OsStrExt;
    let meta_path = dir.join("meta.add-cow");
    let path = match plan.path {
        CPath::Normal => Some(cstring(meta_path.as_os_str().as_bytes().to_vec())),
        CPath::Null => None,
        CPath::Empty => Some(cstring(Vec::new())),
        CPath::Dir => Some(cstring(dir.as_os_str().as_bytes().to_vec())),
        CPath::Missing => Some(cstring(
            dir.join("no/such/x.add-cow")
                .as_os_str()
                .as_bytes()
                .to_vec(),
        )),
    };
    let image = cstring(plan.image.bytes(dir));
    let backing = plan.backing.map(|b| cstring(b.bytes(dir)));
    let fmt = match plan.fmt {
        Fmt::Null => None,
        Fmt::Raw => Some(c"raw".to_owned()),
        Fmt::AddCow => Some(c"add-cow".to_owned()),
        Fmt::Empty => Some(c"".to_owned()),
        Fmt::Bogus => Some(c"qcow2".to_owned()),
    };
    let size = match plan.size {
        CreateSize::Zero => 0,
        CreateSize::Small(n) => u64::from(n % (1 << 20)),
        CreateSize::Tib => 1 << 40,
        CreateSize::I64Max => i64::MAX as u64,
        CreateSize::Max => u64::MAX,
    };
    let ours = std::mem::size_of::<AddCowCreateOptions>();
    let (struct_size, extra_nonzero) = match plan.struct_size {
        StructSize::Exact => (ours, false),
        StructSize::Tiny(n) => (usize::from(n), false),
        StructSize::Larger(n, nz) => (ours + usize::from(n % 4096), nz && n % 4096 > 0),
    };
    let opts = AddCowCreateOptions {
        struct_size: struct_size as u32,
        layout: plan.layout % 4,
        image_file: image.as_ptr(),
        backing_file: backing.as_ref().map_or(null(), |b| b.as_ptr()),
        backing_fmt: fmt.as_ref().map_or(null(), |f| f.as_ptr()),
        size,
        cluster_size: if plan.cluster_size >> 20 == 0 {
            65536
        } else {
            plan.cluster_size
        },
        flags: if plan.flags >> 28 == 0 { 0 } else { plan.flags },
    };
    // The caller's memory: `struct_size` bytes (at least the struct), then extra bytes.
    let mut mem = vec![0u8; struct_size.max(ours)];
    // SAFETY: `mem` holds at least `ours` bytes; plain data copied byte for byte.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&opts as *const AddCowCreateOptions).cast::<u8>(),
            mem.as_mut_ptr(),
            ours,
        )
    };
    if extra_nonzero {
        *mem.last_mut().unwrap() = 1;
    }
    // What the library sees: the first `struct_size` bytes, zeros after.
    let mut seen = opts;
    // SAFETY: plain data; copies min(struct_size, ours) bytes over a zeroed struct.
    unsafe {
        std::ptr::write_bytes(
            (&mut seen as *mut AddCowCreateOptions).cast::<u8>(),
            0,
            ours,
        );
        std::ptr::copy_nonoverlapping(
            mem.as_ptr(),
            (&mut seen as *mut AddCowCreateOptions).cast::<u8>(),
            struct_size.min(ours),
        );
    }
    let opts_ptr = if plan.null_opts {
        null()
    } else {
        mem.as_ptr().cast::<AddCowCreateOptions>()
    };
    let path_ptr = path.as_ref().map_or(null(), |p| p.as_ptr());
    // SAFETY: path NULL or NUL-terminated; opts NULL or `struct_size` readable bytes whose
    // string fields (as the library sees them) are NULL or NUL-terminated.
    let r = unsafe { addcow_create(path_ptr, opts_ptr) };
    let r = returned("addcow_create", r.into());

    let min_size = std::mem::offset_of!(AddCowCreateOptions, size) + 8;
    let mut errnos = Vec::new();
    if path.is_none() || plan.null_opts || struct_size < min_size {
        errnos.push(libc::EINVAL);
    }
    if !plan.null_opts && struct_size >= min_size {
        if extra_nonzero || seen.layout > 2 {
            errnos.push(libc::ENOTSUP);
        }
        let cs = seen.cluster_size;
        let cluster_ok = match seen.layout {
            2 => cs == 0 || (cs.is_power_of_two() && (4096..=2 << 20).contains(&cs)),
            _ => cs == 0 || cs == 65536,
        };
        if !cluster_ok || seen.flags & !ADDCOW_CREATE_CONFINE != 0 {
            errnos.push(libc::EINVAL);
        }
        // Layout 2 refuses one name for both files before looking at any file.
        if seen.layout == 2
            && plan
                .backing
                .is_some_and(|b| b.bytes(dir) == plan.image.bytes(dir))
            && !matches!(plan.image, Name::Empty)
        {
            errnos.push(libc::EINVAL);
        }
        if seen.image_file.is_null() || matches!(plan.fmt, Fmt::Bogus) {
            errnos.push(libc::EINVAL);
        }
        let normal = plan.path == CPath::Normal;
        // 1024-byte names do not fit layout 1's fields; layout 2's name area takes both.
        let long = seen.layout != 2
            && (matches!(plan.image, Name::Long1024)
                || matches!(plan.backing, Some(Name::Long1024)));
        if matches!(plan.image, Name::Empty) || long || (normal && matches!(plan.image, Name::Meta))
        {
            errnos.push(libc::EINVAL);
        }
        if size > ADDCOW_MAX_SIZE {
            errnos.push(libc::EFBIG);
        }
    }
    if !errnos.is_empty() {
        expect_err("addcow_create", r, &errnos);
        return;
    }
    assert!(r <= 0, "addcow_create returned {r}");
    if r < 0 || plan.path != CPath::Normal {
        return;
    }
    let add_cow = matches!(plan.fmt, Fmt::AddCow);
    let opens = match plan.backing {
        None | Some(Name::Empty) => true,
        Some(Name::Backing) => !add_cow,
        Some(Name::BackingAddCow) => true,
        Some(_) => false,
    };
    // Created: the header names what was asked, and the image opens.
    let mut h: *mut AddCowHeader = null_mut();
    // SAFETY: path is NUL-terminated; h writable.
    let r = unsafe { addcow_header_read(path_ptr, &mut h) };
    returned("addcow_header_read", r.into());
    assert_eq!(r, 0, "header_read after create: {}", last_error());
    // SAFETY: a live header, freed once.
    unsafe {
        assert_eq!(addcow_header_layout(h), seen.layout.max(1));
        let want_cs = match seen.cluster_size {
            0 => 65536,
            cs => cs,
        };
        assert_eq!(addcow_header_cluster_size(h), want_cs);
        assert_eq!(
            CStr::from_ptr(addcow_header_image_file(h)),
            image.as_c_str()
        );
        let b = addcow_header_backing_file(h);
        let want = backing.as_ref().filter(|b| !b.is_empty());
        assert_eq!(
            (!b.is_null()).then(|| CStr::from_ptr(b)),
            want.map(|b| b.as_c_str())
        );
        addcow_header_free(h);
    }
    if !opens {
        return;
    }
    let mut img: *mut AddCowImage = null_mut();
    let flags = ADDCOW_OPEN_RDWR
        | match plan.fmt {
            Fmt::AddCow => ADDCOW_OPEN_BACKING_ADDCOW,
            _ => 0,
        };
    // SAFETY: path NUL-terminated; img writable; closed below.
    let r = unsafe { addcow_open(path_ptr, flags, &mut img) };
    returned("addcow_open", r.into());
    assert_eq!(r, 0, "open after create: {}", last_error());
    // SAFETY: a live handle, closed once.
    unsafe {
        let len = addcow_get_length(img);
        if size > 0 {
            assert_eq!(len, size as i64, "created size");
        }
        assert_eq!(addcow_close(img), 0, "close: {}", last_error());
    }
}

// ---------------------------------------------------------------------------------------------

fn meta_bytes(meta: &MetaBytes) -> Vec<u8> {
    match meta {
        MetaBytes::Valid { backing, bitmap } => {
            let h = Header::new(b"img.raw", backing.then_some(&b"base.raw"[..])).unwrap();
            let mut v = h.to_bytes().to_vec();
            v.extend_from_slice(&bitmap[..bitmap.len().min(16)]);
            v
        }
        MetaBytes::Raw(b) => b[..b.len().min(4096)].to_vec(),
    }
}

fn run(input: &Input) {
    let image_len = (input.image_size % (5 * CS as u32)) as usize;
    let f = input.faults.unwrap_or(Faults {
        meta: HostPlan::HONEST,
        image: HostPlan::HONEST,
        backing: HostPlan::HONEST,
    });
    let mut h = Harness {
        meta: HostFile::new(meta_bytes(&input.meta), f.meta),
        image: HostFile::new(pattern(3, image_len), f.image),
        backing: input
            .backing
            .map(|len| HostFile::new(pattern(9, (len % (6 * CS as u32)) as usize), f.backing)),
        img: null_mut(),
        writable: false,
        writethrough: false,
    };
    let tables = input.tables.unwrap_or([Table::FULL; 3]);
    h.open(tables, open_flags(input.flags), input.null_out);
    for call in input.calls.iter().take(MAX_CALLS) {
        match call {
            Call::Readv { offset, iov } => h.readv_writev(false, *offset, iov, 0),
            Call::Writev { offset, iov, seed } => h.readv_writev(true, *offset, iov, *seed),
            Call::Pread { offset, buf } => h.pread_pwrite(false, *offset, *buf, 0),
            Call::Pwrite { offset, buf, seed } => h.pread_pwrite(true, *offset, *buf, *seed),
            Call::IsAllocated {
                offset,
                bytes,
                null_pnum,
            } => h.is_allocated(*offset, *bytes, *null_pnum),
            Call::Truncate { size } => h.truncate(*size),
            Call::Flush => h.flush(),
            Call::Lengths => h.lengths(),
            Call::Null(c) => null_call(*c),
            Call::Probe { buf, filename } => probe(*buf, *filename),
            Call::HeaderReadIo(p) => h.header_read_io(*p, &input.meta),
            Call::Create(p) => create(p),
            Call::Reopen { flags } => {
                h.close();
                h.open([Table::FULL; 3], open_flags(*flags), false);
            }
        }
    }
    h.close();
}

fuzz_target!(|input: Input| run(&input));
