//! Layout 2's "all allocated" compatible feature bit: while it is set, every cluster lives in
//! the image file, lookups answer "data" without asking the bitmap, writes go in place, and the
//! backing file is not needed. The bitmap may then say anything (another writer may have left
//! it all zeros).
//!
//! # Durability order
//! - **Set** (the host asks, e.g. at flush and close): only once every cluster is allocated
//!   in the bitmap *and* a write-back made every bit durable. Then the feature field alone
//!   (8 bytes, one sector-atomic write: the names never move) is written and the metadata
//!   source flushed; only then do lookups stop asking the bitmap.
//! - **Clear** (before anything makes a cluster unallocated: a truncate that grows the image
//!   over a backing file no longer than it was): first the bitmap is made to say "allocated"
//!   for every existing cluster ([`Core::fill_step`]) and that is made durable (a write-back),
//!   then the field without the bit is written and flushed. A crash anywhere in between leaves
//!   a header whose bit, set or clear, reads every existing cluster from the image file.
//!
//! # The header on disk
//! The in-memory bit changes only once the write and flush of the field succeeded. When either
//! fails, the field on disk is unknown: the page cache may hold the new value and any later
//! flush of the metadata source may make it durable. The core then records the header as
//! *unsynced* (as QEMU marks a qcow2 image dirty): [`Core::header_unsynced`] tells the host,
//! which rewrites the field before anything depends on it: a flush rewrites it as the
//! in-memory bit says (or sets it, every cluster being allocated), and a grow that would leave
//! clusters unallocated clears it first, since the disk may hold the bit. Until then, every
//! cluster is allocated in the bitmap (both failures happen only while that is so), so either
//! value on disk reads right.

use super::Core;
use crate::cluster::Cluster;
use crate::error::{Error, Op, Result};
use std::sync::atomic::Ordering;

/// Clusters whose bits one [`Core::fill_step`] sets: 2 Mi (64 pages of the bitmap, 256 KiB of
/// dirty pages held until the host writes them back).
const FILL_CLUSTERS: u64 = 1 << 21;

impl Core {
    /// Whether the "all allocated" bit is set (never for layout 1).
    pub fn all_allocated(&self) -> bool {
        self.all_allocated.load(Ordering::Acquire)
    }

    /// Whether the feature field on disk may differ from [`Core::all_allocated`] (a write or
    /// flush of it failed): the host rewrites it through [`Core::set_all_allocated`] before
    /// relying on it (see the module docs).
    pub fn header_unsynced(&self) -> bool {
        self.header_unsynced.load(Ordering::Acquire)
    }

    /// Whether every cluster is allocated in memory. Bounded by the clusters found allocated
    /// since the last answer: the scan resumes where the last one stopped (clusters only become
    /// allocated, except through truncate, which restarts it).
    pub fn fully_allocated(&self) -> Result<bool> {
        let clusters = self.geometry().clusters();
        let mut c = self.scan_from.load(Ordering::Acquire).min(clusters);
        while c < clusters {
            let (allocated, n) = self.bitmap.run(Cluster(c), clusters - c, &self.store())?;
            if !allocated || n == 0 {
                self.scan_from.store(c, Ordering::Release);
                return Ok(false);
            }
            c += n;
        }
        self.scan_from.store(clusters, Ordering::Release);
        Ok(true)
    }

    /// Clearing the bit, first step (only while it is set: every cluster lives in the image
    /// file): sets the bits of at most `FILL_CLUSTERS` (2 Mi) clusters from the first one not
    /// yet allocated in the bitmap. `Ok(true)` once every cluster's bit is set. The host writes
    /// the bitmap back after each step that returned `false` (its dirty pages stay in memory
    /// until then), and after the last, before [`Core::set_all_allocated`]`(false)`.
    pub fn fill_step(&self) -> Result<bool> {
        if !self.all_allocated() {
            return Err(Error::invalid(
                "filling the bitmap of an image whose all-allocated bit is not set",
            ));
        }
        if self.fully_allocated()? {
            return Ok(true);
        }
        let clusters = self.geometry().clusters();
        let from = self.scan_from.load(Ordering::Acquire);
        let to = from.saturating_add(FILL_CLUSTERS).min(clusters);
        self.bitmap
            .set_range(Cluster(from)..Cluster(to), &self.store())?;
        Ok(false)
    }

    /// Sets or clears the "all allocated" bit and makes the header durable (layout 2; a no-op
    /// for layout 1, and when the bit already is `on` on disk). Writes the feature field alone.
    /// Set it only once every cluster is allocated with its bit durable; clear it only once
    /// the bitmap says every cluster is allocated, durably ([`Core::fill_step`]), and before
    /// making any cluster unallocated. On failure the bit keeps its old value in memory and
    /// the header is unsynced. `EPERM` on a read-only core with something to write; `EBUSY` while [`Core::set_backing_file`] or [`Core::reload`]
    /// runs (never waits for them).
    pub fn set_all_allocated(&self, on: bool) -> Result<()> {
        let mut header = self.header();
        header.set_all_allocated(on);
        let Some((at, field)) = header.features_field() else {
            return Ok(()); // layout 1: no feature bits
        };
        if self.all_allocated() == on && !self.header_unsynced() {
            return Ok(());
        }
        if !self.writable {
            return Err(Error::ReadOnly(Op::Write));
        }
        let _shared = self.header_lock.try_shared()?;
        self.header_unsynced.store(true, Ordering::Release);
        self.meta
            .write_at(&field, at)
            .map_err(|e| Error::io(Op::Write, &self.meta_name, at, e))?;
        self.meta
            .flush()
            .map_err(|e| Error::io(Op::Flush, &self.meta_name, 0, e))?;
        self.all_allocated.store(on, Ordering::Release);
        self.header_unsynced.store(false, Ordering::Release);
        Ok(())
    }
}
