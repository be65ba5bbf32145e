//! Model-based property test: random sequences of writes, reads, allocation queries,
//! truncates, flushes and reopens, run against a libaddcow image and against a plain in-memory
//! model of the add-cow semantics, checked after every operation.
//!
//! The model keeps the image file's bytes (only meaningful for allocated clusters), one bit per
//! 64 KiB cluster and the backing bytes; a read of an unallocated cluster is computed from the
//! backing bytes (zeros past their end), never stored.
//!
//! Two backends: in-memory storage (`Image::open_parts` over `MemStorage`; reopen = `open_parts`
//! again over clones of the same storages) and real files in a temporary directory (`create` +
//! `Image::open`), read and written through the page cache or with direct I/O (`O_DIRECT`: the
//! temporary directory must be on a file system that has it).

use addcow::layout::Header;
use addcow::storage::MemStorage;
use addcow::{create, Backing, CreateOptions, Image, OpenOptions, Parts};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use std::io::{IoSlice, IoSliceMut};
use std::path::PathBuf;

const CS: u64 = 65536;
const HEADER: u64 = 2560;
/// Bytes the image file holds where nothing was ever written (garbage must never show).
const GARBAGE: u8 = 0xEE;

/// The backing file's bytes: non-zero, varying within and across clusters.
fn backing_byte(i: u64) -> u8 {
    ((i % 251) as u8 ^ ((i / CS) as u8).wrapping_mul(37)) | 1
}

/// The bytes of a guest write.
fn write_data(seed: u8, len: u64) -> Vec<u8> {
    (0..len).map(|i| seed ^ ((i % 239) as u8)).collect()
}

fn bitmap_len(size: u64) -> u64 {
    size.div_ceil(CS).div_ceil(8)
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
struct Model {
    /// The image file as the model sees it; only allocated clusters are meaningful.
    image: Vec<u8>,
    /// One entry per cluster.
    alloc: Vec<bool>,
    /// What unallocated clusters read (empty without a backing file or with `no_backing`).
    backing: Vec<u8>,
}

impl Model {
    fn new(size: u64, backing: Vec<u8>) -> Model {
        Model {
            image: vec![0; size as usize],
            alloc: vec![false; size.div_ceil(CS) as usize],
            backing,
        }
    }

    fn size(&self) -> u64 {
        self.image.len() as u64
    }

    fn backing_at(&self, i: u64) -> u8 {
        self.backing.get(i as usize).copied().unwrap_or(0)
    }

    fn cluster_range(&self, c: usize) -> std::ops::Range<usize> {
        let start = c * CS as usize;
        start..(start + CS as usize).min(self.image.len())
    }

    fn byte(&self, i: u64) -> u8 {
        if self.alloc[(i / CS) as usize] {
            self.image[i as usize]
        } else {
            self.backing_at(i)
        }
    }

    fn in_range(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.size())
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, i32> {
        if !self.in_range(offset, len) {
            return Err(libc::EINVAL);
        }
        Ok((offset..offset + len).map(|i| self.byte(i)).collect())
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
                for i in self.cluster_range(c) {
                    self.image[i] = self.backing_at(i as u64);
                }
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

    fn truncate(&mut self, size: u64) {
        let old = self.size();
        if size == old {
            return;
        }
        self.image.resize(size as usize, 0);
        self.alloc.resize(size.div_ceil(CS) as usize, false);
        if size > old && self.backing.len() as u64 > old {
            // The partial cluster at the old end is completed from the backing file; every
            // cluster after it becomes allocated and reads zeros.
            if old % CS != 0 {
                let c = (old / CS) as usize;
                if !self.alloc[c] {
                    for i in c * CS as usize..old as usize {
                        self.image[i] = self.backing_at(i as u64);
                    }
                    self.alloc[c] = true;
                }
            }
            for c in old.div_ceil(CS) as usize..self.alloc.len() {
                self.alloc[c] = true;
            }
        }
    }

    /// The bitmap bytes the `.add-cow` file must hold once the bits are durable.
    fn bitmap(&self) -> Vec<u8> {
        let mut out = vec![0u8; bitmap_len(self.size()) as usize];
        for (c, &a) in self.alloc.iter().enumerate() {
            if a {
                out[c / 8] |= 1 << (c % 8);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The generated cases.

#[derive(Debug, Clone, Copy)]
enum BackingKind {
    /// No backing file in the header.
    Absent,
    /// A backing file of this length.
    Len(u64),
    /// A backing file of this length, opened with `no_backing`.
    Ignored(u64),
}

#[derive(Debug, Clone)]
struct Case {
    size: u64,
    backing: BackingKind,
    writethrough: bool,
    /// The image file starts with garbage instead of zeros.
    garbage: bool,
}

impl Case {
    fn backing_len(&self) -> Option<u64> {
        match self.backing {
            BackingKind::Absent => None,
            BackingKind::Len(n) | BackingKind::Ignored(n) => Some(n),
        }
    }

    fn no_backing(&self) -> bool {
        matches!(self.backing, BackingKind::Ignored(_))
    }

    fn backing_bytes(&self) -> Vec<u8> {
        self.backing_len()
            .map_or_else(Vec::new, |n| (0..n).map(backing_byte).collect())
    }

    fn model(&self) -> Model {
        let visible = match self.backing {
            BackingKind::Len(_) => self.backing_bytes(),
            _ => Vec::new(),
        };
        Model::new(self.size, visible)
    }

    fn open_options(&self, writable: bool) -> OpenOptions {
        OpenOptions {
            writable,
            writethrough: self.writethrough,
            no_backing: self.no_backing(),
            ..OpenOptions::default()
        }
    }

    fn initial_image(&self) -> Vec<u8> {
        vec![if self.garbage { GARBAGE } else { 0 }; self.size as usize]
    }
}

/// A position, resolved against the image size when the operation runs.
#[derive(Debug, Clone)]
enum Pos {
    /// `size * f / 65535`: anywhere in `0..=size`.
    Frac(u16),
    /// Near a cluster boundary (possibly past the end).
    Near(u8, i32),
    /// Near the end (possibly past it).
    End(i32),
}

impl Pos {
    fn at(&self, size: u64) -> u64 {
        match *self {
            Pos::Frac(f) => (u128::from(size) * u128::from(f) / 65535) as u64,
            Pos::Near(k, d) => (u64::from(k) * CS).saturating_add_signed(i64::from(d)),
            Pos::End(d) => size.saturating_add_signed(i64::from(d)),
        }
    }
}

#[derive(Debug, Clone)]
enum Len {
    Zero,
    Small(u32),
    Big(u32),
    /// Up to the end, plus `d` (past the end when positive).
    ToEnd(i32),
    /// `u64::MAX` (allocation queries only).
    Huge,
}

impl Len {
    fn of(&self, size: u64, offset: u64) -> u64 {
        match *self {
            Len::Zero => 0,
            Len::Small(n) | Len::Big(n) => u64::from(n),
            Len::ToEnd(d) => size
                .saturating_sub(offset)
                .saturating_add_signed(i64::from(d)),
            Len::Huge => u64::MAX,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        pos: Pos,
        len: Len,
        seed: u8,
        cuts: Vec<u32>,
    },
    Read {
        pos: Pos,
        len: Len,
        cuts: Vec<u32>,
    },
    IsAllocated {
        pos: Pos,
        len: Len,
    },
    Truncate {
        size: Pos,
    },
    Flush,
    /// Close and open again; with `peek`, first open read-only in between and check that.
    Reopen {
        peek: bool,
    },
    /// A full comparison of content, allocation and the image file.
    Check,
}

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        4 => any::<u16>().prop_map(Pos::Frac),
        4 => (0u8..=6, -1500i32..1500).prop_map(|(k, d)| Pos::Near(k, d)),
        1 => (-3000i32..=10).prop_map(Pos::End),
    ]
}

fn io_len() -> impl Strategy<Value = Len> {
    prop_oneof![
        1 => Just(Len::Zero),
        5 => (1u32..3000).prop_map(Len::Small),
        2 => (1u32..(3 * CS as u32)).prop_map(Len::Big),
        1 => (-700i32..=3).prop_map(Len::ToEnd),
    ]
}

fn query_len() -> impl Strategy<Value = Len> {
    prop_oneof![
        1 => Just(Len::Zero),
        3 => (1u32..3000).prop_map(Len::Small),
        3 => (1u32..(5 * CS as u32)).prop_map(Len::Big),
        1 => (-700i32..=3).prop_map(Len::ToEnd),
        2 => Just(Len::Huge),
    ]
}

fn truncate_size() -> impl Strategy<Value = Pos> {
    prop_oneof![
        2 => any::<u16>().prop_map(Pos::Frac),
        3 => (0u8..=6, -1500i32..1500).prop_map(|(k, d)| Pos::Near(k, d)),
        2 => (-2 * CS as i32..(2 * CS as i32)).prop_map(Pos::End),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let cuts = || prop::collection::vec(any::<u32>(), 0..4);
    prop_oneof![
        8 => (pos(), io_len(), any::<u8>(), cuts())
            .prop_map(|(pos, len, seed, cuts)| Op::Write { pos, len, seed, cuts }),
        4 => (pos(), io_len(), cuts()).prop_map(|(pos, len, cuts)| Op::Read { pos, len, cuts }),
        4 => (pos(), query_len()).prop_map(|(pos, len)| Op::IsAllocated { pos, len }),
        2 => truncate_size().prop_map(|size| Op::Truncate { size }),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|peek| Op::Reopen { peek }),
        1 => Just(Op::Check),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let size = prop_oneof![
        1 => Just(0u64),
        3 => (1u64..=5).prop_map(|k| k * CS),
        6 => (0u64..=5, 1u64..CS).prop_map(|(k, r)| k * CS + r),
    ];
    (size, any::<bool>(), any::<bool>())
        .prop_flat_map(|(size, writethrough, garbage)| {
            let len = prop_oneof![
                // Longer than the image.
                3 => (1u64..3 * CS).prop_map(move |d| size + d),
                // As long.
                1 => Just(size),
                // Shorter, with an odd length.
                3 => (0u64..=size).prop_map(|n| n | 1),
            ];
            let backing = prop_oneof![
                2 => Just(BackingKind::Absent),
                6 => len.clone().prop_map(BackingKind::Len),
                1 => len.prop_map(BackingKind::Ignored),
            ];
            backing.prop_map(move |backing| Case {
                size,
                backing,
                writethrough,
                garbage,
            })
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Backends.

trait Backend {
    fn open(&self, opts: &OpenOptions) -> Image;
    /// The image file's bytes.
    fn image_file(&self) -> Vec<u8>;
    /// The `.add-cow` file's bytes.
    fn meta_file(&self) -> Vec<u8>;
}

struct Mem {
    meta: MemStorage,
    data: MemStorage,
    backing: Option<MemStorage>,
}

impl Mem {
    fn new(case: &Case) -> Mem {
        let header = Header::new(b"img", case.backing_len().map(|_| &b"base"[..])).unwrap();
        let mut meta = header.to_bytes().to_vec();
        meta.resize((HEADER + bitmap_len(case.size)) as usize, 0);
        Mem {
            meta: MemStorage::from_bytes(meta),
            data: MemStorage::from_bytes(case.initial_image()),
            backing: case
                .backing_len()
                .map(|_| MemStorage::from_bytes(case.backing_bytes())),
        }
    }
}

impl Backend for Mem {
    fn open(&self, opts: &OpenOptions) -> Image {
        let parts = Parts {
            meta: (Box::new(self.meta.clone()), "meta".into()),
            image: (Box::new(self.data.clone()), "data".into()),
            backing: self
                .backing
                .as_ref()
                .map(|b| Backing::raw(Box::new(b.clone()), "backing")),
        };
        Image::open_parts(parts, opts).unwrap()
    }

    fn image_file(&self) -> Vec<u8> {
        self.data.to_vec()
    }

    fn meta_file(&self) -> Vec<u8> {
        self.meta.to_vec()
    }
}

struct Files {
    _dir: tempfile::TempDir,
    meta: PathBuf,
    image: PathBuf,
    direct: bool,
}

impl Files {
    fn new(case: &Case, direct: bool) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("disk.add-cow");
        let image = dir.path().join("disk.raw");
        if case.backing_len().is_some() {
            std::fs::write(dir.path().join("base.raw"), case.backing_bytes()).unwrap();
        }
        // Garbage, or an empty image file: created beforehand and sized by `create` from its
        // length (size 0). Otherwise `create` makes the file with the size.
        let size = if case.garbage || case.size == 0 {
            std::fs::write(&image, case.initial_image()).unwrap();
            0
        } else {
            case.size
        };
        let opts = CreateOptions {
            image_file: "disk.raw".into(),
            backing_file: case.backing_len().map(|_| "base.raw".into()),
            size,
            ..CreateOptions::default()
        };
        create(&meta, &opts).unwrap();
        Files {
            _dir: dir,
            meta,
            image,
            direct,
        }
    }
}

impl Backend for Files {
    fn open(&self, opts: &OpenOptions) -> Image {
        let opts = OpenOptions {
            direct: self.direct,
            ..opts.clone()
        };
        Image::open(&self.meta, &opts)
            .unwrap_or_else(|e| panic!("open (direct: {}): {e}", self.direct))
    }

    fn image_file(&self) -> Vec<u8> {
        std::fs::read(&self.image).unwrap()
    }

    fn meta_file(&self) -> Vec<u8> {
        std::fs::read(&self.meta).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Splits `len` bytes at the cut points (taken modulo `len + 1`; empty pieces are kept).
fn pieces(len: usize, cuts: &[u32]) -> Vec<usize> {
    let mut at: Vec<usize> = cuts.iter().map(|&c| c as usize % (len + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for a in at.into_iter().chain([len]) {
        out.push(a - prev);
        prev = a;
    }
    out
}

fn vectored_read(img: &Image, offset: u64, len: u64, cuts: &[u32]) -> addcow::Result<Vec<u8>> {
    let mut buf = vec![0x5Au8; len as usize];
    {
        let mut rest: &mut [u8] = &mut buf;
        let mut iov = Vec::new();
        for n in pieces(len as usize, cuts) {
            let (head, tail) = rest.split_at_mut(n);
            iov.push(IoSliceMut::new(head));
            rest = tail;
        }
        img.read(offset, &mut iov)?;
    }
    Ok(buf)
}

fn vectored_write(img: &Image, offset: u64, data: &[u8], cuts: &[u32]) -> addcow::Result<()> {
    let mut rest = data;
    let mut iov = Vec::new();
    for n in pieces(data.len(), cuts) {
        let (head, tail) = rest.split_at(n);
        iov.push(IoSlice::new(head));
        rest = tail;
    }
    img.write(offset, &iov)
}

/// The `.add-cow` file: the header untouched and exactly 2560 + bitmap bytes; with `bits`, its
/// bitmap equals the model's.
fn check_meta(backend: &dyn Backend, header: &[u8], model: &Model, bits: bool, when: &str) {
    let meta = backend.meta_file();
    assert_eq!(
        meta.len() as u64,
        HEADER + bitmap_len(model.size()),
        "{when}: .add-cow file length"
    );
    assert_eq!(&meta[..HEADER as usize], header, "{when}: header changed");
    if bits {
        assert_eq!(
            &meta[HEADER as usize..],
            &model.bitmap()[..],
            "{when}: bitmap on disk"
        );
    }
}

/// Content, allocation of every cluster, and the image file's allocated clusters.
fn check_all(img: &Image, backend: &dyn Backend, model: &Model, when: &str) {
    let size = model.size();
    assert_eq!(img.size(), size, "{when}: size");
    let mut got = vec![0x5Au8; size as usize];
    img.read_at(0, &mut got).unwrap();
    let want = model.read(0, size).unwrap();
    if got != want {
        let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
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
            (model.alloc[c], CS.min(size - at)),
            "{when}: allocation of cluster {c}"
        );
    }
    assert_eq!(
        img.is_allocated(0, u64::MAX).unwrap(),
        model.is_allocated(0, u64::MAX),
        "{when}: first run"
    );
    let file = backend.image_file();
    assert_eq!(file.len() as u64, size, "{when}: image file length");
    for c in 0..model.alloc.len() {
        if model.alloc[c] {
            let r = model.cluster_range(c);
            if file[r.clone()] != model.image[r.clone()] {
                let i = r.clone().find(|&i| file[i] != model.image[i]).unwrap();
                panic!(
                    "{when}: image file byte {i} of allocated cluster {c}: got {:#04x}, want {:#04x}",
                    file[i], model.image[i]
                );
            }
        }
    }
}

fn run(case: &Case, ops: &[Op], backend: &dyn Backend) {
    let header = backend.meta_file()[..HEADER as usize].to_vec();
    let mut model = case.model();
    let mut img = backend.open(&case.open_options(true));
    check_meta(backend, &header, &model, true, "after open");
    for (n, op) in ops.iter().enumerate() {
        let when = format!("op {n} {op:?}");
        let size = model.size();
        let mut mutated = false;
        match op {
            Op::Write {
                pos,
                len,
                seed,
                cuts,
            } => {
                let offset = pos.at(size);
                let len = len.of(size, offset);
                let data = write_data(*seed, len);
                let got = vectored_write(&img, offset, &data, cuts).map_err(|e| e.errno());
                assert_eq!(
                    got,
                    model.write(offset, &data),
                    "{when}: write {offset}+{len}"
                );
                mutated = true;
            }
            Op::Read { pos, len, cuts } => {
                let offset = pos.at(size);
                let len = len.of(size, offset);
                let got = vectored_read(&img, offset, len, cuts).map_err(|e| e.errno());
                let want = model.read(offset, len);
                if got != want {
                    match (&got, &want) {
                        (Ok(g), Ok(w)) => {
                            let i = g.iter().zip(w).position(|(a, b)| a != b).unwrap();
                            panic!(
                                "{when}: read {offset}+{len}: byte {} differs: got {:#04x}, want {:#04x}",
                                offset + i as u64,
                                g[i],
                                w[i]
                            );
                        }
                        _ => panic!("{when}: read {offset}+{len}: got {got:?}, want {want:?}"),
                    }
                }
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
                let to = to.at(size);
                img.truncate(to).unwrap();
                model.truncate(to);
                mutated = true;
            }
            Op::Flush => {
                img.flush().unwrap();
                check_meta(backend, &header, &model, true, &when);
            }
            Op::Reopen { peek } => {
                img.close().unwrap();
                check_meta(backend, &header, &model, true, &when);
                if *peek {
                    let ro = backend.open(&case.open_options(false));
                    assert!(ro.is_read_only());
                    assert_eq!(ro.write_at(0, &[1]).unwrap_err().errno(), libc::EPERM);
                    assert_eq!(ro.truncate(size + 1).unwrap_err().errno(), libc::EPERM);
                    check_all(&ro, backend, &model, &format!("{when}, read-only"));
                    ro.close().unwrap();
                    check_meta(backend, &header, &model, true, &when);
                }
                img = backend.open(&case.open_options(true));
            }
            Op::Check => check_all(&img, backend, &model, &when),
        }
        // Writethrough: the bits are on disk when a write or truncate returns. Writeback: the
        // `.add-cow` file keeps its length (truncate resizes it at once).
        check_meta(
            backend,
            &header,
            &model,
            case.writethrough && mutated,
            &when,
        );
    }
    check_all(&img, backend, &model, "at the end");
    img.close().unwrap();
    check_meta(backend, &header, &model, true, "after close");
    let img = backend.open(&case.open_options(false));
    check_all(&img, backend, &model, "after the final reopen");
}

/// `cases` per run, unless `PROPTEST_CASES` asks for another number (for a longer hunt).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn model_over_memory(case in case(), ops in prop::collection::vec(op(), 1..60)) {
        run(&case, &ops, &Mem::new(&case));
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn model_over_files(case in case(), ops in prop::collection::vec(op(), 1..60)) {
        run(&case, &ops, &Files::new(&case, false));
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn model_over_direct_files(case in case(), ops in prop::collection::vec(op(), 1..60)) {
        run(&case, &ops, &Files::new(&case, true));
    }
}

/// The model itself against hand-computed cases, so that a broken model cannot pass silently.
#[test]
fn model_sanity() {
    let mut m = Model::new(2 * CS + 100, (0..CS + 7).map(backing_byte).collect());
    assert_eq!(m.is_allocated(0, u64::MAX), (false, 2 * CS + 100));
    m.write(CS + 2, &[9, 9]).unwrap();
    assert_eq!(
        m.read(CS + 1, 4).unwrap(),
        [backing_byte(CS + 1), 9, 9, backing_byte(CS + 4)]
    );
    assert_eq!(m.read(CS + 7, 1).unwrap(), [0], "past the backing end");
    assert_eq!(m.is_allocated(CS + 5, u64::MAX), (true, CS - 5));
    assert_eq!(m.is_allocated(2 * CS + 1, u64::MAX), (false, 99));
    assert_eq!(m.write(2 * CS + 99, &[1, 2]), Err(libc::EINVAL));
    assert_eq!(m.bitmap(), [0b010]);
    m.truncate(CS + 3);
    m.truncate(3 * CS);
    // The backing file (CS + 7) is longer than the old size (CS + 3): the old partial cluster
    // is allocated already; the new clusters are allocated and read zeros.
    assert_eq!(m.bitmap(), [0b110]);
    assert_eq!(m.read(CS + 1, 4).unwrap(), [backing_byte(CS + 1), 9, 0, 0]);
    m.truncate(10);
    m.truncate(CS + 1);
    assert_eq!(m.bitmap(), [0b11]);
    assert_eq!(m.read(9, 2).unwrap(), [backing_byte(9), 0]);
}
