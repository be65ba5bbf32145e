//! The end of an image's life as an overlay: how much of it is allocated, and detaching it once
//! every cluster is, so that the raw image file stands alone as the disk.
//!
//! # Durability order of a detach
//! The image is opened read-write (locked as usual, the backing file not opened: it is not
//! needed), every cluster is checked allocated, then flushed: image data, then the bitmap, then
//! (layout 2) the "all allocated" bit. Only then, with `remove`, is the `.add-cow` file unlinked
//! and its directory synced, while the lock is still held. A crash before the unlink leaves a
//! complete, fully allocated image; after it, the raw image file alone. Either way the image
//! file holds every byte the guest saw.

use super::{Image, OpenOptions};
use crate::error::{Error, Op, Result};
use crate::storage::Dir;
use std::path::Path;

/// How many clusters of an image are allocated (live in the image file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// Clusters allocated.
    pub allocated: u64,
    /// Clusters in the image (the last one may be partial).
    pub total: u64,
}

impl Allocation {
    /// Every cluster is allocated: the image file is the whole disk.
    pub fn is_full(&self) -> bool {
        self.allocated == self.total
    }
}

impl Image {
    /// Counts the allocated clusters. Takes no lock: writes running beside it may or may not be
    /// counted. Costs one pass over the bitmap's stored data (holes of a sparse `.add-cow` file
    /// are skipped), nothing for a layout-2 image with its "all allocated" bit.
    pub fn allocation(&self) -> Result<Allocation> {
        let core = self.core();
        let g = core.geometry();
        let total = g.clusters();
        if core.all_allocated() {
            return Ok(Allocation {
                allocated: total,
                total,
            });
        }
        let (mut offset, mut allocated) = (0, 0);
        while offset < g.size() {
            let (a, n) = core.is_allocated(offset, g.size() - offset)?;
            if n == 0 {
                break;
            }
            if a {
                allocated += (offset + n).div_ceil(g.cluster_size()) - offset / g.cluster_size();
            }
            offset += n;
        }
        Ok(Allocation { allocated, total })
    }

    /// Whether every cluster is allocated. Cheaper than [`Image::allocation`] when asked
    /// repeatedly: each answer resumes the scan where the last one found an unallocated cluster.
    pub fn is_fully_allocated(&self) -> Result<bool> {
        let core = self.core();
        Ok(core.all_allocated() || core.fully_allocated()?)
    }

    /// Makes the image file a standalone disk: checks that every cluster is allocated (`EBUSY`
    /// with the counts otherwise: hydrate or write the rest first), then flushes, so that the
    /// image file holds every byte the guest saw, durably. The `.add-cow` file stays valid.
    pub fn detach_prepare(&self) -> Result<()> {
        if !self.is_fully_allocated()? {
            let a = self.allocation()?;
            return Err(Error::Busy(format!(
                "{} of {} clusters are not allocated: the image file is not a whole disk yet \
                 (hydrate or write them first)",
                a.total - a.allocated,
                a.total
            )));
        }
        self.flush()
    }
}

/// Detaches the image at `path` from its `.add-cow` file: opens it read-write (locked; `EBUSY`
/// while another user has it), checks that every cluster is allocated (`EBUSY` naming the
/// count otherwise), flushes, and with `remove` deletes the `.add-cow` file durably (directory
/// synced). The raw image file is then a standalone disk; the backing file is not opened and
/// not needed.
pub fn detach(path: impl AsRef<Path>, remove: bool) -> Result<()> {
    let path = path.as_ref();
    let opts = OpenOptions {
        writable: true,
        no_backing: true,
        ..OpenOptions::default()
    };
    let image = Image::open(path, &opts)?;
    image.detach_prepare()?;
    if remove {
        remove_durably(path)?;
    }
    image.close()
}

/// Unlinks `path` and syncs its directory.
fn remove_durably(path: &Path) -> Result<()> {
    let what = format!("add-cow file '{}'", path.display());
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("'{}' names no file", path.display())))?;
    let dir = Dir::of(path)?;
    dir.remove(Path::new(name))
        .and_then(|()| dir.sync())
        .map_err(|e| Error::io(Op::Remove, &what, 0, e))
}
