//! The sparse page table: resident pages by index, found without a lock, and evicted under a
//! memory cap in clock order (FIFO with a second chance for pages read since the hand last
//! passed).
//!
//! The table is a [`papaya::HashMap`]: lookups are lock-free (a few atomic loads under an
//! epoch guard), and a removed page is freed only once no guard that could still see it is
//! held, so a reader may keep using a page that is evicted under it. Memory follows the number
//! of resident pages, not the size of the image.
//!
//! Evicting a page bumps the *eviction generation* of its slot (pages share [`SLOTS`] slots by
//! index), so that a loader can tell whether the page it read was evicted meanwhile (protocol
//! rule 3 in the module above).
//!
//! Lock order: the eviction lock (`evict`), then the queue (`clock`). Both are held only for a
//! few memory operations, never across I/O.

use super::page::Page;
use super::PAGE_BYTES;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

/// Memory one resident page costs: its 4 KiB plus, with margin, the table's entry header,
/// allocator overhead, hash-table slots (papaya keeps its load between 1/8 and 1/2) and the
/// queue's slot.
pub const PAGE_COST: u64 = PAGE_BYTES + 256;

pub(super) type Guard<'a> = papaya::LocalGuard<'a>;

/// Eviction generations: pages share this many slots (index modulo `SLOTS`), so that a loader
/// retries only when a page of its slot was evicted during its read.
const SLOTS: usize = 1024;

/// The shared side of the eviction lock, held for a *section*: a few memory operations, no I/O.
/// No page is evicted during a section.
pub(super) struct Shared<'a> {
    _read: RwLockReadGuard<'a, ()>,
}

pub(super) struct Table {
    pages: papaya::HashMap<u64, Page, IndexHash>,
    resident: AtomicUsize,
    /// Clean pages are evicted while more than this many pages are resident.
    cap_pages: usize,
    evict: RwLock<()>,
    /// Per slot, the number of evictions of its pages. Read under [`Shared`], bumped under the
    /// exclusive side.
    generations: Box<[AtomicU64]>,
    /// One evictor at a time; the others go on (at most a page each over the cap meanwhile).
    evicting: AtomicBool,
    /// Clean resident pages in the order the clock hand meets them, and dirty ones not yet
    /// met since they turned dirty. A page is in it at most once (its `queued` mark).
    clock: Mutex<VecDeque<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    /// An empty table whose clean pages are evicted above `cap_bytes` (at least one page).
    pub(super) fn new(cap_bytes: u64) -> Table {
        Table {
            pages: papaya::HashMap::with_hasher(IndexHash),
            resident: AtomicUsize::new(0),
            cap_pages: usize::try_from(cap_bytes / PAGE_COST)
                .unwrap_or(usize::MAX)
                .max(1),
            evict: RwLock::new(()),
            generations: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            evicting: AtomicBool::new(false),
            clock: Mutex::new(VecDeque::new()),
        }
    }

    /// A guard for lookups: pages found under it stay valid (not freed) while it lives.
    pub(super) fn guard(&self) -> Guard<'_> {
        self.pages.guard()
    }

    /// The resident page `index`, without a lock.
    pub(super) fn get<'g>(&self, index: u64, guard: &'g Guard<'_>) -> Option<&'g Page> {
        self.pages.get(&index, guard)
    }

    /// A section: the shared side of the eviction lock. Never taken twice by one thread, never
    /// held across I/O, and released before [`Table::evict_over_cap`].
    pub(super) fn shared(&self) -> Shared<'_> {
        Shared {
            _read: self.evict.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn generation_of(&self, index: u64) -> &AtomicU64 {
        &self.generations[(index % SLOTS as u64) as usize]
    }

    /// The eviction generation of page `index`'s slot, for a loader that found the page absent
    /// in this section, to hand to [`Table::install`] after its read.
    pub(super) fn generation(&self, index: u64, _: &Shared<'_>) -> u64 {
        // Relaxed: read under the shared side, bumped under the exclusive side.
        self.generation_of(index).load(Ordering::Relaxed)
    }

    /// Installs a page loaded after [`Table::generation`] returned `generation`. Returns the
    /// resident copy when there is one (so that a page is never cached twice), the new page
    /// when none is and the generation is unchanged, and `None` when a page of the slot was
    /// evicted since: the copy may be older than the store, read it again.
    pub(super) fn install<'g>(
        &self,
        index: u64,
        page: Page,
        generation: u64,
        shared: &Shared<'_>,
        guard: &'g Guard<'_>,
    ) -> Option<&'g Page> {
        if self.generation(index, shared) != generation {
            return self.get(index, guard);
        }
        Some(match self.pages.try_insert(index, page, guard) {
            Ok(page) => {
                self.resident.fetch_add(1, Ordering::Relaxed);
                self.requeue(index, page);
                page
            }
            Err(occupied) => occupied.current,
        })
    }

    /// Puts a page the clock hand dropped while it was dirty back in the queue, now that it is
    /// clean (a no-op for a page still queued).
    pub(super) fn requeue(&self, index: u64, page: &Page) {
        let mut clock = lock(&self.clock);
        if page.enqueue() {
            clock.push_back(index);
        }
    }

    /// Evicts clean pages while more than the cap are resident, down to 15/16 of it so that
    /// the exclusive lock is taken once per batch. Dirty and writing pages stay: the hand
    /// drops them from the queue, and [`Table::requeue`] returns them once clean. Each page
    /// the hand meets is evicted, dropped or given a second chance once, so the work is
    /// amortized O(1) per load, set and read. The caller holds no [`Shared`].
    pub(super) fn evict_over_cap(&self) {
        if self.resident.load(Ordering::Relaxed) <= self.cap_pages
            || self.evicting.swap(true, Ordering::Acquire)
        {
            return;
        }
        {
            let _exclusive = self.evict.write().unwrap_or_else(|e| e.into_inner());
            let mut clock = lock(&self.clock);
            let guard = self.pages.guard();
            let low = self.cap_pages - self.cap_pages / 16;
            let mut budget = 2 * clock.len();
            while budget > 0 && self.resident.load(Ordering::Relaxed) > low {
                budget -= 1;
                let Some(index) = clock.pop_front() else {
                    break;
                };
                // Absent only after a resize that overlapped a write-back (a broken contract).
                let Some(page) = self.pages.get(&index, &guard) else {
                    continue;
                };
                if !page.is_clean() {
                    page.dequeue();
                } else if page.take_reference() {
                    clock.push_back(index);
                } else {
                    self.pages.remove(&index, &guard);
                    self.generation_of(index).fetch_add(1, Ordering::Relaxed);
                    self.resident.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.evicting.store(false, Ordering::Release);
    }

    /// Drops every page from index `pages` on, whatever its state, as evictions (bumping their
    /// generations, so that no loader installs what it read of them before).
    pub(super) fn retain_below(&self, pages: u64) {
        let _exclusive = self.evict.write().unwrap_or_else(|e| e.into_inner());
        let mut clock = lock(&self.clock);
        self.pages.pin().retain(|&index, _| {
            let keep = index < pages;
            if !keep {
                self.generation_of(index).fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        self.resident.store(self.pages.len(), Ordering::Relaxed);
        clock.retain(|&i| i < pages);
    }

    /// Pages in memory.
    #[cfg(test)]
    pub(super) fn resident(&self) -> usize {
        self.resident.load(Ordering::Relaxed)
    }
}

/// Hashes a page index by a multiply (Fibonacci hashing: good high bits, which papaya uses as
/// its tag) folded onto the low bits (the slot), so that strided indices do not collide.
#[derive(Clone, Copy)]
struct IndexHash;

impl BuildHasher for IndexHash {
    type Hasher = IndexHasher;
    fn build_hasher(&self) -> IndexHasher {
        IndexHasher(0)
    }
}

struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 32)
    }
}
