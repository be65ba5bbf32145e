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
//! pages. The *eviction lock* is a reader-writer lock: loaders and setters hold its shared side
//! for *sections* (`table::Shared`), the evictor its exclusive side.
//!
//! **No lock is held across a [`Store`] call**: the bitmap's locks and epoch guards are held
//! only across memory operations, never across I/O, a call out of the bitmap or a return to
//! the caller. So a store may yield (a coroutine waiting for its I/O) while other coroutines of
//! the same thread call into the same bitmap, and a [`WriteBack`] may be finished any time
//! later, on any thread.
//!
//! 1. Only clean pages are evicted, so an absent page has all its bits in the store, and a
//!    page is unsynced only while resident.
//! 2. Readers of a resident page take no lock. The table's epoch guard keeps an evicted page's
//!    memory valid while a reader holds it, and an evicted page was clean: its bits are right.
//!    Guards end before store calls, so that a slow call keeps no evicted page in memory.
//! 3. Every eviction bumps the *eviction generation* of the page's slot (`table::SLOTS` slots
//!    shared by index), under the exclusive side. A loader finds the page absent and records
//!    the generation in one section, reads the store outside any section, then, in a second
//!    section, takes the resident copy if there is one, installs its own if the generation is
//!    unchanged, and reads again otherwise. So a page is never cached twice (one section
//!    installs at most one copy, and only where none is), and no stale copy is installed: the
//!    store changes only when a write-back of a resident copy reaches it (rule 5), and that
//!    copy is still resident at the second section (taken instead), or was evicted after the
//!    first (the generation changed: read again), or before it, and then its write-back
//!    reached the store before the copy turned clean, so before the read began.
//! 4. A setter sets its bits and marks the page dirty in one section, the section in which it
//!    found the page resident or installed it (rule 3: an absent page is read first, without
//!    any lock), and adds a page that was clean to the unsynced set before the section ends.
//!    So no bit is set in a page as it is evicted: the evictor checks that a page is clean
//!    under the exclusive side, and a setter's page is dirty before its section ends.
//! 5. [`Bitmap::take_dirty`] turns dirty pages writing in one step (never clean in between),
//!    then copies them; a page turns clean only when its write-back is done
//!    ([`Bitmap::writeback_done`], once every copy is in the store) and no bit was set in it
//!    since. So a page is never clean while the store is stale. A failed write-back
//!    ([`Bitmap::writeback_failed`]) turns its pages dirty again. One write-back at a time, so
//!    that an older copy of a page never lands after a newer one: `take_dirty` returns `None`
//!    while one is in flight rather than wait for it. A write-back that is never finished
//!    keeps its pages writing, hence resident, and every later `take_dirty` returns `None`:
//!    the bitmap then never writes back again. Finish every one.
//! 6. A reader that misses a page asks the unsynced set for the next unsynced page *first*,
//!    then the store for the next data; the pages before both are all zero. In that order, a
//!    bit set before the reader began is seen: it reaches the store only through a write-back,
//!    and its page leaves the unsynced set only after that write. (Bits only go from 0 to 1
//!    while readers run: only [`Bitmap::resize`] clears bits, and only past its new end.)
//!
//! # Resize
//! [`Bitmap::resize`] takes `&self`, but its caller guarantees that no call other than the
//! readers ([`Bitmap::get`], [`Bitmap::run`]) runs during it and that no write-back is in flight
//! (between [`Bitmap::take_dirty`] and its finish): it clears bits and drops pages whatever their
//! state. Readers beside it see the old or the new number of clusters; the bits below both do
//! not change, and a page past the new end that a reader loads meanwhile is never dirty and is
//! dropped by the next resize. Broken, the contract costs correct bits, never memory safety:
//! this module has no `unsafe`.
//!
//! Lock order: the eviction lock, the unsynced set, the table's queue. The write-back in flight
//! is an atomic ticket, not a lock.

#![forbid(unsafe_code)]

mod page;
mod store;
mod table;
mod writeback;

pub(crate) use store::Store;
pub use table::PAGE_COST;
pub(crate) use writeback::WriteBack;

use crate::cluster::Cluster;
use crate::error::Result;
use page::Page;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use table::{Shared, Table};
use writeback::Unsynced;

/// Bitmap bytes per page (32768 clusters, 2 GiB of image at 64 KiB clusters).
pub(crate) const PAGE_BYTES: u64 = 4096;
const PAGE_BITS: u64 = PAGE_BYTES * 8;
/// The cap on resident bitmap memory unless the opener sets one: 32 MiB (the whole bitmap of
/// a 15 TiB image at 64 KiB clusters).
pub(crate) const DEFAULT_CACHE_BYTES: u64 = 32 << 20;
/// Page visits per [`Bitmap::run`] (each reads at most one page or asks the store once):
/// 2 Mi clusters (128 GiB at 64 KiB clusters) of scanned pages, more over holes.
pub(crate) const MAX_RUN_PAGES: u32 = 64;

/// The in-memory bitmap of an image with a given number of clusters. `Send + Sync`.
pub(crate) struct Bitmap {
    /// The number of clusters; changed only by [`Bitmap::resize`].
    clusters: AtomicU64,
    table: Table,
    unsynced: Unsynced,
}

/// What a reader's visit to a page found.
enum Visit<R> {
    /// The page, as the visitor saw it.
    Page(R),
    /// The page, and those after it up to (not including) `end`, are all zero.
    Zeros { end: u64 },
}

impl Bitmap {
    /// An unloaded bitmap for `clusters` clusters whose clean pages are evicted when resident
    /// pages cost more than `cache_bytes` ([`DEFAULT_CACHE_BYTES`] for 0, at least one page).
    /// No I/O, and the same cost for any number of clusters.
    pub(crate) fn new(clusters: u64, cache_bytes: u64) -> Bitmap {
        let cap = match cache_bytes {
            0 => DEFAULT_CACHE_BYTES,
            n => n,
        };
        Bitmap {
            clusters: AtomicU64::new(clusters),
            table: Table::new(cap),
            unsynced: Unsynced::new(),
        }
    }

    fn clusters(&self) -> u64 {
        self.clusters.load(Ordering::Acquire)
    }

    /// Bitmap length in bytes.
    pub(crate) fn len_bytes(&self) -> u64 {
        self.clusters().div_ceil(8)
    }

    fn page_count(&self) -> u64 {
        self.len_bytes().div_ceil(PAGE_BYTES)
    }

    /// Bytes of page `index` (the last page may be short).
    fn page_bytes(&self, index: u64) -> u64 {
        self.len_bytes()
            .saturating_sub(index * PAGE_BYTES)
            .min(PAGE_BYTES)
    }

    /// Pages in memory.
    #[cfg(test)]
    pub fn resident_pages(&self) -> usize {
        self.table.resident()
    }

    /// Whether cluster `c` (< clusters) is allocated. The library asks for runs ([`Bitmap::run`]);
    /// tests ask for bits.
    #[cfg(test)]
    pub fn get(&self, c: Cluster, store: &dyn Store) -> Result<bool> {
        let bit = c.0 % PAGE_BITS;
        Ok(
            match self.visit(c.0 / PAGE_BITS, store, |page| page.bit(bit))? {
                Visit::Page(set) => set,
                Visit::Zeros { .. } => false,
            },
        )
    }

    /// The state of cluster `first` (< clusters) and the number of clusters, at least 1 and
    /// at most `max`, from `first` on that share it; fewer when [`MAX_RUN_PAGES`] visits did
    /// not reach the end of the run. The state comes from the same load that starts the run,
    /// so a concurrent allocation can never make the run empty; only a resize that shrinks the
    /// bitmap below `first` meanwhile does (`(false, 0)`).
    pub(crate) fn run(&self, first: Cluster, max: u64, store: &dyn Store) -> Result<(bool, u64)> {
        let end = first.0.saturating_add(max.max(1)).min(self.clusters());
        let mut state = None;
        let mut c = first.0;
        for _ in 0..MAX_RUN_PAGES {
            if c >= end {
                break;
            }
            let index = c / PAGE_BITS;
            let base = index * PAGE_BITS;
            let (from, to) = (c - base, (end - base).min(PAGE_BITS));
            let scan = |page: &Page| page.run_in(from, to, &mut state);
            match self.visit(index, store, scan)? {
                Visit::Zeros { .. } if state == Some(true) => break,
                Visit::Zeros { end: zeros_end } => {
                    state = Some(false);
                    c = zeros_end.saturating_mul(PAGE_BITS).min(end);
                }
                Visit::Page((stop, other_state)) => {
                    c = base + stop;
                    if other_state {
                        break;
                    }
                }
            }
        }
        Ok((state.unwrap_or(false), c.min(end).saturating_sub(first.0)))
    }

    /// Sets the bits of `clusters` (all < the number of clusters) and marks their pages dirty.
    /// Call only once the clusters' data is in the image file.
    pub(crate) fn set_range(&self, clusters: Range<Cluster>, store: &dyn Store) -> Result<()> {
        let (mut c, end) = (clusters.start.0, clusters.end.0);
        while c < end {
            let index = c / PAGE_BITS;
            let base = index * PAGE_BITS;
            let page_end = end.min(base + PAGE_BITS);
            self.with_page(index, store, |page, shared| {
                page.set_bits(c - base, page_end - base, shared);
                self.mark_dirty(index, page, shared);
            })?;
            self.table.evict_over_cap();
            c = page_end;
        }
        Ok(())
    }

    /// Loads the page holding cluster `c` (< clusters) and marks it dirty, so that it stays in
    /// memory until written back: a [`Bitmap::resize`] whose boundary page it is then does no
    /// I/O and cannot fail.
    pub(crate) fn hold_page_of(&self, c: Cluster, store: &dyn Store) -> Result<()> {
        let index = c.0 / PAGE_BITS;
        self.with_page(index, store, |page, shared| {
            self.mark_dirty(index, page, shared)
        })
    }

    /// Changes the number of clusters. Bits of clusters past the new end are dropped; new
    /// clusters start unallocated (the store must hold zeros there). The page at the boundary
    /// is rewritten and marked dirty, so that no stale bit past the end survives on disk
    /// either. Costs the pages in memory, not the pages of the image.
    ///
    /// The caller guarantees that no other call on this bitmap runs meanwhile and that no
    /// write-back is in flight (see "Resize" in the module docs).
    pub(crate) fn resize(&self, clusters: u64, store: &dyn Store) -> Result<()> {
        let keep = self.clusters().min(clusters);
        if keep % PAGE_BITS != 0 {
            let index = keep / PAGE_BITS;
            self.with_page(index, store, |page, shared| {
                page.mask_from(keep % PAGE_BITS);
                self.mark_dirty(index, page, shared);
            })?;
        }
        let pages = keep.div_ceil(PAGE_BITS);
        self.table.retain_below(pages);
        self.unsynced.retain_below(pages);
        self.clusters.store(clusters, Ordering::Release);
        Ok(())
    }

    fn mark_dirty(&self, index: u64, page: &Page, shared: &Shared<'_>) {
        if page.mark_dirty(shared) {
            self.unsynced.insert(index);
        }
    }

    /// Applies `f` to page `index` for a reader: to the resident page without a lock, or to the
    /// page loaded; or finds it all zero (protocol rule 6, and past the end: a reader may run
    /// beside a resize, and then sees the old or the new number of clusters).
    fn visit<R>(
        &self,
        index: u64,
        store: &dyn Store,
        f: impl FnOnce(&Page) -> R,
    ) -> Result<Visit<R>> {
        {
            let guard = self.table.guard();
            if let Some(page) = self.table.get(index, &guard) {
                page.touch();
                return Ok(Visit::Page(f(page)));
            }
        }
        if index >= self.page_count() {
            // A resize shrank the bitmap under this reader (lookups may run beside one): past
            // the end, nothing is allocated.
            return Ok(Visit::Zeros { end: u64::MAX });
        }
        let unsynced = self.unsynced.next_from(index).unwrap_or(u64::MAX);
        let data = store
            .next_data(index * PAGE_BYTES)?
            .map_or(u64::MAX, |d| d / PAGE_BYTES);
        let end = unsynced.min(data).min(self.page_count());
        if end > index {
            return Ok(Visit::Zeros { end });
        }
        let seen = self.with_page(index, store, |page, _| f(page))?;
        self.table.evict_over_cap();
        Ok(Visit::Page(seen))
    }

    /// Applies `f` to page `index` in a section (protocol rules 3 and 4): the resident page,
    /// or the page read from `store` (outside any section) and installed. Never inlined: its
    /// page buffers would cost every reader of a resident page a stack probe.
    #[inline(never)]
    fn with_page<R>(
        &self,
        index: u64,
        store: &dyn Store,
        f: impl FnOnce(&Page, &Shared<'_>) -> R,
    ) -> Result<R> {
        loop {
            let generation = {
                let guard = self.table.guard();
                let shared = self.table.shared();
                if let Some(page) = self.table.get(index, &guard) {
                    return Ok(f(page, &shared));
                }
                self.table.generation(index, &shared)
            };
            let mut buf = [0u8; PAGE_BYTES as usize];
            let bytes = &mut buf[..self.page_bytes(index) as usize];
            store.read(index * PAGE_BYTES, bytes)?;
            let page = Page::new(bytes, self.clusters().saturating_sub(index * PAGE_BITS));
            let guard = self.table.guard();
            let shared = self.table.shared();
            if let Some(page) = self.table.install(index, page, generation, &shared, &guard) {
                return Ok(f(page, &shared));
            }
        }
    }
}

#[cfg(test)]
mod tests;
