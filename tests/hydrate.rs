//! Hydration: the primitive (`Image::hydrate`), the background job (`HydrateJob`) and
//! copy-on-read, alone and beside concurrent writers whose data must always win. Contents are
//! checked against a model, and the raw image file alone must read what the image reads once
//! every cluster is allocated (what a detach needs).

mod common;
use addcow::layout::Header;
use addcow::storage::{MemStorage, Storage};
use addcow::{
    create, Backing, CreateOptions, HydrateJob, HydrateOptions, Image, JobState, OpenOptions,
    Outcome, Parts,
};
use common::{assert_err, read_all, Rng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CS: u64 = 65536;

fn backing_byte(i: u64) -> u8 {
    1 + (i % 509 % 127) as u8
}

fn backing_bytes(len: u64) -> Vec<u8> {
    (0..len).map(backing_byte).collect()
}

fn written(tag: u64, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| 0x80 | ((tag * 13 + i % 499) % 127) as u8)
        .collect()
}

/// An image in memory: `size` bytes over a backing file of `backing_len` bytes; the image
/// file holds 0xEE where nothing was written (a bit set over unwritten data reads 0xEE).
struct Mem {
    meta: MemStorage,
    data: MemStorage,
    backing: MemStorage,
    size: u64,
    backing_len: u64,
}

impl Mem {
    fn new(size: u64, backing_len: u64) -> Mem {
        let header = Header::new(b"img", Some(b"base")).unwrap();
        Mem {
            meta: MemStorage::from_bytes(header.to_bytes().to_vec()),
            data: MemStorage::from_bytes(vec![0xEE; size as usize]),
            backing: MemStorage::from_bytes(backing_bytes(backing_len)),
            size,
            backing_len,
        }
    }

    fn open(&self, opts: &OpenOptions) -> addcow::Result<Image> {
        let parts = Parts {
            meta: (Box::new(self.meta.clone()), "meta".into()),
            image: (Box::new(self.data.clone()), "data".into()),
            backing: Some(Backing::raw(Box::new(self.backing.clone()), "backing")),
        };
        Image::open_parts(parts, opts)
    }

    fn rw(&self) -> Image {
        self.open(&common::rw()).unwrap()
    }

    /// What an unallocated byte reads.
    fn base(&self) -> Vec<u8> {
        let mut v = backing_bytes(self.backing_len.min(self.size));
        v.resize(self.size as usize, 0);
        v
    }

    /// The raw image file's bytes.
    fn raw(&self) -> Vec<u8> {
        let mut v = vec![0; self.size as usize];
        self.data.read_at(&mut v, 0).unwrap();
        v
    }
}

fn allocated(img: &Image) -> Vec<bool> {
    (0..img.size().div_ceil(CS))
        .map(|c| img.is_allocated(c * CS, 1).unwrap().0)
        .collect()
}

#[test]
fn hydrate_copies_unallocated_clusters_and_keeps_written_ones() {
    // Six clusters, the last one partial; the backing file ends inside cluster 3.
    let m = Mem::new(6 * CS - 1000, 3 * CS + 300);
    let img = m.rw();
    let mut want = m.base();
    for (tag, at, len) in [(1, CS + 100, 700), (2, 4 * CS, CS)] {
        let data = written(tag, at, len);
        img.write_at(at, &data).unwrap();
        want[at as usize..(at + len) as usize].copy_from_slice(&data);
    }
    assert_eq!(allocated(&img), [false, true, false, false, true, false]);
    // Batches of two clusters: runs 0, 2..4 (two batches), 5.
    assert_eq!(img.hydrate(0, img.size(), 2 * CS).unwrap(), 4);
    assert!(allocated(&img).iter().all(|&a| a));
    assert_eq!(read_all(&img), want);
    // The image file alone reads the same: past the backing file's end too (0xEE overwritten).
    assert_eq!(m.raw(), want);
    assert_eq!(img.hydrate(0, img.size(), 0).unwrap(), 0, "nothing left");
    img.close().unwrap();
    let img = m.open(&common::ro()).unwrap();
    assert!(allocated(&img).iter().all(|&a| a), "the bits were flushed");
}

#[test]
fn hydrate_takes_every_cluster_a_range_touches() {
    let m = Mem::new(8 * CS, 8 * CS);
    let img = m.rw();
    assert_eq!(img.hydrate(CS + 5, CS, 0).unwrap(), 2);
    assert_eq!(
        allocated(&img),
        [false, true, true, false, false, false, false, false]
    );
    assert_eq!(img.hydrate(3 * CS, 0, 0).unwrap(), 0, "an empty range");
    assert_eq!(read_all(&img), m.base());
}

#[test]
fn hydrate_refusals() {
    let m = Mem::new(4 * CS, 4 * CS);
    let ro = m.open(&common::ro()).unwrap();
    assert_err(ro.hydrate(0, CS, 0), libc::EPERM, &["read-only"]);
    drop(ro);
    let img = m.rw();
    assert_err(
        img.hydrate(3 * CS, 2 * CS, 0),
        libc::EINVAL,
        &["past the end"],
    );
    drop(img);
    let no_backing = m
        .open(&OpenOptions {
            no_backing: true,
            ..common::rw()
        })
        .unwrap();
    assert_err(
        no_backing.hydrate(0, CS, 0),
        libc::EINVAL,
        &["without its backing file"],
    );
    assert_err(
        HydrateJob::start(Arc::new(no_backing), &HydrateOptions::default()),
        libc::EINVAL,
        &["without its backing file"],
    );
}

#[test]
fn hydrate_in_writethrough_is_durable_when_it_returns() {
    let m = Mem::new(3 * CS, 3 * CS);
    let img = m
        .open(&OpenOptions {
            writethrough: true,
            ..common::rw()
        })
        .unwrap();
    assert_eq!(img.hydrate(0, 3 * CS, 0).unwrap(), 3);
    // Another open sees the bits without any flush (the first one is still open).
    let other = m.open(&common::ro()).unwrap();
    assert!(allocated(&other).iter().all(|&a| a));
    drop(img);
}

/// Writers hammer their own clusters (each writer its own set, so the last write of each wins
/// in the model) while the primitive or a job hydrates the whole image in small batches.
fn hydrate_beside_writers(hydrate: impl Fn(&Arc<Image>) + Sync) {
    let m = Mem::new(SIZE, BACKING);
    let raw = beside_writers(Arc::new(m.rw()), m.base(), hydrate);
    assert_eq!(
        m.raw(),
        raw,
        "the raw image file reads what the image reads"
    );
}

const SIZE: u64 = 48 * CS - 512;
const BACKING: u64 = 40 * CS + 123;

/// Runs the writers beside `hydrate` on `img`, whose unallocated clusters read `base`; checks
/// content and allocation; returns what the image reads.
fn beside_writers(img: Arc<Image>, base: Vec<u8>, hydrate: impl Fn(&Arc<Image>) + Sync) -> Vec<u8> {
    const WRITERS: u64 = 3;
    let mut want = base;
    let done = AtomicBool::new(false);
    let models: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (img, done) = (&img, &done);
                s.spawn(move || {
                    let mut rng = Rng::new(w + 7);
                    let mut log = Vec::new();
                    let mut tag = 0;
                    // Each writer owns the clusters c with c % WRITERS == w.
                    while !done.load(Ordering::Acquire) || tag < 40 {
                        tag += 1;
                        let c = rng.below(48 / WRITERS) * WRITERS + w;
                        let at = c * CS + rng.below(CS - 512);
                        let len = rng.range(1, (c * CS + CS).min(img.size()) - at);
                        let data = written(tag * WRITERS + w, at, len);
                        img.write_at(at, &data).unwrap();
                        log.push((at, data));
                    }
                    log
                })
            })
            .collect();
        hydrate(&img);
        // Writers only allocate, so every cluster is allocated when `hydrate` returns, however
        // many the writers had taken (read before `done`: a failed assertion here would leave
        // the writers spinning).
        let after_hydrate = allocated(&img);
        done.store(true, Ordering::Release);
        let logs = writers.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(after_hydrate.iter().all(|&a| a), "{after_hydrate:?}");
        logs
    });
    for log in models {
        for (at, data) in log {
            want[at as usize..at as usize + data.len()].copy_from_slice(&data);
        }
    }
    assert!(allocated(&img).iter().all(|&a| a));
    assert_eq!(read_all(&img), want);
    want
}

#[test]
fn hydrate_beside_concurrent_writers() {
    hydrate_beside_writers(|img| {
        img.hydrate(0, img.size(), CS).unwrap();
    });
}

#[test]
fn job_beside_concurrent_writers() {
    hydrate_beside_writers(|img| {
        let job = HydrateJob::start(
            img.clone(),
            &HydrateOptions {
                batch: 3 * CS,
                ..HydrateOptions::default()
            },
        )
        .unwrap();
        assert_eq!(job.wait(None), Some(Outcome::Completed));
        let p = job.progress();
        assert_eq!((p.state, p.done, p.total), (JobState::Completed, 48, 48));
    });
}

fn job(img: &Arc<Image>) {
    let opts = HydrateOptions {
        batch: 3 * CS,
        ..HydrateOptions::default()
    };
    let job = HydrateJob::start(img.clone(), &opts).unwrap();
    assert_eq!(job.wait(None), Some(Outcome::Completed));
}

/// Over files, batches move in the kernel (`copy_file_range`) beside the writers.
#[test]
fn job_beside_concurrent_writers_over_files() {
    let f = files(1, SIZE, BACKING);
    let img = open(&f.meta, &common::rw());
    let want = beside_writers(img.clone(), Mem::new(SIZE, BACKING).base(), job);
    drop(img);
    assert_eq!(std::fs::read(&f.image).unwrap(), want);
}

// ---------------------------------------------------------------------------------------------
// The job over files.

struct Files {
    _dir: tempfile::TempDir,
    meta: PathBuf,
    image: PathBuf,
}

fn files(layout: u32, size: u64, backing_len: u64) -> Files {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.raw"), backing_bytes(backing_len)).unwrap();
    let meta = dir.path().join("vm.add-cow");
    create(
        &meta,
        &CreateOptions {
            image_file: "vm.raw".into(),
            backing_file: Some("base.raw".into()),
            size,
            layout,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    Files {
        image: dir.path().join("vm.raw"),
        meta,
        _dir: dir,
    }
}

fn open(path: &Path, opts: &OpenOptions) -> Arc<Image> {
    Arc::new(Image::open(path, opts).unwrap())
}

fn start(img: &Arc<Image>, rate: u64, batch: u64) -> HydrateJob {
    let opts = HydrateOptions {
        rate,
        batch,
        ..HydrateOptions::default()
    };
    HydrateJob::start(img.clone(), &opts).unwrap()
}

#[test]
fn job_completes_and_sets_the_all_allocated_bit() {
    let f = files(2, 20 * CS + 4096, 12 * CS);
    let img = open(&f.meta, &common::rw());
    img.write_at(5 * CS, &written(1, 5 * CS, 10)).unwrap();
    let job = start(&img, 0, 0);
    assert_eq!(job.wait(None), Some(Outcome::Completed));
    let p = job.progress();
    assert_eq!((p.total, p.done, p.copied, p.errno), (21, 21, 20, 0));
    drop(job);
    let want = read_all(&img);
    Arc::try_unwrap(img).ok().unwrap().close().unwrap();
    let meta = addcow::storage::FileStorage::new(std::fs::File::open(&f.meta).unwrap());
    let header = addcow::read_header(&meta, "meta").unwrap();
    assert!(header.all_allocated(), "completion flushed with the bit");
    assert_eq!(std::fs::read(&f.image).unwrap(), want);
    // Past the backing file's end, clusters were marked without writing: the file is sparse.
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&f.image).unwrap());
    assert!(blocks * 512 < 20 * CS, "{blocks} blocks");
}

#[test]
fn job_pause_resume_cancel_and_resume_by_a_new_job() {
    let f = files(1, 64 * CS, 64 * CS);
    let img = open(&f.meta, &common::rw());
    // One cluster per second: the first batch runs at once, then the job sleeps.
    let job = start(&img, CS, CS);
    job.pause();
    assert_eq!(job.wait(Some(Duration::from_millis(20))), None);
    assert_eq!(job.progress().state, JobState::Paused);
    job.resume();
    assert_eq!(job.progress().state, JobState::Running);
    job.cancel();
    assert_eq!(job.wait(None), Some(Outcome::Cancelled));
    job.resume();
    let p = job.progress();
    assert_eq!(p.state, JobState::Cancelled, "no way back from an end");
    // The job may have been paused before its first batch; the rate keeps it from finishing.
    assert!(p.copied < 64, "{p:?}");
    assert_eq!(p.done, p.copied);
    drop(job);
    // The cancelled job flushed its progress: another open sees it; a new job does the rest.
    let first = p.copied;
    drop(img);
    let img = open(&f.meta, &common::rw());
    let on_disk = allocated(&img).iter().filter(|&&a| a).count() as u64;
    assert_eq!(on_disk, first);
    let job = start(&img, 0, 4 * CS);
    assert_eq!(job.wait(None), Some(Outcome::Completed));
    let p = job.progress();
    assert_eq!((p.copied, p.done, p.total), (64 - first, 64, 64));
    assert!(p.bytes_per_sec > 0);
    assert_eq!(read_all(&img), backing_bytes(64 * CS));
}

#[test]
fn dropping_a_job_stops_it_and_gives_the_image_back() {
    let f = files(1, 256 * CS, 256 * CS);
    let img = open(&f.meta, &common::rw());
    let job = start(&img, CS, CS);
    assert_eq!(job.stop(), Outcome::Cancelled);
    drop(job);
    // No thread holds the image any more: it closes.
    Arc::try_unwrap(img)
        .ok()
        .expect("the job let go")
        .close()
        .unwrap();
}

#[test]
fn job_refuses_read_only_images_and_bad_ranges() {
    let f = files(1, 4 * CS, 4 * CS);
    let ro = open(&f.meta, &common::ro());
    assert_err(
        HydrateJob::start(ro, &HydrateOptions::default()),
        libc::EPERM,
        &[],
    );
    let img = open(&f.meta, &common::rw());
    let past = HydrateOptions {
        offset: 3 * CS,
        bytes: 2 * CS,
        ..HydrateOptions::default()
    };
    assert_err(
        HydrateJob::start(img, &past),
        libc::EINVAL,
        &["past the end"],
    );
}

#[test]
fn job_over_a_sub_range() {
    let f = files(1, 10 * CS, 10 * CS);
    let img = open(&f.meta, &common::rw());
    let opts = HydrateOptions {
        offset: 2 * CS + 1,
        bytes: 3 * CS,
        ..HydrateOptions::default()
    };
    let job = HydrateJob::start(img.clone(), &opts).unwrap();
    assert_eq!(job.wait(None), Some(Outcome::Completed));
    assert_eq!(job.progress().total, 4);
    let want: Vec<bool> = (0..10).map(|c| (2..6).contains(&c)).collect();
    assert_eq!(allocated(&img), want);
}

// ---------------------------------------------------------------------------------------------
// Copy-on-read.

fn cor() -> OpenOptions {
    OpenOptions {
        copy_on_read: true,
        ..common::rw()
    }
}

#[test]
fn copy_on_read_hydrates_what_it_reads_from_the_backing_file() {
    let m = Mem::new(6 * CS, 3 * CS + 300);
    let img = m.open(&cor()).unwrap();
    let mut buf = vec![0; 1000];
    img.read_at(CS - 500, &mut buf).unwrap();
    assert_eq!(buf, m.base()[(CS - 500) as usize..(CS + 500) as usize]);
    assert_eq!(allocated(&img), [true, true, false, false, false, false]);
    // Past the backing file's end nothing is copied (it reads zeros); the cluster holding the
    // backing file's end is.
    let mut buf = vec![0; (3 * CS) as usize];
    img.read_at(3 * CS, &mut buf).unwrap();
    assert_eq!(allocated(&img), [true, true, false, true, false, false]);
    assert_eq!(read_all(&img), m.base());
    assert_eq!(m.raw()[..2 * CS as usize], m.base()[..2 * CS as usize]);
}

#[test]
fn copy_on_read_needs_a_writable_open() {
    let m = Mem::new(CS, CS);
    assert_err(
        m.open(&OpenOptions {
            copy_on_read: true,
            ..common::ro()
        }),
        libc::EINVAL,
        &["copy-on-read"],
    );
}

#[test]
fn copy_on_read_beside_writers_keeps_the_writes() {
    let m = Mem::new(16 * CS, 16 * CS);
    let img = m.open(&cor()).unwrap();
    let mut want = m.base();
    std::thread::scope(|s| {
        s.spawn(|| {
            for c in 0..16 {
                let mut buf = vec![0; CS as usize];
                img.read_at(c * CS, &mut buf).unwrap();
            }
        });
        for c in (0..16).step_by(3) {
            img.write_at(c * CS + 10, &written(c, c * CS + 10, 100))
                .unwrap();
        }
    });
    for c in (0..16).step_by(3) {
        let at = (c * CS + 10) as usize;
        want[at..at + 100].copy_from_slice(&written(c, c * CS + 10, 100));
    }
    assert!(allocated(&img).iter().all(|&a| a));
    assert_eq!(read_all(&img), want);
    assert_eq!(m.raw(), want);
}

/// A backing source the kernel cannot copy from (memory, as a host's callbacks) over a sparse
/// image file: hydration reads and writes, writing the backing data over the image file's
/// holes and leaving holes where the backing data is zeros.
#[test]
fn hydrate_without_kernel_copy_writes_over_holes_and_keeps_zero_holes() {
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("img"))
        .unwrap();
    data.set_len(4 * CS).unwrap();
    let mut base = backing_bytes(4 * CS);
    base[(2 * CS) as usize..(3 * CS) as usize].fill(0);
    let header = Header::new(b"img", Some(b"base")).unwrap();
    let parts = Parts {
        meta: (
            Box::new(MemStorage::from_bytes(header.to_bytes().to_vec())),
            "meta".into(),
        ),
        image: (
            Box::new(addcow::storage::FileStorage::new(data)),
            "img".into(),
        ),
        backing: Some(Backing::raw(
            Box::new(MemStorage::from_bytes(base.clone())),
            "base",
        )),
    };
    let img = Image::open_parts(parts, &common::rw()).unwrap();
    assert_eq!(img.hydrate(0, 4 * CS, CS).unwrap(), 4);
    assert_eq!(read_all(&img), base);
    drop(img);
    assert_eq!(std::fs::read(dir.path().join("img")).unwrap(), base);
    let f = addcow::storage::FileStorage::new(std::fs::File::open(dir.path().join("img")).unwrap());
    assert_eq!(
        f.next_hole(0).unwrap(),
        2 * CS,
        "the zero cluster stays a hole"
    );
}

/// `Outcome::Completed` means flushed: another open sees every bit while the image is still
/// open and nobody flushed it (the test closed it before, which flushes anyway).
#[test]
fn a_completed_job_has_flushed_its_bits() {
    let m = Mem::new(8 * CS, 8 * CS);
    let img = Arc::new(m.rw());
    let job = HydrateJob::start(img.clone(), &HydrateOptions::default()).unwrap();
    assert_eq!(job.wait(None), Some(Outcome::Completed));
    let other = m.open(&common::ro()).unwrap();
    assert!(
        allocated(&other).iter().all(|&a| a),
        "{:?}",
        allocated(&other)
    );
    assert_eq!(m.raw(), m.base());
    drop(job);
}
