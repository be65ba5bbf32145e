//! Resizing an image, as QEMU resizes a qcow2 overlay (qemu-iotests 274), safe against crashes
//! and failures at any point.
//!
//! The virtual size is the image file's length, so the order of the two files' changes decides
//! what a crash leaves:
//!
//! - **Shrink**: the image file is cut and made durable *first*, then the bitmap is cut (after
//!   the last cluster's byte, so that layout 2's padding keeps no cut cluster's bit). A crash
//!   before the cut is durable leaves the old size with all of its content; after it, the new
//!   size with the old content up to it (the longer bitmap's bits past the end are masked at
//!   load and cut by the next resize). The reverse order would let a crash keep the old size
//!   with a shortened bitmap: allocated clusters in the cut area would read backing data again.
//!   Nothing fallible comes before the cut; if syncing it or cutting the bitmap fails, the image
//!   already has its new size and the error is returned.
//! - **Grow** never exposes backing data. The bitmap grows first (zeros: whatever lay past the
//!   old last cluster's byte, stale bits in layout 2's padding included, is cut first). Over a
//!   backing file longer than the old size, the partial cluster at the old end is completed
//!   from the backing file and every new cluster is allocated. Then *every* bitmap change, the
//!   page at the old end included, is made durable (image data first) before the image file
//!   grows: until it does, new bits lie past the end and are masked at load. A failure at any
//!   step gives the bitmap back its old length in memory and on disk, and the image file keeps
//!   its old length.
//! - **Layout 2's "all allocated" bit**: a grow that leaves new clusters unallocated (a backing
//!   file no longer than the old size) first clears it, durably and in the order of
//!   `mapping::features`: the bitmap says "allocated" for every existing cluster, written back
//!   durably, and only then the header without the bit. A failure there fails the truncate
//!   before the size changes.

use super::Image;
use crate::cluster::Cluster;
use crate::error::{Error, Op, Result};
use crate::layout::MAX_SIZE;
use crate::mapping::Core;
use std::io::{IoSlice, IoSliceMut};

impl Image {
    /// Shrinks or grows the image to `size` bytes. Waits for the writes and flushes in flight,
    /// and those that start meanwhile wait for it; reads running beside it see the old or the
    /// new size. `EPERM` on a read-only image, `EFBIG` beyond [`MAX_SIZE`].
    pub fn truncate(&self, size: u64) -> Result<()> {
        let _gate = self.exclusive();
        let core = self.core();
        // Read-only first: EPERM whatever the size (the C ABI's contract).
        if !core.is_writable() {
            return Err(Error::ReadOnly(Op::Truncate));
        }
        if size > MAX_SIZE {
            return Err(Error::TooLarge(format!(
                "truncate to {size} bytes: larger than the largest image supported \
                 ({MAX_SIZE} bytes, 64 PiB)"
            )));
        }
        let old = core.size();
        if size < old {
            self.shrink(core, size)?;
            if self.writethrough {
                self.write_back(core, true)?;
            }
        } else if size > old {
            self.grow(core, size)?;
        }
        Ok(())
    }

    fn shrink(&self, core: &Core, size: u64) -> Result<()> {
        core.shrink_begin(size)?;
        self.resize_data(size)?;
        // The image file has its new length: from here on, so has the image.
        core.shrink_commit(size)?;
        self.sync_data()?;
        core.shrink_finish()
    }

    fn grow(&self, core: &Core, size: u64) -> Result<()> {
        let old = core.size();
        // The disk may hold the bit when it is set or when a failed write of it left the
        // header unsynced. The grow rule needs the backing file's length, which an
        // all-allocated image did not open (ENOENT when it is missing). Over a backing file no
        // longer than the image, the new clusters stay unallocated: the bit goes first.
        if (core.all_allocated() || core.header_unsynced())
            && self.backing_len_now()?.unwrap_or(0) <= old
        {
            self.clear_all_allocated(core)?;
        }
        core.grow_begin(size)?;
        let grown = (|| {
            if core.backing_len().unwrap_or(0) > old {
                self.allocate_grown_area(core, old, size)?;
            }
            self.write_back(core, true)?;
            self.grow_data(old, size)?;
            if self.writethrough {
                // The new length itself must be durable before a writethrough truncate returns.
                self.sync_data().inspect_err(|_| {
                    let _ = self.resize_data(old);
                })?;
            }
            Ok(())
        })();
        if let Err(e) = grown {
            core.grow_abort()?;
            return Err(e);
        }
        core.grow_commit(size);
        Ok(())
    }

    /// Clears the "all allocated" bit durably, in the order of `mapping::features`: the bitmap
    /// says "allocated" for every existing cluster (while the bit is set, it may say anything)
    /// and is written back, durably, step by step (bounded memory); only then the header.
    fn clear_all_allocated(&self, core: &Core) -> Result<()> {
        if core.all_allocated() {
            while !core.fill_step()? {
                self.write_back(core, true)?;
            }
        }
        self.write_back(core, true)?;
        core.set_all_allocated(false)
    }

    /// Grows the image file; bytes past the old size read zeros even if the file held stale
    /// bytes there.
    fn grow_data(&self, old: u64, new: u64) -> Result<()> {
        let len = self
            .data()
            .len()
            .map_err(|e| Error::io(Op::GetLength, self.data_name(), 0, e))?;
        if len != old {
            self.resize_data(old)?;
        }
        self.resize_data(new)
    }

    /// Before growing over a longer backing file: completes the partial cluster at the old end
    /// from the backing file (its part past the old end will be zeros from the resize), then
    /// marks every new cluster allocated.
    fn allocate_grown_area(&self, core: &Core, old_size: u64, new_size: u64) -> Result<()> {
        let g = core.geometry();
        let new = g.with_size(new_size);
        if old_size % g.cluster_size() != 0 {
            let c = g.cluster_of(old_size);
            let start = g.cluster_start(c);
            if !core.is_allocated(start, 1)?.0 {
                let mut head = vec![0u8; (old_size - start) as usize];
                self.read_backing(&mut [IoSliceMut::new(&mut head)], start)?;
                self.write_data(&[IoSlice::new(&head)], start)?;
                core.grow_allocate(c..c + 1)?;
            }
        }
        let first = Cluster(old_size.div_ceil(g.cluster_size()));
        core.grow_allocate(first..Cluster(new.clusters()))
    }
}
