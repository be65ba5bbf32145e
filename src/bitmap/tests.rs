//! Bitmap unit tests over a sparse in-memory store that counts its reads.

use super::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Mutex, RwLock};

/// File-system block size of the store: holes are whole blocks.
const BLOCK: u64 = 512;

/// The bitmap as blocks, all-zero blocks left out, so that stores of 2^41 bytes cost nothing.
/// With `holes`, `next_data` reports the first block with a nonzero byte, as `SEEK_DATA` on a
/// sparse file; without, it always says "data may be here".
#[derive(Default)]
struct MemStore {
    blocks: RwLock<BTreeMap<u64, [u8; BLOCK as usize]>>,
    holes: bool,
    reads: AtomicU64,
    next_data_calls: AtomicU64,
    gate: Option<Gate>,
}

/// Stops one thread's next read after it copied the bytes, until the test lets it go.
struct Gate {
    thread: Mutex<Option<std::thread::ThreadId>>,
    entered: mpsc::SyncSender<()>,
    go: Mutex<mpsc::Receiver<()>>,
}

impl MemStore {
    fn sparse() -> MemStore {
        MemStore {
            holes: true,
            ..MemStore::default()
        }
    }

    fn from(bytes: &[u8]) -> MemStore {
        let store = MemStore::default();
        store.write(0, bytes);
        store
    }

    /// Applies `f` to the bytes of the store at `offset..offset + len`, block by block.
    fn update(&self, offset: u64, len: u64, mut f: impl FnMut(u64, &mut u8)) {
        let mut blocks = self.blocks.write().unwrap();
        for b in offset / BLOCK..(offset + len).div_ceil(BLOCK) {
            let mut block = blocks.get(&b).copied().unwrap_or([0; BLOCK as usize]);
            for (i, byte) in block.iter_mut().enumerate() {
                let at = b * BLOCK + i as u64;
                if (offset..offset + len).contains(&at) {
                    f(at, byte);
                }
            }
            match block.iter().all(|&x| x == 0) {
                true => blocks.remove(&b),
                false => blocks.insert(b, block),
            };
        }
    }

    fn write(&self, offset: u64, bytes: &[u8]) {
        self.update(offset, bytes.len() as u64, |at, b| {
            *b = bytes[(at - offset) as usize]
        });
    }

    /// Sets cluster `c`'s bit in the store.
    fn set_bit(&self, c: u64) {
        self.update(c / 8, 1, |_, b| *b |= 1 << (c % 8));
    }

    /// Writes the dirty pages back; how many.
    fn write_back(&self, bitmap: &Bitmap) -> usize {
        let wb = bitmap.take_dirty().expect("no write-back in flight");
        for page in wb.pages() {
            self.write(page.offset, &page.bytes);
        }
        let n = wb.pages().len();
        bitmap.writeback_done(wb);
        n
    }

    fn reads(&self) -> u64 {
        self.reads.load(SeqCst)
    }
}

impl Store for MemStore {
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.reads.fetch_add(1, SeqCst);
        buf.fill(0);
        let end = offset + buf.len() as u64;
        let blocks = self.blocks.read().unwrap();
        for (&b, block) in blocks.range(offset / BLOCK..end.div_ceil(BLOCK)) {
            for (i, &byte) in block.iter().enumerate() {
                let at = b * BLOCK + i as u64;
                if (offset..end).contains(&at) {
                    buf[(at - offset) as usize] = byte;
                }
            }
        }
        drop(blocks);
        if let Some(gate) = self.gate.as_ref() {
            let mut thread = gate.thread.lock().unwrap();
            if *thread == Some(std::thread::current().id()) {
                *thread = None;
                drop(thread);
                gate.entered.send(()).unwrap();
                gate.go.lock().unwrap().recv().unwrap();
            }
        }
        Ok(())
    }

    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        self.next_data_calls.fetch_add(1, SeqCst);
        if !self.holes {
            return Ok(Some(offset));
        }
        let blocks = self.blocks.read().unwrap();
        Ok(blocks
            .range(offset / BLOCK..)
            .next()
            .map(|(&b, _)| (b * BLOCK).max(offset)))
    }
}

/// A store whose reads, once they have copied their bytes, run `hook` with their offset before
/// they return: other calls on the bitmap made meanwhile, on the same thread, as other
/// coroutines run while one waits in its read.
struct Yielding<'a> {
    store: &'a MemStore,
    hook: &'a dyn Fn(u64),
}

impl Store for Yielding<'_> {
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.store.read(offset, buf)?;
        (self.hook)(offset);
        Ok(())
    }

    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        self.store.next_data(offset)
    }
}

/// Runs `f` on a thread of its own and fails if it has not returned within a minute: a
/// deadlock fails the test instead of hanging it. (No timing is measured: `f` takes
/// milliseconds.)
fn without_deadlock(f: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        f();
        done.send(()).unwrap();
    });
    match finished.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(()) => thread.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(thread.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlock: still running after a minute"),
    }
}

fn bitmap(clusters: u64) -> Bitmap {
    Bitmap::new(clusters, 0)
}

/// The offsets of the dirty pages, taken and failed (so that they stay dirty).
fn dirty(bm: &Bitmap) -> Vec<u64> {
    let wb = bm.take_dirty().expect("no write-back in flight");
    let offsets = wb.pages().iter().map(|p| p.offset).collect();
    bm.writeback_failed(wb);
    offsets
}

/// The runs from `first` to the end, merged (a call may stop early), and the calls made.
fn runs(bm: &Bitmap, first: u64, store: &MemStore) -> (Vec<(bool, u64)>, u64) {
    let (mut out, mut calls, mut c) = (Vec::<(bool, u64)>::new(), 0, first);
    while c < bm.clusters() {
        let (state, n) = bm.run(Cluster(c), u64::MAX, store).unwrap();
        assert!(n > 0);
        match out.last_mut() {
            Some((s, len)) if *s == state => *len += n,
            _ => out.push((state, n)),
        }
        c += n;
        calls += 1;
    }
    (out, calls)
}

#[test]
fn lsb_first_bit_order() {
    let store = MemStore::from(&[0b0000_0101u8, 0x80]);
    let bm = bitmap(16);
    let got: Vec<bool> = (0..16)
        .map(|c| bm.get(Cluster(c), &store).unwrap())
        .collect();
    let mut want = vec![false; 16];
    want[0] = true;
    want[2] = true;
    want[15] = true;
    assert_eq!(got, want);
}

#[test]
fn runs_cross_words_and_pages_and_stop_at_end() {
    let bm = bitmap(PAGE_BITS * 2 + 10);
    let s = MemStore::default();
    bm.set_range(Cluster(60)..Cluster(PAGE_BITS + 70), &s)
        .unwrap();
    assert_eq!(bm.run(Cluster(0), u64::MAX, &s).unwrap(), (false, 60));
    assert_eq!(
        bm.run(Cluster(60), u64::MAX, &s).unwrap(),
        (true, PAGE_BITS + 10)
    );
    assert_eq!(bm.run(Cluster(61), 5, &s).unwrap(), (true, 5));
    assert_eq!(
        bm.run(Cluster(PAGE_BITS + 70), u64::MAX, &s).unwrap(),
        (false, PAGE_BITS - 60)
    );
    bm.set_range(Cluster(PAGE_BITS * 2)..Cluster(PAGE_BITS * 2 + 10), &s)
        .unwrap();
    assert_eq!(
        bm.run(Cluster(PAGE_BITS * 2 + 3), u64::MAX, &s).unwrap(),
        (true, 7)
    );
}

#[test]
fn stale_bits_past_the_end_are_masked() {
    let store = MemStore::from(&[0xff, 0xff]);
    let bm = bitmap(10);
    assert_eq!(bm.run(Cluster(0), u64::MAX, &store).unwrap(), (true, 10));
}

#[test]
fn dirty_pages_are_written_back_once_and_again_after_a_failure() {
    let bm = bitmap(PAGE_BITS + 9);
    let s = MemStore::default();
    bm.set_range(Cluster(3)..Cluster(5), &s).unwrap();
    bm.set_range(Cluster(PAGE_BITS + 8)..Cluster(PAGE_BITS + 9), &s)
        .unwrap();
    let wb = bm.take_dirty().unwrap();
    let pages = wb.pages();
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0].offset, 0);
    assert_eq!(pages[0].bytes.len(), 4096);
    assert_eq!(pages[0].bytes[0], 0b0001_1000);
    assert_eq!(pages[1].offset, 4096);
    assert_eq!(pages[1].bytes, vec![0, 1]);
    bm.writeback_done(wb);
    assert_eq!(dirty(&bm), [], "done: nothing is dirty");
    bm.set_range(Cluster(PAGE_BITS)..Cluster(PAGE_BITS + 1), &s)
        .unwrap();
    let wb = bm.take_dirty().unwrap();
    assert_eq!(wb.pages().len(), 1);
    bm.writeback_failed(wb);
    assert_eq!(dirty(&bm), [4096], "failed: dirty again");
}

#[test]
fn one_write_back_at_a_time_without_waiting() {
    let bm = bitmap(PAGE_BITS * 2);
    let s = MemStore::default();
    bm.set_range(Cluster(1)..Cluster(2), &s).unwrap();
    let first = bm.take_dirty().unwrap();
    bm.set_range(Cluster(PAGE_BITS)..Cluster(PAGE_BITS + 1), &s)
        .unwrap();
    assert!(bm.take_dirty().is_none(), "busy while one is in flight");
    // Finished on another thread: it borrows nothing.
    let first = std::thread::spawn(move || first).join().unwrap();
    bm.writeback_done(first);
    let second = bm.take_dirty().expect("free again");
    assert_eq!(second.pages().len(), 1, "the page set meanwhile");
    assert_eq!(second.pages()[0].offset, 4096);
    bm.writeback_done(second);
}

/// A write-back is an owned value that a C host keeps in a heap handle and may finish on
/// another thread; the bitmap is shared between threads.
const _: () = {
    const fn send<T: Send + 'static>() {}
    const fn sync<T: Send + Sync>() {}
    send::<WriteBack>();
    sync::<Bitmap>();
};

#[test]
#[should_panic(expected = "did not take it")]
fn a_write_back_is_finished_only_on_its_bitmap() {
    let (a, b) = (bitmap(8), bitmap(8));
    let s = MemStore::default();
    a.set_range(Cluster(1)..Cluster(2), &s).unwrap();
    let wb = a.take_dirty().unwrap();
    let _other = b.take_dirty().unwrap();
    b.writeback_done(wb);
}

#[test]
fn a_bit_set_during_a_write_back_keeps_its_page_dirty() {
    let bm = bitmap(100);
    let s = MemStore::default();
    bm.set_range(Cluster(1)..Cluster(2), &s).unwrap();
    let wb = bm.take_dirty().unwrap();
    bm.set_range(Cluster(2)..Cluster(3), &s).unwrap();
    bm.writeback_done(wb);
    let wb = bm.take_dirty().unwrap();
    assert_eq!(
        wb.pages()[0].bytes,
        vec![0b110, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    bm.writeback_done(wb);
}

#[test]
fn loads_lazily_and_once() {
    let s = MemStore::default();
    let bm = bitmap(1 << 28);
    assert_eq!(s.reads(), 0);
    bm.get(Cluster(5), &s).unwrap();
    bm.get(Cluster(6), &s).unwrap();
    assert_eq!(s.reads(), 1);
    bm.get(Cluster(PAGE_BITS * 100), &s).unwrap();
    assert_eq!(s.reads(), 2);
    assert_eq!(bm.resident_pages(), 2);
}

#[test]
fn resize_drops_and_masks() {
    let s = MemStore::default();
    let bm = bitmap(100);
    bm.set_range(Cluster(0)..Cluster(100), &s).unwrap();
    s.write_back(&bm);
    bm.resize(37, &s).unwrap();
    assert_eq!(bm.run(Cluster(0), u64::MAX, &s).unwrap(), (true, 37));
    let wb = bm.take_dirty().unwrap();
    assert_eq!(wb.pages()[0].bytes, vec![0xff, 0xff, 0xff, 0xff, 0x1f]);
    bm.writeback_failed(wb);
    bm.resize(PAGE_BITS * 3, &s).unwrap();
    assert_eq!(bm.run(Cluster(0), u64::MAX, &s).unwrap(), (true, 37));
    assert_eq!(
        bm.run(Cluster(37), u64::MAX, &s).unwrap(),
        (false, PAGE_BITS * 3 - 37)
    );
    bm.set_range(Cluster(PAGE_BITS * 3 - 1)..Cluster(PAGE_BITS * 3), &s)
        .unwrap();
    assert!(bm.get(Cluster(PAGE_BITS * 3 - 1), &s).unwrap());
    bm.resize(PAGE_BITS, &s).unwrap();
    assert_eq!(bm.resident_pages(), 1, "pages past the end are dropped");
    assert_eq!(dirty(&bm), [0], "and no longer written back");
    bm.resize(0, &s).unwrap();
    assert_eq!((bm.len_bytes(), bm.resident_pages()), (0, 0));
}

/// 2^44 clusters (2^29 pages): every operation costs a bounded number of page loads.
#[test]
fn a_2p44_cluster_bitmap_does_bounded_work() {
    let clusters = 1u64 << 44;
    let s = MemStore::default();
    let bm = bitmap(clusters);
    assert_eq!(bm.resident_pages(), 0);
    assert!(!bm.get(Cluster(clusters - 1), &s).unwrap());
    let far = clusters / 3;
    bm.set_range(Cluster(far)..Cluster(far + 3), &s).unwrap();
    assert!(bm.get(Cluster(far + 2), &s).unwrap());
    assert_eq!(s.reads(), 2);
    assert_eq!(bm.run(Cluster(far), u64::MAX, &s).unwrap(), (true, 3));
    let (state, n) = bm.run(Cluster(0), u64::MAX, &s).unwrap();
    assert_eq!((state, n), (false, MAX_RUN_PAGES as u64 * PAGE_BITS));
    assert_eq!(
        s.reads(),
        2 + MAX_RUN_PAGES as u64,
        "one run, bounded loads"
    );
    bm.resize(clusters / 2 + 5, &s).unwrap();
    assert!(bm.get(Cluster(far + 1), &s).unwrap());
    bm.resize(clusters, &s).unwrap();
    assert!(bm.get(Cluster(far + 1), &s).unwrap());
    assert_eq!(s.reads(), 2 + MAX_RUN_PAGES as u64 + 1, "the boundary page");
    bm.resize(far + 2, &s).unwrap();
    assert_eq!(bm.run(Cluster(far), u64::MAX, &s).unwrap(), (true, 2));
}

#[test]
fn a_run_over_a_huge_hole_skips_it_with_one_question() {
    let clusters = 1u64 << 44;
    let s = MemStore::sparse();
    let bm = bitmap(clusters);
    assert_eq!(bm.run(Cluster(0), u64::MAX, &s).unwrap(), (false, clusters));
    assert_eq!(
        bm.run(Cluster(12345), 1 << 40, &s).unwrap(),
        (false, 1 << 40)
    );
    assert_eq!(s.reads(), 0);
    assert_eq!(s.next_data_calls.load(SeqCst), 2);
    assert!(!bm.get(Cluster(clusters - 1), &s).unwrap());
    assert_eq!((s.reads(), bm.resident_pages()), (0, 0));
}

#[test]
fn skips_load_only_the_pages_with_data() {
    let clusters = 1u64 << 40;
    let s = MemStore::sparse();
    let set = [PAGE_BITS * 10 + 5, PAGE_BITS * 1000, clusters - 1];
    for &c in &set {
        s.set_bit(c);
    }
    let bm = bitmap(clusters);
    let (got, calls) = runs(&bm, 0, &s);
    let want = vec![
        (false, set[0]),
        (true, 1),
        (false, set[1] - set[0] - 1),
        (true, 1),
        (false, set[2] - set[1] - 1),
        (true, 1),
    ];
    assert_eq!(got, want);
    assert_eq!(s.reads(), 3, "one load per page with data");
    assert!(calls <= 6, "{calls} calls");
}

#[test]
fn skips_stop_at_bits_not_yet_in_the_store() {
    let s = MemStore::sparse();
    let bm = Bitmap::new(PAGE_BITS * 100, PAGE_COST);
    let c = PAGE_BITS * 50 + 7;
    bm.set_range(Cluster(c)..Cluster(c + 1), &s).unwrap();
    assert_eq!(
        bm.run(Cluster(0), u64::MAX, &s).unwrap(),
        (false, c),
        "dirty"
    );
    let wb = bm.take_dirty().unwrap();
    assert_eq!(
        bm.run(Cluster(0), u64::MAX, &s).unwrap(),
        (false, c),
        "writing"
    );
    for page in wb.pages() {
        s.write(page.offset, &page.bytes);
    }
    bm.writeback_done(wb);
    s.set_bit(PAGE_BITS * 80);
    bm.get(Cluster(PAGE_BITS * 80), &s).unwrap(); // evicts page 50, now clean, under a one-page cap
    assert_eq!(bm.resident_pages(), 1);
    assert_eq!(
        bm.run(Cluster(0), u64::MAX, &s).unwrap(),
        (false, c),
        "stored"
    );
}

#[test]
fn resident_pages_stay_under_the_cap() {
    let s = MemStore::default();
    let cap_pages = 10;
    let bm = Bitmap::new(PAGE_BITS * 1000, cap_pages * PAGE_COST);
    for i in 0..1000 {
        bm.get(Cluster(i * PAGE_BITS), &s).unwrap();
        assert!(bm.resident_pages() <= cap_pages as usize);
    }
    assert_eq!(s.reads(), 1000);
    let (state, n) = bm.run(Cluster(0), u64::MAX, &s).unwrap();
    assert_eq!((state, n), (false, MAX_RUN_PAGES as u64 * PAGE_BITS));
    assert!(bm.resident_pages() <= cap_pages as usize);
}

#[test]
fn a_cap_below_one_page_means_one_page() {
    let s = MemStore::default();
    let bm = Bitmap::new(PAGE_BITS * 10, 1);
    for i in 0..10 {
        bm.get(Cluster(i * PAGE_BITS), &s).unwrap();
    }
    assert_eq!(bm.resident_pages(), 1);
}

#[test]
fn pages_read_often_get_a_second_chance() {
    let s = MemStore::default();
    let bm = Bitmap::new(PAGE_BITS * 1000, 32 * PAGE_COST);
    for i in 0..1000 {
        bm.get(Cluster(0), &s).unwrap();
        bm.get(Cluster(i * PAGE_BITS), &s).unwrap();
    }
    assert_eq!(s.reads(), 1000, "page 0 was loaded once");
}

#[test]
fn dirty_and_writing_pages_are_never_evicted() {
    let s = MemStore::sparse();
    let bm = Bitmap::new(PAGE_BITS * 100, 1);
    for i in 0..20 {
        bm.set_range(Cluster(i * PAGE_BITS)..Cluster(i * PAGE_BITS + 1), &s)
            .unwrap();
    }
    assert_eq!(bm.resident_pages(), 20);
    let wb = bm.take_dirty().unwrap();
    for i in 50..60 {
        s.set_bit(i * PAGE_BITS); // pages with data, so that reads load them
        bm.get(Cluster(i * PAGE_BITS), &s).unwrap();
    }
    assert!(bm.resident_pages() >= 20, "writing pages stay");
    for i in 0..20 {
        assert!(bm.get(Cluster(i * PAGE_BITS), &s).unwrap(), "page {i}");
    }
    bm.writeback_failed(wb);
    assert!(bm.resident_pages() >= 20, "dirty again: they stay");
    s.write_back(&bm);
    bm.get(Cluster(55 * PAGE_BITS), &s).unwrap();
    bm.get(Cluster(56 * PAGE_BITS), &s).unwrap();
    assert!(bm.resident_pages() <= 2, "clean: evicted");
    for i in 0..20 {
        assert!(
            bm.get(Cluster(i * PAGE_BITS), &s).unwrap(),
            "page {i} from the store"
        );
    }
}

#[test]
fn a_held_page_stays_until_written_back() {
    let s = MemStore::sparse();
    s.set_bit(PAGE_BITS * 3 + 1);
    let bm = Bitmap::new(PAGE_BITS * 10, 1);
    bm.hold_page_of(Cluster(PAGE_BITS * 3 + 5), &s).unwrap();
    s.set_bit(PAGE_BITS * 7);
    bm.get(Cluster(PAGE_BITS * 7), &s).unwrap(); // over the one-page cap
    s.write(3 * PAGE_BYTES, &[0; 8]); // the store loses page 3's bit
    assert!(bm.get(Cluster(PAGE_BITS * 3 + 1), &s).unwrap(), "held");
    assert_eq!(dirty(&bm), [3 * PAGE_BYTES]);
}

/// Calls into the bitmap from inside a store read (loads over a one-page cap, so evictions;
/// sets; runs; a write-back) must not deadlock: no lock is held across a store call.
#[test]
fn a_store_read_that_yields_to_other_calls_does_not_deadlock() {
    without_deadlock(|| {
        let s = MemStore::sparse();
        for page in 0..4 {
            s.set_bit(page * PAGE_BITS + 1); // pages with data, so that reads load them
        }
        let bm = Bitmap::new(PAGE_BITS * 8, 1);
        let armed = AtomicBool::new(true);
        let hook = |_| {
            if armed.swap(false, SeqCst) {
                assert!(bm.get(Cluster(PAGE_BITS + 1), &s).unwrap());
                bm.set_range(Cluster(2 * PAGE_BITS)..Cluster(2 * PAGE_BITS + 8), &s)
                    .unwrap();
                assert_eq!(
                    bm.run(Cluster(2 * PAGE_BITS), u64::MAX, &s).unwrap(),
                    (true, 8)
                );
                assert_eq!(s.write_back(&bm), 1);
                assert!(bm.get(Cluster(3 * PAGE_BITS + 1), &s).unwrap());
            }
        };
        let store = Yielding {
            store: &s,
            hook: &hook,
        };
        bm.set_range(Cluster(5)..Cluster(6), &store).unwrap();
        assert!(!armed.load(SeqCst), "the hook ran");
        assert_eq!(bm.run(Cluster(0), 8, &store).unwrap(), (false, 1));
        assert_eq!(bm.run(Cluster(1), 8, &store).unwrap(), (true, 1));
        assert_eq!(bm.run(Cluster(5), 8, &store).unwrap(), (true, 1));
        assert_eq!(s.write_back(&bm), 1);
    });
}

/// Protocol rule 3, deterministically: while loader A waits in its read of page 5 (its bytes
/// already copied), other calls of its thread load page 5, set a bit in it, write it back and
/// evict it (loading page 8 under a one-page cap). A's copy is then older than the store: its
/// install must be refused and the page read again.
#[test]
fn a_loader_whose_page_was_evicted_during_its_read_reads_it_again() {
    without_deadlock(|| {
        let s = MemStore::sparse();
        let c = 5 * PAGE_BITS + 9;
        s.set_bit(c - 1); // pages 5 and 8 have data, so that reads load them
        s.set_bit(8 * PAGE_BITS);
        let bm = Bitmap::new(PAGE_BITS * 10, 1);
        let armed = AtomicBool::new(true);
        let hook = |offset| {
            if offset == 5 * PAGE_BYTES && armed.swap(false, SeqCst) {
                bm.set_range(Cluster(c)..Cluster(c + 1), &s).unwrap();
                assert_eq!(s.write_back(&bm), 1);
                bm.get(Cluster(8 * PAGE_BITS), &s).unwrap();
                let guard = bm.table.guard();
                assert!(bm.table.get(5, &guard).is_none(), "page 5 was evicted");
            }
        };
        let store = Yielding {
            store: &s,
            hook: &hook,
        };
        assert!(
            bm.get(Cluster(c), &store).unwrap(),
            "A installed a stale copy"
        );
        assert!(!armed.load(SeqCst), "the hook ran");
        assert_eq!(s.reads(), 4, "A, the setter, page 8, A again");
        assert!(bm.get(Cluster(c - 1), &s).unwrap());
    });
}

/// Protocol rule 3 across threads: a loader reads a page from the store; meanwhile another
/// thread loads the page, sets a bit in it, writes it back and, under the cap, evicts it
/// (without waiting for the loader); if the loader then installed its stale copy, the bit
/// would be lost. The eviction changed the page's generation: the loader reads it again.
#[test]
fn a_loader_never_installs_a_copy_older_than_a_write_back() {
    without_deadlock(|| {
        let (entered_tx, entered) = mpsc::sync_channel(1);
        let (go, go_rx) = mpsc::channel();
        let s = MemStore {
            gate: Some(Gate {
                thread: Mutex::new(None),
                entered: entered_tx,
                go: Mutex::new(go_rx),
            }),
            ..MemStore::sparse()
        };
        let bm = Bitmap::new(PAGE_BITS * 10, 1);
        let c = 5 * PAGE_BITS + 9;
        s.set_bit(c - 1); // pages 5 and 8 have data, so that reads load them
        s.set_bit(8 * PAGE_BITS);
        std::thread::scope(|scope| {
            let loader = scope.spawn(|| {
                let gate = s.gate.as_ref().unwrap();
                *gate.thread.lock().unwrap() = Some(std::thread::current().id());
                bm.get(Cluster(c), &s).unwrap()
            });
            entered.recv().unwrap(); // the loader holds page 5 as the store had it
            bm.set_range(Cluster(c)..Cluster(c + 1), &s).unwrap();
            s.write_back(&bm);
            // Loading page 8 goes over the one-page cap and evicts page 5, now clean.
            bm.get(Cluster(8 * PAGE_BITS), &s).unwrap();
            assert!(bm.table.get(5, &bm.table.guard()).is_none(), "evicted");
            go.send(()).unwrap();
            assert!(loader.join().unwrap(), "the loader installed a stale copy");
        });
        assert!(bm.get(Cluster(c), &s).unwrap());
    });
}

/// Setters, readers, write-backs (one in five failing) and evictions at once under a one-page
/// cap: every bit whose `set_range` returned reads as set from then on, and reaches the store.
/// Setters also write back every few sets, so that pages keep turning clean and being evicted
/// under the other threads whatever the scheduling.
#[test]
fn concurrent_setters_readers_and_write_backs_lose_no_bit_under_eviction() {
    const PAGES: u64 = 64;
    const SETS: u64 = 1000;
    let s = MemStore::sparse();
    let bm = Bitmap::new(PAGES * PAGE_BITS, 1);
    let rounds = AtomicU64::new(0);
    // Waits for the write-back in flight, if any, so that every call writes back.
    let write_back = || {
        let wb = loop {
            match bm.take_dirty() {
                Some(wb) => break wb,
                None => std::thread::yield_now(),
            }
        };
        for page in wb.pages() {
            s.write(page.offset, &page.bytes);
        }
        match rounds.fetch_add(1, SeqCst) % 5 {
            4 => bm.writeback_failed(wb),
            _ => bm.writeback_done(wb),
        }
    };
    let done: Vec<Vec<AtomicU64>> = (0..2)
        .map(|_| (0..SETS).map(|_| AtomicU64::new(u64::MAX)).collect())
        .collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut setters = Vec::new();
        for (t, done) in done.iter().enumerate() {
            let (bm, s, write_back) = (&bm, &s, &write_back);
            setters.push(scope.spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t as u64;
                for (i, slot) in done.iter().enumerate() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let c = x % (PAGES * PAGE_BITS);
                    bm.set_range(Cluster(c)..Cluster(c + 1), s).unwrap();
                    slot.store(c, SeqCst);
                    assert!(bm.get(Cluster(c), s).unwrap(), "read back {c}");
                    if i % 20 == 19 {
                        write_back();
                    }
                }
            }));
        }
        scope.spawn(|| {
            while !stop.load(SeqCst) {
                write_back();
            }
        });
        scope.spawn(|| {
            let mut i = 0;
            while !stop.load(SeqCst) {
                for done in &done {
                    let c = done[(i % SETS) as usize].load(SeqCst);
                    if c != u64::MAX {
                        assert!(bm.get(Cluster(c), &s).unwrap(), "cluster {c} lost");
                    }
                }
                let c = i * 7919 % (PAGES * PAGE_BITS);
                bm.run(Cluster(c), 2 * PAGE_BITS, &s).unwrap();
                i += 1;
            }
        });
        let joined: Vec<_> = setters.into_iter().map(|h| h.join()).collect();
        stop.store(true, SeqCst);
        for result in joined {
            result.unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
    });
    s.write_back(&bm);
    let fresh = bitmap(PAGES * PAGE_BITS);
    for c in done.iter().flatten().map(|c| c.load(SeqCst)) {
        assert!(
            bm.get(Cluster(c), &s).unwrap(),
            "cluster {c} lost in memory"
        );
        assert!(
            fresh.get(Cluster(c), &s).unwrap(),
            "cluster {c} lost on disk"
        );
    }
    assert!(
        s.reads() > 4 * PAGES,
        "pages were evicted and loaded again: {} loads",
        s.reads()
    );
}
