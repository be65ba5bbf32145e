//! The COW bitmap in memory: one bit per cluster, 1 = the cluster lives in the image file.
//!
//! # Bounded at any size
//! - Pages of [`PAGE_BYTES`] bitmap bytes (32768 clusters) are loaded on first touch into a
//!   sparse table (`table.rs`): creating and resizing a bitmap cost the same for any number of
//!   clusters (designed for up to 2^44, 2^29 pages).
//! - Clean pages are evicted while the resident pages cost more than the cap ([`PAGE_COST`]
//!   each; [`DEFAULT_CACHE_BYTES`] unless set). Dirty pages, and pages being written back, stay
//!   until written.
//! - One [`Bitmap::run`] makes at most [`MAX_RUN_PAGES`] page visits and returns a shorter run
//!   when they are spent. A visit scans one page, or skips a stretch of pages that the store
//!   reports all-zero ([`Store::next_data`], a hole of a sparse file) without reading it.
//!
//! # Bits
//! - Cluster `c` is bit `c % 8` of byte `c / 8` (LSB first), as on disk.
//! - Bits are set with `fetch_or(Release)` *after* the data they point at was written, and read
//!   with `Acquire`.
//! - Bits of clusters at or past the end are 0 in memory (masked at load).
//!
//! # Protocol: residency, eviction, write-back
//! A page is *absent* (the store has its bits), *clean* (resident, the same bits as the store),
//! *dirty* (resident, bits the store lacks) or *writing* (a copy of it is being written back;
//! bits may have been set since the copy). The *unsynced set* orders the dirty and writing
//! pages. The eviction lock is a reader-writer lock whose shared side (`table::Shared`) the
//! loaders and setters hold and whose exclusive side the evictor holds.
//!
//! 1. Only clean pages are evicted, so an absent page has all its bits in the store, and a
//!    page is unsynced only while resident.
//! 2. Readers of a resident page take no lock. The table's epoch guard keeps an evicted page's
//!    memory valid while a reader holds it, and an evicted page was clean: its bits are right.
//! 3. A loader holds the shared side from its lookup that missed, through the store read, to
//!    the install, which keeps a page installed first. So a page is never cached twice, and no
//!    stale copy is installed: for the store to change under the loader, another copy would
//!    have to be loaded, set, written back *and evicted*, and eviction waits for the loader.
//! 4. A setter holds the shared side from its lookup (or load) through setting its bits to
//!    marking the page dirty, and adds a page that was clean to the unsynced set before it
//!    returns. So no bit is set in a page as it is evicted: the evictor checks that a page is
//!    clean under the exclusive side, and a setter's page is dirty before the setter lets go.
//! 5. [`Bitmap::take_dirty`] turns dirty pages writing in one step (never clean in between),
//!    then copies them; a page turns clean only when its write-back is done
//!    ([`WriteBack::done`]) and no bit was set in it since. So a page is never clean while the
//!    store is stale. A failed write-back turns its pages dirty again. One write-back at a time.
//! 6. A reader that misses a page asks the unsynced set for the next unsynced page *first*,
//!    then the store for the next data; the pages before both are all zero. In that order, a
//!    bit set before the reader began is seen: it reaches the store only through a write-back,
//!    and its page leaves the unsynced set only after that write. (Bits only go from 0 to 1
//!    while readers run: only [`Bitmap::resize`], which takes `&mut self`, clears bits.)
//!
//! Lock order: the eviction lock, the unsynced set, the table's queue; the write-back mutex
//! before the unsynced set.

mod page;
mod store;
mod table;
mod writeback;

pub use store::Store;
pub use table::PAGE_COST;
pub use writeback::{PageSnapshot, WriteBack};

use crate::error::Result;
use crate::layout::Cluster;
use page::Page;
use std::ops::Range;
use table::{Guard, Shared, Table};
use writeback::Unsynced;

/// Bitmap bytes per page (32768 clusters, 2 GiB of image at 64 KiB clusters).
pub const PAGE_BYTES: u64 = 4096;
const PAGE_BITS: u64 = PAGE_BYTES * 8;
/// The cap on resident bitmap memory unless the opener sets one: 32 MiB (the whole bitmap of
/// a 15 TiB image at 64 KiB clusters).
pub const DEFAULT_CACHE_BYTES: u64 = 32 << 20;
/// Page visits per [`Bitmap::run`] (each reads at most one page or asks the store once):
/// 2 Mi clusters (128 GiB at 64 KiB clusters) of scanned pages, more over holes.
pub const MAX_RUN_PAGES: u32 = 64;

/// The in-memory bitmap of an image with a given number of clusters.
pub struct Bitmap {
    clusters: u64,
    table: Table,
    unsynced: Unsynced,
}

/// A page as a reader sees it.
enum View<'g> {
    Page(&'g Page),
    /// The page, and those after it up to (not including) `end`, are all zero.
    Zeros {
        end: u64,
    },
}

impl Bitmap {
    /// An unloaded bitmap for `clusters` clusters whose clean pages are evicted when resident
    /// pages cost more than `cache_bytes` ([`DEFAULT_CACHE_BYTES`] for 0, at least one page).
    /// No I/O, and the same cost for any number of clusters.
    pub fn new(clusters: u64, cache_bytes: u64) -> Bitmap {
        let cap = match cache_bytes {
            0 => DEFAULT_CACHE_BYTES,
            n => n,
        };
        Bitmap {
            clusters,
            table: Table::new(cap),
            unsynced: Unsynced::new(),
        }
    }

    /// Bitmap length in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.clusters.div_ceil(8)
    }

    fn page_count(&self) -> u64 {
        self.len_bytes().div_ceil(PAGE_BYTES)
    }

    /// Bytes of page `index` (the last page may be short).
    fn page_bytes(&self, index: u64) -> u64 {
        (self.len_bytes() - index * PAGE_BYTES).min(PAGE_BYTES)
    }

    /// Pages in memory.
    pub fn resident_pages(&self) -> usize {
        self.table.resident()
    }

    /// Whether cluster `c` (< clusters) is allocated.
    pub fn get(&self, c: Cluster, store: &dyn Store) -> Result<bool> {
        let guard = self.table.guard();
        Ok(match self.view(c.0 / PAGE_BITS, &guard, store)? {
            View::Page(page) => page.bit(c.0 % PAGE_BITS),
            View::Zeros { .. } => false,
        })
    }

    /// The state of cluster `first` (< clusters) and the number of clusters, at least 1 and
    /// at most `max`, from `first` on that share it; fewer when [`MAX_RUN_PAGES`] visits did
    /// not reach the end of the run. The state comes from the same load that starts the run,
    /// so a concurrent allocation can never make the run empty.
    pub fn run(&self, first: Cluster, max: u64, store: &dyn Store) -> Result<(bool, u64)> {
        let end = first.0.saturating_add(max.max(1)).min(self.clusters);
        let guard = self.table.guard();
        let mut state = None;
        let mut c = first.0;
        for _ in 0..MAX_RUN_PAGES {
            if c >= end {
                break;
            }
            let index = c / PAGE_BITS;
            let base = index * PAGE_BITS;
            match self.view(index, &guard, store)? {
                View::Zeros { .. } if state == Some(true) => break,
                View::Zeros { end: zeros_end } => {
                    state = Some(false);
                    c = (zeros_end * PAGE_BITS).min(end);
                }
                View::Page(page) => {
                    let to = (end - base).min(PAGE_BITS);
                    let (stop, other_state) = page.run_in(c - base, to, &mut state);
                    c = base + stop;
                    if other_state {
                        break;
                    }
                }
            }
        }
        Ok((state.unwrap_or(false), c.min(end) - first.0))
    }

    /// Sets the bits of `clusters` (all < the number of clusters) and marks their pages dirty.
    /// Call only once the clusters' data is in the image file.
    pub fn set_range(&self, clusters: Range<Cluster>, store: &dyn Store) -> Result<()> {
        let guard = self.table.guard();
        let (mut c, end) = (clusters.start.0, clusters.end.0);
        while c < end {
            let index = c / PAGE_BITS;
            let base = index * PAGE_BITS;
            let page_end = end.min(base + PAGE_BITS);
            {
                let shared = self.table.shared();
                let page = self.load_locked(index, &shared, &guard, store)?;
                page.set_bits(c - base, page_end - base, &shared);
                self.mark_dirty(index, page, &shared);
            }
            self.table.evict_over_cap();
            c = page_end;
        }
        Ok(())
    }

    /// Loads the page holding cluster `c` (< clusters) and marks it dirty, so that it stays in
    /// memory until written back: a [`Bitmap::resize`] whose boundary page it is then does no
    /// I/O and cannot fail.
    pub fn hold_page_of(&self, c: Cluster, store: &dyn Store) -> Result<()> {
        let index = c.0 / PAGE_BITS;
        let guard = self.table.guard();
        let shared = self.table.shared();
        let page = self.load_locked(index, &shared, &guard, store)?;
        self.mark_dirty(index, page, &shared);
        Ok(())
    }

    /// Changes the number of clusters. Bits of clusters past the new end are dropped; new
    /// clusters start unallocated (the store must hold zeros there). The page at the boundary
    /// is rewritten and marked dirty, so that no stale bit past the end survives on disk
    /// either. Costs the pages in memory, not the pages of the image.
    pub fn resize(&mut self, clusters: u64, store: &dyn Store) -> Result<()> {
        let keep = self.clusters.min(clusters);
        if keep % PAGE_BITS != 0 {
            let index = keep / PAGE_BITS;
            let guard = self.table.guard();
            let shared = self.table.shared();
            let page = self.load_locked(index, &shared, &guard, store)?;
            page.mask_from(keep % PAGE_BITS);
            self.mark_dirty(index, page, &shared);
        }
        let pages = keep.div_ceil(PAGE_BITS);
        self.table.retain_below(pages);
        self.unsynced.retain_below(pages);
        self.clusters = clusters;
        Ok(())
    }

    fn mark_dirty(&self, index: u64, page: &Page, shared: &Shared<'_>) {
        if page.mark_dirty(shared) {
            self.unsynced.insert(index);
        }
    }

    /// Page `index` (< page count) for a reader: resident, or known all-zero (protocol rule 6),
    /// or loaded.
    fn view<'g>(&self, index: u64, guard: &'g Guard<'_>, store: &dyn Store) -> Result<View<'g>> {
        if let Some(page) = self.table.get(index, guard) {
            page.touch();
            return Ok(View::Page(page));
        }
        let unsynced = self.unsynced.next_from(index).unwrap_or(u64::MAX);
        let data = store
            .next_data(index * PAGE_BYTES)?
            .map_or(u64::MAX, |d| d / PAGE_BYTES);
        let end = unsynced.min(data).min(self.page_count());
        if end > index {
            return Ok(View::Zeros { end });
        }
        let page = self.load_locked(index, &self.table.shared(), guard, store)?;
        self.table.evict_over_cap();
        Ok(View::Page(page))
    }

    /// The resident page `index`, loaded from `store` and installed when absent.
    fn load_locked<'g>(
        &self,
        index: u64,
        shared: &Shared<'_>,
        guard: &'g Guard<'_>,
        store: &dyn Store,
    ) -> Result<&'g Page> {
        if let Some(page) = self.table.get(index, guard) {
            return Ok(page);
        }
        let mut buf = [0u8; PAGE_BYTES as usize];
        let bytes = &mut buf[..self.page_bytes(index) as usize];
        store.read(index * PAGE_BYTES, bytes)?;
        let page = Page::new(bytes, self.clusters - index * PAGE_BITS);
        Ok(self.table.install(index, page, shared, guard))
    }
}

#[cfg(test)]
mod tests;
