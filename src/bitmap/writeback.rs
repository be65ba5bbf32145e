//! Pages whose bits the store lacks (dirty, or being written back), kept in an ordered set,
//! and the write-back of their copies.
//!
//! Lock order: the write-back mutex (`serial`), then the set, then the table's queue.

use super::{Bitmap, PAGE_BYTES};
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The indices of the pages that are dirty or writing.
pub(super) struct Unsynced {
    set: Mutex<BTreeSet<u64>>,
    /// Held by the [`WriteBack`] in flight.
    serial: Mutex<()>,
}

impl Unsynced {
    pub(super) fn new() -> Unsynced {
        Unsynced {
            set: Mutex::new(BTreeSet::new()),
            serial: Mutex::new(()),
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
    pub(super) fn retain_below(&mut self, pages: u64) {
        let set = self.set.get_mut().unwrap_or_else(|e| e.into_inner());
        set.split_off(&pages);
    }
}

/// A dirty page's bytes, copied for write-back.
#[derive(Debug)]
pub struct PageSnapshot {
    index: u64,
    /// Byte offset in the bitmap.
    pub offset: u64,
    /// The page's bytes (the last page of the bitmap may be short).
    pub bytes: Vec<u8>,
}

/// Copies of the dirty pages, being written to the store. Until it ends, those pages are
/// writing, hence never evicted. [`WriteBack::done`] says the copies reached the store: the
/// pages turn clean unless bits were set in them since. Dropping it otherwise says the write
/// failed: the pages are dirty again. One write-back at a time: it holds a mutex, so that an
/// older copy of a page never lands after a newer one.
pub struct WriteBack<'a> {
    bitmap: &'a Bitmap,
    pages: Vec<PageSnapshot>,
    written: bool,
    _serial: MutexGuard<'a, ()>,
}

impl WriteBack<'_> {
    /// The copies to write, in ascending offset order.
    pub fn pages(&self) -> &[PageSnapshot] {
        &self.pages
    }

    /// Every copy reached the store.
    pub fn done(mut self) {
        self.written = true;
    }
}

impl Drop for WriteBack<'_> {
    fn drop(&mut self) {
        let bitmap = self.bitmap;
        let mut set = lock(&bitmap.unsynced.set);
        let guard = bitmap.table.guard();
        for snapshot in &self.pages {
            let page = bitmap
                .table
                .get(snapshot.index, &guard)
                .expect("writing pages are resident");
            if !self.written {
                page.fail_write();
            } else if page.end_write() {
                set.remove(&snapshot.index);
                bitmap.table.requeue(snapshot.index, page);
            }
        }
    }
}

impl Bitmap {
    /// Copies every dirty page for write-back, turning it from dirty to writing. Waits for the
    /// write-back in flight, if any, to end.
    pub fn take_dirty(&self) -> WriteBack<'_> {
        let serial = lock(&self.unsynced.serial);
        let set = lock(&self.unsynced.set);
        let guard = self.table.guard();
        let pages = set
            .iter()
            .filter_map(|&index| {
                let page = self
                    .table
                    .get(index, &guard)
                    .expect("unsynced pages are resident");
                page.start_write().then(|| PageSnapshot {
                    index,
                    offset: index * PAGE_BYTES,
                    bytes: page.bytes(self.page_bytes(index)),
                })
            })
            .collect();
        drop(set);
        WriteBack {
            bitmap: self,
            pages,
            written: false,
            _serial: serial,
        }
    }
}
