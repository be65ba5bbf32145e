//! Resizing an image, as QEMU resizes a qcow2 overlay (qemu-iotests 274), safe against crashes
//! and failures at any point.
//!
//! The virtual size is the image file's length, so the order of the two files' changes decides
//! what a crash leaves:
//!
//! - **Shrink**: the image file is cut and made durable *first*, then the bitmap is cut. A crash
//!   before the cut is durable leaves the old size with all of its content; after it, the new
//!   size with the old content up to it (the longer bitmap's bits past the end are masked at
//!   load and cleaned by the next grow). The reverse order would let a crash keep the old size
//!   with a shortened bitmap: allocated clusters in the cut area would read backing data again.
//!   Nothing fallible comes before the cut; if syncing it or cutting the bitmap fails, the image
//!   already has its new size and the error is returned.
//! - **Grow** never exposes backing data. The bitmap grows first (zeros: every whatever lay past
//!   the old bitmap is cut first). Over a backing file longer than the old size, the partial
//!   cluster at the old end is completed from the backing file and every new cluster is
//!   allocated. Then *every* bitmap change, the page at the old end included, is made durable
//!   (image data first) before the image file grows: until it does, new bits lie past the end
//!   and are masked at load. A failure at any step gives the bitmap back its old length in
//!   memory and on disk, and the image file keeps its old length.

use super::{Image, State};
use crate::error::{Error, Result};
use crate::layout::{Cluster, Geometry, MAX_SIZE};
use std::io::{IoSlice, IoSliceMut};

impl Image {
    /// Shrinks or grows the image to `size` bytes. The caller orders it against every other
    /// call on this image (it waits for requests in flight). `EPERM` on a read-only image,
    /// `EFBIG` beyond [`MAX_SIZE`].
    pub fn truncate(&self, size: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("truncate"));
        }
        if size > MAX_SIZE {
            return Err(Error::TooLarge(format!(
                "truncate to {size} bytes: larger than the largest image supported \
                 ({MAX_SIZE} bytes, 64 PiB)"
            )));
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let new = st.geometry.with_size(size);
        if size < st.geometry.size() {
            self.shrink(&mut st, new)?;
            if self.writethrough {
                self.commit(&st, true)?;
            }
        } else if size > st.geometry.size() {
            self.grow(&mut st, new)?;
        }
        Ok(())
    }

    fn shrink(&self, st: &mut State, new: Geometry) -> Result<()> {
        let old = st.geometry;
        let load = self.loader();
        // The page at the new end, held in memory, so that resizing the bitmap after the cut
        // does no I/O and cannot fail.
        if let Some(last) = old.clusters().checked_sub(1) {
            st.bitmap
                .hold_page_of(Cluster(new.clusters().min(last)), &load)?;
        }
        self.resize_data(new.size())?;
        // The image file has its new length: from here on, so has the image.
        st.bitmap.resize(new.clusters(), &load)?;
        st.geometry = new;
        self.sync_data()?;
        self.resize_meta(new.bitmap_len())
    }

    fn grow(&self, st: &mut State, new: Geometry) -> Result<()> {
        let old = st.geometry;
        let load = self.loader();
        let restore_meta = |e: Error| {
            let _ = self.resize_meta(old.bitmap_len());
            e
        };
        self.grow_meta(old.bitmap_len(), new.bitmap_len())
            .map_err(restore_meta)?;
        // On failure the bitmap is unchanged; on success the page at the old end is loaded and
        // dirty, so that the undo below does no I/O.
        st.bitmap
            .resize(new.clusters(), &load)
            .map_err(restore_meta)?;
        let grown = (|| {
            if self.backing_len()? > old.size() {
                self.allocate_grown_area(st, old.size(), new.clusters())?;
            }
            self.commit(st, true)?;
            self.grow_data(old.size(), new.size())?;
            if self.writethrough {
                // The new length itself must be durable before a writethrough truncate returns.
                self.sync_data().inspect_err(|_| {
                    let _ = self.resize_data(old.size());
                })?;
            }
            Ok(())
        })();
        if let Err(e) = grown {
            // Drops the new bits without I/O: the page at the old end was made resident and dirty
            // by the resize above, and only loads evict (the commit is the last bitmap step).
            st.bitmap.resize(old.clusters(), &load)?;
            return Err(restore_meta(e));
        }
        st.geometry = new;
        Ok(())
    }

    fn backing_len(&self) -> Result<u64> {
        self.backing.as_ref().map_or(Ok(0), |b| b.size())
    }

    /// Sets the `.add-cow` file's length for a bitmap of `len` bytes.
    fn resize_meta(&self, len: u64) -> Result<()> {
        let at = self.header.bitmap_offset() + len;
        self.meta
            .resize(at)
            .map_err(|e| Error::io("resize", &self.meta_name, at, e))
    }

    /// Grows the bitmap on disk with zeros: whatever lays past the old bitmap is stale (a crash
    /// during a shrink leaves it) and is cut first.
    fn grow_meta(&self, old_len: u64, new_len: u64) -> Result<()> {
        let meta_len = self
            .meta
            .len()
            .map_err(|e| Error::io("get length of", &self.meta_name, 0, e))?;
        if meta_len > self.header.bitmap_offset() + old_len {
            self.resize_meta(old_len)?;
        }
        self.resize_meta(new_len)
    }

    fn resize_data(&self, len: u64) -> Result<()> {
        self.data
            .resize(len)
            .map_err(|e| Error::io("resize", &self.data_name, len, e))
    }

    /// Grows the image file; bytes past the old size read zeros even if the file held stale
    /// bytes there.
    fn grow_data(&self, old: u64, new: u64) -> Result<()> {
        let len = self
            .data
            .len()
            .map_err(|e| Error::io("get length of", &self.data_name, 0, e))?;
        if len != old {
            self.resize_data(old)?;
        }
        self.resize_data(new)
    }

    /// Before growing over a longer backing file: completes the partial cluster at the old end
    /// from the backing file (its part past the old end will be zeros from the resize), then
    /// marks every new cluster allocated.
    fn allocate_grown_area(&self, st: &State, old_size: u64, new_clusters: u64) -> Result<()> {
        let g = st.geometry;
        let load = self.loader();
        if old_size % g.cluster_size() != 0 {
            let c = g.cluster_of(old_size);
            if !st.bitmap.get(c, &load)? {
                let start = g.cluster_start(c);
                let mut head = vec![0u8; (old_size - start) as usize];
                self.read_backing(&mut [IoSliceMut::new(&mut head)], start)?;
                self.write_data(&[IoSlice::new(&head)], start)?;
                st.bitmap.set_range(c..c + 1, &load)?;
            }
        }
        let grown = Cluster(old_size.div_ceil(g.cluster_size()))..Cluster(new_clusters);
        st.bitmap.set_range(grown, &load)
    }
}
