//! Commit: writing every allocated cluster into the backing file (raw, or an add-cow image
//! through its own write path), as `qemu-img commit` does, and optionally emptying the overlay.
//!
//! # Durability order (enforced here)
//! 1. The image is flushed (a read-only one has nothing to flush), so that a crash never finds
//!    the backing file ahead of the image it came from. The backing file grows to the image's
//!    size when it is shorter (QEMU's commit does too: the area read zeros before, and reads
//!    zeros after).
//! 2. Every allocated run is read from the image file and written at the same offset into the
//!    backing file; then the backing file is flushed. Until then nothing in the overlay changed.
//! 3. Emptying (optional), only once the backing data is durable: layout 2's "all allocated" bit is cleared durably, the stored bitmap is
//!    zeroed and the `.add-cow` file synced, and only then is the image file punched. A crash
//!    at any point reads the same content: a cleared bit reads the backing file, which already
//!    holds that cluster's data durably; a punched cluster's bit is already durably clear.
//!
//! Exclusive: [`Image::commit`] takes `&mut self`, so no read or write runs beside it (a read
//! that found a cluster allocated must not read the image file after it was punched).

use super::{Backing, Image, OpenOptions};
use crate::error::{Error, Op, Result};
use std::path::Path;

/// Bytes copied per read and write.
const CHUNK: u64 = 4 << 20;

impl Backing {
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        match self {
            Backing::Raw { storage, name } => storage
                .write_at(buf, offset)
                .map_err(|e| Error::io(Op::Write, name, offset, e)),
            Backing::AddCow(image) => image.write_at(offset, buf),
        }
    }

    fn flush(&self) -> Result<()> {
        match self {
            Backing::Raw { storage, name } => storage
                .flush()
                .map_err(|e| Error::io(Op::Flush, name, 0, e)),
            Backing::AddCow(image) => image.flush(),
        }
    }

    /// Grows the backing data to `size` bytes when it is shorter (the grown area reads zeros).
    fn grow_to(&self, size: u64) -> Result<()> {
        if self.size()? >= size {
            return Ok(());
        }
        match self {
            Backing::Raw { storage, name } => storage
                .resize(size)
                .map_err(|e| Error::io(Op::Resize, name, size, e)),
            Backing::AddCow(image) => image.truncate(size),
        }
    }
}

impl Image {
    /// Writes every allocated cluster into the backing file and flushes it; with `empty`, then
    /// makes every cluster unallocated again and punches the image file (the space goes back;
    /// a storage that cannot punch keeps it). The image reads the same before, during and after,
    /// whatever crash comes in between (durability order in the module docs).
    ///
    /// The backing source must be writable: open with [`OpenOptions::backing_writable`], or
    /// supply a writable one in [`super::Parts`]; a read-only add-cow backing image gives
    /// `EPERM`, a raw file opened read-only the OS's `EBADF`. `EINVAL` without a backing file;
    /// `EPERM` with `empty` on an image opened read-only.
    pub fn commit(&mut self, empty: bool) -> Result<()> {
        if empty && self.is_read_only() {
            return Err(Error::ReadOnly(Op::Write));
        }
        self.backing_len_now()?;
        let size = self.size();
        let backing = self
            .backing()
            .ok_or_else(|| Error::invalid("commit: the image has no backing file to commit to"))?;
        if let Backing::AddCow(image) = backing {
            if image.is_read_only() {
                return Err(Error::ReadOnly(Op::Write));
            }
        }
        self.flush()?;
        backing.grow_to(size)?;
        self.core().set_backing_len(Some(backing.size()?));
        self.copy_allocated(backing)?;
        backing.flush()?;
        if empty {
            self.empty()?;
        }
        Ok(())
    }

    /// Copies every allocated run into `backing`, in chunks of [`CHUNK`].
    fn copy_allocated(&self, backing: &Backing) -> Result<()> {
        let size = self.size();
        let mut buf = Vec::new();
        let mut offset = 0;
        while offset < size {
            let (allocated, n) = self.is_allocated(offset, size - offset)?;
            if n == 0 {
                break;
            }
            if allocated {
                let end = offset + n;
                let mut at = offset;
                while at < end {
                    let len = (end - at).min(CHUNK);
                    buf.resize(len as usize, 0);
                    self.data()
                        .read_at(&mut buf, at)
                        .map_err(|e| Error::io(Op::Read, self.data_name(), at, e))?;
                    backing.write_at(&buf, at)?;
                    at += len;
                }
            }
            offset += n;
        }
        Ok(())
    }

    /// Makes every cluster unallocated, durably, then punches the image file. Only once the
    /// image was flushed (no dirty bitmap page) and the backing file durably holds every
    /// allocated cluster. Layout 2's "all allocated" bit is cleared without filling the bitmap
    /// first (what a truncate must do): a cluster whose bit reads 0 once the bit is gone reads
    /// the backing file, which already holds its data.
    fn empty(&mut self) -> Result<()> {
        let core = self.core();
        core.set_all_allocated(false)?;
        core.clear_all()?;
        self.release_data()
    }

    /// Gives the image file's space back now that no cluster lives in it. The one place that
    /// punches for commit: storage that cannot punch (`ENOTSUP`) keeps the space.
    fn release_data(&self) -> Result<()> {
        let size = self.size();
        match self.data().punch_hole(0, size) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(()),
            other => other.map_err(|e| Error::io(Op::PunchHole, self.data_name(), 0, e)),
        }
    }
}

/// Commits the image at `path` into its backing file: opens it read-write with its backing file
/// read-write (both locked for writing: `EBUSY` while another user has either), then
/// [`Image::commit`], then closes it. `opts` says how to open it (the backing format of a
/// layout-1 image, confinement); `writable` and `backing_writable` are forced on.
pub fn commit(path: impl AsRef<Path>, opts: &OpenOptions, empty: bool) -> Result<()> {
    let opts = OpenOptions {
        writable: true,
        backing_writable: true,
        no_backing: false,
        ..opts.clone()
    };
    let mut image = Image::open(path, &opts)?;
    image.commit(empty)?;
    image.close()
}
