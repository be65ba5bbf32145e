//! Pages whose bits the store lacks (dirty, or being written back), kept in an ordered set,
//! and the write-back of their copies, one at a time.
//!
//! Lock order: the set, then the table's queue. The write-back in flight is an atomic ticket:
//! no lock is held while the caller writes the copies.

use super::{Bitmap, PAGE_BYTES};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tickets of write-backs, unique in the process, so that a write-back is finished only on
/// the bitmap that started it. 0 is never issued.
static TICKETS: AtomicU64 = AtomicU64::new(1);

/// The indices of the pages that are dirty or writing, and the write-back in flight.
pub(super) struct Unsynced {
    set: Mutex<BTreeSet<u64>>,
    /// The ticket of the write-back in flight; 0 when none is.
    in_flight: AtomicU64,
}

impl Unsynced {
    pub(super) fn new() -> Unsynced {
        Unsynced {
            set: Mutex::new(BTreeSet::new()),
            in_flight: AtomicU64::new(0),
        }
    }

    /// Adds a page that just turned dirty from clean.
    pub(super) fn insert(&self, index: u64) {
        lock(&self.set).insert(index);
    }

    /// The first unsynced page at or after `index`.
    pub(super) fn next_from(&self, index: u64) -> Option<u64> {
        lock(&self.set).range(index..).next().copied()
    }

    /// Forgets the pages from index `pages` on.
    pub(super) fn retain_below(&self, pages: u64) {
        lock(&self.set).split_off(&pages);
    }
}

/// A dirty page's bytes, copied for write-back.
#[derive(Debug)]
pub(crate) struct PageSnapshot {
    index: u64,
    /// Byte offset in the bitmap.
    pub offset: u64,
    /// The page's bytes (the last page of the bitmap may be short).
    pub bytes: Vec<u8>,
}

/// Copies of the dirty pages, to be written to the store, then handed back to the bitmap that
/// made them: [`Bitmap::writeback_done`] once every copy is in the store,
/// [`Bitmap::writeback_failed`] otherwise. Owned and `Send`: it borrows nothing and holds no
/// lock, so it may be kept anywhere and finished on any thread. Until it is finished its pages
/// stay in memory (never evicted) and no other write-back starts; dropping it unfinished
/// leaves them so for good.
#[derive(Debug)]
#[must_use = "finish it with Bitmap::writeback_done or Bitmap::writeback_failed"]
pub(crate) struct WriteBack {
    ticket: u64,
    pages: Vec<PageSnapshot>,
}

impl WriteBack {
    /// The copies to write, in ascending offset order.
    pub(crate) fn pages(&self) -> &[PageSnapshot] {
        &self.pages
    }
}

impl Bitmap {
    /// Copies every dirty page for write-back, turning it from dirty to writing; `None` when a
    /// write-back is in flight (taken and not finished yet). Never waits.
    pub(crate) fn take_dirty(&self) -> Option<WriteBack> {
        let ticket = TICKETS.fetch_add(1, Ordering::Relaxed);
        self.unsynced
            .in_flight
            .compare_exchange(0, ticket, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        let set = lock(&self.unsynced.set);
        let guard = self.table.guard();
        let pages = set
            .iter()
            .filter_map(|&index| {
                // Unsynced pages are resident (rule 1); only a resize drops them.
                let page = self.table.get(index, &guard)?;
                page.start_write().then(|| PageSnapshot {
                    index,
                    offset: index * PAGE_BYTES,
                    bytes: page.bytes(self.page_bytes(index)),
                })
            })
            .collect();
        Some(WriteBack { ticket, pages })
    }

    /// Drops every page from memory, as evictions, when all are clean and no write-back is in
    /// flight; `false` (nothing dropped) otherwise. The pages are read again on demand: for a
    /// store that someone else changed. The caller guarantees that no bit is set meanwhile.
    pub(crate) fn drop_all_clean(&self) -> bool {
        let set = lock(&self.unsynced.set);
        if !set.is_empty() || self.unsynced.in_flight.load(Ordering::Acquire) != 0 {
            return false;
        }
        self.table.retain_below(0);
        true
    }

    /// Ends `wb`, whose copies all reached the store: its pages turn clean unless bits were
    /// set in them since. Panics if `wb` was not taken from this bitmap.
    pub(crate) fn writeback_done(&self, wb: WriteBack) {
        self.finish(wb, true);
    }

    /// Ends `wb`, whose copies did not all reach the store: its pages are dirty again. Panics
    /// if `wb` was not taken from this bitmap.
    pub(crate) fn writeback_failed(&self, wb: WriteBack) {
        self.finish(wb, false);
    }

    fn finish(&self, wb: WriteBack, written: bool) {
        assert_eq!(
            self.unsynced.in_flight.load(Ordering::Relaxed),
            wb.ticket,
            "a write-back finished on a bitmap that did not take it"
        );
        {
            let mut set = lock(&self.unsynced.set);
            let guard = self.table.guard();
            for snapshot in &wb.pages {
                // Writing pages are resident (rule 5); only a resize drops them.
                let Some(page) = self.table.get(snapshot.index, &guard) else {
                    continue;
                };
                if !written {
                    page.fail_write();
                } else if page.end_write() {
                    set.remove(&snapshot.index);
                    self.table.requeue(snapshot.index, page);
                }
            }
        }
        self.unsynced.in_flight.store(0, Ordering::Release);
    }
}
