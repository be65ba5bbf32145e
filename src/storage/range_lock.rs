//! A lock on byte ranges: holders of overlapping ranges wait for each other, disjoint ranges
//! do not. Held across I/O by [`super::DirectStorage`], whose read-modify-write of partial
//! blocks must not interleave with another write to the same blocks.

use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
pub(super) struct RangeLock {
    state: Mutex<Held>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct Held {
    ranges: Vec<Range<u64>>,
    /// Threads waiting in `lock`: a release wakes them only when there are any (a wake-up is
    /// a system call even with nobody waiting).
    waiters: usize,
}

/// A held range, released on drop.
#[derive(Debug)]
pub(super) struct RangeGuard<'a> {
    lock: &'a RangeLock,
    range: Range<u64>,
}

impl RangeLock {
    /// Waits until no held range overlaps `range` (non-empty), then holds it.
    pub(super) fn lock(&self, range: Range<u64>) -> RangeGuard<'_> {
        debug_assert!(!range.is_empty());
        let mut held = self.state();
        while held
            .ranges
            .iter()
            .any(|r| r.start < range.end && range.start < r.end)
        {
            held.waiters += 1;
            held = self.freed.wait(held).unwrap_or_else(|e| e.into_inner());
            held.waiters -= 1;
        }
        held.ranges.push(range.clone());
        RangeGuard { lock: self, range }
    }

    fn state(&self) -> MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.lock.state();
        if let Some(i) = held.ranges.iter().position(|r| *r == self.range) {
            held.ranges.swap_remove(i);
        }
        if held.waiters > 0 {
            self.lock.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    #[test]
    fn overlapping_ranges_wait_disjoint_ones_do_not() {
        let lock = RangeLock::default();
        let first = lock.lock(0..4096);
        let _disjoint = lock.lock(4096..8192);
        let released = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _g = lock.lock(4000..4001);
                // Acquired only after `first` was dropped.
                tx.send(released.load(Ordering::SeqCst)).unwrap();
            });
            // Still waiting: nothing arrives while `first` is held.
            assert!(rx
                .recv_timeout(std::time::Duration::from_millis(50))
                .is_err());
            released.store(true, Ordering::SeqCst);
            drop(first);
            assert!(
                rx.recv().unwrap(),
                "acquired while the overlapping range was held"
            );
        });
    }
}
