//! The engine: add-cow semantics over three byte sources (the `.add-cow` file, the raw image
//! file, the backing file), with QEMU's block-driver contract.
//!
//! # Lock order
//! 1. `state` ([`ShardedLock`]): shared by every request, exclusive only for `truncate`.
//!    Reads and writes take it shared, which costs a per-thread shard, not a global lock.
//! 2. [`claims::Claims`]: per-cluster allocation claims, taken in ascending cluster order, held
//!    across the copy from the backing file and the write of the cluster.
//! 3. `commit` (a mutex): serializes bitmap write-back (flush, and writethrough allocations) so
//!    that an older copy of a page never lands after a newer one.
//!
//! Reads and writes to allocated clusters take only (1), shared: they run in parallel.
//!
//! # Durability order
//! - A bit is set in memory only after its cluster's data was written to the image file.
//! - Flush: copy the dirty pages, make the image file durable, write the copies, make the
//!   `.add-cow` file durable. Every bit in a copy had its data written before the copy was
//!   taken, so before the image file was synced: the disk never holds a set bit whose data is
//!   not durable.
//! - Writethrough: a write syncs the image file before it sets any bit, then writes the
//!   bitmap pages and syncs the `.add-cow` file before it returns.
//! - A failed write-back marks the pages dirty again.

mod backing;
mod claims;
mod create;
mod files;
mod iov;
mod open;
mod truncate;

pub use backing::Backing;
pub use create::{create, CreateOptions};
pub use open::{read_header, BackingFormat, OpenOptions, Parts};

use crate::bitmap::{self, Bitmap};
use crate::error::{Error, Result};
use crate::layout::{Geometry, Header};
use crate::storage::{zero_fill, Storage};
use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard};
use std::borrow::Cow;
use std::io::{IoSlice, IoSliceMut};
use std::sync::Mutex;

/// An open add-cow image. `Send + Sync`: share it between threads by reference or `Arc`.
pub struct Image {
    meta: Box<dyn Storage>,
    meta_name: String,
    data: Box<dyn Storage>,
    data_name: String,
    backing: Option<Backing>,
    header: Header,
    read_only: bool,
    writethrough: bool,
    state: ShardedLock<State>,
    claims: claims::Claims,
    commit: Mutex<()>,
    closed: bool,
}

/// What `truncate` changes; everything else reads it shared.
struct State {
    geometry: Geometry,
    bitmap: Bitmap,
}

impl State {
    /// Whether the byte at `offset` is allocated, and how many bytes from `offset`, at most
    /// `max`, share that state (whole clusters, clamped to `max`).
    fn run(&self, image: &Image, offset: u64, max: u64) -> Result<(bool, u64)> {
        let g = self.geometry;
        let first = g.cluster_of(offset);
        let last = g.cluster_of(offset + max - 1);
        let (allocated, n) = self.bitmap.run(first, last - first + 1, &image.loader())?;
        Ok((allocated, (g.cluster_start(first + n) - offset).min(max)))
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.geometry.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }
}

impl Image {
    /// Virtual size in bytes (the image file's length).
    pub fn size(&self) -> u64 {
        self.state().geometry.size()
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.header.cluster_bits()
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The backing image or file, unless opened without it.
    pub fn backing(&self) -> Option<&Backing> {
        self.backing.as_ref()
    }

    fn state(&self) -> ShardedLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The bitmap as the `.add-cow` file stores it, for the in-memory bitmap to load from.
    fn loader(&self) -> MetaBitmap<'_> {
        MetaBitmap(self)
    }

    /// Reads `bufs` from `offset`: allocated clusters from the image file, the others from the
    /// backing file (zeros past its end, or without one). `EINVAL` past the end of the image.
    pub fn read(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        let len = iov::total(bufs)?;
        let st = self.state();
        st.check(offset, len)?;
        let mut pos = 0;
        while pos < len {
            let (allocated, n) = st.run(self, offset + pos, len - pos)?;
            if n == len {
                return self.read_extent(allocated, offset, bufs);
            }
            self.read_extent(allocated, offset + pos, &mut iov::slice_mut(bufs, pos, n))?;
            pos += n;
        }
        Ok(())
    }

    fn read_extent(&self, allocated: bool, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<()> {
        if allocated {
            self.data
                .read_vectored_at(bufs, offset)
                .map_err(|e| Error::io("read", &self.data_name, offset, e))
        } else {
            self.read_backing(bufs, offset)
        }
    }

    fn read_backing(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        match &self.backing {
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
        if self.read_only {
            return Err(Error::ReadOnly("write"));
        }
        let len = iov::total(bufs)?;
        let st = self.state();
        st.check(offset, len)?;
        let mut pos = 0;
        let mut in_place = false;
        while pos < len {
            let (allocated, n) = st.run(self, offset + pos, len - pos)?;
            let seg = match n == len {
                true => Cow::Borrowed(bufs),
                false => Cow::Owned(iov::slice(bufs, pos, n)),
            };
            if allocated {
                self.write_data(&seg, offset + pos)?;
                in_place = true;
            } else {
                in_place |= self.allocate(&st, offset + pos, n, &seg)?;
            }
            pos += n;
        }
        if in_place && self.writethrough {
            self.sync_data()?;
        }
        Ok(())
    }

    fn write_data(&self, bufs: &[IoSlice<'_>], offset: u64) -> Result<()> {
        self.data
            .write_vectored_at(bufs, offset)
            .map_err(|e| Error::io("write", &self.data_name, offset, e))
    }

    fn sync_data(&self) -> Result<()> {
        self.data
            .flush()
            .map_err(|e| Error::io("flush", &self.data_name, 0, e))
    }

    /// Writes an unallocated run under claims on its clusters. Returns whether any part was
    /// written in place (another writer allocated it while this one waited for the claim).
    fn allocate(&self, st: &State, offset: u64, len: u64, data: &[IoSlice<'_>]) -> Result<bool> {
        let g = st.geometry;
        let _claim = self
            .claims
            .claim(g.cluster_of(offset).0..g.cluster_of(offset + len - 1).0 + 1);
        let mut pos = 0;
        let mut in_place = false;
        while pos < len {
            let (allocated, n) = st.run(self, offset + pos, len - pos)?;
            let seg = iov::slice(data, pos, n);
            if allocated {
                self.write_data(&seg, offset + pos)?;
                in_place = true;
            } else {
                self.copy_on_write(st, offset + pos, n, &seg)?;
            }
            pos += n;
        }
        Ok(in_place)
    }

    /// Allocates the clusters under `offset..offset + len` (claimed, unallocated): head and tail
    /// from the backing file, the guest data between, one vectored write, then the bits.
    fn copy_on_write(&self, st: &State, offset: u64, len: u64, data: &[IoSlice<'_>]) -> Result<()> {
        let g = st.geometry;
        let (first, last) = (g.cluster_of(offset), g.cluster_of(offset + len - 1));
        let start = g.cluster_start(first);
        let end = offset + len;
        let mut head = vec![0u8; (offset - start) as usize];
        let mut tail = vec![0u8; (g.cluster_end(last) - end) as usize];
        self.read_backing(&mut [IoSliceMut::new(&mut head)], start)?;
        self.read_backing(&mut [IoSliceMut::new(&mut tail)], end)?;
        let mut iov = Vec::with_capacity(data.len() + 2);
        iov.push(IoSlice::new(&head));
        iov.extend_from_slice(data);
        iov.push(IoSlice::new(&tail));
        self.write_data(&iov, start)?;
        if self.writethrough {
            self.sync_data()?;
        }
        st.bitmap.set_range(first..last + 1, &self.loader())?;
        if self.writethrough {
            self.commit(st, false)?;
        }
        Ok(())
    }

    /// [`Image::read`] into one buffer.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read(offset, &mut [IoSliceMut::new(buf)])
    }

    /// [`Image::write`] from one buffer.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write(offset, &[IoSlice::new(buf)])
    }

    /// Whether the byte at `offset` is allocated in the image file, and the length of the run
    /// of bytes from `offset` in the same state, clamped to `bytes` and the image end.
    /// `(false, 0)` for `offset >= size` or `bytes == 0`.
    pub fn is_allocated(&self, offset: u64, bytes: u64) -> Result<(bool, u64)> {
        let st = self.state();
        let size = st.geometry.size();
        if offset >= size || bytes == 0 {
            return Ok((false, 0));
        }
        st.run(self, offset, bytes.min(size - offset))
    }

    /// Makes every completed write durable: image data first, then the bitmap.
    pub fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.commit(&self.state(), true)
    }

    /// Writes the dirty bitmap pages back (after syncing the image file when `sync_data`),
    /// then syncs the `.add-cow` file. Pages whose write-back fails stay dirty.
    fn commit(&self, st: &State, sync_data: bool) -> Result<()> {
        let _serial = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        let pages = st
            .bitmap
            .take_dirty()
            .expect("the commit mutex keeps write-backs one at a time");
        let result = (|| {
            if sync_data {
                self.sync_data()?;
            }
            for page in pages.pages() {
                let at = self.header.bitmap_offset() + page.offset;
                self.meta
                    .write_at(&page.bytes, at)
                    .map_err(|e| Error::io("write bitmap of", &self.meta_name, at, e))?;
            }
            self.meta
                .flush()
                .map_err(|e| Error::io("flush", &self.meta_name, 0, e))
        })();
        match result {
            Ok(()) => st.bitmap.writeback_done(pages),
            Err(_) => st.bitmap.writeback_failed(pages),
        }
        result
    }

    /// Flushes and closes. Dropping an image flushes too, but cannot report a failure.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.flush()
    }
}

/// The bitmap in the `.add-cow` file, in bitmap coordinates (the file's byte
/// `header.bitmap_offset()` is bitmap byte 0).
struct MetaBitmap<'a>(&'a Image);

impl bitmap::Store for MetaBitmap<'_> {
    /// Zeros past the end of the file.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let img = self.0;
        let at = img.header.bitmap_offset() + offset;
        img.meta
            .read_at(buf, at)
            .map_err(|e| Error::io("read bitmap of", &img.meta_name, at, e))
    }

    /// The file's next data, mapped back to bitmap coordinates. The bitmap does not start on
    /// a file-system block, so one block may hold the end of a page and the start of the next.
    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        let img = self.0;
        let base = img.header.bitmap_offset();
        let at = base + offset;
        let data = img
            .meta
            .next_data(at)
            .map_err(|e| Error::io("find data in", &img.meta_name, at, e))?;
        Ok(data.map(|d| d.max(at) - base))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.flush();
        }
    }
}

#[cfg(test)]
mod tests;
