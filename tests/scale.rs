//! Images of huge virtual size on sparse files in /dev/shm (tmpfs allows files of 2^56 bytes;
//! ext4 stops at 16 TiB): opening and mapping them costs a bounded number of bitmap reads, not
//! one per bitmap page. Bitmap reads are counted through a wrapper around the `.add-cow` file,
//! which also fails every read past a budget, so that an unbounded scan fails the test instead
//! of exhausting memory.

use addcow::storage::{FileStorage, Storage};
use addcow::{create, read_header, CreateOptions, Image, OpenOptions, Parts};
use std::io::{self, IoSlice, IoSliceMut};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

const CS: u64 = 65536;

/// A tmpfs directory; fails loudly when /dev/shm is missing.
fn shm_dir() -> tempfile::TempDir {
    assert!(
        Path::new("/dev/shm").is_dir(),
        "/dev/shm is missing: these tests need tmpfs for sparse files of 2^56 bytes"
    );
    tempfile::tempdir_in("/dev/shm").unwrap()
}

/// A file whose reads are counted, and fail once `budget` is spent.
struct Counted {
    file: FileStorage,
    reads: Arc<AtomicU64>,
    budget: u64,
}

impl Storage for Counted {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        if self.reads.fetch_add(1, SeqCst) >= self.budget {
            return Err(io::Error::other("read budget of the test spent"));
        }
        self.file.read_vectored_at(bufs, offset)
    }
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.file.write_vectored_at(bufs, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.flush()
    }
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn resize(&self, len: u64) -> io::Result<()> {
        self.file.resize(len)
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.file.next_data(offset)
    }
}

fn file(path: &Path) -> FileStorage {
    FileStorage::new(std::fs::File::open(path).unwrap())
}

/// Creates `dir/img.add-cow` over a sparse `dir/img.raw` of `size` bytes and allocates the
/// clusters at `offsets` (one byte written into each).
fn make(dir: &Path, size: u64, offsets: &[u64]) -> std::path::PathBuf {
    let meta = dir.join("img.add-cow");
    let opts = CreateOptions {
        image_file: "img.raw".into(),
        size,
        ..Default::default()
    };
    create(&meta, &opts).unwrap();
    let rw = OpenOptions {
        writable: true,
        ..Default::default()
    };
    let img = Image::open(&meta, &rw).unwrap();
    for &o in offsets {
        img.write_at(o, &[0x5a]).unwrap();
    }
    img.close().unwrap();
    meta
}

/// Opens `meta` read-only with its bitmap reads counted (from 0 once it is open, which reads
/// the header only); returns the image and the counter.
fn open_counted(meta: &Path, budget: u64) -> (Image, Arc<AtomicU64>) {
    let reads = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        file: file(meta),
        reads: reads.clone(),
        budget,
    };
    let header = read_header(&counted, "meta").unwrap();
    let data = meta.with_file_name(std::str::from_utf8(&header.image_file).unwrap());
    let parts = Parts {
        meta: (Box::new(counted), "meta".into()),
        image: (Box::new(file(&data)), "data".into()),
        backing: None,
    };
    reads.store(0, SeqCst);
    let img = Image::open_parts(parts, &OpenOptions::default()).unwrap();
    assert_eq!(reads.swap(0, SeqCst), 1, "open reads the header only");
    (img, reads)
}

/// The runs of `is_allocated` from 0 to the end, adjacent runs of one state merged (a call may
/// return a shorter run than there is), and the number of calls made.
fn map(img: &Image) -> (Vec<(bool, u64)>, u64) {
    let size = img.size();
    let (mut runs, mut calls, mut offset) = (Vec::<(bool, u64)>::new(), 0, 0);
    while offset < size {
        let (state, n) = img.is_allocated(offset, size - offset).unwrap();
        assert!(n > 0, "empty run at {offset}");
        match runs.last_mut() {
            Some((s, len)) if *s == state => *len += n,
            _ => runs.push((state, n)),
        }
        offset += n;
        calls += 1;
    }
    (runs, calls)
}

/// The runs an image of `size` bytes with the clusters at `starts` (ascending) allocated has.
fn want_runs(size: u64, starts: &[u64]) -> Vec<(bool, u64)> {
    let mut runs = Vec::new();
    let mut at = 0;
    for &s in starts {
        if s > at {
            runs.push((false, s - at));
        }
        runs.push((true, CS.min(size - s)));
        at = s + CS;
    }
    if at < size {
        runs.push((false, size - at));
    }
    runs
}

#[test]
fn a_2p56_byte_image_opens_and_maps_with_bounded_bitmap_reads() {
    let dir = shm_dir();
    let size = 1u64 << 56;
    let allocated = [(1 << 55) + 12345 * CS, size - CS];
    let meta = make(dir.path(), size, &allocated);
    let (img, reads) = open_counted(&meta, 64);
    assert_eq!(img.size(), size);
    let (state, n) = img.is_allocated(0, size).unwrap();
    assert!(!state);
    assert!(n >= 1 << 50, "the first run is long ({n} bytes)");
    // Page 0 shares a file-system block with the header, so it reads as data; then the page
    // before the first allocated cluster's and its own (see the next test).
    assert!(
        reads.load(SeqCst) <= 3,
        "{} bitmap reads",
        reads.load(SeqCst)
    );
    let (runs, calls) = map(&img);
    assert_eq!(runs, want_runs(size, &allocated));
    assert!(calls <= 16, "{calls} calls map two clusters");
    assert!(
        reads.load(SeqCst) <= 8,
        "{} bitmap reads",
        reads.load(SeqCst)
    );
}

#[test]
fn a_2p50_byte_image_with_spread_clusters_maps_with_bounded_bitmap_reads() {
    let dir = shm_dir();
    let size = 1u64 << 50;
    let stride = size / 300 / CS * CS;
    let allocated: Vec<u64> = (0..300).map(|i| i * stride + (i % 7) * CS).collect();
    let meta = make(dir.path(), size, &allocated);
    let (img, reads) = open_counted(&meta, 4 * 300);
    let (runs, calls) = map(&img);
    assert_eq!(runs, want_runs(size, &allocated));
    assert!(calls <= 4 * 300, "{calls} calls");
    // A written-back page of 4 KiB at file offset 2560 + 4096 p fills two 4 KiB file-system
    // blocks, which also hold the end of page p - 1 and the start of page p + 1: three pages
    // read as data per allocated cluster, and page 0 with the header.
    assert!(
        reads.load(SeqCst) <= 3 * 300 + 1,
        "{} reads",
        reads.load(SeqCst)
    );
}

/// The bitmap starts at byte 2560 of the `.add-cow` file, so a file-system block holds the end
/// of one bitmap page and the start of the next: the bitmap must ask for data at the file
/// offset of its page and map the answer back to bitmap offsets, or the bit below, the only
/// data in the file past the header, is skipped as a hole.
#[test]
fn a_bit_in_a_block_that_straddles_two_bitmap_pages_is_found() {
    use std::os::unix::fs::FileExt;
    let dir = shm_dir();
    let size = 1u64 << 40;
    let meta = make(dir.path(), size, &[]);
    // Bitmap byte 5 * 4096 + 3000 (page 5) is file byte 26040, in file block 6 (24576..28672),
    // which holds bitmap bytes 22016..26112: the end of page 5 and the start of page 6.
    let c = (5 * 4096 + 3000) * 8 + 3;
    let f = std::fs::OpenOptions::new().write(true).open(&meta).unwrap();
    f.write_all_at(&[1 << 3], 2560 + c / 8).unwrap();
    let (img, reads) = open_counted(&meta, 64);
    assert_eq!(map(&img).0, want_runs(size, &[c * CS]));
    assert!(img.is_allocated(c * CS, CS).unwrap().0);
    assert!(reads.load(SeqCst) <= 3, "{} reads", reads.load(SeqCst));
}

/// Under a one-page bitmap cache, allocating writes from two threads, flushes and queries at
/// once lose no bit: every write reads back, and the bitmap on disk has exactly the written
/// clusters after close.
#[test]
fn a_one_page_bitmap_cache_loses_no_allocation() {
    const WRITES: u64 = 400;
    let dir = shm_dir();
    let size = 1u64 << 40; // 256 bitmap pages
    let meta = make(dir.path(), size, &[]);
    let opts = OpenOptions {
        writable: true,
        bitmap_cache_bytes: 1,
        ..Default::default()
    };
    let img = Image::open(&meta, &opts).unwrap();
    let cluster = |t: u64, i: u64| ((t * WRITES + i) * 2_654_435_761 % (size / CS)) * CS;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let img = &img;
                scope.spawn(move || {
                    for i in 0..WRITES {
                        img.write_at(cluster(t, i) + 7, &[t as u8 + 1]).unwrap();
                        assert!(img.is_allocated(cluster(t, i), CS).unwrap().0);
                    }
                })
            })
            .collect();
        scope.spawn(|| {
            while !stop.load(SeqCst) {
                img.flush().unwrap();
            }
        });
        scope.spawn(|| {
            while !stop.load(SeqCst) {
                map(&img);
            }
        });
        let joined: Vec<_> = writers.into_iter().map(|h| h.join()).collect();
        stop.store(true, SeqCst);
        for result in joined {
            result.unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
    });
    img.close().unwrap();
    let mut starts: Vec<u64> = (0..2)
        .flat_map(|t| (0..WRITES).map(move |i| cluster(t, i)))
        .collect();
    starts.sort();
    starts.dedup();
    let img = Image::open(&meta, &OpenOptions::default()).unwrap();
    assert_eq!(map(&img).0, want_runs(size, &starts));
    for t in 0..2 {
        let mut b = [0u8];
        img.read_at(cluster(t, WRITES - 1) + 7, &mut b).unwrap();
        assert_eq!(b[0], t as u8 + 1);
    }
}
