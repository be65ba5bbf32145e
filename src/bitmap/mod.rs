//! The COW bitmap in memory: one bit per cluster, 1 = the cluster lives in the image file.
//!
//! - Pages of [`PAGE_BYTES`] bitmap bytes are loaded lazily, on first touch, and never evicted,
//!   so memory is at most the bitmap's own size (plus one small slot per page).
//! - Bits are read with atomic loads: no lock on the read path. A racing first touch may read a
//!   page twice, but only the first copy is installed (`OnceLock`), so a page is never cached
//!   twice and no update can be lost to a stale copy.
//! - Bits are set with `fetch_or(Release)` *after* the data they point at was written, then the
//!   page is marked dirty. [`Bitmap::take_dirty`] clears the dirty mark *before* copying the
//!   page, so a bit set during a write-back keeps its page dirty.
//! - Bits for clusters at or past the end are always 0 in memory (masked at load).
//!
//! In a word, cluster `c` is bit `c % 64` of word `c / 64` of the little-endian reading of the
//! bytes, which is exactly the on-disk rule "bit `c % 8` of byte `c / 8`".

use crate::error::Result;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Bitmap bytes per page (32768 clusters, 2 GiB of image at 64 KiB clusters).
pub const PAGE_BYTES: u64 = 4096;
const PAGE_BITS: u64 = PAGE_BYTES * 8;

/// Reads `buf.len()` bitmap bytes starting at bitmap byte `offset` from wherever the bitmap is
/// stored.
pub type Loader<'a> = &'a dyn Fn(u64, &mut [u8]) -> Result<()>;

#[derive(Default)]
struct Page {
    words: OnceLock<Box<[AtomicU64]>>,
    dirty: AtomicBool,
}

/// A dirty page's bytes, copied for write-back.
#[derive(Debug)]
pub struct PageSnapshot {
    /// Page index, for [`Bitmap::mark_dirty`] when the write-back fails.
    pub index: usize,
    /// Byte offset in the bitmap.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// The in-memory bitmap of an image with a given number of clusters.
pub struct Bitmap {
    clusters: u64,
    pages: Vec<Page>,
}

impl Bitmap {
    /// An unloaded bitmap for `clusters` clusters: costs one slot per page, no I/O.
    pub fn new(clusters: u64) -> Bitmap {
        let mut pages = Vec::new();
        pages.resize_with(page_count(clusters), Page::default);
        Bitmap { clusters, pages }
    }

    /// Bitmap length in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.clusters.div_ceil(8)
    }

    /// Bytes of page `index` (the last page may be short).
    fn page_bytes(&self, index: usize) -> u64 {
        (self.len_bytes() - index as u64 * PAGE_BYTES).min(PAGE_BYTES)
    }

    fn page(&self, index: usize, load: Loader<'_>) -> Result<&[AtomicU64]> {
        let slot = &self.pages[index].words;
        if let Some(words) = slot.get() {
            return Ok(words);
        }
        let mut buf = vec![0u8; self.page_bytes(index) as usize];
        load(index as u64 * PAGE_BYTES, &mut buf)?;
        let words = words_from_bytes(&buf);
        mask_from(&words, index, self.clusters);
        // A racing loader may have installed its copy first; then ours is dropped.
        let _ = slot.set(words);
        Ok(slot.get().expect("installed above"))
    }

    /// Whether cluster `c` (< clusters) is allocated.
    pub fn get(&self, c: u64, load: Loader<'_>) -> Result<bool> {
        let words = self.page(page_of(c), load)?;
        let bit = c % PAGE_BITS;
        Ok(words[(bit / 64) as usize].load(Ordering::Acquire) >> (bit % 64) & 1 == 1)
    }

    /// The state of cluster `first` and the number of clusters, at least 1 and at most `max`,
    /// from `first` on that share it. The state comes from the same word load that starts the
    /// run, so a concurrent allocation can never make the run empty.
    pub fn run(&self, first: u64, max: u64, load: Loader<'_>) -> Result<(bool, u64)> {
        let end = first.saturating_add(max.max(1)).min(self.clusters);
        let mut state = None;
        let mut c = first;
        while c < end {
            let words = self.page(page_of(c), load)?;
            let bit = c % PAGE_BITS;
            let word = words[(bit / 64) as usize].load(Ordering::Acquire) >> (bit % 64);
            let state = *state.get_or_insert(word & 1 == 1);
            let differ = if state { !word } else { word };
            // Past bit 63 - bit % 64 the shift brought in zeros, which `!` turned to ones.
            let differ = differ & ones(64 - bit % 64);
            if differ != 0 {
                c += u64::from(differ.trailing_zeros());
                break;
            }
            c += 64 - bit % 64;
        }
        Ok((state.unwrap_or(false), c.min(end) - first))
    }

    /// Loads the pages of clusters `first..end`, so that their bits stay in memory whatever
    /// happens to the store.
    pub fn load_range(&self, first: u64, end: u64, load: Loader<'_>) -> Result<()> {
        for index in pages_of(first, end) {
            self.page(index, load)?;
        }
        Ok(())
    }

    /// Marks the loaded pages of clusters `first..end` dirty.
    pub fn mark_dirty_range(&self, first: u64, end: u64) {
        for index in pages_of(first, end) {
            if self.pages[index].words.get().is_some() {
                self.mark_dirty(index);
            }
        }
    }

    /// Sets the bits of clusters `first..end` (all < clusters) and marks their pages dirty.
    /// Call only once the clusters' data is in the image file.
    pub fn set_range(&self, first: u64, end: u64, load: Loader<'_>) -> Result<()> {
        let mut c = first;
        while c < end {
            let index = page_of(c);
            let words = self.page(index, load)?;
            let page_end = end.min((index as u64 + 1) * PAGE_BITS);
            while c < page_end {
                let bit = c % PAGE_BITS;
                let n = (64 - bit % 64).min(page_end - c);
                words[(bit / 64) as usize].fetch_or(ones(n) << (bit % 64), Ordering::Release);
                c += n;
            }
            self.pages[index].dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Copies every dirty page and clears its dirty mark.
    pub fn take_dirty(&self) -> Vec<PageSnapshot> {
        let mut out = Vec::new();
        for (index, page) in self.pages.iter().enumerate() {
            if !page.dirty.swap(false, Ordering::AcqRel) {
                continue;
            }
            let words = page.words.get().expect("a dirty page is loaded");
            let mut bytes: Vec<u8> = words
                .iter()
                .flat_map(|w| w.load(Ordering::Acquire).to_le_bytes())
                .collect();
            bytes.truncate(self.page_bytes(index) as usize);
            out.push(PageSnapshot {
                index,
                offset: index as u64 * PAGE_BYTES,
                bytes,
            });
        }
        out
    }

    /// Marks a page dirty again (its write-back failed).
    pub fn mark_dirty(&self, index: usize) {
        self.pages[index].dirty.store(true, Ordering::Release);
    }

    /// Changes the number of clusters. Bits of clusters past the new end are dropped; new
    /// clusters start unallocated (their pages load from the store, which must hold zeros
    /// there). The page at the boundary is rewritten and marked dirty, so that no stale bit
    /// past the end survives on disk either.
    pub fn resize(&mut self, clusters: u64, load: Loader<'_>) -> Result<()> {
        let keep = self.clusters.min(clusters);
        let boundary = (keep % PAGE_BITS != 0).then(|| page_of(keep));
        if let Some(index) = boundary {
            self.page(index, load)?;
        }
        self.clusters = clusters;
        self.pages.resize_with(page_count(clusters), Page::default);
        if let Some(index) = boundary {
            let old = self.pages[index].words.take().expect("loaded above");
            let words = resized_words(&old, self.page_bytes(index));
            mask_from(&words, index, keep);
            let page = &mut self.pages[index];
            page.words = OnceLock::from(words);
            *page.dirty.get_mut() = true;
        }
        Ok(())
    }
}

fn page_of(c: u64) -> usize {
    (c / PAGE_BITS) as usize
}

/// Indices of the pages holding clusters `first..end`.
fn pages_of(first: u64, end: u64) -> std::ops::Range<usize> {
    match first < end {
        true => page_of(first)..page_of(end - 1) + 1,
        false => 0..0,
    }
}

fn page_count(clusters: u64) -> usize {
    clusters.div_ceil(8).div_ceil(PAGE_BYTES) as usize
}

/// A word with the low `n` (1..=64) bits set.
fn ones(n: u64) -> u64 {
    u64::MAX >> (64 - n)
}

fn words_from_bytes(bytes: &[u8]) -> Box<[AtomicU64]> {
    bytes
        .chunks(8)
        .map(|chunk| {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            AtomicU64::new(u64::from_le_bytes(w))
        })
        .collect()
}

fn resized_words(old: &[AtomicU64], bytes: u64) -> Box<[AtomicU64]> {
    (0..bytes.div_ceil(8) as usize)
        .map(|i| AtomicU64::new(old.get(i).map_or(0, |w| w.load(Ordering::Acquire))))
        .collect()
}

/// Clears the bits of clusters at or past `limit` in page `index`.
fn mask_from(words: &[AtomicU64], index: usize, limit: u64) {
    let start = index as u64 * PAGE_BITS;
    let local = limit.saturating_sub(start);
    for (i, w) in words.iter().enumerate() {
        let first = i as u64 * 64;
        if local <= first {
            w.store(0, Ordering::Release);
        } else if local < first + 64 {
            w.fetch_and(ones(local - first), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn from(bytes: &[u8]) -> impl Fn(u64, &mut [u8]) -> Result<()> + '_ {
        move |off, buf| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = bytes.get(off as usize + i).copied().unwrap_or(0);
            }
            Ok(())
        }
    }

    #[test]
    fn lsb_first_bit_order() {
        let disk = [0b0000_0101u8, 0x80];
        let bm = Bitmap::new(16);
        let l = from(&disk);
        let got: Vec<bool> = (0..16).map(|c| bm.get(c, &l).unwrap()).collect();
        let mut want = vec![false; 16];
        want[0] = true;
        want[2] = true;
        want[15] = true;
        assert_eq!(got, want);
    }

    #[test]
    fn runs_cross_words_and_pages_and_stop_at_end() {
        let bm = Bitmap::new(PAGE_BITS * 2 + 10);
        let l = from(&[]);
        bm.set_range(60, PAGE_BITS + 70, &l).unwrap();
        assert_eq!(bm.run(0, u64::MAX, &l).unwrap(), (false, 60));
        assert_eq!(bm.run(60, u64::MAX, &l).unwrap(), (true, PAGE_BITS + 10));
        assert_eq!(bm.run(61, 5, &l).unwrap(), (true, 5));
        assert_eq!(
            bm.run(PAGE_BITS + 70, u64::MAX, &l).unwrap(),
            (false, PAGE_BITS - 60)
        );
        bm.set_range(PAGE_BITS * 2, PAGE_BITS * 2 + 10, &l).unwrap();
        assert_eq!(bm.run(PAGE_BITS * 2 + 3, u64::MAX, &l).unwrap(), (true, 7));
    }

    #[test]
    fn stale_bits_past_the_end_are_masked() {
        let disk = [0xffu8, 0xff];
        let bm = Bitmap::new(10);
        let l = from(&disk);
        assert_eq!(bm.run(0, u64::MAX, &l).unwrap(), (true, 10));
    }

    #[test]
    fn dirty_pages_are_snapshotted_once() {
        let bm = Bitmap::new(PAGE_BITS + 9);
        let l = from(&[]);
        bm.set_range(3, 5, &l).unwrap();
        bm.set_range(PAGE_BITS + 8, PAGE_BITS + 9, &l).unwrap();
        let snaps = bm.take_dirty();
        assert_eq!(snaps.len(), 2);
        assert_eq!(snaps[0].offset, 0);
        assert_eq!(snaps[0].bytes.len(), 4096);
        assert_eq!(snaps[0].bytes[0], 0b0001_1000);
        assert_eq!(snaps[1].offset, 4096);
        assert_eq!(snaps[1].bytes, vec![0, 1]);
        assert!(bm.take_dirty().is_empty());
        bm.mark_dirty(1);
        assert_eq!(bm.take_dirty().len(), 1);
    }

    #[test]
    fn loads_lazily_and_once() {
        let calls = Cell::new(0);
        let l = |_: u64, _: &mut [u8]| {
            calls.set(calls.get() + 1);
            Ok(())
        };
        let bm = Bitmap::new(1 << 28);
        assert_eq!(calls.get(), 0);
        bm.get(5, &l).unwrap();
        bm.get(6, &l).unwrap();
        assert_eq!(calls.get(), 1);
        bm.get(PAGE_BITS * 100, &l).unwrap();
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn resize_drops_and_masks() {
        let l = from(&[]);
        let mut bm = Bitmap::new(100);
        bm.set_range(0, 100, &l).unwrap();
        bm.take_dirty();
        bm.resize(37, &l).unwrap();
        assert_eq!(bm.run(0, u64::MAX, &l).unwrap(), (true, 37));
        let snap = bm.take_dirty();
        assert_eq!(snap[0].bytes, vec![0xff, 0xff, 0xff, 0xff, 0x1f]);
        bm.resize(PAGE_BITS * 3, &l).unwrap();
        assert_eq!(bm.run(0, u64::MAX, &l).unwrap(), (true, 37));
        assert_eq!(
            bm.run(37, u64::MAX, &l).unwrap(),
            (false, PAGE_BITS * 3 - 37)
        );
        bm.set_range(PAGE_BITS * 3 - 1, PAGE_BITS * 3, &l).unwrap();
        assert!(bm.get(PAGE_BITS * 3 - 1, &l).unwrap());
        bm.resize(0, &l).unwrap();
        assert_eq!(bm.len_bytes(), 0);
    }
}
