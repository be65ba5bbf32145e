//! The metadata side of truncate, in the steps the host interleaves with its own changes to the
//! image file (see `engine::truncate` for the order and why it is crash-safe). The host runs
//! these steps exclusively of every other call on the core except the lookups ([`Core::map`],
//! [`Core::is_allocated`]), and with no write-back in flight (checked).

use super::Core;
use crate::cluster::Cluster;
use crate::error::{Error, Op, Result};
use std::ops::Range;
use std::sync::atomic::Ordering;

impl Core {
    /// Shrink, before the host cuts the image file: holds the bitmap page at the new end in
    /// memory, so that [`Core::shrink_commit`] does no I/O and cannot fail.
    pub fn shrink_begin(&self, size: u64) -> Result<()> {
        self.writable_for(Op::Truncate)?;
        let new = self.geometry().with_size(size);
        if let Some(last) = self.geometry().clusters().checked_sub(1) {
            self.bitmap
                .hold_page_of(Cluster(new.clusters().min(last)), &self.store())?;
        }
        Ok(())
    }

    /// Shrink, once the image file is cut: the image has its new size.
    pub fn shrink_commit(&self, size: u64) -> Result<()> {
        let new = self.geometry().with_size(size);
        self.bitmap.resize(new.clusters(), &self.store())?;
        self.size.store(size, Ordering::Release);
        self.scan_from.store(0, Ordering::Release);
        Ok(())
    }

    /// Shrink, once the cut of the image file is durable: cuts the bitmap in the metadata
    /// source, the cut clusters' bits in layout 2's padding included (bits past the end, should
    /// a crash leave them, are masked at load). The byte of the last cluster is rewritten by
    /// the next write-back (its page is dirty since [`Core::shrink_commit`]).
    pub fn shrink_finish(&self) -> Result<()> {
        let clusters = self.geometry().clusters();
        self.cut_meta(clusters, clusters)
    }

    /// Grow, first step: the bitmap grows (zeros) in the metadata source and in memory; the size
    /// stays the old one until [`Core::grow_commit`]. On failure nothing changed.
    pub fn grow_begin(&self, size: u64) -> Result<()> {
        self.writable_for(Op::Truncate)?;
        let old = self.geometry();
        let new = old.with_size(size);
        let grown = self.cut_meta(old.clusters(), new.clusters());
        let grown = grown.and_then(|()| self.bitmap.resize(new.clusters(), &self.store()));
        grown.inspect_err(|_| {
            let _ = self.cut_meta(old.clusters(), old.clusters());
        })
    }

    /// Grow, over a longer backing file: marks `clusters` (past the old end, or the partial
    /// cluster at it once the host completed it from the backing file) allocated.
    pub fn grow_allocate(&self, clusters: Range<Cluster>) -> Result<()> {
        self.bitmap.set_range(clusters, &self.store())
    }

    /// Grow, once every bitmap change is durable and the image file has grown: the new size.
    pub fn grow_commit(&self, size: u64) {
        self.size.store(size, Ordering::Release);
        self.scan_from.store(0, Ordering::Release);
    }

    /// Grow failed after [`Core::grow_begin`]: the bitmap gets its old length back, in memory
    /// (no I/O: the page at the old end is resident since `grow_begin`) and in the metadata
    /// source.
    pub fn grow_abort(&self) -> Result<()> {
        let old = self.geometry();
        let resized = self.bitmap.resize(old.clusters(), &self.store());
        let cut = self.cut_meta(old.clusters(), old.clusters());
        resized.and(cut)
    }

    /// A truncate may start: the image is writable, and no write-back is in flight (a copy of
    /// a page taken before a resize and written after it would put stale bits on disk).
    fn writable_for(&self, what: Op) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly(what));
        }
        match self.writeback_open.load(Ordering::Acquire) {
            false => Ok(()),
            true => Err(Error::invalid(format!(
                "{what} while a metadata write-back is in flight: end it first"
            ))),
        }
    }

    /// The bitmap's length on disk for `clusters` clusters (layout 2 pads it).
    fn bitmap_len(&self, clusters: u64) -> u64 {
        self.header.bitmap_len(clusters)
    }

    /// Sets the `.add-cow` file's length for a bitmap of `len` bytes.
    fn resize_meta(&self, len: u64) -> Result<()> {
        self.touch_meta();
        let at = self.header.bitmap_offset() + len;
        self.meta
            .resize(at)
            .map_err(|e| Error::io(Op::Resize, &self.meta_name, at, e))
    }

    /// Gives the bitmap in the metadata source its length for `clusters` clusters, with zeros
    /// past the byte of the last of the first `keep` clusters (`keep` ≤ `clusters`, and ≤ the
    /// clusters the source holds bits of): whatever lay there is stale (bits of clusters a
    /// shrink cut, in layout 2's padding, or left by a crash during one, or by a failed grow)
    /// and is cut first, so that no bit past the end survives on disk.
    fn cut_meta(&self, keep: u64, clusters: u64) -> Result<()> {
        self.resize_meta(keep.div_ceil(8))?;
        let len = self.bitmap_len(clusters);
        match len == keep.div_ceil(8) {
            true => Ok(()),
            false => self.resize_meta(len),
        }
    }
}
