//! Layout 2's "all allocated" compatible feature bit: while it is set, every cluster lives in
//! the image file, lookups answer "data" without asking the bitmap, writes go in place, and the
//! backing file is not needed. The bit is set once every cluster is allocated (the host asks,
//! e.g. at flush and close, after a write-back made every bit durable) and cleared, durably,
//! before anything makes a cluster unallocated again (a truncate that grows the image over a
//! backing file no longer than it was).

use super::Core;
use crate::cluster::Cluster;
use crate::error::{Error, Op, Result};
use std::sync::atomic::Ordering;

impl Core {
    /// Whether the "all allocated" bit is set (never for layout 1).
    pub fn all_allocated(&self) -> bool {
        self.all_allocated.load(Ordering::Acquire)
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

    /// Sets or clears the "all allocated" bit in the header and makes it durable (layout 2; a
    /// no-op for layout 1). Set it only once every cluster is allocated with its bit durable;
    /// clear it before making any cluster unallocated.
    pub fn set_all_allocated(&self, on: bool) -> Result<()> {
        let mut header = self.header.clone();
        if !header.set_all_allocated(on) || self.all_allocated() == on {
            return Ok(());
        }
        self.meta
            .write_at(&header.to_bytes(), 0)
            .map_err(|e| Error::io(Op::Write, &self.meta_name, 0, e))?;
        self.meta
            .flush()
            .map_err(|e| Error::io(Op::Flush, &self.meta_name, 0, e))?;
        self.all_allocated.store(on, Ordering::Release);
        Ok(())
    }
}
