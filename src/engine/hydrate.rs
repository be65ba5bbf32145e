//! Hydration: copying the unallocated clusters of a range from the backing file into the image
//! file and setting their bits, while other threads read and write the image ([`Image::hydrate`],
//! the background job of `job.rs`, and copy-on-read).
//!
//! # A guest write always wins
//! A batch claims its clusters as an allocation transaction of the mapping core
//! (`begin_write` over whole clusters), as a guest write does: no write allocates them while it
//! copies, and a cluster a guest allocated first is allocated, so hydration passes over it and
//! never writes over guest data. A guest write to a cluster being hydrated waits for that one
//! batch (its claim), never longer. When a guest holds a cluster of the batch, the batch shrinks
//! to one cluster; when that cluster is the one held, the hydrating thread (never a guest) sleeps
//! until the guest's transaction ends (the core's generation moves), and finds it allocated.
//! Each batch holds the engine's gate shared, as a write does: a truncate waits for one batch.
//!
//! # Durability (the core's contract for allocating writes)
//! The batch's bytes are written to the image file → (writethrough: the image file is synced) →
//! commit (the bits are set) → (writethrough: a metadata write-back). Otherwise the bits reach
//! the `.add-cow` file with the next flush (the background job flushes every second): a crash
//! loses only hydration, which the next run redoes.
//!
//! # Copying
//! Where the backing file is a raw file and the image file a file (not direct I/O), a batch's
//! bytes move in the kernel (`copy_file_range`), with no user-space copy; elsewhere (host
//! callbacks, memory, direct I/O, an add-cow backing image) they are read, then written. A
//! hole of the backing file over a hole of the image file is left as it is.
//!
//! # Zeros and the end of the backing file
//! Unallocated clusters past the backing file's end read zeros; they are hydrated like the
//! others (marked allocated) so that the raw image file alone reads what the guest saw, which
//! is what detaching it needs. A batch whose bytes are all zeros (past the backing file's end,
//! or zeros in it) over a hole of the image file writes nothing: the hole reads zeros, and the
//! image file stays sparse. Where the image file holds anything there (a write that never
//! committed), the zeros are written.

use super::{Backing, Image};
use crate::error::{Error, Op, Result};
use crate::mapping::{Begin, Step, Txn};
use std::io::{IoSlice, IoSliceMut};

/// The batch when none is given: 1 MiB.
pub const DEFAULT_BATCH: u64 = 1 << 20;
/// The largest batch: 64 MiB (the buffer of a hydration is one batch).
pub const MAX_BATCH: u64 = 64 << 20;

/// What one step did.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Advance {
    /// Where the next step starts.
    pub next: u64,
    /// Clusters this step passed over that are allocated now: copied by it, or allocated
    /// before (by a guest, or an earlier hydration). 0 when it waited for a busy cluster.
    pub allocated: u64,
    /// Clusters this step copied.
    pub copied: u64,
    /// Bytes it hydrated (read from the backing file, or zeros past its end).
    pub bytes: u64,
}

/// What a claim on the next clusters found.
enum Claimed {
    /// The first `n` bytes are allocated already.
    Allocated(u64),
    Txn(Txn),
    /// A guest holds the first cluster: retry after this generation.
    Busy(u64),
}

/// Hydrates a range step by step, a batch at a time, through one buffer.
pub(super) struct Hydrator {
    buf: Vec<u8>,
    batch: u64,
}

impl Hydrator {
    /// A hydrator of `batch` bytes a step (0: [`DEFAULT_BATCH`]), rounded up to whole clusters
    /// and capped at [`MAX_BATCH`].
    pub(super) fn new(image: &Image, batch: u64) -> Hydrator {
        let cs = image.cluster_size();
        let batch = match batch {
            0 => DEFAULT_BATCH,
            b => b.min(MAX_BATCH),
        };
        Hydrator {
            buf: Vec::new(),
            batch: batch.div_ceil(cs).max(1) * cs,
        }
    }

    /// Hydrates from `pos` (a cluster's start) on, at most one batch and never past `end` or
    /// the image's end: `None` when there is nothing left before them.
    pub(super) fn step(&mut self, image: &Image, pos: u64, end: u64) -> Result<Option<Advance>> {
        let busy = {
            let _gate = image.shared();
            let end = end.min(image.size());
            if pos >= end {
                return Ok(None);
            }
            match self.claim(image, pos, end - pos)? {
                Claimed::Txn(txn) => return self.copy(image, txn).map(Some),
                Claimed::Allocated(n) => {
                    return Ok(Some(Advance {
                        next: pos + n,
                        allocated: n.div_ceil(image.cluster_size()),
                        ..Advance::default()
                    }))
                }
                Claimed::Busy(generation) => generation,
            }
        };
        // Outside the gate: the guest's transaction needs nothing from us to end.
        image.wait(image.core(), busy);
        Ok(Some(Advance {
            next: pos,
            ..Advance::default()
        }))
    }

    /// Claims the unallocated clusters from `pos`, at most a batch of them and `len` bytes;
    /// one cluster when a guest holds some of them.
    fn claim(&self, image: &Image, pos: u64, len: u64) -> Result<Claimed> {
        let core = image.core();
        let mut want = len.min(self.batch);
        loop {
            return Ok(match core.begin_write(pos, want)? {
                Begin::Ready(Step::InPlace(n)) => Claimed::Allocated(n),
                Begin::Ready(Step::Allocate(txn)) => Claimed::Txn(txn),
                Begin::Busy(generation) => {
                    let one = want.min(image.cluster_size());
                    if want > one {
                        want = one;
                        continue;
                    }
                    Claimed::Busy(generation)
                }
            });
        }
    }

    /// Copies the clusters of `txn` (whole clusters: no head, no tail) from the backing file
    /// and commits them.
    fn copy(&mut self, image: &Image, txn: Txn) -> Result<Advance> {
        debug_assert!(txn.head_len() == 0 && txn.tail_len() == 0);
        let (at, len) = (txn.offset(), txn.len());
        let written = self.fill(image, at, len);
        image.settle(image.core(), txn, written)?;
        let clusters = len.div_ceil(image.cluster_size());
        Ok(Advance {
            next: at + len,
            allocated: clusters,
            copied: clusters,
            bytes: len,
        })
    }

    /// Copies `at..at + len` from the backing file to the image file: the part within the
    /// backing data in the kernel where both are files, else read and written unless it is all
    /// zeros over a hole of the image file; the part past its end (zeros) unless it is a hole
    /// there.
    fn fill(&mut self, image: &Image, at: u64, len: u64) -> Result<()> {
        let inside = image.core().backing_len().unwrap_or(0).clamp(at, at + len) - at;
        let copied = match inside {
            0 => 0,
            _ => image.copy_backing(at, inside)?,
        };
        if copied < inside {
            let (from, n) = (at + copied, inside - copied);
            let data = self.buffer(n);
            image.read_backing(&mut [IoSliceMut::new(data)], from)?;
            if !(is_zero(data) && image.is_hole(from, n)?) {
                image.write_data(&[IoSlice::new(data)], from)?;
            }
        }
        if inside < len && !image.is_hole(at + inside, len - inside)? {
            let zeros = self.buffer(len - inside);
            zeros.fill(0);
            image.write_data(&[IoSlice::new(zeros)], at + inside)?;
        }
        Ok(())
    }

    /// The first `n` bytes of the buffer, grown (never past a batch) on first need.
    fn buffer(&mut self, n: u64) -> &mut [u8] {
        if self.buf.len() < n as usize {
            self.buf.resize(n as usize, 0);
        }
        &mut self.buf[..n as usize]
    }
}

fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

impl Image {
    /// Hydrates every cluster that `offset..offset + bytes` touches (none when `bytes` is 0):
    /// copies the unallocated ones from the backing file (zeros past its end) into the image
    /// file, `batch` bytes of
    /// contiguous clusters at a time (0: 1 MiB; rounded up to whole clusters, at most 64 MiB),
    /// and marks them allocated; returns how many clusters it copied. Safe beside reads and
    /// writes on other threads: clusters a guest writes meanwhile keep the guest's data (see the
    /// module docs). Durable as writes are: with the next flush, or at once in writethrough.
    /// `EPERM` on a read-only image, `EINVAL` past the end, or when the image has a backing
    /// file that was not opened (`no_backing`: hydrating would replace its data by zeros).
    pub fn hydrate(&self, offset: u64, bytes: u64, batch: u64) -> Result<u64> {
        self.check_hydrate()?;
        self.core().check(offset, bytes)?;
        if bytes == 0 {
            return Ok(0);
        }
        let cs = self.cluster_size();
        let (mut pos, end) = (offset / cs * cs, (offset + bytes).div_ceil(cs) * cs);
        let mut hydrator = Hydrator::new(self, batch);
        let mut copied = 0;
        while let Some(step) = hydrator.step(self, pos, end)? {
            pos = step.next;
            copied += step.copied;
        }
        Ok(copied)
    }

    /// Refuses hydration on a read-only image, or one whose backing file was not opened.
    pub(super) fn check_hydrate(&self) -> Result<()> {
        let core = self.core();
        if !core.is_writable() {
            return Err(Error::ReadOnly(Op::Write));
        }
        let unopened = core.header().backing_file.is_some() && self.backing().is_none();
        if unopened && !core.all_allocated() {
            return Err(Error::invalid(
                "cannot hydrate: the image was opened without its backing file",
            ));
        }
        Ok(())
    }

    /// Copy-on-read: after a read of `offset..offset + len` from the backing file, hydrates the
    /// clusters it touched, when the image was opened so.
    pub(super) fn copy_on_read(&self, offset: u64, len: u64) -> Result<()> {
        match self.copy_on_read {
            true => self.hydrate(offset, len, len).map(|_| ()),
            false => Ok(()),
        }
    }

    /// Copies `at..at + len` (within the backing data) from a raw backing file to the image
    /// file in the kernel, when both are files: how many bytes from `at` it copied (0: copy
    /// them another way). A hole of the backing file over a hole of the image file is left as
    /// it is (it reads zeros) and counts as copied.
    fn copy_backing(&self, at: u64, len: u64) -> Result<u64> {
        let Some(Backing::Raw { storage, name }) = self.backing() else {
            return Ok(0);
        };
        if self.data().as_file().is_none() || storage.as_file().is_none() {
            return Ok(0);
        }
        let data = storage
            .next_data(at)
            .map_err(|e| Error::io(Op::FindData, name, at, e))?;
        if data.map_or(true, |d| d >= at + len) && self.is_hole(at, len)? {
            return Ok(len);
        }
        self.wrote_data();
        self.data()
            .copy_from(&**storage, at, len)
            .map_err(|e| Error::io(Op::Write, self.data_name(), at, e))
    }

    /// Whether the image file reads zeros at `at..at + len` as a hole (or past its end).
    fn is_hole(&self, at: u64, len: u64) -> Result<bool> {
        let next = self
            .data()
            .next_data(at)
            .map_err(|e| Error::io(Op::FindData, self.data_name(), at, e))?;
        Ok(next.map_or(true, |d| d >= at + len))
    }
}
