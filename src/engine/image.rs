//! The generic I/O loop: an open image as a host of the mapping core. The core says where guest
//! bytes live and hands out allocation transactions; this loop does the data I/O on the image
//! file and the backing file (files, host callbacks or memory) and blocks the calling thread
//! where the core says "busy".
//!
//! # Locks
//! 1. `gate` ([`ShardedLock`]): shared by writes and flushes, exclusive only for `truncate`
//!    (the core's resize steps run exclusively of them). Shared, it costs a per-thread shard,
//!    not a global lock. Reads and allocation queries take no lock at all: the core lets them
//!    run beside a truncate (they see the old or the new size).
//! 2. `released` (a mutex with a condition variable): a request told "busy" by the core sleeps
//!    on it until the core's generation moves; every commit, abort and finished write-back of
//!    this loop signals it. Never held across I/O.
//!
//! The core itself never blocks and holds no lock across I/O; claims on different clusters never
//! wait for each other, and reads and writes of allocated clusters take only (1), shared.
//!
//! # Durability order (the core's contract, kept here)
//! - Allocating write: head + data + tail written in one vectored write → (writethrough: image
//!   file synced) → commit (bits set) → (writethrough: metadata write-back) → return.
//! - Flush: copy the dirty pages → sync the image file → write the copies → sync the `.add-cow`
//!   file. A flush with nothing written since the last one syncs nothing.

use super::iov;
use super::open::Deferred;
use super::Backing;
use crate::error::{Error, Op, Result};
use crate::mapping::{Begin, Core, Kind, Step, Txn};
use crate::storage::{zero_fill, Storage};
use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// An open add-cow image. `Send + Sync`: share it between threads by reference or `Arc`.
pub struct Image {
    core: Core,
    gate: ShardedLock<()>,
    data: Box<dyn Storage>,
    data_name: String,
    backing: Option<Backing>,
    /// Opens the backing file that an all-allocated image did not open (`open.rs`), once a
    /// truncate needs its length; the result in `late`.
    deferred: Option<Deferred>,
    late: OnceLock<Backing>,
    pub(super) writethrough: bool,
    /// Reads of unallocated clusters within the backing data hydrate them (`hydrate.rs`).
    pub(super) copy_on_read: bool,
    released: (Mutex<()>, Condvar),
    /// Requests sleeping in [`Image::wait`].
    waiting: AtomicUsize,
    /// Image-file writes (and resizes) since the last flush synced it.
    unsynced_data: AtomicBool,
    closed: bool,
}

/// The most zeros a head or tail needs: the largest cluster size.
pub(super) const ZEROS: usize = 2 << 20;

pub(super) fn zeros(len: u64) -> &'static [u8] {
    static ZERO: OnceLock<Box<[u8]>> = OnceLock::new();
    &ZERO.get_or_init(|| vec![0u8; ZEROS].into_boxed_slice())[..len as usize]
}

thread_local! {
    /// Backing bytes of heads and tails, reused by every allocation of this thread.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Image {
    pub(super) fn from_core(
        core: Core,
        (data, data_name): (Box<dyn Storage>, String),
        backing: Option<Backing>,
        writethrough: bool,
    ) -> Result<Image> {
        core.set_backing_len(backing.as_ref().map(Backing::size).transpose()?);
        Ok(Image {
            core,
            gate: ShardedLock::new(()),
            data,
            data_name,
            backing,
            deferred: None,
            late: OnceLock::new(),
            writethrough,
            copy_on_read: false,
            released: (Mutex::new(()), Condvar::new()),
            waiting: AtomicUsize::new(0),
            unsynced_data: AtomicBool::new(false),
            closed: false,
        })
    }

    pub(super) fn core(&self) -> &Core {
        &self.core
    }

    /// The shared side of the gate: no truncate runs until it is dropped.
    pub(super) fn shared(&self) -> ShardedLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The exclusive side of the gate, for truncate: waits for the writes and flushes in flight.
    pub(super) fn exclusive(&self) -> ShardedLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Virtual size in bytes (the image file's length).
    pub fn size(&self) -> u64 {
        self.core().size()
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.core().geometry().cluster_size()
    }

    pub fn is_read_only(&self) -> bool {
        !self.core().is_writable()
    }

    /// The backing image or file, unless opened without it (or not opened yet: an image whose
    /// every cluster is allocated opens it only when a truncate needs it).
    pub fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref().or_else(|| self.late.get())
    }

    pub(super) fn defer_backing(&mut self, deferred: Option<Deferred>) {
        self.deferred = deferred;
    }

    /// The backing data's length, opening a deferred backing file first: `None` without one.
    pub(super) fn backing_len_now(&self) -> Result<Option<u64>> {
        if let (None, Some(open)) = (self.backing(), &self.deferred) {
            let backing = open()?;
            self.core.set_backing_len(Some(backing.size()?));
            let _ = self.late.set(backing);
        }
        self.backing().map(Backing::size).transpose()
    }

    /// Whether the byte at `offset` is allocated in the image file, and the length of the run
    /// of bytes from `offset` in the same state, clamped to `bytes` and the image end (shorter
    /// when the run is long: bounded work). `(false, 0)` for `offset >= size` or `bytes == 0`.
    pub fn is_allocated(&self, offset: u64, bytes: u64) -> Result<(bool, u64)> {
        self.core().is_allocated(offset, bytes)
    }

    /// Reads `bufs` from `offset`: allocated clusters from the image file, the others from the
    /// backing file (zeros past its end, or without one). `EINVAL` past the end of the image.
    pub fn read(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        let len = iov::total(bufs)?;
        let core = &self.core;
        core.check(offset, len)?;
        let mut pos = 0;
        while pos < len {
            let e = core.map(offset + pos, len - pos)?;
            if e.len == len {
                return self.read_extent(e.kind, offset, bufs);
            }
            if e.len == 0 {
                // A truncate shrank the image under this read: past the new end, zeros.
                zero_fill(&mut iov::slice_mut(bufs, pos, len - pos));
                return Ok(());
            }
            let mut seg = iov::slice_mut(bufs, pos, e.len);
            self.read_extent(e.kind, offset + pos, &mut seg)?;
            pos += e.len;
        }
        Ok(())
    }

    fn read_extent(&self, kind: Kind, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        match kind {
            Kind::Data => self
                .data
                .read_vectored_at(bufs, offset)
                .map_err(|e| Error::io(Op::Read, &self.data_name, offset, e)),
            Kind::Backing => {
                self.read_backing(bufs, offset)?;
                self.copy_on_read(offset, crate::storage::iov_len(bufs))
            }
            Kind::Zero => {
                zero_fill(bufs);
                Ok(())
            }
        }
    }

    pub(super) fn read_backing(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        match self.backing() {
            Some(backing) => backing.read(bufs, offset),
            None => {
                zero_fill(bufs);
                Ok(())
            }
        }
    }

    /// Writes `bufs` at `offset`. A cluster written for the first time is completed from the
    /// backing file, written whole to the image file, and only then marked allocated.
    /// `EPERM` on a read-only image, `EINVAL` past the end.
    pub fn write(&self, offset: u64, bufs: &[IoSlice<'_>]) -> Result<()> {
        let _gate = self.shared();
        self.write_gated(offset, bufs)
    }

    /// [`Image::write`] under the shared gate the caller holds.
    pub(super) fn write_gated(&self, offset: u64, bufs: &[IoSlice<'_>]) -> Result<()> {
        let len = iov::total(bufs)?;
        let core = &self.core;
        if !core.is_writable() {
            return Err(Error::ReadOnly(Op::Write));
        }
        core.check(offset, len)?;
        let mut pos = 0;
        let mut in_place = false;
        while pos < len {
            let step = match core.begin_write(offset + pos, len - pos)? {
                Begin::Ready(step) => step,
                Begin::Busy(generation) => {
                    self.wait(core, generation);
                    continue;
                }
            };
            let n = match &step {
                Step::InPlace(n) => *n,
                Step::Allocate(txn) => txn.len(),
            };
            let seg = match n == len {
                true => Cow::Borrowed(bufs),
                false => Cow::Owned(iov::slice(bufs, pos, n)),
            };
            match step {
                Step::InPlace(_) => {
                    self.write_data(&seg, offset + pos)?;
                    in_place = true;
                }
                Step::Allocate(txn) => self.allocate(core, txn, &seg)?,
            }
            pos += n;
        }
        if in_place && self.writethrough {
            self.sync_data()?;
        }
        Ok(())
    }

    /// Runs an allocation transaction: head and tail from the backing file (zeros past its
    /// end), the guest data between, one vectored write, then the bits.
    fn allocate(&self, core: &Core, txn: Txn, data: &[IoSlice<'_>]) -> Result<()> {
        let written = self.write_cluster(&txn, data);
        self.settle(core, txn, written)
    }

    /// Ends an allocation transaction whose image-file write returned `written`: (writethrough:
    /// sync the image file) → commit, or abort on failure → wake the waiters → (writethrough:
    /// a metadata write-back).
    pub(super) fn settle(&self, core: &Core, txn: Txn, written: Result<()>) -> Result<()> {
        let written = written.and_then(|()| match self.writethrough {
            true => self.sync_data(),
            false => Ok(()),
        });
        let committed = match written {
            Ok(()) => core.commit(txn),
            Err(e) => {
                core.abort(txn);
                Err(e)
            }
        };
        self.signal();
        committed?;
        if self.writethrough {
            self.write_back(core, false)?;
        }
        Ok(())
    }

    fn write_cluster(&self, txn: &Txn, data: &[IoSlice<'_>]) -> Result<()> {
        let (head, tail) = (txn.head_backing(), txn.tail_backing());
        let fill = |scratch: &mut Vec<u8>| -> Result<()> {
            // Grown (zero-filled) only the first time it is too short: every byte used below is
            // read from the backing file first.
            let need = (head + tail) as usize;
            if scratch.len() < need {
                scratch.resize(need, 0);
            }
            let (h, t) = scratch[..need].split_at_mut(head as usize);
            if head > 0 {
                self.read_backing(&mut [IoSliceMut::new(h)], txn.cluster_start())?;
            }
            if tail > 0 {
                self.read_backing(&mut [IoSliceMut::new(t)], txn.offset() + txn.len())?;
            }
            let mut iov = Vec::with_capacity(data.len() + 4);
            let (h, t) = scratch[..need].split_at(head as usize);
            push(&mut iov, h);
            push(&mut iov, zeros(txn.head_len() - head));
            iov.extend(
                data.iter()
                    .filter(|b| !b.is_empty())
                    .map(|b| IoSlice::new(b)),
            );
            push(&mut iov, t);
            push(&mut iov, zeros(txn.tail_len() - tail));
            self.write_data(&iov, txn.cluster_start())
        };
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => fill(&mut scratch),
            // A host callback that re-entered the library on this thread.
            Err(_) => fill(&mut Vec::new()),
        })
    }

    pub(super) fn data(&self) -> &dyn Storage {
        &*self.data
    }

    pub(super) fn data_name(&self) -> &str {
        &self.data_name
    }

    /// Sets the image file's length: a change the next flush must make durable, as a write.
    pub(super) fn resize_data(&self, len: u64) -> Result<()> {
        self.unsynced_data.store(true, Ordering::Release);
        self.data
            .resize(len)
            .map_err(|e| Error::io(Op::Resize, &self.data_name, len, e))
    }

    pub(super) fn write_data(&self, bufs: &[IoSlice<'_>], offset: u64) -> Result<()> {
        self.unsynced_data.store(true, Ordering::Release);
        self.data
            .write_vectored_at(bufs, offset)
            .map_err(|e| Error::io(Op::Write, &self.data_name, offset, e))
    }

    /// Records an image-file write made around [`Image::write_data`] (an in-kernel copy, a
    /// punched hole): the next flush must sync it. Call it before the write, as `write_data`
    /// does.
    pub(super) fn wrote_data(&self) {
        self.unsynced_data.store(true, Ordering::Release);
    }

    pub(super) fn sync_data(&self) -> Result<()> {
        self.unsynced_data.store(false, Ordering::Release);
        self.data.flush().map_err(|e| {
            self.unsynced_data.store(true, Ordering::Release);
            Error::io(Op::Flush, &self.data_name, 0, e)
        })
    }

    /// Sleeps until the core's generation is no longer `generation`.
    pub(super) fn wait(&self, core: &Core, generation: u64) {
        let (lock, cv) = &self.released;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // Paired with the fence in `signal`: either this load sees the new generation, or the
        // signaller sees `waiting` and wakes us (it takes the lock, which we hold until we
        // sleep).
        fence(Ordering::SeqCst);
        while core.generation() == generation {
            guard = cv.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes the requests sleeping in [`Image::wait`] (the core's generation just moved); costs
    /// one atomic load when nobody sleeps.
    pub(super) fn signal(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let (lock, cv) = &self.released;
        drop(lock.lock().unwrap_or_else(|e| e.into_inner()));
        cv.notify_all();
    }

    /// [`Image::read`] into one buffer.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read(offset, &mut [IoSliceMut::new(buf)])
    }

    /// [`Image::write`] from one buffer.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write(offset, &[IoSlice::new(buf)])
    }

    /// Makes every completed write durable: image data first, then the bitmap. Syncs nothing
    /// when nothing was written since the last flush (closing an untouched image costs no
    /// sync). A layout-2 image whose every cluster is allocated gets its "all allocated" bit.
    pub fn flush(&self) -> Result<()> {
        let core = &self.core;
        if !core.is_writable() {
            return Ok(());
        }
        let _gate = self.shared();
        // Layout 2 records "every cluster allocated" in its header. Looked at before the
        // write-back copies the dirty pages, so that every bit it saw is in the copies and
        // durable before the header says so. A header left unsynced by a failed write of the
        // bit is rewritten as the image now reads (`mapping::features`).
        let layout2 = core.header().layout_number() == 2;
        let all = layout2 && (core.all_allocated() || core.fully_allocated()?);
        self.write_back(core, true)?;
        match layout2 {
            true => core.set_all_allocated(all),
            false => Ok(()),
        }
    }

    /// A metadata write-back: copy the dirty pages, sync the image file (when `sync_data`, or
    /// when a page was copied: its bits point at data), write the copies, sync the `.add-cow`
    /// file. Pages whose write-back or sync fails stay dirty.
    pub(super) fn write_back(&self, core: &Core, sync_data: bool) -> Result<()> {
        let wb = loop {
            match core.writeback_begin()? {
                Begin::Ready(wb) => break wb,
                Begin::Busy(generation) => self.wait(core, generation),
            }
        };
        let empty = wb.is_empty();
        // Writes since the image file was last synced. The flag is cleared only by a sync that
        // covers them: here (one write-back at a time), in truncate (exclusive), or in
        // writethrough before the bits of the writes it covers are committed.
        let unsynced = self.unsynced_data.load(Ordering::Acquire);
        let done = (|| {
            if unsynced && (sync_data || !empty) {
                self.sync_data()?;
            }
            if !empty {
                core.writeback_write(&wb)?;
            }
            core.sync_meta()
        })();
        core.writeback_end(wb, done.is_ok());
        self.signal();
        done
    }

    /// Flushes and closes. Dropping an image flushes too, but cannot report a failure.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.flush()
    }
}

fn push<'a>(iov: &mut Vec<IoSlice<'a>>, bytes: &'a [u8]) {
    if !bytes.is_empty() {
        iov.push(IoSlice::new(bytes));
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.flush();
        }
    }
}
