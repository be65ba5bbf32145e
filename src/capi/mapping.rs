//! The mapping core from C (`addcow_core_*`): the format logic without data I/O, for a block
//! layer that reads and writes the image and backing files itself, from its own event loop.
//! The contract (concurrency, "busy", the durability order) is on [`AddCowCore`], where the
//! header shows it; `docs/mapping-core.md` explains the core.
//!
//! Handles: [`AddCowCore`] owns a [`Core`]; [`AddCowTxn`] and [`AddCowWriteBack`] own a
//! transaction or a write-back of one core, remember which, and are counted by it, so that a
//! handle ended on the wrong core is refused and a core is not freed under an open handle.

use super::boundary::{bad_arg, ffi};
use super::host::{AddCowIo, HostStorage, Needs, META};
use super::open::{
    AddCowOpenOptions, ADDCOW_OPEN_BACKING_ADDCOW, ADDCOW_OPEN_CONFINE, ADDCOW_OPEN_FORCE_SHARE,
    ADDCOW_OPEN_NO_BACKING, ADDCOW_OPEN_RDWR, ADDCOW_OPEN_WRITETHROUGH,
};
use super::versioned::{self, Versioned};
use super::ADDCOW_MAX_SIZE;
use crate::error::{Error, Result};
use crate::mapping::read_header;
use crate::mapping::{Begin, Core, CoreOptions, Kind, Step, Txn, WriteBack};
use std::ffi::c_int;
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `addcow_core_map`: the run is allocated: read the image file at the same offset.
pub const ADDCOW_MAP_DATA: c_int = 1;
/// `addcow_core_map`: the run is unallocated, inside the backing data: read the backing file at
/// the same offset.
pub const ADDCOW_MAP_BACKING: c_int = 2;
/// `addcow_core_map`: the run is unallocated, past the backing data's end (or there is no
/// backing file): it reads as zeros.
pub const ADDCOW_MAP_ZERO: c_int = 3;

/// `AddCowWriteStep.kind`: the first `len` bytes hit allocated clusters: write them to the
/// image file at the same offset.
pub const ADDCOW_STEP_IN_PLACE: u32 = 1;
/// `AddCowWriteStep.kind`: the first `len` bytes hit unallocated clusters, now claimed by
/// `txn`: write `cluster_start..cluster_end` of the image file, then commit.
pub const ADDCOW_STEP_ALLOCATE: u32 = 2;
/// `AddCowWriteStep.kind`: another transaction holds one of the clusters: retry once
/// `addcow_core_generation` differs from `generation`.
pub const ADDCOW_STEP_BUSY: u32 = 3;

/// `addcow_core_writeback_begin`: another write-back is open: retry once
/// `addcow_core_generation` differs from `*generation`.
pub const ADDCOW_BUSY: c_int = 1;

/// The mapping core of one image, for a host that does the data I/O itself (a QEMU block
/// driver, an SPDK bdev, an io_uring server): it says where guest bytes live and hands out
/// allocation transactions; the host reads and writes the image file and the backing file, and
/// flushes them and the `.add-cow` file. Opaque: `addcow_core_open`, `addcow_core_close`.
/// `examples/core-host.c` is a host: a single-threaded event loop with many requests in flight.
///
/// The contract:
/// - **Concurrency**: every `addcow_core_*` and `addcow_writeback_*` call may run concurrently
///   with every other on one core, from any thread or coroutine, except `addcow_core_close`
///   (nothing else on the core during or after it). None blocks waiting for another request:
///   where it would have to, it answers "busy".
/// - **I/O**: the only I/O is through the `meta` callbacks (bitmap pages read on first touch by
///   map, begin_write and commit; written by `addcow_core_writeback_write`). No library lock is
///   held across a callback, so a callback may yield (a coroutine switching to others that use
///   the same core) and may call into the core itself. Each callback completes before the call
///   that made it returns: a host without coroutines serves them synchronously.
/// - **Busy**: `ADDCOW_STEP_BUSY` (another transaction holds one of the clusters) and
///   `ADDCOW_BUSY` (another write-back is open) come with a generation: retry once
///   `addcow_core_generation` differs from it. The generation moves at every commit, abort and
///   write-back end, so a host that makes those calls itself knows when to wake its waiters
///   (QEMU: restart a CoQueue) and never polls.
/// - **Handles**: an `AddCowTxn` or `AddCowWriteBack` is used by one caller at a time (any
///   thread) and ended exactly once, on the core that made it (commit or abort;
///   writeback_end). Until then a transaction keeps its clusters claimed (writes to them are
///   busy) and a write-back keeps every other write-back busy.
/// - **Reads**: per `addcow_core_map` run: DATA from the image file, BACKING from the backing
///   file (both at the same offset), ZERO as zeros.
/// - **Writes**, per `addcow_core_begin_write` step: IN_PLACE: write the image file at the same
///   offset (writethrough: then flush it). ALLOCATE: write the image file from `cluster_start`
///   to `cluster_end` (the head from the backing file and zeros, the guest data, the tail from
///   the backing file and zeros; in one write or several, all completed) → [writethrough: flush
///   the image file] → `addcow_core_commit` (if anything failed: `addcow_core_abort`) →
///   [writethrough: the flush sequence] → complete the guest request. A bit is set only after
///   its cluster was written.
/// - **Flush** (a guest flush, and before close): `addcow_core_writeback_begin` → flush the
///   image file → `addcow_core_writeback_write` → flush the `.add-cow` file →
///   `addcow_core_writeback_end` with `durable` = all of it succeeded. The image data is
///   durable before any bit that points at it; pages not durable are written again next time.
///   `addcow_core_writeback_write` only writes (QEMU's "flush to OS"); the host's flush of
///   the `.add-cow` file is the "flush to disk", so the host's block layer sees it, and an
///   error injected there (QEMU's blkdebug `flush_to_disk`) ends the write-back with
///   `durable` = 0: the pages stay dirty and the flush fails. QEMU: `bdrv_co_flush_to_os` runs
///   the whole sequence, flushing the data child and `bs->file` with `bdrv_co_flush` (the
///   generic flush of `bs->file` after it then has nothing left to do); layout 2 adds
///   `addcow_core_set_all_allocated` at its end.
/// - **Size**: the size given at open, for the core's life. To resize, close the core, resize
///   with `addcow_open_io` and `addcow_truncate`, and open a new core.
pub struct AddCowCore {
    pub(super) core: Core,
    /// Transactions and write-backs handed out and not ended yet.
    open_handles: AtomicUsize,
}

/// An allocation in flight: clusters claimed by one `addcow_core_begin_write` step. Opaque:
/// end it with `addcow_core_commit` or `addcow_core_abort` on the core that made it.
pub struct AddCowTxn {
    txn: Txn,
    owner: *const AddCowCore,
}

/// Copies of the dirty bitmap pages, from `addcow_core_writeback_begin`. Opaque: write them
/// with `addcow_core_writeback_write`, end it with `addcow_core_writeback_end`.
pub struct AddCowWriteBack {
    wb: WriteBack,
    owner: *const AddCowCore,
}

/// The next step of a write, from `addcow_core_begin_write`. Set `struct_size` to
/// `sizeof(AddCowWriteStep)` as compiled by the caller: the library fills the fields that size
/// holds (and zeros the bytes of a newer, larger struct past its own). Fields that do not apply
/// to `kind` are 0 (`txn` NULL). For `ADDCOW_STEP_ALLOCATE`, with `offset` the write's: the
/// head `cluster_start..offset` is `head_backing` bytes read from the backing file at
/// `cluster_start`, then `head_zero` zeros; the guest's `len` bytes follow; the tail
/// `offset + len..cluster_end` is `tail_backing` bytes read from the backing file at
/// `offset + len`, then `tail_zero` zeros. Empty parts are 0: read nothing for them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AddCowWriteStep {
    /// sizeof(AddCowWriteStep) as the caller compiled it.
    pub struct_size: u32,
    /// `ADDCOW_STEP_IN_PLACE`, `ADDCOW_STEP_ALLOCATE` or `ADDCOW_STEP_BUSY`.
    pub kind: u32,
    /// In place and allocate: how many bytes from `offset` this step covers (at least 1; the
    /// rest of the write is the next step's).
    pub len: u64,
    /// Busy: the generation to wait past.
    pub generation: u64,
    /// Allocate: the first byte of the image file to write (a cluster start).
    pub cluster_start: u64,
    /// Allocate: the end of that range (a cluster end, or the image end).
    pub cluster_end: u64,
    /// Allocate: bytes of the head read from the backing file.
    pub head_backing: u64,
    /// Allocate: zeros after them, up to `offset`.
    pub head_zero: u64,
    /// Allocate: bytes of the tail read from the backing file.
    pub tail_backing: u64,
    /// Allocate: zeros after them, up to `cluster_end`.
    pub tail_zero: u64,
    /// Allocate: the transaction; commit or abort it.
    pub txn: *mut AddCowTxn,
}

// SAFETY: repr(C), starts with struct_size, integers and a nullable pointer only.
unsafe impl Versioned for AddCowWriteStep {
    const NAME: &'static str = "AddCowWriteStep";
    // Every field of the first version: a step is useless without any of them.
    const MIN_SIZE: usize = size_of::<AddCowWriteStep>();
}

/// A handle a core hands out and takes back.
trait Handle {
    const NAME: &'static str;
    fn owner(&self) -> *const AddCowCore;
}

impl Handle for AddCowTxn {
    const NAME: &'static str = "txn";
    fn owner(&self) -> *const AddCowCore {
        self.owner
    }
}

impl Handle for AddCowWriteBack {
    const NAME: &'static str = "wb";
    fn owner(&self) -> *const AddCowCore {
        self.owner
    }
}

impl AddCowCore {
    fn hand_out<H>(&self, handle: H) -> *mut H {
        self.open_handles.fetch_add(1, Ordering::AcqRel);
        Box::into_raw(Box::new(handle))
    }

    /// The handle at `p`, still owned by C, after checking that it is this core's.
    ///
    /// # Safety
    /// `p` is NULL or a live handle.
    unsafe fn borrow<'a, H: Handle>(&self, p: *const H) -> Result<&'a H> {
        // SAFETY: the caller's guarantee; NULL is refused.
        let handle =
            unsafe { p.as_ref() }.ok_or_else(|| bad_arg(&format!("{} is NULL", H::NAME)))?;
        match std::ptr::eq(handle.owner(), self) {
            true => Ok(handle),
            false => Err(bad_arg(&format!(
                "{} belongs to another core: end it on its own",
                H::NAME
            ))),
        }
    }

    /// Takes the handle at `p` back from C, after checking that it is this core's.
    ///
    /// # Safety
    /// `p` is NULL or a live handle, not used again once this succeeds.
    unsafe fn take_back<H: Handle>(&self, p: *mut H) -> Result<H> {
        // SAFETY: the caller's guarantee, forwarded.
        unsafe { self.borrow(p)? };
        // SAFETY: a live handle from `hand_out` (Box::into_raw), handed back exactly once.
        let handle = unsafe { Box::from_raw(p) };
        self.open_handles.fetch_sub(1, Ordering::AcqRel);
        Ok(*handle)
    }
}

/// # Safety
/// `core` is NULL or a live core.
pub(super) unsafe fn core_ref<'a>(core: *mut AddCowCore) -> Result<&'a AddCowCore> {
    // SAFETY: the caller's guarantee; NULL is refused.
    unsafe { core.as_ref() }.ok_or_else(|| bad_arg("core is NULL"))
}

/// Open flags that a host of the core handles itself, and why.
const HOST_FLAGS: [(u32, &str); 5] = [
    (
        ADDCOW_OPEN_WRITETHROUGH,
        "ADDCOW_OPEN_WRITETHROUGH: the host flushes, in the order the contract gives",
    ),
    (
        ADDCOW_OPEN_NO_BACKING,
        "ADDCOW_OPEN_NO_BACKING: the host sets the backing length \
         (addcow_core_set_backing_length)",
    ),
    (
        ADDCOW_OPEN_BACKING_ADDCOW,
        "ADDCOW_OPEN_BACKING_ADDCOW: the host reads the backing file, whatever its format",
    ),
    (
        ADDCOW_OPEN_FORCE_SHARE,
        "ADDCOW_OPEN_FORCE_SHARE: the host opens and locks its files",
    ),
    (
        ADDCOW_OPEN_CONFINE,
        "ADDCOW_OPEN_CONFINE: the host resolves the names of its files",
    ),
];

/// The core's options from the caller's: only `ADDCOW_OPEN_RDWR` and `bitmap_cache_size`.
fn core_options(o: &AddCowOpenOptions) -> Result<CoreOptions> {
    for (flag, why) in HOST_FLAGS {
        if o.flags & flag != 0 {
            return Err(bad_arg(&format!("{why}; the core refuses it")));
        }
    }
    let known = HOST_FLAGS.iter().fold(ADDCOW_OPEN_RDWR, |k, (f, _)| k | f);
    if o.flags & !known != 0 {
        return Err(bad_arg(&format!(
            "unknown open flags {:#x}",
            o.flags & !known
        )));
    }
    Ok(CoreOptions {
        writable: o.flags & ADDCOW_OPEN_RDWR != 0,
        bitmap_cache_bytes: o.bitmap_cache_size,
    })
}

/// Opens the mapping core of an image whose files the host owns: reads and validates the
/// header through `meta` (the `.add-cow` file; `preadv` and `get_length` are required,
/// `pwritev` too for `ADDCOW_OPEN_RDWR`; `truncate` is never called, and `flush` only by the
/// header rewrites `addcow_core_set_all_allocated` and `addcow_core_set_backing_file`: the host
/// flushes the `.add-cow` file itself after a bitmap write-back). `size` is the image file's length (the virtual size).
/// `opts` NULL means read-only; only `ADDCOW_OPEN_RDWR` and `bitmap_cache_size` apply, and the
/// other flags give -EINVAL (the host does what they do). No backing data until
/// `addcow_core_set_backing_length`: unallocated clusters map as zeros. The table is copied;
/// the host keeps `opaque` valid, and the callbacks callable from any thread, until
/// `addcow_core_close` returns. Reads only the header: the bitmap is read page by page on
/// demand. 0 with a new core in `*out`, or -errno with NULL in `*out`: -EINVAL (NULL `meta` or
/// `out`, a missing callback, bad options, a malformed header), -ENOTSUP (an unknown version),
/// -EFBIG (`size` beyond `ADDCOW_MAX_SIZE`), or the host's -errno.
///
/// # Safety
/// `meta` is NULL or a valid table; `opts` is NULL or points at `opts->struct_size` readable
/// bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_open(
    meta: *const AddCowIo,
    size: u64,
    opts: *const AddCowOpenOptions,
    out: *mut *mut AddCowCore,
) -> c_int {
    ffi("addcow_core_open", || {
        if out.is_null() {
            return Err(bad_arg("out is NULL"));
        }
        // SAFETY: non-NULL and writable per the caller; cleared so that failure leaves NULL.
        unsafe { out.write(std::ptr::null_mut()) };
        let opts = match opts.is_null() {
            true => CoreOptions::default(),
            // SAFETY: non-NULL, and the caller's guarantee on its size.
            false => core_options(&unsafe { versioned::read(opts)? })?,
        };
        if size > ADDCOW_MAX_SIZE {
            return Err(Error::TooLarge(format!(
                "an image of {size} bytes is larger than the largest supported \
                 ({ADDCOW_MAX_SIZE} bytes, 64 PiB)"
            )));
        }
        // The core never resizes the `.add-cow` file, and flushes it only in header rewrites
        // (which give EBADF without a flush callback): the host flushes write-backs.
        let needs = match opts.writable {
            true => Needs::ReadWrite,
            false => Needs::Read,
        };
        // SAFETY: the caller's guarantee on the table.
        let meta = unsafe { HostStorage::new(meta, ("meta", META), needs)? };
        let header = read_header(&meta, META)?;
        let core = AddCowCore {
            core: Core::new((Box::new(meta), META.into()), header, size, opts),
            open_handles: AtomicUsize::new(0),
        };
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(Box::new(core))) };
        Ok(0)
    })
}

/// Frees the core. It writes nothing back (it cannot order that against the host's flush of
/// the image file): run the flush sequence first. -EBUSY, freeing nothing, while a transaction
/// or write-back of the core is open: end them, then close again. NULL is a no-op returning 0.
/// No other call on the core may run during or after this one.
///
/// # Safety
/// `core` is NULL or a live core, not used again once this returns 0.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_close(core: *mut AddCowCore) -> c_int {
    ffi("addcow_core_close", || {
        if core.is_null() {
            return Ok(0);
        }
        // SAFETY: the caller's guarantee.
        let open = unsafe { core_ref(core)? }
            .open_handles
            .load(Ordering::Acquire);
        if open > 0 {
            return Err(Error::Busy(format!(
                "{open} transaction or write-back handle(s) of this core are still open: \
                 end them first"
            )));
        }
        // SAFETY: a live core from Box::into_raw, handed back exactly once.
        drop(unsafe { Box::from_raw(core) });
        Ok(0)
    })
}

/// The virtual size in bytes (the `size` given at open), or -EINVAL for NULL.
///
/// # Safety
/// `core` is NULL or a live core.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_get_length(core: *mut AddCowCore) -> i64 {
    ffi("addcow_core_get_length", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { core_ref(core)? }.core.size() as i64)
    })
}

/// The cluster size in bytes (65536 for layout 1), or -EINVAL for NULL.
///
/// # Safety
/// `core` is NULL or a live core.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_get_cluster_size(core: *mut AddCowCore) -> i64 {
    ffi("addcow_core_get_cluster_size", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { core_ref(core)? }.core.geometry().cluster_size() as i64)
    })
}

/// Sets the length of the backing data: unallocated bytes before it map as BACKING, the others
/// as ZERO; -1 means no backing file (all ZERO, the state after open). Call it after open and
/// whenever the host attaches, replaces or detaches the backing file. 0, or -EINVAL (NULL, or
/// `len` below -1).
///
/// # Safety
/// `core` is NULL or a live core.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_set_backing_length(core: *mut AddCowCore, len: i64) -> c_int {
    ffi("addcow_core_set_backing_length", || {
        // SAFETY: the caller's guarantee.
        let core = unsafe { core_ref(core)? };
        let len = match len {
            -1 => None,
            0.. => Some(len as u64),
            _ => return Err(bad_arg(&format!("backing length {len} (-1: none)"))),
        };
        core.core.set_backing_len(len);
        Ok(0)
    })
}

/// What the bytes from `offset` read from: returns `ADDCOW_MAP_DATA`, `ADDCOW_MAP_BACKING` or
/// `ADDCOW_MAP_ZERO` for the first run and stores its length (at least 1, at most `bytes`, never
/// past the end) in `*pnum`; the run may be shorter than the state's (bounded work): loop. 0
/// with `*pnum` = 0 when `offset` is at or past the end or `bytes` is 0. -EINVAL for NULL
/// `core` or `pnum`, or the host's -errno (reading a bitmap page).
///
/// # Safety
/// `core` is NULL or a live core; `pnum` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_map(
    core: *mut AddCowCore,
    offset: u64,
    bytes: u64,
    pnum: *mut u64,
) -> c_int {
    ffi("addcow_core_map", || {
        // SAFETY: the caller's guarantee.
        let core = unsafe { core_ref(core)? };
        if pnum.is_null() {
            return Err(bad_arg("pnum is NULL"));
        }
        let e = core.core.map(offset, bytes)?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe { pnum.write(e.len) };
        Ok(match (e.len, e.kind) {
            (0, _) => 0,
            (_, Kind::Data) => ADDCOW_MAP_DATA,
            (_, Kind::Backing) => ADDCOW_MAP_BACKING,
            (_, Kind::Zero) => ADDCOW_MAP_ZERO,
        })
    })
}

fn zero_step() -> AddCowWriteStep {
    AddCowWriteStep {
        struct_size: size_of::<AddCowWriteStep>() as u32,
        kind: 0,
        len: 0,
        generation: 0,
        cluster_start: 0,
        cluster_end: 0,
        head_backing: 0,
        head_zero: 0,
        tail_backing: 0,
        tail_zero: 0,
        txn: std::ptr::null_mut(),
    }
}

/// The C form of a step; an allocation's transaction becomes a handle of `core`.
fn write_step(core: &AddCowCore, begin: Begin<Step>) -> AddCowWriteStep {
    let zero = zero_step();
    match begin {
        Begin::Busy(generation) => AddCowWriteStep {
            kind: ADDCOW_STEP_BUSY,
            generation,
            ..zero
        },
        Begin::Ready(Step::InPlace(len)) => AddCowWriteStep {
            kind: ADDCOW_STEP_IN_PLACE,
            len,
            ..zero
        },
        Begin::Ready(Step::Allocate(txn)) => AddCowWriteStep {
            kind: ADDCOW_STEP_ALLOCATE,
            len: txn.len(),
            cluster_start: txn.cluster_start(),
            cluster_end: txn.cluster_end(),
            head_backing: txn.head_backing(),
            head_zero: txn.head_len() - txn.head_backing(),
            tail_backing: txn.tail_backing(),
            tail_zero: txn.tail_len() - txn.tail_backing(),
            txn: core.hand_out(AddCowTxn { txn, owner: core }),
            ..zero
        },
    }
}

/// Runs `begin` on the core and stores the step in the caller's `*step` (zeroed but for
/// `struct_size` on failure).
///
/// # Safety
/// `core` is NULL or a live core; `step` is NULL or points at `step->struct_size` writable
/// bytes.
unsafe fn begin_step(
    core: *mut AddCowCore,
    step: *mut AddCowWriteStep,
    begin: impl FnOnce(&Core) -> Result<Begin<Step>>,
) -> Result<c_int> {
    // SAFETY: the caller's guarantee.
    let core = unsafe { core_ref(core)? };
    if step.is_null() {
        return Err(bad_arg("step is NULL"));
    }
    // SAFETY: non-NULL, its struct_size readable per the caller.
    let size = unsafe { versioned::caller_size(step)? };
    let (value, ret) = match begin(&core.core) {
        Ok(begin) => (write_step(core, begin), Ok(0)),
        Err(e) => (zero_step(), Err(e)),
    };
    // SAFETY: `size` writable bytes per the caller, checked against MIN_SIZE.
    unsafe { versioned::write(step, size, &value) };
    ret
}

/// The next step of a guest write of `bytes` bytes at `offset`, in `*step` (see
/// `AddCowWriteStep`): IN_PLACE (write `len` bytes to the image file), ALLOCATE (run the
/// transaction `txn` over `len` bytes: see `AddCowCore` for the order), or BUSY (retry once
/// `addcow_core_generation` differs from `generation`). A write is done when the steps have
/// covered all of it: call again from `offset + len` with the rest. Never waits. 0 (the step
/// is in `*step`), or -errno with `*step` zeroed (except `struct_size`): -EPERM (read-only
/// core), -EINVAL (NULL `core` or `step`, a `struct_size` too small, `bytes` 0, or past the
/// end; `*step` is left alone for the first three), or the host's -errno (reading a bitmap
/// page).
///
/// # Safety
/// `core` is NULL or a live core; `step` is NULL or points at `step->struct_size` writable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_begin_write(
    core: *mut AddCowCore,
    offset: u64,
    bytes: u64,
    step: *mut AddCowWriteStep,
) -> c_int {
    ffi("addcow_core_begin_write", || {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { begin_step(core, step, |c| c.begin_write(offset, bytes)) }
    })
}

/// The next step of zeroing (write-zeroes, discard) the whole clusters `offset..offset +
/// bytes` (`offset` a cluster start; the end a cluster end or the image end), in `*step` as
/// for `addcow_core_begin_write`: IN_PLACE (make those `len` bytes of the image file read
/// zeros), ALLOCATE (a transaction whose head and tail are empty: make `cluster_start..
/// cluster_end` of the image file read zeros — punch a hole, zero the range or write zeros —
/// then [writethrough: flush the image file] `addcow_core_commit`, or `addcow_core_abort` on
/// failure: the clusters become allocated without any copy from the backing file), or BUSY.
/// The same claims as writes: a write and a zeroing of one cluster never overlap. The host
/// handles partial clusters at either end as writes of zeros (`addcow_core_begin_write`).
/// 0, or -errno with `*step` zeroed (except `struct_size`) as for `addcow_core_begin_write`,
/// and -EINVAL also for a range that is not whole clusters.
///
/// # Safety
/// `core` is NULL or a live core; `step` is NULL or points at `step->struct_size` writable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_begin_zero(
    core: *mut AddCowCore,
    offset: u64,
    bytes: u64,
    step: *mut AddCowWriteStep,
) -> c_int {
    ffi("addcow_core_begin_zero", || {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { begin_step(core, step, |c| c.begin_zero(offset, bytes)) }
    })
}

/// Marks the transaction's clusters allocated and releases them: call it once the image file
/// holds `cluster_start..cluster_end` (written, and in writethrough flushed). Consumes `txn`,
/// also on failure: then every cluster of it stays unallocated (run the write again). 0,
/// -EINVAL (NULL `core` or `txn`, or a `txn` of another core: then nothing happens and `txn`
/// stays open), or the host's -errno (reading a bitmap page that had to be loaded again).
///
/// # Safety
/// `core` is NULL or a live core; `txn` is NULL or an open transaction, not used again unless
/// this returned -EINVAL.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_commit(core: *mut AddCowCore, txn: *mut AddCowTxn) -> c_int {
    ffi("addcow_core_commit", || {
        // SAFETY: the caller's guarantees.
        let (core, txn) = unsafe {
            let core = core_ref(core)?;
            (core, core.take_back(txn)?)
        };
        core.core.commit(txn.txn).map(|()| 0)
    })
}

/// Releases the transaction's clusters, unallocated: the image-file write failed (or is not
/// wanted). Consumes `txn`. 0, or -EINVAL (NULL `core` or `txn`, or a `txn` of another core:
/// then nothing happens and `txn` stays open).
///
/// # Safety
/// `core` is NULL or a live core; `txn` is NULL or an open transaction, not used again unless
/// this returned -EINVAL.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_abort(core: *mut AddCowCore, txn: *mut AddCowTxn) -> c_int {
    ffi("addcow_core_abort", || {
        // SAFETY: the caller's guarantees.
        let (core, txn) = unsafe {
            let core = core_ref(core)?;
            (core, core.take_back(txn)?)
        };
        core.core.abort(txn.txn);
        Ok(0)
    })
}

/// The core's generation: it moves at every commit, abort and write-back end. A caller told
/// "busy" at generation `g` retries once this is no longer `g`. 0 for NULL.
///
/// # Safety
/// `core` is NULL or a live core.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_generation(core: *mut AddCowCore) -> u64 {
    ffi("addcow_core_generation", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { core_ref(core)? }.core.generation())
    })
}

/// Starts a write-back of the bitmap: copies the dirty pages (every bit in them had its data
/// written to the image file before) and stores a new write-back in `*wb`, which may hold no
/// page (`addcow_writeback_pages`); returns 0. Then: flush the image file,
/// `addcow_core_writeback_write`, flush the `.add-cow` file, `addcow_core_writeback_end`. One
/// write-back at a time: while another is open, returns `ADDCOW_BUSY` with NULL in `*wb` and
/// the generation to wait past in `*generation`. -EINVAL for a NULL argument.
///
/// # Safety
/// `core` is NULL or a live core; `wb` and `generation` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_writeback_begin(
    core: *mut AddCowCore,
    wb: *mut *mut AddCowWriteBack,
    generation: *mut u64,
) -> c_int {
    ffi("addcow_core_writeback_begin", || {
        // SAFETY: the caller's guarantee.
        let core = unsafe { core_ref(core)? };
        if wb.is_null() || generation.is_null() {
            return Err(bad_arg("wb or generation is NULL"));
        }
        // SAFETY: non-NULL and writable per the caller; cleared so that busy leaves NULL.
        unsafe { wb.write(std::ptr::null_mut()) };
        match core.core.writeback_begin()? {
            Begin::Ready(pages) => {
                let handle = core.hand_out(AddCowWriteBack {
                    wb: pages,
                    owner: core,
                });
                // SAFETY: as above.
                unsafe { wb.write(handle) };
                Ok(0)
            }
            Begin::Busy(g) => {
                // SAFETY: non-NULL and writable per the caller.
                unsafe { generation.write(g) };
                Ok(ADDCOW_BUSY)
            }
        }
    })
}

/// How many bitmap pages the write-back copied (0: nothing to write; the host may then skip
/// `addcow_core_writeback_write` and, if it wrote nothing else there, the flush of the
/// `.add-cow` file), or -EINVAL for NULL.
///
/// # Safety
/// `wb` is NULL or an open write-back.
#[no_mangle]
pub unsafe extern "C" fn addcow_writeback_pages(wb: *const AddCowWriteBack) -> i64 {
    ffi("addcow_writeback_pages", || {
        // SAFETY: the caller's guarantee; NULL is refused.
        let wb = unsafe { wb.as_ref() }.ok_or_else(|| bad_arg("wb is NULL"))?;
        Ok(wb.wb.pages() as i64)
    })
}

/// Writes the write-back's copies to the `.add-cow` file through the `meta` callbacks
/// (`pwritev`; no flush). Call it after the image file was flushed; flush the `.add-cow` file
/// after it. 0, -EINVAL (NULL, or a `wb` of another core), or the host's -errno (then end the
/// write-back with `durable` = 0).
///
/// # Safety
/// `core` is NULL or a live core; `wb` is NULL or an open write-back.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_writeback_write(
    core: *mut AddCowCore,
    wb: *mut AddCowWriteBack,
) -> c_int {
    ffi("addcow_core_writeback_write", || {
        // SAFETY: the caller's guarantees.
        let (core, wb) = unsafe {
            let core = core_ref(core)?;
            (core, core.borrow(wb)?)
        };
        core.core.writeback_write(&wb.wb).map(|()| 0)
    })
}

/// Ends a write-back and consumes `wb`. `durable` nonzero: the copies were written and the
/// `.add-cow` file flushed afterwards, so the pages turn clean (unless bits were set in them
/// since); 0: something failed or was skipped, and the pages are written again by the next
/// write-back. 0, or -EINVAL (NULL, or a `wb` of another core: then nothing happens and `wb`
/// stays open).
///
/// # Safety
/// `core` is NULL or a live core; `wb` is NULL or an open write-back, not used again unless
/// this returned -EINVAL.
#[no_mangle]
pub unsafe extern "C" fn addcow_core_writeback_end(
    core: *mut AddCowCore,
    wb: *mut AddCowWriteBack,
    durable: c_int,
) -> c_int {
    ffi("addcow_core_writeback_end", || {
        // SAFETY: the caller's guarantees.
        let (core, wb) = unsafe {
            let core = core_ref(core)?;
            (core, core.take_back(wb)?)
        };
        core.core.writeback_end(wb.wb, durable != 0);
        Ok(0)
    })
}
