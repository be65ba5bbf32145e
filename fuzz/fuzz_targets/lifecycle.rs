//! The lifecycle operations (write-zeroes, discard, block status, hydrate, commit, detach,
//! check and repair) mixed with reads, writes, flushes and reopens, on real files in a tmpfs
//! directory (holes, `SEEK_DATA` and punching are the file system's), checked against a model
//! of content and allocation after every operation.
//!
//! The setup is fuzzed: the size (up to six 64 KiB clusters), the backing file (none, shorter,
//! as long, longer; or present but opened with `no_backing`), the image file's bytes (sparse,
//! or filled with one byte, which unallocated clusters must never show), and the stored bitmap.
//!
//! Checked: every result and errno against the model (see `Model`); block status against the
//! model's allocation and content (a run flagged zero reads zeros; an unallocated zero run lies
//! past the backing data); hydrate's count of copied clusters; commit's backing file; detach
//! only when every cluster is allocated, leaving the image file equal to the content; check
//! finds no corruption, and after a repair a second check finds nothing left and the image
//! reads the same.
#![no_main]

use addcow::layout::Header;
use addcow::{check, detach, Image, OpenOptions, Severity, ZeroFlags};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};

#[path = "common/input.rs"]
mod input;
use input::{BackingLen, BackingSpec, Len, Pos, CS};

const MAX_OPS: usize = 32;
const MAX_BACKING: usize = 9 * CS as usize;
const MAX_WRITE: usize = 7 * CS as usize;

fn table(len: usize, f: fn(usize) -> u8) -> Vec<u8> {
    (0..len).map(f).collect()
}

/// The backing file's bytes: non-zero, varying within and across clusters.
fn backing_bytes(len: u64) -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let all = BYTES.get_or_init(|| {
        table(MAX_BACKING, |i| {
            ((i % 251) as u8 ^ ((i / CS as usize) as u8).wrapping_mul(37)) | 1
        })
    });
    all[..len as usize].to_vec()
}

fn write_data(seed: u8, len: u64) -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let all = BYTES.get_or_init(|| table(MAX_WRITE + 256, |i| (i % 253) as u8 ^ (i / 253) as u8));
    let start = usize::from(seed);
    &all[start..start + len as usize]
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone, PartialEq)]
struct Model {
    /// What allocated clusters read (unallocated clusters' bytes are meaningless).
    image: Vec<u8>,
    alloc: Vec<bool>,
    /// What unallocated clusters read (empty without a backing file or with `no_backing`).
    backing: Vec<u8>,
    /// The open image hydrates what it reads from the backing file (copy-on-read).
    cor: bool,
}

impl Model {
    fn size(&self) -> u64 {
        self.image.len() as u64
    }

    fn cluster_range(&self, c: usize) -> std::ops::Range<usize> {
        let start = c * CS as usize;
        start..(start + CS as usize).min(self.image.len())
    }

    fn in_range(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|e| e <= self.size())
    }

    fn backing_bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        let mut out = vec![0u8; range.len()];
        if range.start < self.backing.len() {
            let end = range.end.min(self.backing.len());
            out[..end - range.start].copy_from_slice(&self.backing[range.start..end]);
        }
        out
    }

    fn content(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.image.len());
        for c in 0..self.alloc.len() {
            let r = self.cluster_range(c);
            match self.alloc[c] {
                true => out.extend_from_slice(&self.image[r]),
                false => out.extend_from_slice(&self.backing_bytes(r)),
            }
        }
        out
    }

    fn clusters(offset: u64, len: u64) -> std::ops::RangeInclusive<usize> {
        (offset / CS) as usize..=((offset + len - 1) / CS) as usize
    }

    /// Copy-on-write of cluster `c` (nothing when allocated).
    fn allocate(&mut self, c: usize) {
        if !self.alloc[c] {
            let r = self.cluster_range(c);
            let from = self.backing_bytes(r.clone());
            self.image[r].copy_from_slice(&from);
            self.alloc[c] = true;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        for c in Self::clusters(offset, data.len() as u64) {
            self.allocate(c);
        }
        self.image[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    }

    /// The whole clusters of a write-like request: `start..end`, the last cluster whole when
    /// the request reaches the end.
    fn whole(&self, offset: u64, bytes: u64) -> (u64, u64) {
        let stop = offset + bytes;
        let start = offset.div_ceil(CS) * CS;
        let end = match stop == self.size() {
            true => stop,
            false => stop / CS * CS,
        };
        (start, end)
    }

    /// Whole cluster `c` made to read zeros without copying; left as it is when unallocated
    /// and wholly past the backing data (`skip_zero`).
    fn clear(&mut self, c: usize, skip_zero: bool) {
        let r = self.cluster_range(c);
        if skip_zero && !self.alloc[c] && r.start >= self.backing.len() {
            return;
        }
        self.image[r].fill(0);
        self.alloc[c] = true;
    }

    /// Parts of clusters zeroed (a request without whole clusters may span two): a
    /// copy-on-write with zeros where they read backing data or are allocated.
    fn zero_part(&mut self, offset: u64, len: u64) {
        let mut pos = offset;
        while pos < offset + len {
            let end = ((pos / CS + 1) * CS).min(offset + len);
            let c = (pos / CS) as usize;
            if self.alloc[c] || pos < self.backing.len() as u64 {
                self.write(pos, &vec![0u8; (end - pos) as usize]);
            }
            pos = end;
        }
    }

    fn write_zeroes(&mut self, offset: u64, bytes: u64) {
        let (start, end) = self.whole(offset, bytes);
        if start >= end {
            self.zero_part(offset, bytes);
            return;
        }
        for c in start / CS..end.div_ceil(CS) {
            self.clear(c as usize, true);
        }
        self.zero_part(offset, start - offset);
        self.zero_part(end, offset + bytes - end);
    }

    fn discard(&mut self, offset: u64, bytes: u64) {
        let (start, end) = self.whole(offset, bytes);
        for c in start / CS..end.div_ceil(CS).max(start / CS) {
            self.clear(c as usize, false);
        }
    }

    /// Hydrates every cluster the range touches: how many were unallocated.
    fn hydrate(&mut self, offset: u64, bytes: u64) -> u64 {
        if bytes == 0 {
            return 0;
        }
        let mut n = 0;
        for c in Self::clusters(offset, bytes) {
            n += u64::from(!self.alloc[c]);
            self.allocate(c);
        }
        n
    }

    /// Whether a commit writes to the backing file.
    fn commit_writes(&self) -> bool {
        self.alloc.contains(&true) || self.backing.len() < self.image.len()
    }

    /// Commit: the backing file grows to the size, takes every allocated cluster; `empty`
    /// makes every cluster unallocated again.
    fn commit(&mut self, empty: bool) {
        if self.backing.len() < self.image.len() {
            self.backing.resize(self.image.len(), 0);
        }
        for c in 0..self.alloc.len() {
            if self.alloc[c] {
                let r = self.cluster_range(c);
                self.backing[r.clone()].copy_from_slice(&self.image[r]);
            }
        }
        if empty {
            self.alloc.fill(false);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fuzzed input.

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Mode {
    writable: bool,
    writethrough: bool,
    copy_on_read: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        pos: Pos,
        len: Len,
    },
    Write {
        pos: Pos,
        len: Len,
        seed: u8,
    },
    WriteZeroes {
        pos: Pos,
        len: Len,
        may_unmap: bool,
        no_fallback: bool,
    },
    Discard {
        pos: Pos,
        len: Len,
    },
    BlockStatus {
        pos: Pos,
        len: Len,
    },
    Hydrate {
        pos: Pos,
        len: Len,
        batch: u32,
    },
    Allocation,
    Commit {
        empty: bool,
    },
    DetachPrepare,
    Detach {
        remove: bool,
    },
    Check {
        repair: bool,
    },
    Flush,
    Reopen(Mode),
    Verify,
}

#[derive(Arbitrary, Debug)]
struct Input {
    clusters: u8,
    rem: u16,
    backing: BackingSpec,
    /// The image file's initial byte in every cluster (0: a sparse file).
    fill: u8,
    bitmap: Vec<u8>,
    mode: Mode,
    ops: Vec<Op>,
}

impl Input {
    fn size(&self) -> u64 {
        u64::from(self.clusters % 6) * CS + u64::from(self.rem)
    }

    fn backing_len(&self) -> Option<u64> {
        let size = self.size();
        let len = |b: BackingLen| match b {
            BackingLen::Longer(d) => size + 1 + u64::from(d) % (3 * CS),
            BackingLen::Same => size,
            BackingLen::Shorter(n) => (u64::from(n) % (size + 1)) | 1,
        };
        match self.backing {
            BackingSpec::Absent => None,
            BackingSpec::Present(b) | BackingSpec::Ignored(b) => Some(len(b)),
        }
    }

    fn no_backing(&self) -> bool {
        matches!(self.backing, BackingSpec::Ignored(_))
    }
}

// ---------------------------------------------------------------------------------------------
// Files in a tmpfs directory.

/// This process's directory (on tmpfs when there is one), emptied for each input.
fn dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = match shm.is_dir() {
            true => shm.to_path_buf(),
            false => std::env::temp_dir(),
        };
        remove_stale(&base);
        let path = base.join(format!("addcow-fuzz-lifecycle-{}", std::process::id()));
        extern "C" fn remove_dir() {
            let _ = std::fs::remove_dir_all(dir());
        }
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_dir) };
        path
    })
}

/// Removes the directories of earlier runs that ended without running `atexit` (a crash).
fn remove_stale(base: &Path) {
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("addcow-fuzz-lifecycle-"));
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

struct World {
    meta: PathBuf,
    data: PathBuf,
    backing: PathBuf,
    has_backing: bool,
    no_backing: bool,
}

impl World {
    fn open(&self, mode: Mode) -> Image {
        let opts = OpenOptions {
            writable: mode.writable,
            writethrough: mode.writethrough,
            no_backing: self.no_backing,
            copy_on_read: mode.writable && mode.copy_on_read,
            backing_writable: mode.writable && self.has_backing && !self.no_backing,
            ..OpenOptions::default()
        };
        Image::open(&self.meta, &opts).expect("open")
    }
}

fn read(img: &Image, offset: u64, len: u64) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0x5Au8; len as usize];
    img.read_at(offset, &mut buf).map_err(|e| e.errno())?;
    Ok(buf)
}

/// The first byte where `got` and `want` differ (slices compare with `memcmp`, which is not
/// instrumented; the byte loop only runs on a failure).
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    match got == want {
        true => None,
        false => Some(got.iter().zip(want).position(|(g, w)| g != w).unwrap_or(0)),
    }
}

/// Whole content and the allocation of every cluster (after the read's copy-on-read).
fn verify(img: &Image, model: &mut Model, when: &str) {
    assert_eq!(img.size(), model.size(), "{when}: size");
    let got = read(img, 0, model.size()).expect("read everything");
    let want = model.content();
    model.copy_on_read(0, model.size());
    if let Some(i) = first_difference(&got, &want) {
        panic!(
            "{when}: content differs first at byte {i} (cluster {}, allocated {}): got {:#04x}, \
             want {:#04x}",
            i as u64 / CS,
            model.alloc[i / CS as usize],
            got[i],
            want[i]
        );
    }
    for c in 0..model.alloc.len() {
        let at = c as u64 * CS;
        assert_eq!(
            img.is_allocated(at, CS).unwrap(),
            (model.alloc[c], CS.min(model.size() - at)),
            "{when}: allocation of cluster {c}"
        );
    }
}

/// Block status from `offset`: the run lies within the request, its allocation is the model's,
/// a zero run reads zeros, an unallocated zero run lies past the backing data.
fn block_status(img: &Image, model: &Model, offset: u64, bytes: u64, when: &str) {
    let s = img.block_status(offset, bytes).expect("block status");
    if offset >= model.size() || bytes == 0 {
        assert_eq!(s.len, 0, "{when}: length past the end");
        return;
    }
    assert!(
        s.len > 0 && s.len <= bytes.min(model.size() - offset),
        "{when}: {s:?}"
    );
    let content = model.content();
    for c in Model::clusters(offset, s.len) {
        assert_eq!(s.allocated, model.alloc[c], "{when}: {s:?}, cluster {c}");
    }
    let run = &content[offset as usize..(offset + s.len) as usize];
    if s.zero {
        assert!(
            run == &vec![0u8; run.len()][..],
            "{when}: {s:?} does not read zeros"
        );
        if !s.allocated {
            assert!(
                offset >= model.backing.len() as u64,
                "{when}: {s:?} over backing data"
            );
        }
    } else if !s.allocated {
        assert!(
            offset < model.backing.len() as u64,
            "{when}: {s:?} past the backing data"
        );
    }
}

// ---------------------------------------------------------------------------------------------

fn run(input: &Input) {
    let dir = dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("work directory");
    let size = input.size();
    let backing_len = input.backing_len();
    let backing = backing_bytes(backing_len.unwrap_or(0));
    let header = Header::new(b"img", backing_len.map(|_| &b"base"[..])).unwrap();
    let mut meta = header.to_bytes().to_vec();
    let need = size.div_ceil(CS).div_ceil(8) as usize;
    let mut bitmap = input.bitmap.clone();
    bitmap.resize(need, 0);
    // Bits past the last cluster are check's business (a leak), not this target's.
    if let Some(last) = bitmap.last_mut().filter(|_| size.div_ceil(CS) % 8 != 0) {
        *last &= (1u8 << (size.div_ceil(CS) % 8)) - 1;
    }
    meta.extend_from_slice(&bitmap);
    let world = World {
        meta: dir.join("meta.add-cow"),
        data: dir.join("img"),
        backing: dir.join("base"),
        has_backing: backing_len.is_some(),
        no_backing: input.no_backing(),
    };
    std::fs::write(&world.meta, &meta).unwrap();
    match input.fill {
        0 => std::fs::File::create(&world.data)
            .unwrap()
            .set_len(size)
            .unwrap(),
        f => std::fs::write(&world.data, vec![f; size as usize]).unwrap(),
    }
    if backing_len.is_some() {
        std::fs::write(&world.backing, &backing).unwrap();
    }
    let clusters = size.div_ceil(CS) as usize;
    let mut model = Model {
        image: vec![input.fill; size as usize],
        alloc: (0..clusters)
            .map(|c| bitmap[c / 8] >> (c % 8) & 1 == 1)
            .collect(),
        backing: match input.no_backing() {
            true => Vec::new(),
            false => backing,
        },
        cor: input.mode.writable && input.mode.copy_on_read,
    };
    let mut mode = input.mode;
    let mut img = world.open(mode);

    for (n, op) in input.ops.iter().take(MAX_OPS).enumerate() {
        let when = format!("op {n} {op:?}");
        let size = model.size();
        let ro = |got: Result<(), i32>| {
            assert_eq!(got, Err(libc::EPERM), "{when}: read-only");
        };
        match op {
            Op::Read { pos, len } => {
                let offset = pos.at(size);
                let len = len.io(size, offset);
                let got = read(&img, offset, len);
                match model.in_range(offset, len) {
                    true => {
                        let want = &model.content()[offset as usize..(offset + len) as usize];
                        assert!(got.as_deref() == Ok(want), "{when}: read {offset}+{len}");
                        model.copy_on_read(offset, len);
                    }
                    false => assert_eq!(got, Err(libc::EINVAL), "{when}"),
                }
            }
            Op::Write { pos, len, seed } => {
                let offset = pos.at(size);
                let len = len.io(size, offset);
                let data = write_data(*seed, len);
                let got = img.write_at(offset, data).map_err(|e| e.errno());
                match (mode.writable, model.in_range(offset, len)) {
                    (false, _) => ro(got),
                    (true, false) => assert_eq!(got, Err(libc::EINVAL), "{when}"),
                    (true, true) => {
                        assert_eq!(got, Ok(()), "{when}");
                        model.write(offset, data);
                    }
                }
            }
            Op::WriteZeroes {
                pos,
                len,
                may_unmap,
                no_fallback,
            } => {
                let offset = pos.at(size);
                let bytes = len.of(size, offset);
                let flags = ZeroFlags {
                    may_unmap: *may_unmap,
                    no_fallback: *no_fallback,
                };
                let got = img
                    .write_zeroes(offset, bytes, flags)
                    .map_err(|e| e.errno());
                match (mode.writable, model.in_range(offset, bytes)) {
                    (false, _) => ro(got),
                    (true, false) => assert_eq!(got, Err(libc::EINVAL), "{when}"),
                    // Whether a part of a cluster needs zeros written depends on the file
                    // system's holes: then nothing may have changed.
                    (true, true) if got == Err(libc::ENOTSUP) && *no_fallback => {
                        verify(&img, &mut model, &when)
                    }
                    (true, true) => {
                        assert_eq!(got, Ok(()), "{when}");
                        model.write_zeroes(offset, bytes);
                    }
                }
            }
            Op::Discard { pos, len } => {
                let offset = pos.at(size);
                let bytes = len.of(size, offset);
                let got = img.discard(offset, bytes).map_err(|e| e.errno());
                match (mode.writable, model.in_range(offset, bytes)) {
                    (false, _) => ro(got),
                    (true, false) => assert_eq!(got, Err(libc::EINVAL), "{when}"),
                    (true, true) => {
                        assert_eq!(got, Ok(()), "{when}");
                        model.discard(offset, bytes);
                    }
                }
            }
            Op::BlockStatus { pos, len } => {
                let offset = pos.at(size);
                block_status(&img, &model, offset, len.of(size, offset), &when);
            }
            Op::Hydrate { pos, len, batch } => {
                let offset = pos.at(size);
                let bytes = len.of(size, offset);
                let got = img.hydrate(offset, bytes, u64::from(*batch % (4 << 20)));
                let got = got.map_err(|e| e.errno());
                match (mode.writable, model.in_range(offset, bytes)) {
                    (false, _) => assert_eq!(got, Err(libc::EPERM), "{when}"),
                    (true, false) => assert_eq!(got, Err(libc::EINVAL), "{when}"),
                    (true, true) if world.no_backing && world.has_backing => {
                        assert_eq!(got, Err(libc::EINVAL), "{when}: no_backing")
                    }
                    (true, true) => assert_eq!(got, Ok(model.hydrate(offset, bytes)), "{when}"),
                }
            }
            Op::Allocation => {
                let a = img.allocation().unwrap();
                let allocated = model.alloc.iter().filter(|&&a| a).count() as u64;
                assert_eq!(
                    (a.allocated, a.total),
                    (allocated, clusters_of(&model)),
                    "{when}"
                );
                let full = img.is_fully_allocated().unwrap();
                assert_eq!(full, a.is_full(), "{when}");
            }
            Op::Commit { empty } => {
                let got = img.commit(*empty).map_err(|e| e.errno());
                let want = if *empty && !mode.writable {
                    Err(libc::EPERM)
                } else if !world.has_backing || world.no_backing {
                    Err(libc::EINVAL)
                } else if !mode.writable && model.commit_writes() {
                    // The backing file is opened read-only: its write or resize fails.
                    Err(if got == Err(libc::EINVAL) {
                        libc::EINVAL
                    } else {
                        libc::EBADF
                    })
                } else {
                    Ok(())
                };
                assert_eq!(got, want, "{when}");
                if got.is_ok() {
                    model.commit(*empty);
                    let on_disk = std::fs::read(&world.backing).unwrap();
                    assert!(on_disk == model.backing, "{when}: the backing file");
                }
            }
            Op::DetachPrepare => {
                let got = img.detach_prepare().map_err(|e| e.errno());
                match model.alloc.iter().all(|&a| a) {
                    true if mode.writable => assert_eq!(got, Ok(()), "{when}"),
                    // A read-only image has nothing to flush.
                    true => assert!(got.is_ok() || got == Err(libc::EPERM), "{when}: {got:?}"),
                    false => assert_eq!(got, Err(libc::EBUSY), "{when}"),
                }
            }
            Op::Detach { remove } => {
                img.close().unwrap();
                let got = detach(&world.meta, *remove).map_err(|e| e.errno());
                let full = model.alloc.iter().all(|&a| a);
                match full {
                    true => assert_eq!(got, Ok(()), "{when}"),
                    false => assert_eq!(got, Err(libc::EBUSY), "{when}"),
                }
                let raw = std::fs::read(&world.data).unwrap();
                if full && first_difference(&raw, &model.content()).is_some() {
                    panic!("{when}: the image file is not the disk");
                }
                if full && *remove {
                    assert!(
                        !world.meta.exists(),
                        "{when}: the .add-cow file is still there"
                    );
                    return;
                }
                img = world.open(mode);
            }
            Op::Check { repair } => {
                img.close().unwrap();
                let r = check(&world.meta, *repair).expect("check");
                assert_eq!(r.count(Severity::Corruption, false), 0, "{when}: {r:?}");
                assert_eq!(r.count(Severity::Corruption, true), 0, "{when}: {r:?}");
                let allocated = model.alloc.iter().filter(|&&a| a).count() as u64;
                assert_eq!(r.allocated_clusters, allocated, "{when}: {r:?}");
                if *repair {
                    let again = check(&world.meta, false).expect("check after repair");
                    assert_eq!(again.exit_code(), 0, "{when}: after repair {again:?}");
                }
                img = world.open(mode);
                verify(&img, &mut model, &when);
            }
            Op::Flush => img.flush().unwrap(),
            Op::Reopen(m) => {
                img.close().unwrap();
                mode = *m;
                model.cor = mode.writable && mode.copy_on_read;
                img = world.open(mode);
                verify(&img, &mut model, &when);
            }
            Op::Verify => verify(&img, &mut model, &when),
        }
        assert_eq!(img.size(), model.size(), "{when}: size");
    }
    verify(&img, &mut model, "at the end");
    img.close().unwrap();
    model.cor = false;
    let img = world.open(Mode {
        writable: false,
        writethrough: false,
        copy_on_read: false,
    });
    verify(&img, &mut model, "after the final reopen");
}

fn clusters_of(model: &Model) -> u64 {
    model.alloc.len() as u64
}

impl Model {
    /// Copy-on-read: a read hydrates the unallocated clusters its bytes within the backing
    /// data touch.
    fn copy_on_read(&mut self, offset: u64, len: u64) {
        if !self.cor {
            return;
        }
        let end = (offset + len).min(self.backing.len() as u64);
        if end > offset {
            for c in Self::clusters(offset, end - offset) {
                self.allocate(c);
            }
        }
    }
}

fuzz_target!(|input: Input| run(&input));
