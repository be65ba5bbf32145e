//! Model-based property test: random sequences of writes, write-zeroes, discards, reads,
//! allocation queries, truncates, flushes and reopens, run against a libaddcow image and against a plain in-memory
//! model of the add-cow semantics, checked after every operation.
//!
//! The model keeps the image file's bytes (only meaningful for allocated clusters), one bit per
//! cluster and the backing bytes; a read of an unallocated cluster is computed from the
//! backing bytes (zeros past their end), never stored.
//!
//! Layouts: 1 (64 KiB clusters, the bitmap at 2560) and 2 at 4 KiB and 64 KiB clusters (the
//! bitmap at `header_size`, padded to whole clusters). For layout 2 the model also keeps the
//! header's "all allocated" bit: set by a flush or close of a writable image once every cluster
//! is allocated, cleared by a grow over a backing file no longer than the image (or none); the
//! `.add-cow` file's header changes in that bit only.
//!
//! Two backends: in-memory storage (`Image::open_parts` over `MemStorage`; reopen = `open_parts`
//! again over clones of the same storages) and real files in a temporary directory (`create` +
//! `Image::open`), read and written through the page cache or with direct I/O (`O_DIRECT`: the
//! temporary directory must be on a file system that has it).

use addcow::layout::Header;
use addcow::storage::MemStorage;
use addcow::{create, Backing, BackingFormat, CreateOptions, Image, OpenOptions, Parts, ZeroFlags};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use std::io::{IoSlice, IoSliceMut};
use std::path::PathBuf;

/// Layout 1's cluster size, and the unit of the generated positions and lengths.
const CS: u64 = 65536;
/// Bytes the image file holds where nothing was ever written (garbage must never show).
const GARBAGE: u8 = 0xEE;

/// The backing file's bytes: non-zero, varying within and across 64 KiB blocks.
fn backing_byte(i: u64) -> u8 {
    ((i % 251) as u8 ^ ((i / 65536) as u8).wrapping_mul(37)) | 1
}

/// The bytes of a guest write.
fn write_data(seed: u8, len: u64) -> Vec<u8> {
    (0..len).map(|i| seed ^ ((i % 239) as u8)).collect()
}

/// The on-disk layout and its cluster size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    V1,
    /// Layout 2 with clusters of `1 << bits` bytes.
    V2(u32),
}

impl Layout {
    fn cluster_size(self) -> u64 {
        match self {
            Layout::V1 => CS,
            Layout::V2(bits) => 1 << bits,
        }
    }

    /// Where the bitmap starts: 2560, or `header_size` = max(4096, cluster size).
    fn header_len(self) -> u64 {
        match self {
            Layout::V1 => 2560,
            Layout::V2(_) => self.cluster_size().max(4096),
        }
    }

    /// The bitmap's length on disk: one bit per cluster, whole bytes; layout 2 pads it to
    /// whole clusters.
    fn bitmap_len(self, size: u64) -> u64 {
        let bytes = size.div_ceil(self.cluster_size()).div_ceil(8);
        match self {
            Layout::V1 => bytes,
            Layout::V2(_) => bytes.next_multiple_of(self.cluster_size()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
struct Model {
    cs: u64,
    /// The image file as the model sees it; only allocated clusters are meaningful.
    image: Vec<u8>,
    /// One entry per cluster.
    alloc: Vec<bool>,
    /// What unallocated clusters read (empty without a backing file or with `no_backing`).
    backing: Vec<u8>,
    /// Layout 2's "all allocated" bit as the header on disk must hold it.
    all_allocated: bool,
}

impl Model {
    fn new(cs: u64, size: u64, backing: Vec<u8>) -> Model {
        Model {
            cs,
            image: vec![0; size as usize],
            alloc: vec![false; size.div_ceil(cs) as usize],
            backing,
            all_allocated: false,
        }
    }

    /// A flush or close of a writable layout-2 image sets the bit once every cluster is
    /// allocated.
    fn flushed(&mut self) {
        self.all_allocated |= self.alloc.iter().all(|&a| a);
    }

    fn size(&self) -> u64 {
        self.image.len() as u64
    }

    fn backing_at(&self, i: u64) -> u8 {
        self.backing.get(i as usize).copied().unwrap_or(0)
    }

    fn cluster_range(&self, c: usize) -> std::ops::Range<usize> {
        let start = c * self.cs as usize;
        start..(start + self.cs as usize).min(self.image.len())
    }

    fn byte(&self, i: u64) -> u8 {
        if self.alloc[(i / self.cs) as usize] {
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
        for c in (offset / self.cs) as usize..=((offset + len - 1) / self.cs) as usize {
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

    /// The whole clusters of `offset..offset + len` (the last one whole when the range
    /// reaches the end), as a cluster range, and the byte ranges outside them.
    fn whole_clusters(&self, offset: u64, len: u64) -> (std::ops::Range<usize>, [(u64, u64); 2]) {
        let (cs, end) = (self.cs, offset + len);
        let start = offset.div_ceil(cs) * cs;
        let stop = if end == self.size() {
            end
        } else {
            end / cs * cs
        };
        match start < stop {
            true => (
                (start / cs) as usize..stop.div_ceil(cs) as usize,
                [(offset, start - offset), (stop, end - stop)],
            ),
            false => (0..0, [(offset, len), (offset, 0)]),
        }
    }

    /// Allocates cluster `c` without copying, reading zeros.
    fn allocate_zeros(&mut self, c: usize) {
        for i in self.cluster_range(c) {
            self.image[i] = 0;
        }
        self.alloc[c] = true;
    }

    /// Whole clusters read zeros and are allocated without copying, except unallocated ones
    /// past the backing data (left); parts of clusters that do not read zeros unallocated are
    /// written with zeros (copy-on-write).
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), i32> {
        if !self.in_range(offset, len) {
            return Err(libc::EINVAL);
        }
        let backing = self.backing.len() as u64;
        let (whole, parts) = self.whole_clusters(offset, len);
        for c in whole {
            if self.alloc[c] || c as u64 * self.cs < backing {
                self.allocate_zeros(c);
            }
        }
        for (at, n) in parts {
            let mut pos = at;
            while pos < at + n {
                let c = (pos / self.cs) as usize;
                let end = ((c as u64 + 1) * self.cs).min(at + n);
                if self.alloc[c] || pos < backing {
                    self.write(pos, &vec![0; (end - pos) as usize])?;
                }
                pos = end;
            }
        }
        Ok(())
    }

    /// Whole clusters read zeros and are allocated without copying; parts are left.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), i32> {
        if !self.in_range(offset, len) {
            return Err(libc::EINVAL);
        }
        for c in self.whole_clusters(offset, len).0 {
            self.allocate_zeros(c);
        }
        Ok(())
    }

    /// Hydration: every unallocated cluster the range touches is completed from the backing
    /// data and allocated; how many. `EINVAL` past the end, or with the backing file not opened
    /// (`refused`).
    fn hydrate(&mut self, offset: u64, len: u64, refused: bool) -> Result<u64, i32> {
        if !self.in_range(offset, len) || refused {
            return Err(libc::EINVAL);
        }
        if len == 0 {
            return Ok(0); // an empty range touches no cluster
        }
        let mut copied = 0;
        for c in (offset / self.cs) as usize..(offset + len).div_ceil(self.cs) as usize {
            if !self.alloc[c] {
                for i in self.cluster_range(c) {
                    self.image[i] = self.backing_at(i as u64);
                }
                self.alloc[c] = true;
                copied += 1;
            }
        }
        Ok(copied)
    }

    fn is_allocated(&self, offset: u64, bytes: u64) -> (bool, u64) {
        let size = self.size();
        if offset >= size || bytes == 0 {
            return (false, 0);
        }
        let first = (offset / self.cs) as usize;
        let state = self.alloc[first];
        let mut c = first;
        while c < self.alloc.len() && self.alloc[c] == state {
            c += 1;
        }
        let run_end = (c as u64 * self.cs).min(size);
        (state, (run_end - offset).min(bytes))
    }

    fn truncate(&mut self, size: u64) {
        let old = self.size();
        if size == old {
            return;
        }
        self.image.resize(size as usize, 0);
        self.alloc.resize(size.div_ceil(self.cs) as usize, false);
        if size > old && self.backing.len() as u64 <= old {
            // New clusters stay unallocated: the bit goes.
            self.all_allocated = false;
        }
        if size > old && self.backing.len() as u64 > old {
            // The partial cluster at the old end is completed from the backing file; every
            // cluster after it becomes allocated and reads zeros.
            if old % self.cs != 0 {
                let c = (old / self.cs) as usize;
                if !self.alloc[c] {
                    for i in c * self.cs as usize..old as usize {
                        self.image[i] = self.backing_at(i as u64);
                    }
                    self.alloc[c] = true;
                }
            }
            for c in old.div_ceil(self.cs) as usize..self.alloc.len() {
                self.alloc[c] = true;
            }
        }
    }

    /// The bitmap bytes the `.add-cow` file must hold once the bits are durable.
    fn bitmap(&self, layout: Layout) -> Vec<u8> {
        let mut out = vec![0u8; layout.bitmap_len(self.size()) as usize];
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
    layout: Layout,
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
        Model::new(self.cs(), self.size, visible)
    }

    fn cs(&self) -> u64 {
        self.layout.cluster_size()
    }

    /// The header as the library writes it for this case (names `img` and `base`).
    fn header(&self) -> Header {
        let backing = self.backing_len().map(|_| &b"base"[..]);
        match self.layout {
            Layout::V1 => Header::new(b"img", backing).unwrap(),
            Layout::V2(bits) => {
                Header::new_v2(b"img", backing.map(|b| (b, BackingFormat::Raw)), bits).unwrap()
            }
        }
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
    /// The position in an image of `size` bytes and clusters of `cs` bytes.
    fn at(&self, size: u64, cs: u64) -> u64 {
        match *self {
            Pos::Frac(f) => (u128::from(size) * u128::from(f) / 65535) as u64,
            Pos::Near(k, d) => (u64::from(k) * cs).saturating_add_signed(i64::from(d)),
            Pos::End(d) => size.saturating_add_signed(i64::from(d)),
        }
    }
}

#[derive(Debug, Clone)]
enum Len {
    Zero,
    Small(u32),
    /// Up to three clusters (generated for 64 KiB, wrapped for smaller ones).
    Big(u32),
    /// Up to the end, plus `d` (past the end when positive).
    ToEnd(i32),
    /// `u64::MAX` (allocation queries only).
    Huge,
}

impl Len {
    fn of(&self, size: u64, offset: u64, cs: u64) -> u64 {
        match *self {
            Len::Zero => 0,
            Len::Small(n) => u64::from(n),
            Len::Big(n) => 1 + u64::from(n).saturating_sub(1) % (3 * cs),
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
    WriteZeroes {
        pos: Pos,
        len: Len,
        unmap: bool,
    },
    Discard {
        pos: Pos,
        len: Len,
    },
    Truncate {
        size: Pos,
    },
    /// `Image::hydrate` over the range, in batches of `batch` clusters (0: the default).
    Hydrate {
        pos: Pos,
        len: Len,
        batch: u8,
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
        2 => (pos(), query_len(), any::<bool>())
            .prop_map(|(pos, len, unmap)| Op::WriteZeroes { pos, len, unmap }),
        2 => (pos(), query_len()).prop_map(|(pos, len)| Op::Discard { pos, len }),
        2 => truncate_size().prop_map(|size| Op::Truncate { size }),
        2 => (pos(), query_len(), 0u8..4).prop_map(|(pos, len, batch)| Op::Hydrate { pos, len, batch }),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|peek| Op::Reopen { peek }),
        1 => Just(Op::Check),
    ]
}

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        2 => Just(Layout::V1),
        1 => Just(Layout::V2(12)),
        1 => Just(Layout::V2(16)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    layout()
        .prop_flat_map(|layout| {
            let cs = layout.cluster_size();
            let size = prop_oneof![
                1 => Just(0u64),
                3 => (1u64..=5).prop_map(move |k| k * cs),
                6 => (0u64..=5, 1u64..cs).prop_map(move |(k, r)| k * cs + r),
            ];
            (Just(layout), size, any::<bool>(), any::<bool>())
        })
        .prop_flat_map(|(layout, size, writethrough, garbage)| {
            let cs = layout.cluster_size();
            let len = prop_oneof![
                // Longer than the image.
                3 => (1u64..3 * cs).prop_map(move |d| size + d),
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
                layout,
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
        let mut meta = case.header().to_bytes().to_vec();
        let layout = case.layout;
        meta.resize(
            (layout.header_len() + layout.bitmap_len(case.size)) as usize,
            0,
        );
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
            layout: match case.layout {
                Layout::V1 => 1,
                Layout::V2(_) => 2,
            },
            cluster_size: case.cs(),
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

/// The `.add-cow` file: header + bitmap on disk long; the header untouched (layout 2: but for
/// the "all allocated" bit, which must be the model's); with `bits`, its bitmap equals the
/// model's (padding included).
fn check_meta(
    backend: &dyn Backend,
    case: &Case,
    header: &[u8],
    model: &Model,
    bits: bool,
    when: &str,
) {
    let layout = case.layout;
    let meta = backend.meta_file();
    let at = layout.header_len() as usize;
    assert_eq!(
        meta.len() as u64,
        layout.header_len() + layout.bitmap_len(model.size()),
        "{when}: .add-cow file length"
    );
    let mut want = header.to_vec();
    if layout != Layout::V1 {
        want[32] = want[32] & !1 | u8::from(model.all_allocated);
    }
    if meta[..at] != want[..] {
        let i = (0..at).find(|&i| meta[i] != want[i]).unwrap();
        panic!(
            "{when}: header byte {i} is {:#04x}, expected {:#04x} (the all-allocated bit: {})",
            meta[i], want[i], model.all_allocated
        );
    }
    // Layout 2 checks the bitmap's own bytes only: a shrink leaves the cut clusters' bits in
    // the padding (a library bug: `layout2_handmade::a_shrink_leaves_no_bit_past_the_end`).
    let end = match layout {
        Layout::V1 => meta.len(),
        Layout::V2(_) => at + model.alloc.len().div_ceil(8),
    };
    if bits && meta[at..end] != model.bitmap(layout)[..end - at] {
        panic!(
            "{when}: bitmap on disk {:?}, expected {:?}",
            &meta[at..(at + 8).min(meta.len())],
            &model.bitmap(layout)[..8.min(meta.len() - at)]
        );
    }
}

/// Content, allocation of every cluster, and the image file's allocated clusters.
fn check_all(img: &Image, backend: &dyn Backend, model: &Model, when: &str) {
    let (size, cs) = (model.size(), model.cs);
    assert_eq!(img.size(), size, "{when}: size");
    let mut got = vec![0x5Au8; size as usize];
    img.read_at(0, &mut got).unwrap();
    let want = model.read(0, size).unwrap();
    if got != want {
        let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
        panic!(
            "{when}: content differs first at byte {i} (cluster {}): got {:#04x}, want {:#04x}",
            i as u64 / cs,
            got[i],
            want[i]
        );
    }
    for c in 0..model.alloc.len() {
        let at = c as u64 * cs;
        assert_eq!(
            img.is_allocated(at, cs).unwrap(),
            (model.alloc[c], cs.min(size - at)),
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
    let header = backend.meta_file()[..case.layout.header_len() as usize].to_vec();
    let cs = case.cs();
    let mut model = case.model();
    let mut img = backend.open(&case.open_options(true));
    check_meta(backend, case, &header, &model, true, "after open");
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
                let offset = pos.at(size, cs);
                let len = len.of(size, offset, cs);
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
                let offset = pos.at(size, cs);
                let len = len.of(size, offset, cs);
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
                let offset = pos.at(size, cs);
                let bytes = len.of(size, offset, cs);
                assert_eq!(
                    img.is_allocated(offset, bytes).unwrap(),
                    model.is_allocated(offset, bytes),
                    "{when}: is_allocated({offset}, {bytes})"
                );
            }
            Op::WriteZeroes { pos, len, unmap } => {
                let offset = pos.at(size, cs);
                let len = len.of(size, offset, cs);
                let flags = ZeroFlags {
                    may_unmap: *unmap,
                    no_fallback: false,
                };
                let got = img.write_zeroes(offset, len, flags).map_err(|e| e.errno());
                assert_eq!(
                    got,
                    model.write_zeroes(offset, len),
                    "{when}: write_zeroes {offset}+{len}"
                );
                mutated = true;
            }
            Op::Discard { pos, len } => {
                let offset = pos.at(size, cs);
                let len = len.of(size, offset, cs);
                let got = img.discard(offset, len).map_err(|e| e.errno());
                assert_eq!(
                    got,
                    model.discard(offset, len),
                    "{when}: discard {offset}+{len}"
                );
                mutated = true;
            }
            Op::Truncate { size: to } => {
                let to = to.at(size, cs);
                img.truncate(to).unwrap();
                model.truncate(to);
                mutated = true;
            }
            Op::Hydrate { pos, len, batch } => {
                let offset = pos.at(size, cs);
                let len = len.of(size, offset, cs);
                let got = img.hydrate(offset, len, u64::from(*batch) * cs);
                let bit = matches!(case.layout, Layout::V2(_)) && model.all_allocated;
                assert_eq!(
                    got.map_err(|e| e.errno()),
                    // Refused without the backing file, unless layout 2's bit says that every
                    // cluster is allocated.
                    model.hydrate(offset, len, case.no_backing() && !bit),
                    "{when}: hydrate {offset}+{len}"
                );
                mutated = true;
            }
            Op::Flush => {
                img.flush().unwrap();
                model.flushed();
                check_meta(backend, case, &header, &model, true, &when);
            }
            Op::Reopen { peek } => {
                img.close().unwrap();
                model.flushed();
                check_meta(backend, case, &header, &model, true, &when);
                if *peek {
                    let ro = backend.open(&case.open_options(false));
                    assert!(ro.is_read_only());
                    assert_eq!(ro.write_at(0, &[1]).unwrap_err().errno(), libc::EPERM);
                    assert_eq!(ro.truncate(size + 1).unwrap_err().errno(), libc::EPERM);
                    check_all(&ro, backend, &model, &format!("{when}, read-only"));
                    ro.close().unwrap();
                    check_meta(backend, case, &header, &model, true, &when);
                }
                img = backend.open(&case.open_options(true));
            }
            Op::Check => check_all(&img, backend, &model, &when),
        }
        // Writethrough: the bits are on disk when a write or truncate returns. Writeback: the
        // `.add-cow` file keeps its length (truncate resizes it at once).
        check_meta(
            backend,
            case,
            &header,
            &model,
            case.writethrough && mutated,
            &when,
        );
    }
    check_all(&img, backend, &model, "at the end");
    img.close().unwrap();
    model.flushed();
    check_meta(backend, case, &header, &model, true, "after close");
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
    #![proptest_config(config(384))]

    #[test]
    fn model_over_memory(case in case(), ops in prop::collection::vec(op(), 1..60)) {
        run(&case, &ops, &Mem::new(&case));
    }
}

proptest! {
    #![proptest_config(config(160))]

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
    let mut m = Model::new(CS, 2 * CS + 100, (0..CS + 7).map(backing_byte).collect());
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
    assert_eq!(m.bitmap(Layout::V1), [0b010]);
    m.truncate(CS + 3);
    m.truncate(3 * CS);
    // The backing file (CS + 7) is longer than the old size (CS + 3): the old partial cluster
    // is allocated already; the new clusters are allocated and read zeros.
    assert_eq!(m.bitmap(Layout::V1), [0b110]);
    assert_eq!(m.read(CS + 1, 4).unwrap(), [backing_byte(CS + 1), 9, 0, 0]);
    m.truncate(10);
    m.truncate(CS + 1);
    assert_eq!(m.bitmap(Layout::V1), [0b11]);
    assert_eq!(m.read(9, 2).unwrap(), [backing_byte(9), 0]);
}

/// Layout 2 in the model: the padded bitmap, and the "all allocated" bit set by a flush once
/// every cluster is allocated and cleared by a grow over a backing file no longer than the
/// image.
#[test]
fn model_sanity_layout_2() {
    let cs = 4096;
    let layout = Layout::V2(12);
    assert_eq!((layout.header_len(), layout.bitmap_len(0)), (4096, 0));
    assert_eq!(layout.bitmap_len(1), 4096);
    assert_eq!(layout.bitmap_len(cs * 8 * 4096 + 1), 8192);
    assert_eq!(Layout::V2(16).header_len(), 65536);
    let mut m = Model::new(cs, 2 * cs + 1, (0..cs).map(backing_byte).collect());
    m.write(0, &[1]).unwrap();
    m.flushed();
    assert!(!m.all_allocated);
    m.write(cs, &vec![2; cs as usize + 1]).unwrap();
    m.flushed();
    assert!(m.all_allocated);
    // A grow from below the backing file's end (one cluster) allocates the new clusters.
    m.truncate(cs - 1);
    m.truncate(5 * cs);
    assert!(m.all_allocated && m.alloc.iter().all(|&a| a));
    // From its end: they stay unallocated, the bit goes.
    m.truncate(cs);
    m.truncate(4 * cs);
    assert!(!m.all_allocated);
    assert_eq!(m.bitmap(layout)[..1], [0b0001]);
    assert_eq!(m.bitmap(layout).len(), 4096);
}

/// The bit's whole life on both backends, checked by `run` after every operation: set at a
/// flush and at close, kept across shrinks and a grow over a longer backing file, cleared by
/// a grow over a shorter one, set again once the new clusters are written.
#[test]
fn model_all_allocated_bit_life_cycle() {
    let cs = 4096;
    let case = Case {
        layout: Layout::V2(12),
        size: 3 * cs + 5,
        backing: BackingKind::Len(2 * cs),
        writethrough: false,
        garbage: true,
    };
    let write_all = || Op::Write {
        pos: Pos::Frac(0),
        len: Len::ToEnd(0),
        seed: 7,
        cuts: vec![],
    };
    let ops = vec![
        write_all(),
        Op::Flush,
        Op::Check,
        Op::Truncate {
            size: Pos::Near(1, 7),
        },
        Op::Reopen { peek: true },
        Op::Truncate {
            size: Pos::End(3 * cs as i32),
        },
        Op::Flush,
        write_all(),
        Op::Reopen { peek: false },
        Op::Truncate {
            size: Pos::End(2 * cs as i32),
        },
        Op::Flush,
        write_all(),
        Op::Flush,
        Op::Check,
    ];
    run(&case, &ops, &Mem::new(&case));
    run(&case, &ops, &Files::new(&case, false));
}

/// `check_meta` catches a header whose bit differs from the model's.
#[test]
#[should_panic(expected = "the all-allocated bit: true")]
fn check_meta_catches_a_wrong_bit() {
    let case = Case {
        layout: Layout::V2(12),
        size: 4096,
        backing: BackingKind::Absent,
        writethrough: false,
        garbage: false,
    };
    let backend = Mem::new(&case);
    let header = backend.meta_file()[..4096].to_vec();
    let mut model = case.model();
    model.all_allocated = true;
    check_meta(&backend, &case, &header, &model, true, "a wrong bit");
}
