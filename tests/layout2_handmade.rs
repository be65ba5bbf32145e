//! Layout 2 against the specification, with `.add-cow` files made by hand: a small writer here
//! ([`Hand`]) lays the fields out byte by byte (little-endian, from `docs/format.md` and
//! `FORMAT-NOTES.md`, never through the library's `Header`), and a small reader ([`assert_spec_file`])
//! checks the files the library leaves behind field by field.
//!
//! - Names anywhere in the name area (backing before image, gaps, at its very end), garbage in
//!   the other name-area bytes (ignored on read, and kept), unknown compatible bits (kept when
//!   the "all allocated" bit is set or cleared, which rewrites the feature field alone), every
//!   cluster size, bitmap bits set by hand (LSB first at `header_size`) with the matching image
//!   file data: reads, `is_allocated`, writes, and the file afterwards, byte for byte.
//! - The "all allocated" bit as the specification has it: set, the bitmap and the backing file
//!   are not read; a grow that leaves clusters unallocated clears it durably.
//! - Every refusal, through `Image::open` on files: errno and the words of the message.
//! - A chain whose add-cow backing image is shorter than the overlay: allocating writes past
//!   its end, for several cluster sizes and spans, over layout-1 and layout-2 bases.

mod common;

use addcow::storage::MemStorage;
use addcow::{create, BackingFormat, CreateOptions, Image, OpenOptions, Parts};
use common::disk::{Disk, Pick};
use common::{assert_err, ro, rw, Rng};
use std::path::{Path, PathBuf};

/// Where the name area starts: the fixed fields end here.
const FIXED: usize = 76;
/// Two compatible bits no version knows: a rewrite must keep them.
const UNKNOWN_COMPAT: u64 = 1 << 5 | 1 << 63;
/// Compatible bit 0: every cluster is allocated.
const ALL_ALLOCATED: u64 = 1;
/// What never-written bytes of image files hold here: it must never be read.
const GARBAGE: u8 = 0xEE;

/// `header_size` for a cluster size: max(4096, cluster size).
fn header_size(bits: u32) -> usize {
    (1usize << bits).max(4096)
}

/// The bitmap's length on disk for `clusters` clusters: one bit each, padded with zeros to a
/// multiple of the cluster size (nothing for an empty image).
fn padded_bitmap_len(clusters: u64, cs: u64) -> u64 {
    clusters.div_ceil(8).next_multiple_of(cs)
}

// ---------------------------------------------------------------------------------------------
// The writer.

/// A name and where the header says it is.
#[derive(Clone, Debug)]
struct Name {
    at: u32,
    bytes: Vec<u8>,
}

fn name(at: usize, bytes: &[u8]) -> Name {
    Name {
        at: at as u32,
        bytes: bytes.to_vec(),
    }
}

/// A layout-2 header, field by field.
#[derive(Clone, Debug)]
struct Hand {
    cluster_bits: u32,
    /// The `header_size` field (and the header's length).
    header_size: u32,
    image: Name,
    backing: Option<Name>,
    /// The 16-byte format fields: these bytes, then zeros.
    backing_format: Vec<u8>,
    image_format: Vec<u8>,
    incompatible: u64,
    compatible: u64,
    /// What the name-area bytes outside the names hold.
    fill: u8,
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

impl Hand {
    /// Image `disk.raw` and raw backing `base.raw` at the start of the name area.
    fn new(cluster_bits: u32) -> Hand {
        Hand {
            cluster_bits,
            header_size: header_size(cluster_bits) as u32,
            image: name(FIXED, b"disk.raw"),
            backing: Some(name(FIXED + 8, b"base.raw")),
            backing_format: b"raw".to_vec(),
            image_format: b"raw".to_vec(),
            incompatible: 0,
            compatible: 0,
            fill: 0,
        }
    }

    fn without_backing(mut self) -> Hand {
        self.backing = None;
        self.backing_format.clear();
        self
    }

    /// The header as the library must leave it when it sets or clears a feature bit: byte for
    /// byte this one but the compatible field (names, garbage and formats where they were).
    fn with_compatible(&self, compatible: u64) -> Hand {
        Hand {
            compatible,
            ..self.clone()
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let len = self.header_size as usize;
        let mut b = vec![self.fill; len.max(FIXED)];
        b[..FIXED].fill(0);
        put(&mut b, 0, b"ACOW");
        let (bo, bs) = self
            .backing
            .as_ref()
            .map_or((0, 0), |n| (n.at, n.bytes.len() as u32));
        put(&mut b, 4, &bo.to_le_bytes());
        put(&mut b, 8, &bs.to_le_bytes());
        put(&mut b, 12, &self.image.at.to_le_bytes());
        put(&mut b, 16, &(self.image.bytes.len() as u32).to_le_bytes());
        put(&mut b, 20, &self.cluster_bits.to_le_bytes());
        put(&mut b, 24, &self.incompatible.to_le_bytes());
        put(&mut b, 32, &self.compatible.to_le_bytes());
        put(&mut b, 40, &self.header_size.to_le_bytes());
        put(&mut b, 44, &self.backing_format);
        put(&mut b, 60, &self.image_format);
        for n in self.backing.iter().chain([&self.image]) {
            let at = n.at as usize;
            if at >= FIXED && at + n.bytes.len() <= b.len() {
                put(&mut b, at, &n.bytes);
            }
        }
        b
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The `.add-cow` file: the header, then the bitmap with `bits` set (LSB first), padded to
    /// a multiple of the cluster size.
    fn file(&self, clusters: u64, bits: &[u64]) -> Vec<u8> {
        let mut out = self.bytes();
        let at = out.len();
        out.resize(
            at + padded_bitmap_len(clusters, self.cluster_size()) as usize,
            0,
        );
        for &c in bits {
            out[at + c as usize / 8] |= 1 << (c % 8);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The reader: a file the library wrote, checked field by field against the specification.

/// What a file must hold.
struct Expect<'a> {
    cluster_bits: u32,
    image: &'a [u8],
    /// Name and format.
    backing: Option<(&'a [u8], &'a [u8])>,
    compatible: u64,
    /// What the image format field holds.
    image_format: &'a [u8],
    /// What the name-area bytes outside the names hold (0 in a header the library made).
    fill: u8,
    /// Allocated clusters (bits set), of `clusters`.
    allocated: &'a [u64],
    clusters: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A 16-byte format field holding `want`, zero-padded (at least one NUL).
fn assert_format(b: &[u8], at: usize, want: &[u8], what: &str) {
    let mut field = [0u8; 16];
    field[..want.len()].copy_from_slice(want);
    assert_eq!(&b[at..at + 16], &field, "{what} format field");
}

/// Checks every field of the `.add-cow` file `file` against the specification and `e`:
/// magic, cluster_bits, features, header_size, formats, the names (inside the name area, not
/// overlapping, without NUL), every other name-area byte `e.fill`, the bitmap LSB first at
/// `header_size` with no bit past the last cluster, zero padding, the file's length.
fn assert_spec_file(file: &[u8], e: &Expect, when: &str) {
    let hs = header_size(e.cluster_bits);
    let cs = 1u64 << e.cluster_bits;
    let want_len = hs as u64 + padded_bitmap_len(e.clusters, cs);
    assert_eq!(file.len() as u64, want_len, "{when}: .add-cow file length");
    assert_eq!(&file[..4], b"ACOW", "{when}: magic");
    assert_eq!(u32_at(file, 20), e.cluster_bits, "{when}: cluster_bits");
    assert_eq!(u64_at(file, 24), 0, "{when}: incompatible features");
    assert_eq!(
        u64_at(file, 32),
        e.compatible,
        "{when}: compatible features"
    );
    assert_eq!(u32_at(file, 40) as usize, hs, "{when}: header_size");
    assert_format(file, 60, e.image_format, &format!("{when}: image"));
    let mut used = vec![false; hs];
    let mut check_name = |field: usize, want: Option<&[u8]>, what: &str| {
        let (off, len) = (
            u32_at(file, field) as usize,
            u32_at(file, field + 4) as usize,
        );
        let Some(want) = want else {
            assert_eq!((off, len), (0, 0), "{when}: {what} name offset and size");
            return;
        };
        assert!(
            off >= FIXED && off + len <= hs,
            "{when}: {what} name at {off}+{len} is outside the name area"
        );
        assert_eq!(&file[off..off + len], want, "{when}: {what} name");
        for u in &mut used[off..off + len] {
            assert!(!*u, "{when}: {what} name overlaps the other");
            *u = true;
        }
    };
    check_name(12, Some(e.image), "image");
    check_name(4, e.backing.map(|b| b.0), "backing");
    assert_format(
        file,
        44,
        e.backing.map_or(&b""[..], |b| b.1),
        &format!("{when}: backing"),
    );
    if let Some(i) = (FIXED..hs).find(|&i| !used[i] && file[i] != e.fill) {
        panic!(
            "{when}: name-area byte {i} is {:#04x}, not {:#04x} (not part of a name)",
            file[i], e.fill
        );
    }
    let bitmap = &file[hs..];
    for c in 0..bitmap.len() as u64 * 8 {
        let set = bitmap[(c / 8) as usize] >> (c % 8) & 1 == 1;
        let want = c < e.clusters && e.allocated.contains(&c);
        assert_eq!(set, want, "{when}: bitmap bit {c} (LSB first at {hs})");
    }
}

// ---------------------------------------------------------------------------------------------
// Images on files.

/// Byte `i` of the backing file: non-zero, below 0x80, varying within and across sectors.
fn backing_byte(i: u64) -> u8 {
    1 + ((i % 127) as u8 ^ (i / 512 % 64) as u8) % 127
}

/// Byte `i` of what the hand-made image file holds in allocated cluster data: 0x80 and above.
fn image_byte(i: u64) -> u8 {
    0x80 | ((i % 113) as u8 ^ (i / 4096 % 16) as u8)
}

fn backing_bytes(len: u64) -> Vec<u8> {
    (0..len).map(backing_byte).collect()
}

struct Files {
    dir: tempfile::TempDir,
    meta: PathBuf,
    image: PathBuf,
}

impl Files {
    fn path(&self, name: &[u8]) -> PathBuf {
        self.dir.path().join(std::str::from_utf8(name).unwrap())
    }
}

/// Writes the `.add-cow` file `meta`, the image file (`size` bytes of [`GARBAGE`], the
/// clusters `allocated` holding [`image_byte`]s) and, if `backing_len`, the backing file.
fn files(
    hand: &Hand,
    meta: Vec<u8>,
    size: u64,
    allocated: &[u64],
    backing_len: Option<u64>,
) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let cs = hand.cluster_size();
    let mut image = vec![GARBAGE; size as usize];
    for &c in allocated {
        for i in c * cs..((c + 1) * cs).min(size) {
            image[i as usize] = image_byte(i);
        }
    }
    let f = Files {
        meta: dir.path().join("disk.add-cow"),
        image: dir
            .path()
            .join(std::str::from_utf8(&hand.image.bytes).unwrap()),
        dir,
    };
    std::fs::write(&f.meta, meta).unwrap();
    std::fs::write(&f.image, image).unwrap();
    if let (Some(b), Some(len)) = (&hand.backing, backing_len) {
        std::fs::write(f.path(&b.bytes), backing_bytes(len)).unwrap();
    }
    f
}

/// What an image reads: its image file where `alloc` says, the backing bytes (zeros past
/// `backing_len`) elsewhere.
struct Model {
    cs: u64,
    bytes: Vec<u8>,
    alloc: Vec<bool>,
}

impl Model {
    fn new(cs: u64, size: u64, allocated: &[u64], backing_len: u64) -> Model {
        let clusters = size.div_ceil(cs);
        let alloc: Vec<bool> = (0..clusters).map(|c| allocated.contains(&c)).collect();
        let bytes = (0..size)
            .map(|i| match alloc[(i / cs) as usize] {
                true => image_byte(i),
                false if i < backing_len => backing_byte(i),
                false => 0,
            })
            .collect();
        Model { cs, bytes, alloc }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for c in offset / self.cs..(offset + data.len() as u64).div_ceil(self.cs) {
            self.alloc[c as usize] = true;
        }
        self.bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    }

    fn allocated(&self) -> Vec<u64> {
        (0..self.alloc.len() as u64)
            .filter(|&c| self.alloc[c as usize])
            .collect()
    }

    /// Reads, `is_allocated` per cluster and over the whole image, and the image file's
    /// allocated clusters.
    fn check(&self, img: &Image, image_file: &Path, when: &str) {
        let size = self.bytes.len() as u64;
        assert_eq!(img.size(), size, "{when}: size");
        let mut got = vec![0x5A; size as usize];
        img.read_at(0, &mut got).unwrap();
        if got != self.bytes {
            let i = (0..got.len()).find(|&i| got[i] != self.bytes[i]).unwrap();
            panic!(
                "{when}: byte {i} (cluster {}) reads {:#04x}, expected {:#04x}",
                i as u64 / self.cs,
                got[i],
                self.bytes[i]
            );
        }
        for (c, &a) in self.alloc.iter().enumerate() {
            let at = c as u64 * self.cs;
            assert_eq!(
                img.is_allocated(at, self.cs).unwrap(),
                (a, self.cs.min(size - at)),
                "{when}: is_allocated of cluster {c}"
            );
        }
        let mut at = 0;
        while at < size {
            let (a, n) = img.is_allocated(at, size - at).unwrap();
            assert!(n > 0, "{when}: is_allocated({at}) made no progress");
            for c in at / self.cs..(at + n).div_ceil(self.cs) {
                assert_eq!(a, self.alloc[c as usize], "{when}: run at {at}+{n}");
            }
            at += n;
        }
        let file = std::fs::read(image_file).unwrap();
        assert_eq!(file.len() as u64, size, "{when}: image file length");
        for c in self.allocated() {
            let r = (c * self.cs) as usize..((c + 1) * self.cs).min(size) as usize;
            assert!(
                file[r.clone()] == self.bytes[r],
                "{when}: the image file's cluster {c} differs from what the image reads"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading and writing hand-made images.

/// Names at unusual places, garbage around them, unknown compatible bits, at every cluster
/// size: read and written as specified, and the header left alone but for the feature field,
/// which gets the "all allocated" bit with the unknown bits kept.
#[test]
fn hand_made_images_are_read_and_written_as_specified() {
    for bits in 12..=21u32 {
        let cs = 1u64 << bits;
        let hs = header_size(bits);
        let mut hand = Hand::new(bits);
        let (img_name, base_name) = (&b"disk.raw"[..], &b"golden-base.img"[..]);
        let (i, b) = (img_name.len(), base_name.len());
        // Backing before image with the image at the very end; gaps around both; the backing
        // name at the very end.
        let (image_at, backing_at) = match bits % 3 {
            0 => (hs - i, FIXED),
            1 => (300, 1000 + bits as usize),
            _ => (FIXED + 1, hs - b),
        };
        hand.image = name(image_at, img_name);
        hand.backing = Some(name(backing_at, base_name));
        hand.fill = 0xA5;
        hand.compatible = UNKNOWN_COMPAT;
        let when = |what: &str| format!("cluster size {cs}: {what}");

        let (size, clusters, backing_len) = (5 * cs + 100, 6, 2 * cs + 7);
        let meta_bytes = hand.file(clusters, &[1, 3]);
        let f = files(&hand, meta_bytes.clone(), size, &[1, 3], Some(backing_len));
        let mut model = Model::new(cs, size, &[1, 3], backing_len);
        let img = Image::open(&f.meta, &rw()).unwrap();
        assert_eq!(img.cluster_size(), cs);
        model.check(&img, &f.image, &when("opened"));

        // An allocating write in cluster 2 (its tail crosses the backing file's end) and one
        // in place in cluster 1.
        let copy_on_write = vec![0x77; 10];
        img.write_at(2 * cs + 5, &copy_on_write).unwrap();
        model.write(2 * cs + 5, &copy_on_write);
        img.write_at(cs + 1, &[0x66; 3]).unwrap();
        model.write(cs + 1, &[0x66; 3]);
        img.flush().unwrap();
        model.check(&img, &f.image, &when("after the writes"));
        let meta = std::fs::read(&f.meta).unwrap();
        assert!(
            meta[..hs] == meta_bytes[..hs],
            "{}",
            when("the header changed, but nothing had to rewrite it")
        );
        assert_eq!(meta.len(), meta_bytes.len(), "{}", when("file length"));
        assert_eq!(meta[hs], 0b0000_1110, "{}", when("bitmap byte 0"));
        assert!(
            meta[hs + 1..].iter().all(|&x| x == 0),
            "{}",
            when("padding")
        );

        // Every cluster allocated: at close the "all allocated" bit is set, which rewrites the
        // feature field alone: the unknown bits stay, and so do the names and the garbage.
        let rest: Vec<u8> = (0..size - 4 * cs).map(|k| k as u8 | 0x40).collect();
        img.write_at(4 * cs, &rest).unwrap();
        model.write(4 * cs, &rest);
        img.write_at(cs - 1, &[0x55]).unwrap();
        model.write(cs - 1, &[0x55]);
        img.close().unwrap();
        let meta = std::fs::read(&f.meta).unwrap();
        let e = Expect {
            cluster_bits: bits,
            image: img_name,
            backing: Some((base_name, b"raw")),
            compatible: UNKNOWN_COMPAT | ALL_ALLOCATED,
            image_format: b"raw",
            fill: 0xA5,
            allocated: &model.allocated(),
            clusters,
        };
        assert_spec_file(&meta, &e, &when("after close"));
        assert_eq!(
            meta[..hs],
            hand.with_compatible(UNKNOWN_COMPAT | ALL_ALLOCATED).bytes()[..],
            "{}",
            when("setting the bit changed more than the feature field")
        );
        // The backing file is no longer needed.
        std::fs::remove_file(f.path(base_name)).unwrap();
        let img = Image::open(&f.meta, &ro()).unwrap();
        assert!(img.backing().is_none());
        model.check(&img, &f.image, &when("reopened without the backing file"));
    }
}

/// A hand-made all-allocated image (bitmap full, unknown bits, names at the end of the name
/// area): reads ignore the missing backing file; a grow over a shorter backing file clears
/// the bit durably before it returns, keeping the unknown bits, and the bitmap grows with
/// zeros and its padding; a later flush does not set the bit again.
#[test]
fn a_grow_clears_the_bit_of_a_hand_made_image_and_keeps_unknown_bits() {
    for bits in [12u32, 16, 21] {
        let cs = 1u64 << bits;
        let hs = header_size(bits);
        let mut hand = Hand::new(bits);
        hand.backing = Some(name(hs - 8, b"base.raw"));
        hand.image = name(hs - 16, b"disk.raw");
        hand.fill = 0x3C;
        hand.compatible = UNKNOWN_COMPAT | ALL_ALLOCATED;
        let size = 3 * cs;
        let when = |what: &str| format!("cluster size {cs}: {what}");
        let f = files(&hand, hand.file(3, &[0, 1, 2]), size, &[0, 1, 2], None);
        // The backing file is missing: not needed while the bit is set.
        let img = Image::open(&f.meta, &rw()).unwrap();
        let mut model = Model::new(cs, size, &[0, 1, 2], 0);
        model.check(&img, &f.image, &when("opened without its backing file"));
        assert_err(img.truncate(4 * cs + 5), libc::ENOENT, &["base.raw"]);
        assert_eq!(
            std::fs::read(&f.meta).unwrap()[..hs],
            hand.bytes()[..],
            "{}",
            when("a failed grow rewrote the header")
        );
        // A backing file shorter than the image: the new clusters stay unallocated.
        std::fs::write(f.path(b"base.raw"), backing_bytes(cs / 2)).unwrap();
        img.truncate(4 * cs + 5).unwrap();
        let e = Expect {
            cluster_bits: bits,
            image: b"disk.raw",
            backing: Some((b"base.raw", b"raw")),
            compatible: UNKNOWN_COMPAT,
            image_format: b"raw",
            fill: 0x3C,
            allocated: &[0, 1, 2],
            clusters: 5,
        };
        // Read before close: the cleared bit is durable when the truncate returns.
        assert_spec_file(
            &std::fs::read(&f.meta).unwrap(),
            &e,
            &when("after the grow"),
        );
        model.bytes.resize((4 * cs + 5) as usize, 0);
        model.alloc.resize(5, false);
        model.check(&img, &f.image, &when("after the grow"));
        img.close().unwrap();
        assert_spec_file(&std::fs::read(&f.meta).unwrap(), &e, &when("after close"));
    }
}

/// While the bit is set, the specification says the bitmap is not read: a hand-made image
/// with the bit set over an all-zero bitmap reads its image file everywhere, reports every
/// cluster allocated, writes in place, and keeps its header (garbage and all) when nothing
/// has to rewrite it.
#[test]
fn while_the_bit_is_set_the_bitmap_and_the_backing_file_are_not_read() {
    let bits = 12;
    let cs = 1u64 << bits;
    let mut hand = Hand::new(bits);
    hand.fill = 0x99;
    hand.compatible = ALL_ALLOCATED;
    let size = 3 * cs + 10;
    let meta_bytes = hand.file(4, &[]);
    let f = files(&hand, meta_bytes.clone(), size, &[0, 1, 2, 3], Some(8 * cs));
    std::fs::remove_file(f.path(b"base.raw")).unwrap();
    let img = Image::open(&f.meta, &rw()).unwrap();
    let mut model = Model::new(cs, size, &[0, 1, 2, 3], 0);
    model.check(&img, &f.image, "the bit set over a zero bitmap");
    img.write_at(cs - 2, &[1, 2, 3, 4]).unwrap();
    model.write(cs - 2, &[1, 2, 3, 4]);
    img.close().unwrap();
    assert_eq!(
        std::fs::read(&f.meta).unwrap(),
        meta_bytes,
        "writes in place with the bit set changed the .add-cow file"
    );
    let img = Image::open(&f.meta, &ro()).unwrap();
    model.check(&img, &f.image, "reopened");
}

/// The bit's meaning ("every cluster lives in the image file; the bitmap is not read") must
/// survive clearing it: a grow over a shorter backing file that clears the bit of a hand-made
/// image whose bitmap was left behind (zeros, as the specification allows: it is ignored
/// while the bit is set) must not change what the existing clusters read.
#[test]
fn clearing_the_bit_keeps_what_existing_clusters_read() {
    let bits = 12;
    let cs = 1u64 << bits;
    let mut hand = Hand::new(bits);
    hand.compatible = ALL_ALLOCATED;
    let size = 3 * cs;
    let f = files(&hand, hand.file(3, &[]), size, &[0, 1, 2], Some(cs + 100));
    let img = Image::open(&f.meta, &rw()).unwrap();
    let mut model = Model::new(cs, size, &[0, 1, 2], 0);
    model.check(&img, &f.image, "before the grow");
    img.truncate(5 * cs).unwrap();
    model.bytes.resize(5 * cs as usize, 0);
    model.alloc.resize(5, false);
    model.check(&img, &f.image, "after a grow that cleared the bit");
}

/// Clearing the bit of a large image over an all-zero bitmap sets every existing cluster's
/// bit in bounded steps (2 Mi clusters each, written back in between): every cluster of the
/// old size stays allocated, and so does the last one, past the first step.
#[test]
fn clearing_the_bit_of_a_large_image_allocates_every_existing_cluster() {
    let bits = 12;
    let cs = 1u64 << bits;
    let mut hand = Hand::new(bits);
    hand.compatible = ALL_ALLOCATED;
    let clusters = (1u64 << 21) * 2 + 5;
    let size = clusters * cs;
    let f = files(&hand, hand.file(clusters, &[]), cs, &[0], Some(100));
    std::fs::File::options()
        .write(true)
        .open(&f.image)
        .unwrap()
        .set_len(size)
        .unwrap();
    let img = Image::open(&f.meta, &rw()).unwrap();
    img.truncate(size + 3 * cs).unwrap();
    let mut at = 0;
    while at < size {
        let (allocated, n) = img.is_allocated(at, size - at).unwrap();
        assert!(allocated && n > 0, "cluster {} after the grow", at / cs);
        at += n;
    }
    assert_eq!(img.is_allocated(size, 3 * cs).unwrap(), (false, 3 * cs));
    let mut got = [0u8; 2];
    img.read_at(size - 1, &mut got).unwrap();
    assert_eq!(got, [0, 0], "the old last byte, then the first new one");
    img.close().unwrap();
    let meta = std::fs::read(&f.meta).unwrap();
    let bitmap = &meta[header_size(bits)..];
    assert_eq!(u64_at(&meta, 32), 0, "compatible features");
    assert!(
        bitmap[..(clusters / 8) as usize].iter().all(|&b| b == 0xFF),
        "a bit of the old size is not set on disk"
    );
    assert_eq!(bitmap[(clusters / 8) as usize], 0b1_1111, "the last byte");
}

/// The specification: "bits past the end are 0". A shrink that keeps the padded bitmap's
/// length (fewer clusters, the same number of bitmap clusters) must clear the cut clusters'
/// bits in the padding too, not only in the last byte.
#[test]
fn a_shrink_leaves_no_bit_past_the_end() {
    let bits = 12;
    let cs = 1u64 << bits;
    let hand = Hand::new(bits);
    let all: Vec<u64> = (0..20).collect();
    let f = files(&hand, hand.file(20, &all), 20 * cs, &all, Some(100));
    let img = Image::open(&f.meta, &rw()).unwrap();
    img.truncate(2 * cs + 1).unwrap();
    img.close().unwrap();
    let e = Expect {
        cluster_bits: bits,
        image: b"disk.raw",
        backing: Some((b"base.raw", b"raw")),
        compatible: ALL_ALLOCATED,
        image_format: b"raw",
        fill: 0,
        allocated: &[0, 1, 2],
        clusters: 3,
    };
    assert_spec_file(&std::fs::read(&f.meta).unwrap(), &e, "after a shrink");
}

/// A crash during a shrink may leave the cut clusters' bits in layout 2's padding (masked at
/// load), here past the bitmap's first 4096 bytes. A grow over a backing file no longer than
/// the image must not bring them back: the new clusters are unallocated, and the file has no
/// bit past the end.
#[test]
fn a_grow_over_stale_bits_in_the_padding_leaves_the_new_clusters_unallocated() {
    let bits = 16;
    let cs = 1u64 << bits;
    let hand = Hand::new(bits);
    let stale: Vec<u64> = (40_000..40_008).collect();
    let set: Vec<u64> = [0, 1, 2].into_iter().chain(stale.iter().copied()).collect();
    let f = files(&hand, hand.file(3, &set), 3 * cs, &[0, 1, 2], Some(100));
    let img = Image::open(&f.meta, &rw()).unwrap();
    let grown = 40_008;
    img.truncate(grown * cs).unwrap();
    for &c in &stale {
        assert_eq!(
            img.is_allocated(c * cs, cs).unwrap(),
            (false, cs),
            "cluster {c} after the grow"
        );
    }
    img.close().unwrap();
    let e = Expect {
        cluster_bits: bits,
        image: b"disk.raw",
        backing: Some((b"base.raw", b"raw")),
        compatible: 0,
        image_format: b"raw",
        fill: 0,
        allocated: &[0, 1, 2],
        clusters: grown,
    };
    assert_spec_file(&std::fs::read(&f.meta).unwrap(), &e, "after the grow");
}

/// No backing file named: unallocated clusters read zeros. An empty image format reads as
/// "raw" and stays empty when the "all allocated" bit is set (only the feature field changes).
#[test]
fn no_backing_file_reads_zeros_and_an_empty_image_format_is_raw() {
    let bits = 14;
    let cs = 1u64 << bits;
    let mut hand = Hand::new(bits).without_backing();
    hand.image = name(5000, b"disk.raw");
    hand.image_format.clear();
    let size = 2 * cs + 1;
    let f = files(&hand, hand.file(3, &[1]), size, &[1], None);
    let img = Image::open(&f.meta, &rw()).unwrap();
    assert!(img.backing().is_none());
    let mut model = Model::new(cs, size, &[1], 0);
    model.check(&img, &f.image, "opened");
    img.write_at(5, &[7; 3]).unwrap();
    model.write(5, &[7; 3]);
    img.write_at(2 * cs, &[8]).unwrap();
    model.write(2 * cs, &[8]);
    img.close().unwrap();
    let e = Expect {
        cluster_bits: bits,
        image: b"disk.raw",
        backing: None,
        compatible: ALL_ALLOCATED,
        image_format: b"",
        fill: 0,
        allocated: &[0, 1, 2],
        clusters: 3,
    };
    assert_spec_file(&std::fs::read(&f.meta).unwrap(), &e, "after close");
    let img = Image::open(&f.meta, &ro()).unwrap();
    model.check(&img, &f.image, "reopened");
}

/// The header's backing format decides how the backing file is opened, whatever the opener
/// asks: "raw" reads an add-cow file's bytes as they are, "add-cow" opens it as an image.
#[test]
fn the_backing_format_in_the_header_decides() {
    let d = tempfile::tempdir().unwrap();
    let lower = d.path().join("lower.add-cow");
    create(
        &lower,
        &CreateOptions {
            image_file: "lower.raw".into(),
            size: 8192,
            layout: 2,
            cluster_size: 4096,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let l = Image::open(&lower, &rw()).unwrap();
    l.write_at(0, &[0x42; 8192]).unwrap();
    l.close().unwrap();
    let lower_bytes = std::fs::read(&lower).unwrap();
    for (format, opener, want) in [
        (&b"raw"[..], BackingFormat::AddCow, &lower_bytes[..16]),
        (&b"add-cow"[..], BackingFormat::Raw, &[0x42; 16][..]),
    ] {
        let mut hand = Hand::new(12);
        hand.backing = Some(name(200, b"lower.add-cow"));
        hand.backing_format = format.to_vec();
        hand.image = name(100, b"top.raw");
        let meta = d.path().join("top.add-cow");
        std::fs::write(&meta, hand.file(2, &[])).unwrap();
        std::fs::write(d.path().join("top.raw"), vec![GARBAGE; 8192]).unwrap();
        let opts = OpenOptions {
            backing_format: opener,
            ..ro()
        };
        let img = Image::open(&meta, &opts).unwrap();
        let mut got = [0u8; 16];
        img.read_at(0, &mut got).unwrap();
        assert_eq!(
            got,
            want,
            "backing format {:?}",
            String::from_utf8_lossy(format)
        );
    }
}

#[test]
fn probe_answers_100_for_the_magic_in_4_bytes() {
    assert_eq!(addcow::probe(b"ACOW"), 100);
    assert_eq!(addcow::probe(b"ACOWxxxxxxxxxxxx"), 100);
    assert_eq!(addcow::probe(&Hand::new(16).bytes()), 100);
    assert_eq!(addcow::probe(b"ACO"), 0);
    assert_eq!(addcow::probe(b"acow"), 0);
    assert_eq!(addcow::probe(b"xACOW"), 0);
}

// ---------------------------------------------------------------------------------------------
// Refusals.

/// Opens `meta` as the `.add-cow` file (an image file of one cluster beside it) and expects
/// `errno` with every one of `words` in the message.
#[track_caller]
fn assert_refused(meta: Vec<u8>, errno: i32, words: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("disk.add-cow");
    std::fs::write(&path, meta).unwrap();
    std::fs::write(d.path().join("disk.raw"), vec![0; 4096]).unwrap();
    std::fs::write(d.path().join("base.raw"), vec![0; 4096]).unwrap();
    for writable in [false, true] {
        let opts = OpenOptions {
            writable,
            ..OpenOptions::default()
        };
        assert_err(Image::open(&path, &opts), errno, words);
    }
    let mut all = vec!["disk.add-cow"];
    all.extend(words);
    assert_err(
        addcow::read_header(
            &addcow::storage::MemStorage::from_bytes(std::fs::read(&path).unwrap()),
            "disk.add-cow",
        ),
        errno,
        &all,
    );
}

#[test]
fn every_refusal_has_its_errno_and_a_message() {
    let ok = || Hand::new(12);
    let file = |h: Hand| h.file(1, &[]);
    let with = |f: fn(&mut Hand)| {
        let mut h = ok();
        f(&mut h);
        file(h)
    };
    let einval = libc::EINVAL;
    // The control: the base case opens.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("x.add-cow"), file(ok())).unwrap();
    std::fs::write(d.path().join("disk.raw"), [0; 4096]).unwrap();
    std::fs::write(d.path().join("base.raw"), [0; 4096]).unwrap();
    Image::open(d.path().join("x.add-cow"), &rw()).unwrap();

    // Names: offset below 76 (over the fixed fields), past header_size, NUL inside, offset
    // without size and size without offset, overlapping each other, missing image name,
    // equal names.
    assert_refused(
        with(|h| h.image.at = 75),
        einval,
        &["image file name", "outside the name area"],
    );
    assert_refused(
        with(|h| h.backing.as_mut().unwrap().at = 4096 - 7),
        einval,
        &["backing file name", "outside the name area"],
    );
    assert_refused(
        with(|h| h.image.at = u32::MAX - 2),
        einval,
        &["image file name", "outside the name area"],
    );
    assert_refused(
        with(|h| h.image.bytes = b"disk\0raw".to_vec()),
        einval,
        &["image file name", "NUL"],
    );
    let mut h = ok();
    h.backing = Some(name(0, b"base.raw"));
    assert_refused(file(h), einval, &["backing file name", "offset 0"]);
    let mut bytes = file(ok());
    put(&mut bytes, 16, &0u32.to_le_bytes());
    assert_refused(bytes, einval, &["image file name", "size 0"]);
    assert_refused(
        with(|h| h.backing.as_mut().unwrap().at = 80),
        einval,
        &["overlap"],
    );
    let mut bytes = file(ok());
    put(&mut bytes, 12, &[0; 8]);
    assert_refused(bytes, einval, &["image file name is missing"]);
    assert_refused(
        with(|h| h.backing = Some(name(200, b"disk.raw"))),
        einval,
        &["same name"],
    );
    // Sizes: cluster_bits out of range; header_size other than max(4096, cluster size);
    // a file shorter than its header_size, or than the fixed fields.
    assert_refused(with(|h| h.cluster_bits = 11), einval, &["cluster_bits 11"]);
    assert_refused(with(|h| h.cluster_bits = 22), einval, &["cluster_bits 22"]);
    for (bits, size) in [(12, 8192), (12, 2048), (16, 4096), (13, 4096)] {
        let mut h = Hand::new(bits);
        h.header_size = size;
        assert_refused(file(h), einval, &["header_size is", &size.to_string()]);
    }
    let mut short = Hand::new(16).bytes();
    short.truncate(30000);
    assert_refused(
        short,
        einval,
        &["30000 of 65536", "shorter than its header_size"],
    );
    let mut short = file(ok());
    short.truncate(4095);
    assert_refused(short, einval, &["4095 of 4096"]);
    assert_refused(b"ACOW\0\0\0\0".to_vec(), einval, &["8 of at least 76"]);
    // Features: an incompatible bit (any) is refused, naming it.
    assert_refused(
        with(|h| h.incompatible = 1 << 9),
        libc::ENOTSUP,
        &["incompatible feature bit 9"],
    );
    // Formats: not raw / add-cow, a format without a backing name, a backing name without a
    // format, fields without a NUL or with bytes after it, an image format other than raw.
    assert_refused(
        with(|h| h.backing_format = b"qcow2".to_vec()),
        libc::ENOTSUP,
        &["backing file format", "qcow2"],
    );
    assert_refused(
        with(|h| {
            h.backing = None;
        }),
        einval,
        &["backing format is given but no backing file"],
    );
    assert_refused(
        with(|h| h.backing_format.clear()),
        einval,
        &["backing file is named but its format is empty"],
    );
    assert_refused(
        with(|h| h.backing_format = vec![b'r'; 16]),
        einval,
        &["backing format field is not NUL-terminated"],
    );
    assert_refused(
        with(|h| h.backing_format = b"raw\0x".to_vec()),
        einval,
        &["backing format field has bytes after its NUL"],
    );
    assert_refused(
        with(|h| h.image_format = b"qcow2".to_vec()),
        libc::ENOTSUP,
        &["image file format", "qcow2"],
    );
    assert_refused(
        with(|h| h.image_format = vec![b'r'; 16]),
        einval,
        &["image format field is not NUL-terminated"],
    );
}

/// A layout-2 image over a backing file that is missing: `ENOENT` naming it (not a format
/// error), unless the bit says it is not needed.
#[test]
fn a_missing_backing_file_is_enoent_unless_every_cluster_is_allocated() {
    let hand = Hand::new(12);
    let f = files(&hand, hand.file(1, &[]), 4096, &[], None);
    assert_err(Image::open(&f.meta, &ro()), libc::ENOENT, &["base.raw"]);
    let mut hand = Hand::new(12);
    hand.compatible = ALL_ALLOCATED;
    std::fs::write(&f.meta, hand.file(1, &[0])).unwrap();
    Image::open(&f.meta, &ro()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The header rewrite under a crash.

/// Setting the bit writes the header. A crash during that write may keep any of its
/// 512-byte sectors (the crash model of `tests/crash.rs`): every outcome must still open and
/// name the same files. A hand-made header with its names in a later sector than the
/// canonical one is the hard case: a whole-header rewrite would move them.
#[test]
fn a_crash_while_the_bit_is_set_leaves_a_header_that_opens() {
    torn_header_outcomes(3000);
}

/// The same, with the names where the library writes them: every torn outcome opens.
#[test]
fn a_crash_while_the_bit_is_set_on_a_canonical_header_leaves_one_that_opens() {
    torn_header_outcomes(FIXED);
}

/// A simulated disk holding an `.add-cow` file `meta` (no backing file) and its image file
/// `image`, and the image opened read-write over it.
fn open_on_disk(meta: Vec<u8>, image: Vec<u8>) -> (Disk, Image) {
    let disk = Disk::new(vec![("add-cow".into(), meta), ("image".into(), image)]);
    let parts = Parts {
        meta: (Box::new(disk.file(0)), "add-cow".into()),
        image: (Box::new(disk.file(1)), "image".into()),
        backing: None,
    };
    let img = Image::open_parts(parts, &rw()).unwrap();
    (disk, img)
}

fn torn_header_outcomes(image_at: usize) {
    let bits = 12;
    let cs = 1u64 << bits;
    let mut hand = Hand::new(bits).without_backing();
    hand.image = name(image_at, b"disk.raw");
    let size = 2 * cs;
    let mut image = vec![0u8; size as usize];
    image
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = image_byte(i as u64));
    let (disk, img) = open_on_disk(hand.file(2, &[0, 1]), image.clone());
    img.flush().unwrap();
    drop(img);
    assert!(disk.current()[0][32] & 1 == 1, "the flush set the bit");
    let mut failures = Vec::new();
    for point in 0..=disk.events() {
        for seed in 0..64 {
            let files = disk.materialize(point, &mut Pick::Random(Rng::new(seed)));
            let [meta, data]: [Vec<u8>; 2] = files.try_into().unwrap();
            let header = addcow::read_header(&MemStorage::from_bytes(meta.clone()), "add-cow");
            match header {
                Ok(h) if h.image_file == b"disk.raw" => {}
                Ok(h) => failures.push(format!(
                    "point {point}, seed {seed}: names {:?}",
                    String::from_utf8_lossy(&h.image_file)
                )),
                Err(e) => failures.push(format!("point {point}, seed {seed}: {e}")),
            }
            let parts = Parts {
                meta: (Box::new(MemStorage::from_bytes(meta)), "add-cow".into()),
                image: (Box::new(MemStorage::from_bytes(data)), "image".into()),
                backing: None,
            };
            if let Ok(img) = Image::open_parts(parts, &ro()) {
                let mut got = vec![0; size as usize];
                img.read_at(0, &mut got).unwrap();
                assert!(got == image, "point {point}, seed {seed}: content");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} torn outcomes do not open, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

/// Clearing the bit of a hand-made image over an all-zero bitmap (a grow without a backing
/// file), crashed at every point with any subset of the unsynced sectors kept: whatever
/// header survives, set or clear, the old clusters read the image file (never zeros: the bits
/// are durable before the header loses the bit).
#[test]
fn a_crash_while_the_bit_is_cleared_keeps_what_existing_clusters_read() {
    let bits = 12;
    let cs = 1u64 << bits;
    let mut hand = Hand::new(bits).without_backing();
    hand.compatible = ALL_ALLOCATED;
    let size = 3 * cs;
    let image: Vec<u8> = (0..size).map(image_byte).collect();
    let (disk, img) = open_on_disk(hand.file(3, &[]), image.clone());
    img.truncate(5 * cs).unwrap();
    drop(img);
    assert!(disk.current()[0][32] & 1 == 0, "the grow cleared the bit");
    for point in 0..=disk.events() {
        for seed in 0..16 {
            let files = disk.materialize(point, &mut Pick::Random(Rng::new(seed)));
            let [meta, data]: [Vec<u8>; 2] = files.try_into().unwrap();
            let parts = Parts {
                meta: (Box::new(MemStorage::from_bytes(meta)), "add-cow".into()),
                image: (Box::new(MemStorage::from_bytes(data)), "image".into()),
                backing: None,
            };
            let img = Image::open_parts(parts, &ro()).unwrap();
            let mut got = vec![0; size as usize];
            img.read_at(0, &mut got).unwrap();
            assert!(got == image, "point {point}, seed {seed}: the old clusters");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chains past the lower image's end.

/// An overlay over an add-cow image shorter than itself: unallocated clusters read the lower
/// image, zeros past its end (any length). Allocating writes that span several clusters of the
/// overlay past that end copy zeros there: they would fail with EINVAL if the lower image were
/// asked for a read past its end (even of 0 bytes). Lower images of layout 1 and 2 (4 KiB,
/// 64 KiB, 2 MiB clusters) under overlays of 4 KiB, 64 KiB and 2 MiB clusters.
#[test]
fn allocating_writes_past_a_shorter_add_cow_backing_image() {
    let lowers: [(u32, u64); 4] = [(1, 65536), (2, 4096), (2, 65536), (2, 2 << 20)];
    for (layout, lower_cs) in lowers {
        for top_cs in [4096u64, 65536, 2 << 20] {
            chain_past_end(layout, lower_cs, top_cs);
        }
    }
}

fn chain_past_end(layout: u32, lower_cs: u64, top_cs: u64) {
    let what = format!("lower layout {layout}, {lower_cs}-byte clusters; overlay {top_cs}");
    let d = tempfile::tempdir().unwrap();
    // The lower image: odd length, over a raw file shorter still, with a write of its own.
    let lower_len = 2 * top_cs.max(lower_cs) + 1000;
    let golden_len = lower_len / 2 + 333;
    std::fs::write(d.path().join("golden.raw"), backing_bytes(golden_len)).unwrap();
    create(
        d.path().join("lower.add-cow"),
        &CreateOptions {
            image_file: "lower.raw".into(),
            backing_file: Some("golden.raw".into()),
            size: lower_len,
            layout,
            cluster_size: lower_cs,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let lower = Image::open(d.path().join("lower.add-cow"), &rw()).unwrap();
    let lower_write = (lower_len - 700, vec![0xC1u8; 500]);
    lower.write_at(lower_write.0, &lower_write.1).unwrap();
    lower.close().unwrap();
    let mut want: Vec<u8> = (0..lower_len)
        .map(|i| if i < golden_len { backing_byte(i) } else { 0 })
        .collect();
    want[lower_write.0 as usize..][..500].copy_from_slice(&lower_write.1);

    let size = lower_len + 5 * top_cs + 512;
    want.resize(size as usize, 0);
    create(
        d.path().join("top.add-cow"),
        &CreateOptions {
            image_file: "top.raw".into(),
            backing_file: Some("lower.add-cow".into()),
            backing_format: BackingFormat::AddCow,
            size,
            layout: 2,
            cluster_size: top_cs,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let top = Image::open(d.path().join("top.add-cow"), &rw()).unwrap();
    let end = lower_len;
    // Spans: from inside the lower image across its end into the next clusters; starting
    // exactly at its end; starting past it with a head and a tail; three whole clusters past
    // it, unaligned at both ends; the image's last bytes.
    let spans = [
        (end - 100, 2 * top_cs),
        (end, top_cs + 1),
        (end + top_cs + 17, top_cs / 2),
        (end.next_multiple_of(top_cs) + top_cs + 3, 3 * top_cs - 6),
        (size - 700, 700),
    ];
    for (k, &(offset, len)) in spans.iter().enumerate() {
        let data = vec![0x10 + k as u8; len as usize];
        top.write_at(offset, &data)
            .unwrap_or_else(|e| panic!("{what}: write {offset}+{len}: {e}"));
        want[offset as usize..(offset + len) as usize].copy_from_slice(&data);
    }
    let check = |img: &Image, when: &str| {
        let mut got = vec![0u8; size as usize];
        img.read_at(0, &mut got).unwrap();
        if got != want {
            let i = (0..got.len()).find(|&i| got[i] != want[i]).unwrap();
            panic!(
                "{what}, {when}: byte {i} (the lower image ends at {end}) reads {:#04x}, \
                 expected {:#04x}",
                got[i], want[i]
            );
        }
    };
    check(&top, "after the writes");
    top.close().unwrap();
    check(
        &Image::open(d.path().join("top.add-cow"), &ro()).unwrap(),
        "reopened",
    );
}
