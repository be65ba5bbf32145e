//! Resizing an image, as QEMU resizes a qcow2 overlay (qemu-iotests 274).
//!
//! The bitmap (the `.add-cow` file) is resized first, the image file only once that succeeded;
//! the virtual size (the image file's length) changes last, so a failure or a crash at any
//! point leaves the old size with its old content.
//!
//! - Shrinking: the bits past the new end are kept in memory until the image file has shrunk;
//!   if that fails they are written back, so no allocated cluster falls back to backing data.
//! - Growing never exposes backing data. Over a backing file longer than the old size, the
//!   partial cluster at the old end is completed from the backing file and every new cluster
//!   is allocated, and these bits are made durable *before* the image file grows: until it
//!   does, they lie past the end and are masked at load. The new area of the image file reads
//!   zeros. Otherwise the new clusters stay unallocated and read zeros, being past the backing
//!   file's end.

use super::{Image, State};
use crate::error::{Error, Result};
use crate::layout::Geometry;
use std::io::{IoSlice, IoSliceMut};

impl Image {
    /// Shrinks or grows the image to `size` bytes. The caller orders it against every other
    /// call on this image (it waits for requests in flight). `EPERM` on a read-only image.
    pub fn truncate(&self, size: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("truncate"));
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let new = st.geometry.with_size(size);
        if size < st.geometry.size() {
            self.shrink(&mut st, new)?;
        } else if size > st.geometry.size() {
            self.grow(&mut st, new)?;
        }
        if self.writethrough {
            self.commit(&st, true)?;
        }
        Ok(())
    }

    fn shrink(&self, st: &mut State, new: Geometry) -> Result<()> {
        let old = st.geometry;
        let load = self.loader();
        st.bitmap
            .hold_range(new.clusters(), old.clusters(), &load)?;
        self.resize_meta(new.bitmap_len())?;
        if let Err(e) = self.resize_data(new.size()) {
            // The bits past the new end are held in memory, dirty: the next flush puts them
            // back on disk.
            let _ = self.resize_meta(old.bitmap_len());
            return Err(e);
        }
        st.bitmap.resize(new.clusters(), &load)?;
        st.geometry = new;
        Ok(())
    }

    fn grow(&self, st: &mut State, new: Geometry) -> Result<()> {
        let old = st.geometry;
        let load = self.loader();
        self.grow_meta(old.bitmap_len(), new.bitmap_len())?;
        st.bitmap.resize(new.clusters(), &load)?;
        let grown = (|| {
            if self.backing_len()? > old.size() {
                self.allocate_grown_area(st, old.size(), new.clusters())?;
                self.commit(st, true)?;
            }
            self.grow_data(old.size(), new.size())
        })();
        if let Err(e) = grown {
            // Drops the new bits (reading the boundary page again if it was evicted since).
            st.bitmap.resize(old.clusters(), &load)?;
            return Err(e);
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

    /// Grows the bitmap on disk with zeros: whatever lay past the old bitmap is stale and cut
    /// first.
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
                st.bitmap.set_range(c, c + 1, &load)?;
            }
        }
        st.bitmap
            .set_range(old_size.div_ceil(g.cluster_size()), new_clusters, &load)
    }
}
