//! Resizing an image, as QEMU resizes a qcow2 overlay (qemu-iotests 274).
//!
//! Order: the bitmap (the `.add-cow` file) first, the image file only once that succeeded.
//! Growing never exposes backing data: when the backing file is longer than the old size, the
//! partial cluster at the old end is completed from the backing file and every new cluster is
//! allocated (the image file's new area reads zeros); otherwise the new clusters stay
//! unallocated and read zeros because they lie past the backing file's end.

use super::{Image, State};
use crate::error::{Error, Result};
use std::io::{IoSlice, IoSliceMut};

impl Image {
    /// Shrinks or grows the image to `size` bytes. The caller orders it against every other
    /// call on this image (it waits for requests in flight). `EPERM` on a read-only image.
    pub fn truncate(&self, size: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("truncate"));
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let old = st.geometry;
        if size == old.size() {
            return Ok(());
        }
        let new = old.with_size(size);
        self.resize_bitmap(&mut st, new.clusters(), old.bitmap_len())?;
        if let Err(e) = self.resize_image_file(old.size(), size) {
            // The bitmap on disk is already resized; match it in memory, keep the old size.
            st.bitmap.resize(old.clusters(), &self.loader())?;
            return Err(e);
        }
        st.geometry = new;
        if size > old.size() && self.backing_len()? > old.size() {
            self.allocate_grown_area(&st, old.size())?;
        }
        if self.writethrough {
            self.commit(&st, true)?;
        }
        Ok(())
    }

    fn backing_len(&self) -> Result<u64> {
        self.backing.as_ref().map_or(Ok(0), |b| b.size())
    }

    /// Sets the `.add-cow` file's length for `clusters` and resizes the bitmap in memory.
    fn resize_bitmap(&self, st: &mut State, clusters: u64, old_len: u64) -> Result<()> {
        let new_len = clusters.div_ceil(8);
        let base = self.header.bitmap_offset();
        let resize = |len: u64| {
            self.meta
                .resize(base + len)
                .map_err(|e| Error::io("resize", &self.meta_name, base + len, e))
        };
        if new_len > old_len {
            // Whatever lies past the old bitmap is stale: cut it so that growing adds zeros.
            let meta_len = self
                .meta
                .len()
                .map_err(|e| Error::io("get length of", &self.meta_name, 0, e))?;
            if meta_len > base + old_len {
                resize(old_len)?;
            }
        }
        resize(new_len)?;
        st.bitmap.resize(clusters, &self.loader())
    }

    /// Resizes the image file; when growing, bytes past the old size are zero even if the file
    /// held stale bytes there.
    fn resize_image_file(&self, old: u64, new: u64) -> Result<()> {
        let resize = |len: u64| {
            self.data
                .resize(len)
                .map_err(|e| Error::io("resize", &self.data_name, len, e))
        };
        if new > old {
            let len = self
                .data
                .len()
                .map_err(|e| Error::io("get length of", &self.data_name, 0, e))?;
            if len != old {
                resize(old)?;
            }
        }
        resize(new)
    }

    /// After growing over a longer backing file: completes the partial cluster at the old end
    /// from the backing file, then marks every new cluster allocated (their image-file bytes
    /// are zeros from the resize).
    fn allocate_grown_area(&self, st: &State, old_size: u64) -> Result<()> {
        let g = st.geometry;
        let load = self.loader();
        let first_new = old_size.div_ceil(g.cluster_size());
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
        st.bitmap.set_range(first_new, g.clusters(), &load)
    }
}
