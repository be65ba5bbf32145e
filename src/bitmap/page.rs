//! One cached bitmap page: its bits as atomic words, its write-back state, and the two marks
//! the eviction clock uses.
//!
//! In a word, cluster `c` of the page is bit `c % 64` of word `c / 64` of the little-endian
//! reading of the bytes, which is exactly the on-disk rule "bit `c % 8` of byte `c / 8`".

use super::table::Shared;
use super::PAGE_BYTES;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

const WORDS: usize = (PAGE_BYTES / 8) as usize;

/// Bits set in memory that the store does not have yet.
const DIRTY: u8 = 1;
/// A copy of the page is being written to the store.
const WRITING: u8 = 2;

pub(super) struct Page {
    words: [AtomicU64; WORDS],
    /// `DIRTY | WRITING`; 0 = clean, the same bits as the store.
    state: AtomicU8,
    /// Read since the eviction clock last passed (second chance).
    referenced: AtomicBool,
    /// In the eviction clock's queue. Read and written only under the queue's mutex.
    queued: AtomicBool,
}

/// A word with the low `n` (1..=64) bits set.
fn ones(n: u64) -> u64 {
    u64::MAX >> (64 - n)
}

impl Page {
    /// A clean page holding `bytes` (at most [`PAGE_BYTES`]; missing bytes are zeros), with the
    /// bits from page bit `limit` on cleared.
    pub(super) fn new(bytes: &[u8], limit: u64) -> Page {
        let page = Page {
            words: std::array::from_fn(|i| {
                let chunk = bytes.get(i * 8..).unwrap_or_default();
                let chunk = &chunk[..chunk.len().min(8)];
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                AtomicU64::new(u64::from_le_bytes(w))
            }),
            state: AtomicU8::new(0),
            referenced: AtomicBool::new(false),
            queued: AtomicBool::new(false),
        };
        page.mask_from(limit);
        page
    }

    fn word(&self, bit: u64) -> u64 {
        self.words[(bit / 64) as usize].load(Ordering::Acquire)
    }

    /// Page bit `bit`.
    #[cfg(test)]
    pub(super) fn bit(&self, bit: u64) -> bool {
        self.word(bit) >> (bit % 64) & 1 == 1
    }

    /// Scans page bits `from..to` (`from < to <= PAGE_BITS`) for the end of a run in `state`,
    /// which the first word load decides when it is `None`. Returns where the scan stopped and
    /// whether a bit in the other state stopped it.
    pub(super) fn run_in(&self, from: u64, to: u64, state: &mut Option<bool>) -> (u64, bool) {
        let mut bit = from;
        while bit < to {
            let word = self.word(bit) >> (bit % 64);
            let in_state = *state.get_or_insert(word & 1 == 1);
            let differ = if in_state { !word } else { word };
            // Past bit 63 - bit % 64 the shift brought in zeros, which `!` turned to ones.
            let differ = differ & ones(64 - bit % 64);
            if differ != 0 {
                let stop = bit + u64::from(differ.trailing_zeros());
                return (stop.min(to), stop < to);
            }
            bit += 64 - bit % 64;
        }
        (to, false)
    }

    /// Sets page bits `from..to` with `Release`, so that a reader that sees a bit also sees the
    /// data written before it. Only under [`Shared`], so that no eviction loses them.
    pub(super) fn set_bits(&self, from: u64, to: u64, _: &Shared<'_>) {
        let mut bit = from;
        while bit < to {
            let n = (64 - bit % 64).min(to - bit);
            self.words[(bit / 64) as usize].fetch_or(ones(n) << (bit % 64), Ordering::Release);
            bit += n;
        }
    }

    /// Clears page bits `limit..`.
    pub(super) fn mask_from(&self, limit: u64) {
        for (i, w) in self.words.iter().enumerate() {
            let first = i as u64 * 64;
            if limit <= first {
                w.store(0, Ordering::Release);
            } else if limit < first + 64 {
                w.fetch_and(ones(limit - first), Ordering::Release);
            }
        }
    }

    /// The first `len` bytes of the page.
    pub(super) fn bytes(&self, len: u64) -> Vec<u8> {
        let mut bytes: Vec<u8> = self
            .words
            .iter()
            .flat_map(|w| w.load(Ordering::Acquire).to_le_bytes())
            .collect();
        bytes.truncate(len as usize);
        bytes
    }

    /// Marks the page dirty; true when it was clean (it must then join the unsynced set).
    /// Only under [`Shared`], so that the page is not evicted between its bits and this mark.
    pub(super) fn mark_dirty(&self, _: &Shared<'_>) -> bool {
        self.state.fetch_or(DIRTY, Ordering::AcqRel) == 0
    }

    /// Starts a write-back: dirty becomes writing, in one step, so that the page is never
    /// clean in between. False when the page is not dirty.
    pub(super) fn start_write(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & DIRTY != 0).then_some(WRITING)
            })
            .is_ok()
    }

    /// Ends a write-back that reached the store; true when the page is now clean (no bit was
    /// set since its copy was taken).
    pub(super) fn end_write(&self) -> bool {
        self.state.fetch_and(!WRITING, Ordering::AcqRel) & DIRTY == 0
    }

    /// Ends a failed write-back: the page is dirty again (marked before the writing mark
    /// goes, so that it is never clean in between).
    pub(super) fn fail_write(&self) {
        self.state.fetch_or(DIRTY, Ordering::AcqRel);
        self.state.fetch_and(!WRITING, Ordering::AcqRel);
    }

    /// Whether the page holds the same bits as the store, so that it may be evicted. Stable
    /// under the exclusive eviction lock: only setters, excluded then, make a clean page
    /// unclean.
    pub(super) fn is_clean(&self) -> bool {
        self.state.load(Ordering::Acquire) == 0
    }

    /// Notes a read, for the eviction clock. Loads first, so that a page read often is not
    /// written on every read.
    pub(super) fn touch(&self) {
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }

    /// Clears the read mark; true when it was set.
    pub(super) fn take_reference(&self) -> bool {
        self.referenced.swap(false, Ordering::Relaxed)
    }

    /// Sets the queued mark; true when it was clear. Under the queue's mutex only.
    pub(super) fn enqueue(&self) -> bool {
        !self.queued.swap(true, Ordering::Relaxed)
    }

    /// Clears the queued mark. Under the queue's mutex only.
    pub(super) fn dequeue(&self) {
        self.queued.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::super::PAGE_BITS;
    use super::*;

    #[test]
    fn runs_within_a_page() {
        let mut bytes = vec![0u8; PAGE_BYTES as usize];
        bytes[1] = 0b1111_0000; // bits 12..16
        let page = Page::new(&bytes, PAGE_BITS);
        let mut state = None;
        assert_eq!(page.run_in(0, PAGE_BITS, &mut state), (12, true));
        assert_eq!(state, Some(false));
        let mut state = None;
        assert_eq!(page.run_in(13, PAGE_BITS, &mut state), (16, true));
        assert_eq!(state, Some(true));
        assert_eq!(page.run_in(13, 15, &mut Some(true)), (15, false));
        assert_eq!(page.run_in(16, PAGE_BITS, &mut None), (PAGE_BITS, false));
        assert!(page.bit(12) && !page.bit(11) && !page.bit(16));
    }

    #[test]
    fn masked_at_load_and_short_pages() {
        let page = Page::new(&[0xff, 0xff, 0xff], 10);
        assert_eq!(page.bytes(3), vec![0xff, 0x03, 0]);
        assert_eq!(page.bytes(PAGE_BYTES).len(), PAGE_BYTES as usize);
    }

    #[test]
    fn write_back_states() {
        let page = Page::new(&[], PAGE_BITS);
        assert!(page.is_clean());
        assert!(!page.start_write(), "a clean page has nothing to write");
        page.state.store(DIRTY, Ordering::Relaxed);
        assert!(page.start_write());
        assert!(!page.is_clean(), "writing is not clean");
        assert!(page.end_write());
        assert!(page.is_clean());
        page.state.store(DIRTY, Ordering::Relaxed);
        page.start_write();
        page.state.fetch_or(DIRTY, Ordering::Relaxed); // a bit set during the write
        assert!(!page.end_write(), "still dirty");
        assert!(page.start_write());
        page.fail_write();
        assert!(page.start_write(), "dirty again after a failed write");
    }
}
