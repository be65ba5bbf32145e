//! The mapping core: add-cow's format logic with **no data I/O**, which **never blocks on
//! another request**. A host (the library's own generic I/O loop in `engine`, or a C block
//! layer through `capi`) asks it where guest bytes live ([`Core::map`]), runs allocating writes
//! as transactions ([`Core::begin_write`], [`Core::commit`], [`Core::abort`]) and writes the
//! bitmap back in steps it orders against its own flushes ([`Core::writeback_begin`],
//! [`Core::writeback_write`], [`Core::writeback_end`]). The host reads and writes the image and
//! backing files itself.
//! See `docs/mapping-core.md`.
//!
//! # Concurrency
//! Every method taking `&self` may run concurrently with every other. Nothing waits for
//! another request: where it would have to, a method returns [`Begin::Busy`] with the
//! [`Core::generation`] to retry after. The only I/O is on the metadata source (the `.add-cow`
//! file: bitmap pages loaded on first touch, written back on request), and no lock of the core
//! is held across it, so a source whose calls yield (a coroutine) may re-enter the core. The
//! size changes only through methods taking `&mut self` (truncate): the host makes truncate
//! exclusive.
//!
//! # Durability contract (what the host does, in order)
//! - Allocating write: write head + guest data + tail to the image file → (writethrough: flush
//!   the image file) → [`Core::commit`] → (writethrough: a metadata write-back, below) →
//!   complete the request. A bit is set only after its cluster's data was written.
//! - Metadata write-back: [`Core::writeback_begin`] (copies the dirty pages) → flush the image
//!   file → [`Core::writeback_write`] (writes the copies) → flush the metadata source →
//!   [`Core::writeback_end`] (the pages turn clean only if all that succeeded). Every
//!   bit in a copy had its data written before the copy, so before the image file was flushed:
//!   the disk never holds a set bit whose data is not durable.
//! - Layout 2's "all allocated" bit (`features.rs`): set only once every bit is durable;
//!   cleared only once every existing cluster's bit is set and durable
//!   ([`Core::fill_step`] and write-backs), and before any cluster becomes unallocated.

#![forbid(unsafe_code)]

mod backing;
mod claims;
mod empty;
mod features;
mod header;
mod resize;
mod write;
mod writeback;
mod zero;

pub use crate::bitmap::PAGE_COST;
pub use header::read_header;
pub use write::{Begin, Step, Txn};
pub use writeback::WriteBack;

use crate::bitmap::{self, Bitmap};
use crate::error::{Error, Op, Result};
use crate::layout::{Geometry, Header};
use crate::storage::Storage;
use claims::Claims;

/// What a run of guest bytes reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Allocated: the image file, at the same offset.
    Data,
    /// Unallocated, inside the backing data: the backing file, at the same offset.
    Backing,
    /// Unallocated, past the backing data's end or without a backing file: zeros.
    Zero,
}

/// A run of guest bytes in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub kind: Kind,
    pub len: u64,
}

/// How a core is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreOptions {
    /// Writes and truncates allowed.
    pub writable: bool,
    /// Cap on the memory of cached bitmap pages, in bytes (0: the default, 32 MiB).
    pub bitmap_cache_bytes: u64,
}

/// The format logic of one open image.
pub struct Core {
    meta: Box<dyn Storage>,
    meta_name: String,
    /// The header as opened. Its layout (cluster size, where the bitmap lives) never changes;
    /// its names and feature bits may be outdated: `current` has them.
    header: Header,
    /// The header as the metadata source holds it now: names as last rewritten
    /// ([`Core::set_backing_file`]), as last read ([`Core::reload`]). Never locked across I/O.
    current: std::sync::RwLock<Header>,
    /// Excludes header rewrites from each other without waiting (`header.rs`).
    header_lock: header::HeaderLock,
    /// The virtual size; changed only by the truncate steps.
    size: std::sync::atomic::AtomicU64,
    bitmap: Bitmap,
    claims: Claims,
    /// The backing data's length as the host last set it; `u64::MAX` for none.
    backing_len: std::sync::atomic::AtomicU64,
    /// Changes to the metadata source (bitmap pages written, length changed) since it was last
    /// flushed through [`Core::sync_meta`].
    meta_unsynced: std::sync::atomic::AtomicBool,
    /// A write-back is between [`Core::writeback_begin`] and [`Core::writeback_end`].
    writeback_open: std::sync::atomic::AtomicBool,
    /// Layout 2's "all allocated" bit, as lookups use it: set only once durable (`features.rs`).
    all_allocated: std::sync::atomic::AtomicBool,
    /// The feature field on disk may differ from `all_allocated` (`features.rs`).
    header_unsynced: std::sync::atomic::AtomicBool,
    /// Every cluster below it was allocated when [`Core::fully_allocated`] last looked.
    scan_from: std::sync::atomic::AtomicU64,
    writable: bool,
}

const NO_BACKING: u64 = u64::MAX;

impl Core {
    /// A core over the metadata source `meta` (its header already parsed and validated) for an
    /// image of `size` bytes (the image file's length), with no backing data until
    /// [`Core::set_backing_len`]. Reads nothing: the bitmap is loaded page by page on demand.
    pub fn new(
        (meta, meta_name): (Box<dyn Storage>, String),
        header: Header,
        size: u64,
        opts: CoreOptions,
    ) -> Core {
        let geometry = Geometry::new(header.cluster_bits(), size);
        let all_allocated = header.all_allocated();
        Core {
            size: size.into(),
            meta,
            meta_name,
            bitmap: Bitmap::new(geometry.clusters(), opts.bitmap_cache_bytes),
            current: header.clone().into(),
            header_lock: header::HeaderLock::default(),
            header,
            claims: Claims::default(),
            backing_len: NO_BACKING.into(),
            meta_unsynced: false.into(),
            writeback_open: false.into(),
            all_allocated: all_allocated.into(),
            header_unsynced: false.into(),
            scan_from: 0.into(),
            writable: opts.writable,
        }
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.header.cluster_bits(), self.size())
    }

    /// The header as the metadata source holds it now (a copy).
    pub fn header(&self) -> Header {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Sets the length of the backing data (`None`: no backing file, unallocated clusters read
    /// zeros). The host calls it at open and whenever it attaches, replaces or detaches the
    /// backing source.
    pub fn set_backing_len(&self, len: Option<u64>) {
        let len = len.map_or(NO_BACKING, |l| l.min(NO_BACKING - 1));
        self.backing_len
            .store(len, std::sync::atomic::Ordering::Release);
    }

    /// The backing data's length, `None` without a backing file.
    pub fn backing_len(&self) -> Option<u64> {
        match self.backing_len.load(std::sync::atomic::Ordering::Acquire) {
            NO_BACKING => None,
            len => Some(len),
        }
    }

    /// Changes at every commit, abort and finished write-back: a host told [`Begin::Busy`] at
    /// generation `g` retries once the generation is no longer `g`.
    pub fn generation(&self) -> u64 {
        self.claims.generation()
    }

    /// `EINVAL` unless `offset..offset + len` lies inside the image.
    pub fn check(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }

    /// Whether the byte at `offset` is allocated, and how many bytes from it, at most `bytes`
    /// and never past the end, share that state (a shorter run is allowed: bounded work).
    /// `(false, 0)` at or past the end, or for `bytes == 0`.
    pub fn is_allocated(&self, offset: u64, bytes: u64) -> Result<(bool, u64)> {
        let size = self.size();
        if offset >= size || bytes == 0 {
            return Ok((false, 0));
        }
        if self.all_allocated() {
            return Ok((true, bytes.min(size - offset)));
        }
        self.run(offset, bytes.min(size - offset))
    }

    /// The first run of `offset..offset + bytes` (clamped to the image) and what it reads
    /// from; `len` 0 at or past the end, or for `bytes == 0`.
    pub fn map(&self, offset: u64, bytes: u64) -> Result<Extent> {
        let (allocated, len) = self.is_allocated(offset, bytes)?;
        if allocated {
            return Ok(Extent {
                kind: Kind::Data,
                len,
            });
        }
        Ok(match self.backing_len() {
            Some(end) if offset < end => Extent {
                kind: Kind::Backing,
                len: len.min(end - offset),
            },
            _ => Extent {
                kind: Kind::Zero,
                len,
            },
        })
    }

    /// The state of the byte at `offset` (inside the image) and the run of bytes from it, at
    /// most `max` (≥ 1, inside the image), in that state; `(false, 0)` when a truncate running
    /// beside it shrank the image below `offset`.
    fn run(&self, offset: u64, max: u64) -> Result<(bool, u64)> {
        let g = self.geometry();
        let first = g.cluster_of(offset);
        let last = g.cluster_of(offset + max - 1);
        let (allocated, n) = self.bitmap.run(first, last - first + 1, &self.store())?;
        if n == 0 {
            // A truncate shrank the image below `offset` meanwhile.
            return Ok((false, 0));
        }
        Ok((allocated, (g.cluster_start(first + n) - offset).min(max)))
    }

    /// The bitmap as the metadata source stores it.
    fn store(&self) -> MetaStore<'_> {
        MetaStore::of(&*self.meta, &self.meta_name, &self.header)
    }
}

/// The bitmap in the `.add-cow` file, in bitmap coordinates (the file's byte `base` is bitmap
/// byte 0). Borrows only the metadata fields of a core, so that the bitmap beside them can be
/// borrowed mutably at the same time.
struct MetaStore<'a> {
    meta: &'a dyn Storage,
    name: &'a str,
    base: u64,
}

impl<'a> MetaStore<'a> {
    fn of(meta: &'a dyn Storage, name: &'a str, header: &Header) -> MetaStore<'a> {
        MetaStore {
            meta,
            name,
            base: header.bitmap_offset(),
        }
    }
}

impl bitmap::Store for MetaStore<'_> {
    /// Zeros past the end of the file.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.base + offset;
        self.meta
            .read_at(buf, at)
            .map_err(|e| Error::io(Op::ReadBitmap, self.name, at, e))
    }

    /// The file's next data, mapped back to bitmap coordinates. The bitmap does not start on
    /// a file-system block, so one block may hold the end of a page and the start of the next.
    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        let at = self.base + offset;
        let data = self
            .meta
            .next_data(at)
            .map_err(|e| Error::io(Op::FindData, self.name, at, e))?;
        Ok(data.map(|d| d.max(at) - self.base))
    }
}

#[cfg(test)]
mod tests;
