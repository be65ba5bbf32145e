//! Writes: in place where clusters are allocated, as allocation transactions where they are
//! not.

use super::claims::Claim;
use super::Core;
use crate::bitmap::PAGE_BYTES;
use crate::cluster::Cluster;
use crate::error::{Error, Op, Result};
use std::ops::Range;

/// Clusters per bitmap page.
const PAGE_BITS: u64 = PAGE_BYTES * 8;

/// What the host does next for a write, or that it must wait.
#[derive(Debug)]
#[must_use]
pub enum Begin<T> {
    Ready(T),
    /// Something this needs is held by another request: retry once [`Core::generation`] is no
    /// longer this value.
    Busy(u64),
}

/// The next step of a write.
#[derive(Debug)]
pub enum Step {
    /// The first `len` bytes hit allocated clusters: write them to the image file in place.
    InPlace(u64),
    /// The first `txn.len()` bytes hit unallocated clusters, now claimed by `txn`.
    Allocate(Txn),
}

/// An allocation in flight: unallocated clusters claimed by one write. The host writes the
/// image file from [`Txn::cluster_start`] to [`Txn::cluster_end`] in one go — the head before
/// the guest data and the tail after it from the backing file ([`Txn::head_backing`] and
/// [`Txn::tail_backing`] bytes of each; zeros for the rest), the guest data between — then
/// gives the transaction back with [`Core::commit`] (or [`Core::abort`] if anything failed).
/// Owned and `Send`: it may be kept in a handle and finished on another thread. Forgetting it
/// leaves its clusters claimed.
#[derive(Debug)]
#[must_use = "a transaction must be committed or aborted"]
pub struct Txn {
    claim: Claim,
    offset: u64,
    len: u64,
    cluster_start: u64,
    cluster_end: u64,
    head_backing: u64,
    tail_backing: u64,
}

impl Txn {
    /// Where the guest data of this step starts (the write's offset plus what came before).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of guest data in this step.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a transaction covers at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the image-file range the host writes (the first claimed cluster's start).
    pub fn cluster_start(&self) -> u64 {
        self.cluster_start
    }

    /// End of that range (the last claimed cluster's end, clamped to the image size).
    pub fn cluster_end(&self) -> u64 {
        self.cluster_end
    }

    /// The head, `cluster_start..offset`: its first `head_backing()` bytes come from the
    /// backing file, the rest are zeros.
    pub fn head_len(&self) -> u64 {
        self.offset - self.cluster_start
    }

    pub fn head_backing(&self) -> u64 {
        self.head_backing
    }

    /// The tail, `offset + len..cluster_end`: its first `tail_backing()` bytes come from the
    /// backing file, the rest are zeros.
    pub fn tail_len(&self) -> u64 {
        self.cluster_end - (self.offset + self.len)
    }

    pub fn tail_backing(&self) -> u64 {
        self.tail_backing
    }
}

impl Core {
    /// The next step of a write of `bytes` bytes at `offset` (inside the image, `bytes > 0`):
    /// in place, or an allocation transaction, or busy when another request is allocating one
    /// of the clusters. Never waits. `EPERM` on a read-only image, `EINVAL` past the end.
    pub fn begin_write(&self, offset: u64, bytes: u64) -> Result<Begin<Step>> {
        if !self.writable {
            return Err(Error::ReadOnly(Op::Write));
        }
        self.check(offset, bytes)?;
        if bytes == 0 {
            return Err(Error::invalid("a write step of 0 bytes"));
        }
        if self.all_allocated() {
            return Ok(Begin::Ready(Step::InPlace(bytes)));
        }
        loop {
            let (allocated, n) = self.run(offset, bytes)?;
            if allocated {
                return Ok(Begin::Ready(Step::InPlace(n)));
            }
            let g = self.geometry();
            let clusters = g.cluster_of(offset)..g.cluster_of(offset + n - 1) + 1;
            let claim = match self.claims.try_claim(clusters.start.0..clusters.end.0) {
                Ok(claim) => claim,
                Err(generation) => return Ok(Begin::Busy(generation)),
            };
            // A transaction may have committed some of these clusters between the lookup and
            // the claim; under the claim their bits cannot change any more.
            match self.run(offset, n) {
                Ok((false, m)) if m == n => {
                    return Ok(Begin::Ready(Step::Allocate(self.txn(claim, offset, n))))
                }
                Ok(_) => self.claims.release(claim),
                Err(e) => {
                    self.claims.release(claim);
                    return Err(e);
                }
            }
        }
    }

    fn txn(&self, claim: Claim, offset: u64, len: u64) -> Txn {
        let g = self.geometry();
        let clusters = claim.clusters();
        let cluster_start = g.cluster_start(Cluster(clusters.start));
        let cluster_end = g.cluster_end(Cluster(clusters.end - 1));
        let end = offset + len;
        let backing = self.backing_len().unwrap_or(0);
        let within = |from: u64, to: u64| backing.clamp(from, to) - from;
        Txn {
            claim,
            offset,
            len,
            cluster_start,
            cluster_end,
            head_backing: within(cluster_start, offset),
            tail_backing: within(end, cluster_end),
        }
    }

    /// Marks the transaction's clusters allocated and releases them. Call it only once the
    /// image-file write finished (and, in writethrough, was flushed). On failure (loading a
    /// bitmap page) every cluster stays unallocated, and they are released all the same.
    pub fn commit(&self, txn: Txn) -> Result<()> {
        let clusters = txn.claim.clusters();
        let clusters = Cluster(clusters.start)..Cluster(clusters.end);
        let set = self
            .hold_pages(clusters.clone())
            .and_then(|()| self.bitmap.set_range(clusters, &self.store()));
        self.claims.release(txn.claim);
        set
    }

    /// Loads every bitmap page of `clusters` and keeps it in memory (dirty), so that setting
    /// their bits does no I/O: a commit sets all of its bits or none.
    fn hold_pages(&self, clusters: Range<Cluster>) -> Result<()> {
        let mut c = clusters.start;
        while c < clusters.end {
            self.bitmap.hold_page_of(c, &self.store())?;
            c = Cluster((c.0 / PAGE_BITS + 1) * PAGE_BITS);
        }
        Ok(())
    }

    /// Releases the transaction's clusters; they stay unallocated.
    pub fn abort(&self, txn: Txn) {
        self.claims.release(txn.claim);
    }
}
