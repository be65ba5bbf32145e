//! An image over in-memory storage driven by a fuzzed operation sequence, checked against a
//! model of the add-cow semantics after every operation (the same semantics as tests/model.rs).
//!
//! The setup is fuzzed too: the size (up to six 64 KiB clusters), the backing file (none,
//! shorter, as long, longer; or present but opened with `no_backing`), the image file's
//! initial bytes, and the `.add-cow` file's bitmap bytes as stored (any length: short, exact,
//! or with stale bytes past the bitmap; stray bits past the last cluster).
//!
//! Operations: vectored reads and writes cut at fuzzed points (empty pieces included),
//! `is_allocated`, truncate (shrink and grow), flush, reopen (read-only or writable,
//! writethrough or not) and crash (the storages' bytes are copied as they are, the image is
//! dropped and its late flush lands elsewhere).
//!
//! Checked: every result and errno against the model, the size, the image file's length; after
//! a flush, a writethrough write or truncate, the bitmap on the `.add-cow` file; after a crash,
//! every cluster reads either what the model says or what it said at the last durable point.
#![no_main]

use addcow::layout::{v1::HEADER_SIZE, Header};
use addcow::storage::{MemStorage, Storage};
use addcow::{Backing, Image, OpenOptions, Parts};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::io::{IoSlice, IoSliceMut};

#[path = "common/input.rs"]
mod input;
use input::{BackingLen, BackingSpec, Len, Pos, CS};

/// Operations per input, at most.

const MAX_OPS: usize = 48;

/// The longest backing file: the largest image plus three clusters.
const MAX_BACKING: usize = 9 * CS as usize;
/// The longest write: from 0 to past the end of the largest image (six clusters after a
/// truncate) by `Len::ToEnd`'s most.
const MAX_WRITE: usize = 7 * CS as usize;

/// Bytes that differ within and across clusters, computed once: the byte loops of a fuzz
/// target are instrumented and slow, a slice copy is not.
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

/// The bytes of a guest write: a window into a fixed pattern, chosen by `seed`.
fn write_data(seed: u8, len: u64) -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let all = BYTES.get_or_init(|| table(MAX_WRITE + 256, |i| (i % 253) as u8 ^ (i / 253) as u8));
    let start = usize::from(seed);
    &all[start..start + len as usize]
}

fn bitmap_len(size: u64) -> u64 {
    size.div_ceil(CS).div_ceil(8)
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone, PartialEq)]
struct Model {
    /// The image file as the model sees it; only allocated clusters are meaningful.
    image: Vec<u8>,
    alloc: Vec<bool>,
    /// What unallocated clusters read (empty without a backing file or with `no_backing`).
    backing: Vec<u8>,
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
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.size())
    }

    /// Backing bytes `range`, zeros past the backing data's end.
    fn backing_bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        let mut out = vec![0u8; range.len()];
        if range.start < self.backing.len() {
            let end = range.end.min(self.backing.len());
            out[..end - range.start].copy_from_slice(&self.backing[range.start..end]);
        }
        out
    }

    fn cluster_bytes(&self, c: usize) -> Vec<u8> {
        let r = self.cluster_range(c);
        match self.alloc[c] {
            true => self.image[r].to_vec(),
            false => self.backing_bytes(r),
        }
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, i32> {
        if !self.in_range(offset, len) {
            return Err(libc::EINVAL);
        }
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = offset;
        while pos < offset + len {
            let c = (pos / CS) as usize;
            let end = ((c as u64 + 1) * CS).min(offset + len);
            let r = pos as usize..end as usize;
            match self.alloc[c] {
                true => out.extend_from_slice(&self.image[r]),
                false => out.extend_from_slice(&self.backing_bytes(r)),
            }
            pos = end;
        }
        Ok(out)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), i32> {
        let len = data.len() as u64;
        if !self.in_range(offset, len) {
            return Err(libc::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        for c in (offset / CS) as usize..=((offset + len - 1) / CS) as usize {
            if !self.alloc[c] {
                let r = self.cluster_range(c);
                let from_backing = self.backing_bytes(r.clone());
                self.image[r].copy_from_slice(&from_backing);
                self.alloc[c] = true;
            }
        }
        self.image[offset as usize..(offset + len) as usize].copy_from_slice(data);
        Ok(())
    }

    fn is_allocated(&self, offset: u64, bytes: u64) -> (bool, u64) {
        let size = self.size();
        if offset >= size || bytes == 0 {
            return (false, 0);
        }
        let first = (offset / CS) as usize;
        let state = self.alloc[first];
        let mut c = first;
        while c < self.alloc.len() && self.alloc[c] == state {
            c += 1;
        }
        let run_end = (c as u64 * CS).min(size);
        (state, (run_end - offset).min(bytes))
    }

    /// Whether growing to `size` allocates (and commits) the new area: a longer backing file.
    fn grow_allocates(&self, size: u64) -> bool {
        size > self.size() && self.backing.len() as u64 > self.size()
    }

    fn truncate(&mut self, size: u64) {
        let old = self.size();
        let allocates = self.grow_allocates(size);
        self.image.resize(size as usize, 0);
        self.alloc.resize(size.div_ceil(CS) as usize, false);
        if allocates {
            if !old.is_multiple_of(CS) {
                let c = (old / CS) as usize;
                if !self.alloc[c] {
                    let head = self.backing_bytes(c * CS as usize..old as usize);
                    self.image[c * CS as usize..old as usize].copy_from_slice(&head);
                    self.alloc[c] = true;
                }
            }
            for c in old.div_ceil(CS) as usize..self.alloc.len() {
                self.alloc[c] = true;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fuzzed input.

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Mode {
    writable: bool,
    writethrough: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        pos: Pos,
        len: Len,
        cuts: Vec<u16>,
    },
    Write {
        pos: Pos,
        len: Len,
        seed: u8,
        cuts: Vec<u16>,
    },
    IsAllocated {
        pos: Pos,
        len: Len,
    },
    Truncate {
        size: Pos,
    },
    Flush,
    Reopen(Mode),
    Crash(Mode),
    Check,
}

#[derive(Arbitrary, Debug)]
struct Input {
    clusters: u8,
    rem: u16,
    backing: BackingSpec,
    /// The image file's initial byte (what never-written clusters of it hold).
    fill: u8,
    /// The `.add-cow` file's bitmap bytes as stored, at most 8 (see `bitmap_bytes`).
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

    fn bitmap_bytes(&self) -> &[u8] {
        &self.bitmap[..self.bitmap.len().min(8)]
    }
}

// ---------------------------------------------------------------------------------------------
// The storages and the checks.

struct World {
    meta: MemStorage,
    data: MemStorage,
    backing: Option<MemStorage>,
    no_backing: bool,
}

impl World {
    fn open(&self, mode: Mode) -> Image {
        let parts = Parts {
            meta: (Box::new(self.meta.clone()), "meta".into()),
            image: (Box::new(self.data.clone()), "data".into()),
            backing: self
                .backing
                .as_ref()
                .map(|b| Backing::raw(Box::new(b.clone()), "backing")),
        };
        let opts = OpenOptions {
            writable: mode.writable,
            writethrough: mode.writethrough,
            no_backing: self.no_backing,
            ..OpenOptions::default()
        };
        Image::open_parts(parts, &opts).expect("open_parts over memory")
    }

    /// The `.add-cow` and image files as they are now, in new storages: what a crash leaves.
    fn crash(&mut self) {
        self.meta = MemStorage::from_bytes(self.meta.to_vec());
        self.data = MemStorage::from_bytes(self.data.to_vec());
    }

    /// The bitmap bits of clusters below `clusters` as stored (zeros past the file's end).
    fn disk_bits(&self, clusters: usize) -> Vec<bool> {
        let meta = self.meta.to_vec();
        (0..clusters)
            .map(|c| {
                meta.get(HEADER_SIZE + c / 8)
                    .is_some_and(|b| b >> (c % 8) & 1 == 1)
            })
            .collect()
    }
}

/// Splits `len` bytes at the cut points (modulo `len + 1`; empty pieces are kept).
fn pieces(len: usize, cuts: &[u16]) -> Vec<usize> {
    let mut at: Vec<usize> = cuts
        .iter()
        .take(6)
        .map(|&c| c as usize % (len + 1))
        .collect();
    at.sort_unstable();
    let mut prev = 0;
    let mut out = Vec::with_capacity(at.len() + 1);
    for a in at.into_iter().chain([len]) {
        out.push(a - prev);
        prev = a;
    }
    out
}

fn vectored_read(img: &Image, offset: u64, len: u64, cuts: &[u16]) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0x5Au8; len as usize];
    let mut rest: &mut [u8] = &mut buf;
    let mut iov = Vec::new();
    for n in pieces(len as usize, cuts) {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        iov.push(IoSliceMut::new(head));
        rest = tail;
    }
    img.read(offset, &mut iov).map_err(|e| e.errno())?;
    Ok(buf)
}

fn vectored_write(img: &Image, offset: u64, data: &[u8], cuts: &[u16]) -> Result<(), i32> {
    let mut rest = data;
    let mut iov = Vec::new();
    for n in pieces(data.len(), cuts) {
        let (head, tail) = rest.split_at(n);
        iov.push(IoSlice::new(head));
        rest = tail;
    }
    img.write(offset, &iov).map_err(|e| e.errno())
}

/// Whole content and the allocation of every cluster.
fn check_all(img: &Image, model: &Model, when: &str) {
    assert_eq!(img.size(), model.size(), "{when}: size");
    let got = vectored_read(img, 0, model.size(), &[]).expect("read everything");
    let want = model.read(0, model.size()).unwrap();
    if got != want {
        let i = got.iter().zip(&want).position(|(g, w)| g != w).unwrap();
        panic!(
            "{when}: content differs first at byte {i} (cluster {}): got {:#04x}, want {:#04x}",
            i as u64 / CS,
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

/// After a crash: every cluster reads what the model says now or what it said at the last
/// durable point (a writeback allocation may be lost). Adopts what the image shows.
fn settle_after_crash(img: &Image, model: &mut Model, durable: &Model) {
    assert_eq!(img.size(), model.size(), "crash: size");
    assert_eq!(durable.size(), model.size(), "crash: durable model size");
    for c in 0..model.alloc.len() {
        let r = model.cluster_range(c);
        let got = vectored_read(img, r.start as u64, r.len() as u64, &[]).unwrap();
        let (allocated, _) = img.is_allocated(r.start as u64, r.len() as u64).unwrap();
        let now = model.cluster_bytes(c);
        let then = durable.cluster_bytes(c);
        assert!(
            got == now || got == then,
            "crash: cluster {c} (allocated now {}, at the last durable point {}, after the crash {allocated}) reads neither",
            model.alloc[c],
            durable.alloc[c]
        );
        if !allocated {
            assert_eq!(
                got,
                model.backing_bytes(r.clone()),
                "crash: unallocated cluster {c}"
            );
        }
        model.alloc[c] = allocated;
        if allocated {
            model.image[r].copy_from_slice(&got);
        }
    }
}

fn run(input: &Input) {
    let size = input.size();
    let backing_len = input.backing_len();
    let backing = backing_bytes(backing_len.unwrap_or(0));
    let header = Header::new(b"img", backing_len.map(|_| &b"base"[..])).unwrap();
    let mut meta = header.to_bytes().to_vec();
    meta.extend_from_slice(input.bitmap_bytes());
    let mut world = World {
        meta: MemStorage::from_bytes(meta),
        data: MemStorage::from_bytes(vec![input.fill; size as usize]),
        backing: backing_len.map(|_| MemStorage::from_bytes(backing.clone())),
        no_backing: input.no_backing(),
    };
    let disk = world.disk_bits(size.div_ceil(CS) as usize);
    let mut model = Model {
        image: vec![input.fill; size as usize],
        alloc: disk,
        backing: if input.no_backing() {
            Vec::new()
        } else {
            backing
        },
    };
    let mut durable = model.clone();
    let mut mode = input.mode;
    let mut img = world.open(mode);

    for (n, op) in input.ops.iter().take(MAX_OPS).enumerate() {
        let when = format!("op {n} {op:?}");
        let size = model.size();
        let mut mutated = false;
        match op {
            Op::Read { pos, len, cuts } => {
                let offset = pos.at(size);
                let len = len.io(size, offset);
                let got = vectored_read(&img, offset, len, cuts);
                assert!(
                    got == model.read(offset, len),
                    "{when}: read {offset}+{len}"
                );
            }
            Op::Write {
                pos,
                len,
                seed,
                cuts,
            } => {
                let offset = pos.at(size);
                let len = len.io(size, offset);
                let data = write_data(*seed, len);
                let got = vectored_write(&img, offset, data, cuts);
                let want = match mode.writable {
                    true => model.write(offset, data),
                    false => Err(libc::EPERM),
                };
                assert_eq!(got, want, "{when}: write {offset}+{len}");
                mutated = got.is_ok();
            }
            Op::IsAllocated { pos, len } => {
                let offset = pos.at(size);
                let bytes = len.of(size, offset);
                assert_eq!(
                    img.is_allocated(offset, bytes).unwrap(),
                    model.is_allocated(offset, bytes),
                    "{when}: is_allocated({offset}, {bytes})"
                );
            }
            Op::Truncate { size: to } => {
                let to = to.at(size).min(6 * CS);
                let got = img.truncate(to).map_err(|e| e.errno());
                if !mode.writable {
                    assert_eq!(got, Err(libc::EPERM), "{when}");
                    continue;
                }
                assert_eq!(got, Ok(()), "{when}: truncate to {to}");
                let commits = model.grow_allocates(to);
                model.truncate(to);
                if commits {
                    durable = model.clone();
                } else {
                    durable.truncate(to);
                }
                if to != size {
                    assert_eq!(
                        world.meta.len().unwrap(),
                        HEADER_SIZE as u64 + bitmap_len(to),
                        "{when}: .add-cow file length"
                    );
                }
                mutated = true;
            }
            Op::Flush => {
                img.flush().unwrap();
                if mode.writable {
                    durable = model.clone();
                    assert_eq!(
                        world.disk_bits(model.alloc.len()),
                        model.alloc,
                        "{when}: bitmap"
                    );
                }
            }
            Op::Reopen(m) => {
                img.close().unwrap();
                if mode.writable {
                    durable = model.clone();
                    assert_eq!(
                        world.disk_bits(model.alloc.len()),
                        model.alloc,
                        "{when}: bitmap"
                    );
                }
                mode = *m;
                img = world.open(mode);
                check_all(&img, &model, &when);
            }
            Op::Crash(m) => {
                world.crash();
                drop(img);
                mode = *m;
                img = world.open(mode);
                settle_after_crash(&img, &mut model, &durable);
                durable = model.clone();
            }
            Op::Check => check_all(&img, &model, &when),
        }
        assert_eq!(img.size(), model.size(), "{when}: size");
        assert_eq!(
            world.data.len().unwrap(),
            model.size(),
            "{when}: image file length"
        );
        if mutated && mode.writethrough {
            durable = model.clone();
            assert_eq!(
                world.disk_bits(model.alloc.len()),
                model.alloc,
                "{when}: writethrough bitmap"
            );
        }
    }
    check_all(&img, &model, "at the end");
    img.close().unwrap();
    if mode.writable {
        assert_eq!(
            world.disk_bits(model.alloc.len()),
            model.alloc,
            "after close: bitmap"
        );
    }
    let img = world.open(Mode {
        writable: false,
        writethrough: false,
    });
    check_all(&img, &model, "after the final reopen");
}

fuzz_target!(|input: Input| run(&input));
