//! Concurrency: many threads allocating the same clusters at once (qemu-iotests 038/046 style),
//! writers crossing cluster boundaries, and readers running while clusters are being allocated.
//! One `Image` is shared by reference between the threads of a `std::thread::scope`.
//!
//! Backing bytes are always < 0x80 and written bytes always >= 0x80, and both depend on the
//! sector, so a sector holding anything but "its backing data" or "its writer's data" (zeros
//! where the backing data should be, another sector's data, a torn mix) is caught.

mod common;
use addcow::layout::Header;
use addcow::storage::MemStorage;
use addcow::{create, Backing, CreateOptions, Image, OpenOptions, Parts};
use common::Rng;
use std::io::IoSlice;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;

const CS: u64 = 65536;
const SECTOR: u64 = 512;
const SECTORS_PER_CLUSTER: u64 = CS / SECTOR;
const THREADS: u64 = 8;

/// `Image` is `Send + Sync` (checked at compile time).
#[allow(dead_code)]
fn assert_send_sync<T: Send + Sync>() {}
const _: fn() = assert_send_sync::<Image>;

/// Backing byte at `i`: below 0x80, different per sector.
fn backing_byte(i: u64) -> u8 {
    ((i / SECTOR * 7 + i % SECTOR) % 128) as u8
}

fn backing_bytes(len: u64) -> Vec<u8> {
    (0..len).map(backing_byte).collect()
}

/// What an unallocated byte reads: the backing byte, zeros past the backing file's end.
fn backing_at(i: u64, backing_len: u64) -> u8 {
    if i < backing_len {
        backing_byte(i)
    } else {
        0
    }
}

/// A written byte: at least 0x80, depends on the writer's tag and the absolute position.
fn written_byte(tag: u64, i: u64) -> u8 {
    0x80 | ((tag * 13 + i / SECTOR * 5 + i % SECTOR) % 128) as u8
}

fn written(tag: u64, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| written_byte(tag, i))
        .collect()
}

/// Sets its flag when dropped, also while unwinding from a panic.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures: the same image over files or over memory.

enum Store {
    Files {
        _dir: tempfile::TempDir,
        meta: PathBuf,
        image: PathBuf,
    },
    Mem {
        meta: MemStorage,
        data: MemStorage,
        backing: MemStorage,
    },
}

struct Fixture {
    store: Store,
    size: u64,
    backing_len: u64,
    writethrough: bool,
}

impl Fixture {
    fn files(size: u64, backing_len: u64, writethrough: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.raw"), backing_bytes(backing_len)).unwrap();
        let meta = dir.path().join("disk.add-cow");
        let opts = CreateOptions {
            image_file: "disk.raw".into(),
            backing_file: Some("base.raw".into()),
            size,
            ..CreateOptions::default()
        };
        create(&meta, &opts).unwrap();
        let image = dir.path().join("disk.raw");
        Fixture {
            store: Store::Files {
                _dir: dir,
                meta,
                image,
            },
            size,
            backing_len,
            writethrough,
        }
    }

    fn mem(size: u64, backing_len: u64, writethrough: bool) -> Fixture {
        let mut meta = Header::new(b"disk.raw", Some(b"base.raw"))
            .unwrap()
            .to_bytes()
            .to_vec();
        meta.resize(2560 + size.div_ceil(CS).div_ceil(8) as usize, 0);
        Fixture {
            store: Store::Mem {
                meta: MemStorage::from_bytes(meta),
                data: MemStorage::from_bytes(vec![0; size as usize]),
                backing: MemStorage::from_bytes(backing_bytes(backing_len)),
            },
            size,
            backing_len,
            writethrough,
        }
    }

    fn open(&self, writable: bool) -> Image {
        let opts = OpenOptions {
            writable,
            writethrough: self.writethrough,
            ..OpenOptions::default()
        };
        match &self.store {
            Store::Files { meta, .. } => Image::open(meta, &opts).unwrap(),
            Store::Mem {
                meta,
                data,
                backing,
            } => Image::open_parts(
                Parts {
                    meta: (Box::new(meta.clone()), "meta".into()),
                    image: (Box::new(data.clone()), "data".into()),
                    backing: Some(Backing::raw(Box::new(backing.clone()), "backing")),
                },
                &opts,
            )
            .unwrap(),
        }
    }

    fn image_file(&self) -> Vec<u8> {
        match &self.store {
            Store::Files { image, .. } => std::fs::read(image).unwrap(),
            Store::Mem { data, .. } => data.to_vec(),
        }
    }

    fn meta_file(&self) -> Vec<u8> {
        match &self.store {
            Store::Files { meta, .. } => std::fs::read(meta).unwrap(),
            Store::Mem { meta, .. } => meta.to_vec(),
        }
    }

    /// Checks the content against `want`, the allocation of every cluster against `alloc`,
    /// and the image file's allocated clusters.
    fn verify(&self, img: &Image, want: &[u8], alloc: &[bool], when: &str) {
        assert_eq!(img.size(), self.size, "{when}: size");
        let mut got = vec![0u8; self.size as usize];
        img.read_at(0, &mut got).unwrap();
        compare(&got, want, 0, when);
        for (c, &a) in alloc.iter().enumerate() {
            let at = c as u64 * CS;
            let len = CS.min(self.size - at);
            assert_eq!(
                img.is_allocated(at, CS).unwrap(),
                (a, len),
                "{when}: allocation of cluster {c}"
            );
            if a {
                let file = self.image_file();
                let r = at as usize..(at + len) as usize;
                compare(
                    &file[r.clone()],
                    &want[r],
                    at,
                    &format!("{when}: image file"),
                );
            }
        }
    }

    /// The `.add-cow` file's bitmap equals `alloc`.
    fn verify_bitmap(&self, alloc: &[bool], when: &str) {
        let meta = self.meta_file();
        let mut want = vec![0u8; alloc.len().div_ceil(8)];
        for (c, &a) in alloc.iter().enumerate() {
            if a {
                want[c / 8] |= 1 << (c % 8);
            }
        }
        assert_eq!(
            &meta[2560..],
            &want[..],
            "{when}: bitmap in the .add-cow file"
        );
    }
}

/// Compares by sector, naming the first wrong sector.
fn compare(got: &[u8], want: &[u8], base: u64, when: &str) {
    assert_eq!(got.len(), want.len(), "{when}: length");
    if got != want {
        let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
        let at = base + i as u64;
        panic!(
            "{when}: byte {at} (sector {}, cluster {}) is {:#04x}, want {:#04x}",
            at / SECTOR,
            at / CS,
            got[i],
            want[i]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Interleaved sectors of the same clusters.

/// Clusters 1..=8 of a 10-cluster image: sector `s` there belongs to thread `s % 9` when that
/// is below 8; every ninth sector is nobody's. Clusters 0 and 9 stay untouched.
const SECTOR_CLUSTERS: std::ops::Range<u64> = 1..9;
const SECTOR_IMAGE: u64 = 10 * CS;

fn owner(s: u64) -> Option<u64> {
    let slot = s % (THREADS + 1);
    (slot < THREADS && SECTOR_CLUSTERS.contains(&(s / SECTORS_PER_CLUSTER))).then_some(slot)
}

fn sectors_of(t: u64, rng: &mut Rng) -> Vec<u64> {
    let first = SECTOR_CLUSTERS.start * SECTORS_PER_CLUSTER;
    let end = SECTOR_CLUSTERS.end * SECTORS_PER_CLUSTER;
    let mut v: Vec<u64> = (first..end).filter(|&s| owner(s) == Some(t)).collect();
    rng.shuffle(&mut v);
    v
}

fn sector_expectation(f: &Fixture, tag_base: u64) -> (Vec<u8>, Vec<bool>) {
    let want: Vec<u8> = (0..f.size)
        .map(|i| match owner(i / SECTOR) {
            Some(t) => written_byte(tag_base + t, i),
            None => backing_at(i, f.backing_len),
        })
        .collect();
    let alloc = (0..f.size.div_ceil(CS))
        .map(|c| SECTOR_CLUSTERS.contains(&c))
        .collect();
    (want, alloc)
}

fn interleaved_sector_round(f: &Fixture, round: u64) {
    let img = f.open(true);
    let tag_base = round * 100;
    let barrier = Barrier::new(THREADS as usize + 1);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (img, barrier) = (&img, &barrier);
                s.spawn(move || {
                    let mut rng = Rng::new(round * 1000 + t);
                    let sectors = sectors_of(t, &mut rng);
                    barrier.wait();
                    for s in sectors {
                        let at = s * SECTOR;
                        img.write_at(at, &written(tag_base + t, at, SECTOR))
                            .unwrap();
                    }
                })
            })
            .collect();
        // Stops the flusher even when a writer panicked (else the scope would wait forever).
        let stop = Stop(&done);
        // A flusher racing the allocations: bits reach the disk while others are being set.
        let flusher = s.spawn(|| {
            barrier.wait();
            while !done.load(Ordering::Acquire) {
                img.flush().unwrap();
            }
        });
        for w in writers {
            w.join().unwrap();
        }
        drop(stop);
        flusher.join().unwrap();
    });
    let (want, alloc) = sector_expectation(f, tag_base);
    let when = format!("round {round}");
    f.verify(&img, &want, &alloc, &when);
    img.close().unwrap();
    f.verify_bitmap(&alloc, &when);
    let img = f.open(false);
    f.verify(&img, &want, &alloc, &format!("{when}, reopened"));
}

/// Round `r`: the backing file is as long as the image on even rounds, shorter with an odd
/// length (ending inside cluster 5) on odd ones; writethrough every third round.
fn round_fixture(r: u64, files: bool) -> Fixture {
    let backing_len = if r % 2 == 0 {
        SECTOR_IMAGE
    } else {
        5 * CS + 12345
    };
    let writethrough = r % 3 == 2;
    if files {
        Fixture::files(SECTOR_IMAGE, backing_len, writethrough)
    } else {
        Fixture::mem(SECTOR_IMAGE, backing_len, writethrough)
    }
}

#[test]
fn interleaved_sectors_over_files() {
    for r in 0..6 {
        interleaved_sector_round(&round_fixture(r, true), r);
    }
}

#[test]
fn interleaved_sectors_over_memory() {
    for r in 0..6 {
        interleaved_sector_round(&round_fixture(r, false), r);
    }
}

// ---------------------------------------------------------------------------------------------
// Writers crossing cluster boundaries (qemu-iotests 038): disjoint extents of every length,
// many sharing clusters, written at once by all threads.

#[derive(Debug, Clone, Copy)]
struct Extent {
    tag: u64,
    offset: u64,
    len: u64,
}

/// Disjoint extents over an image of `size` bytes: mostly short ones (many cross a boundary
/// because they cluster around them), some spanning several clusters, gaps of 0..600 bytes.
fn extents(size: u64, rng: &mut Rng) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let gap = if rng.below(3) == 0 { 0 } else { rng.below(600) };
        let len = match rng.below(10) {
            0..=5 => 1 + rng.below(4000),
            6..=8 => 4000 + rng.below(70000),
            _ => 70000 + rng.below(100_000),
        };
        // Pull some extents onto a cluster boundary so that they straddle it.
        let mut offset = pos + gap;
        if rng.below(2) == 0 {
            let boundary = (offset / CS + 1) * CS;
            offset = offset.max(boundary.saturating_sub(1 + rng.below(len.min(3000))));
        }
        if offset + len > size {
            break;
        }
        out.push(Extent {
            tag: out.len() as u64 + 1,
            offset,
            len,
        });
        pos = offset + len;
    }
    out
}

/// Writes `data` at `offset` as one, two or three iovecs.
fn write_split(img: &Image, offset: u64, data: &[u8], rng: &mut Rng) {
    let a = rng.below(data.len() as u64 + 1) as usize;
    let b = a + rng.below((data.len() - a) as u64 + 1) as usize;
    let iov = [
        IoSlice::new(&data[..a]),
        IoSlice::new(&data[a..b]),
        IoSlice::new(&data[b..]),
    ];
    img.write(offset, &iov).unwrap();
}

fn crossing_round(f: &Fixture, round: u64) {
    let mut rng = Rng::new(7777 + round);
    let exts = extents(f.size, &mut rng);
    let crossing = exts
        .iter()
        .filter(|e| e.offset / CS != (e.offset + e.len - 1) / CS)
        .count();
    assert!(
        crossing >= 5,
        "round {round}: only {crossing} crossing extents"
    );
    let mut order: Vec<Extent> = exts.clone();
    rng.shuffle(&mut order);
    let img = f.open(true);
    let barrier = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let mine: Vec<Extent> = order
                .iter()
                .copied()
                .skip(t as usize)
                .step_by(THREADS as usize)
                .collect();
            let (img, barrier) = (&img, &barrier);
            s.spawn(move || {
                let mut rng = Rng::new(round * 31 + t);
                barrier.wait();
                for e in mine {
                    write_split(img, e.offset, &written(e.tag, e.offset, e.len), &mut rng);
                }
            });
        }
    });
    let mut want: Vec<u8> = (0..f.size).map(|i| backing_at(i, f.backing_len)).collect();
    let mut alloc = vec![false; f.size.div_ceil(CS) as usize];
    for e in &exts {
        want[e.offset as usize..(e.offset + e.len) as usize]
            .copy_from_slice(&written(e.tag, e.offset, e.len));
        for c in e.offset / CS..=(e.offset + e.len - 1) / CS {
            alloc[c as usize] = true;
        }
    }
    let when = format!(
        "round {round} ({} extents, {crossing} crossing)",
        exts.len()
    );
    f.verify(&img, &want, &alloc, &when);
    img.close().unwrap();
    f.verify_bitmap(&alloc, &when);
    let img = f.open(false);
    f.verify(&img, &want, &alloc, &format!("{when}, reopened"));
}

#[test]
fn writers_crossing_cluster_boundaries_over_files() {
    for r in 0..6 {
        // 12 clusters and a bit; the backing file ends inside cluster 9 on odd rounds.
        let size = 12 * CS + 4321;
        let backing_len = if r % 2 == 0 { size } else { 9 * CS + 777 };
        crossing_round(&Fixture::files(size, backing_len, r % 3 == 1), r);
    }
}

#[test]
fn writers_crossing_cluster_boundaries_over_memory() {
    for r in 0..6 {
        let size = 12 * CS + 4321;
        let backing_len = if r % 2 == 0 { size } else { 9 * CS + 777 };
        crossing_round(&Fixture::mem(size, backing_len, r % 3 == 1), r);
    }
}

// ---------------------------------------------------------------------------------------------
// Readers during allocation: every sector a reader sees is its backing data or the data written
// there, never anything else; a cluster seen allocated stays allocated.

/// Checks one read of `buf` at `offset`: sector by sector, backing data or `writer(s)`'s data.
fn check_sectors(
    buf: &[u8],
    offset: u64,
    backing_len: u64,
    writer: &dyn Fn(u64) -> Option<u64>,
    when: &str,
) {
    for (k, got) in buf.chunks(SECTOR as usize).enumerate() {
        let at = offset + k as u64 * SECTOR;
        let len = got.len() as u64;
        let old: Vec<u8> = (at..at + len).map(|i| backing_at(i, backing_len)).collect();
        if got == &old[..] {
            continue;
        }
        match writer(at / SECTOR) {
            Some(tag) if got == &written(tag, at, len)[..] => {}
            Some(tag) => panic!(
                "{when}: sector {} is neither the backing data nor writer {tag}'s: {:02x?}",
                at / SECTOR,
                &got[..16.min(got.len())]
            ),
            None => panic!(
                "{when}: untouched sector {} does not hold the backing data: {:02x?}",
                at / SECTOR,
                &got[..16.min(got.len())]
            ),
        }
    }
}

/// Readers racing `write_all`; returns how many reads they completed while it ran.
fn race_readers(
    img: &Image,
    size: u64,
    backing_len: u64,
    writer: &(dyn Fn(u64) -> Option<u64> + Sync),
    write_all: &(dyn Fn() + Sync),
) -> u64 {
    const READERS: u64 = 3;
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let clusters = size.div_ceil(CS);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let (done, reads) = (&done, &reads);
                s.spawn(move || {
                    let mut rng = Rng::new(99 + r);
                    let mut seen = vec![false; clusters as usize];
                    while !done.load(Ordering::Acquire) {
                        // Sector-aligned, one to three clusters' worth.
                        let offset = rng.below(size / SECTOR) * SECTOR;
                        let len = (1 + rng.below(3 * SECTORS_PER_CLUSTER)) * SECTOR;
                        let len = len.min(size - offset);
                        let mut buf = vec![0u8; len as usize];
                        img.read_at(offset, &mut buf).unwrap();
                        check_sectors(&buf, offset, backing_len, writer, &format!("reader {r}"));
                        let c = rng.below(clusters);
                        let (a, _) = img.is_allocated(c * CS, 1).unwrap();
                        assert!(
                            a || !seen[c as usize],
                            "reader {r}: cluster {c} was allocated, now is not"
                        );
                        seen[c as usize] |= a;
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let stop = Stop(&done);
        write_all();
        drop(stop);
        for r in readers {
            r.join().unwrap();
        }
    });
    reads.load(Ordering::Relaxed)
}

/// Over memory, the interleaved-sector workload (in-place writes included: memory storage does
/// not tear a write, unlike concurrent `pwrite`/`pread` on one file page).
#[test]
fn readers_during_interleaved_allocation_over_memory() {
    for round in 0..4 {
        let f = round_fixture(round, false);
        let img = f.open(true);
        let tag_base = round * 100;
        let writer = |s: u64| owner(s).map(|t| tag_base + t);
        let write_all = || {
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let img = &img;
                    s.spawn(move || {
                        let mut rng = Rng::new(round * 1000 + t);
                        for s in sectors_of(t, &mut rng) {
                            let at = s * SECTOR;
                            img.write_at(at, &written(tag_base + t, at, SECTOR))
                                .unwrap();
                        }
                    });
                }
            });
        };
        let reads = race_readers(&img, f.size, f.backing_len, &writer, &write_all);
        assert!(reads > 0, "no read ran during the writes");
        let (want, alloc) = sector_expectation(&f, tag_base);
        f.verify(
            &img,
            &want,
            &alloc,
            &format!("round {round} after the race"),
        );
    }
}

/// Over files: every cluster of a 160-cluster image receives exactly one sub-cluster write (a
/// pure allocation: the rest of the cluster comes from the backing file) from one of the
/// writer threads, while readers read across clusters.
#[test]
fn readers_during_allocation_over_files() {
    const CLUSTERS: u64 = 160;
    for round in 0..4 {
        let size = CLUSTERS * CS;
        let backing_len = if round % 2 == 0 { size } else { 100 * CS + 333 };
        let f = Fixture::files(size, backing_len, round == 3);
        let img = f.open(true);
        // Cluster c: sectors first..first + n written with tag c + 1.
        let mut rng = Rng::new(4242 + round);
        let plan: Vec<(u64, u64)> = (0..CLUSTERS)
            .map(|_| {
                let n = 1 + rng.below(8);
                (rng.below(SECTORS_PER_CLUSTER - n + 1), n)
            })
            .collect();
        let writer = |s: u64| {
            let c = s / SECTORS_PER_CLUSTER;
            let (first, n) = plan[c as usize];
            (first..first + n)
                .contains(&(s % SECTORS_PER_CLUSTER))
                .then_some(c + 1)
        };
        let write_all = || {
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let (img, plan) = (&img, &plan);
                    s.spawn(move || {
                        for c in (t..CLUSTERS).step_by(THREADS as usize) {
                            let (first, n) = plan[c as usize];
                            let at = c * CS + first * SECTOR;
                            img.write_at(at, &written(c + 1, at, n * SECTOR)).unwrap();
                        }
                    });
                }
            });
        };
        let reads = race_readers(&img, size, backing_len, &writer, &write_all);
        assert!(reads > 0, "no read ran during the writes");
        let want: Vec<u8> = (0..size)
            .map(|i| match writer(i / SECTOR) {
                Some(tag) => written_byte(tag, i),
                None => backing_at(i, backing_len),
            })
            .collect();
        let alloc = vec![true; CLUSTERS as usize];
        let when = format!("round {round}");
        f.verify(&img, &want, &alloc, &when);
        img.close().unwrap();
        f.verify_bitmap(&alloc, &when);
        f.verify(&f.open(false), &want, &alloc, &format!("{when}, reopened"));
    }
}

// ---------------------------------------------------------------------------------------------
// The checks themselves must be able to fail.

#[test]
#[should_panic(expected = "neither the backing data nor writer 5")]
fn check_sectors_rejects_a_torn_sector() {
    let mut buf = written(5, 0, SECTOR);
    buf[100] = backing_byte(100);
    check_sectors(&buf, 0, CS, &|_| Some(5), "self-test");
}

#[test]
#[should_panic(expected = "untouched sector 1 does not hold the backing data")]
fn check_sectors_rejects_zeros_instead_of_backing_data() {
    check_sectors(&[0u8; 512], SECTOR, CS, &|_| None, "self-test");
}

#[test]
#[should_panic(expected = "cluster 3")]
fn compare_names_the_wrong_byte() {
    let want = vec![1u8; (4 * CS) as usize];
    let mut got = want.clone();
    got[(3 * CS + 5) as usize] = 2;
    compare(&got, &want, 0, "self-test");
}

// ---------------------------------------------------------------------------------------------
// Allocation queries racing the allocation of the very cluster they ask about.

/// Each writer allocates the clusters of its own region from the last down to the first, with
/// a small write in the middle of each; queriers keep asking `is_allocated` and reading from
/// an unaligned offset of the cluster being allocated right now, over the next clusters too.
/// Those next clusters were allocated before the query started, so:
/// - the run is never empty (pnum in 1..=bytes);
/// - an unallocated answer stops at the end of the cluster (the next one is allocated);
/// - the next cluster reads its new data, and the current one reads old or new data.
#[test]
fn queries_racing_the_allocation_of_their_cluster() {
    const WRITERS: u64 = 2;
    const REGION: u64 = 400;
    const QUERIERS: u64 = 4;
    let size = WRITERS * REGION * CS;
    let f = Fixture::files(size, size, false);
    let img = f.open(true);
    const SPOT: u64 = 1000;
    const LEN: u64 = 100;
    // `front[w]`: the cluster writer w is allocating; every later one of its region is done.
    let front: Vec<AtomicU64> = (0..WRITERS)
        .map(|w| AtomicU64::new((w + 1) * REGION))
        .collect();
    let done = AtomicBool::new(false);
    let queries = AtomicU64::new(0);
    std::thread::scope(|s| {
        let stop = Stop(&done);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (img, front) = (&img, &front);
                s.spawn(move || {
                    for c in (w * REGION..(w + 1) * REGION).rev() {
                        front[w as usize].store(c, Ordering::Release);
                        let at = c * CS + SPOT;
                        img.write_at(at, &written(c + 1, at, LEN)).unwrap();
                    }
                })
            })
            .collect();
        for q in 0..QUERIERS {
            let (img, front, done, queries) = (&img, &front, &done, &queries);
            s.spawn(move || {
                let w = q % WRITERS;
                let last = (w + 1) * REGION - 1;
                let mut buf = vec![0u8; (CS + LEN) as usize];
                while !done.load(Ordering::Acquire) {
                    let c = front[w as usize].load(Ordering::Acquire);
                    if c >= last {
                        continue;
                    }
                    let at = c * CS + SPOT;
                    let bytes = 3 * CS;
                    let (allocated, pnum) = img.is_allocated(at, bytes).unwrap();
                    assert!(
                        (1..=bytes).contains(&pnum),
                        "is_allocated({at}, {bytes}) = ({allocated}, {pnum}): empty run"
                    );
                    let cluster_end = (c + 1) * CS - at;
                    assert!(
                        allocated || pnum == cluster_end,
                        "is_allocated({at}, {bytes}) = ({allocated}, {pnum}), but cluster {} \
                         was allocated before the query: the unallocated run is {cluster_end}",
                        c + 1
                    );
                    // Cluster c from SPOT, then cluster c + 1 up to the end of its write.
                    img.read_at(at, &mut buf).unwrap();
                    let next = (c + 1) * CS + SPOT;
                    let tail = &buf[(next - at) as usize..];
                    assert_eq!(
                        tail,
                        &written(c + 2, next, LEN)[..],
                        "cluster {} (allocated before the read) reads stale data",
                        c + 1
                    );
                    let head = &buf[..LEN as usize];
                    let old: Vec<u8> = (at..at + LEN).map(backing_byte).collect();
                    assert!(
                        head == &old[..] || head == &written(c + 1, at, LEN)[..],
                        "cluster {c}: neither old nor new data"
                    );
                    queries.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for w in writers {
            w.join().unwrap();
        }
        drop(stop);
    });
    assert!(queries.load(Ordering::Relaxed) > 0, "no query ran");
}

// ---------------------------------------------------------------------------------------------
// Reads and allocation queries take no lock: they run beside a truncate.

/// Readers and queriers run while a truncater shrinks and grows the image over and over (down
/// to two clusters, up to 40 000 clusters: past a bitmap page, so that whole pages come and go).
/// The two first clusters, allocated before and never cut, must always read their data and
/// answer allocated; a read or query elsewhere may see the old or the new size, but never
/// panics, hangs or returns more than it was asked.
#[test]
fn reads_and_queries_racing_truncate() {
    // Files: the image file stays sparse at 40 000 clusters.
    let f = Fixture::files(4 * CS, CS, false);
    let img = f.open(true);
    img.write_at(0, &vec![0x5a; (2 * CS) as usize]).unwrap();
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|s| {
        let stop = Stop(&done);
        for t in 0..3u64 {
            let (img, done, reads) = (&img, &done, &reads);
            s.spawn(move || {
                let mut rng = Rng::new(0x7a7e + t);
                while !done.load(Ordering::Acquire) {
                    // Anywhere in the image as it is now (it may shrink meanwhile).
                    let offset = match rng.chance(50) {
                        true => rng.below(3 * CS),
                        false => rng.below(img.size()),
                    };
                    let len = rng.range(1, 3 * CS);
                    let mut buf = vec![0xEEu8; len as usize];
                    if img.read_at(offset, &mut buf).is_ok() {
                        let stable = (2 * CS).saturating_sub(offset).min(len) as usize;
                        assert!(buf[..stable].iter().all(|&b| b == 0x5a), "cluster 0-1 data");
                    }
                    let (allocated, n) = img.is_allocated(rng.below(2 * CS), u64::MAX).unwrap();
                    assert!(allocated && n >= 1, "clusters 0-1 are allocated");
                    // Far out, where whole bitmap pages come and go with the truncates.
                    img.is_allocated(rng.below(img.size()), u64::MAX).unwrap();
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut rng = Rng::new(0x7a7e);
        for _ in 0..100 {
            let size = match rng.chance(30) {
                true => rng.range(2 * CS, 40_000 * CS),
                false => rng.range(2 * CS, 8 * CS),
            };
            img.truncate(size).unwrap();
        }
        drop(stop);
    });
    assert!(reads.load(Ordering::Relaxed) > 0, "no reader ran");
}
