//! `addcow::check` on hand-corrupted images: every finding category, checked, repaired when it
//! can be repaired without guessing and left alone when it cannot, with the exit-code model
//! (0 clean, 2 corruptions left, 3 leaks left). And the read-write open that refuses a bitmap
//! shorter than the image, pointing at check.

mod common;
use addcow::{check, BackingFormat, CheckReport, CreateOptions, Image, Severity};
use common::{assert_err, ro, rw};
use std::fs::OpenOptions as FsOpen;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const K4: u64 = 4096;
const K64: u64 = 65536;

struct Img {
    _dir: tempfile::TempDir,
    meta: PathBuf,
    raw: PathBuf,
    base: PathBuf,
    /// Where the bitmap starts in the `.add-cow` file.
    bitmap: u64,
}

/// An image of `size` bytes over an 8 MiB backing file; layout 2 at 4 KiB clusters.
fn image(layout: u32, size: u64) -> Img {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0x11u8; K64 as usize]).unwrap();
    FsOpen::new()
        .write(true)
        .open(&base)
        .unwrap()
        .set_len(128 * K64)
        .unwrap();
    let meta = dir.path().join("img.add-cow");
    addcow::create(
        &meta,
        &CreateOptions {
            image_file: PathBuf::from("img.raw"),
            backing_file: Some(PathBuf::from("base.raw")),
            backing_format: BackingFormat::Raw,
            size,
            layout,
            cluster_size: if layout == 2 { K4 } else { 0 },
            ..CreateOptions::default()
        },
    )
    .unwrap();
    Img {
        raw: dir.path().join("img.raw"),
        _dir: dir,
        meta,
        base,
        bitmap: if layout == 2 { 4096 } else { 2560 },
    }
}

impl Img {
    fn write(&self, offset: u64, bytes: &[u8]) {
        let img = Image::open(&self.meta, &rw()).unwrap();
        img.write_at(offset, bytes).unwrap();
        img.close().unwrap();
    }

    fn read_all(&self) -> Vec<u8> {
        let img = Image::open(&self.meta, &ro()).unwrap();
        let mut buf = vec![0u8; img.size() as usize];
        img.read_at(0, &mut buf).unwrap();
        buf
    }

    fn poke(&self, path: &Path, offset: u64, bytes: &[u8]) {
        let f = FsOpen::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }

    fn set_len(&self, path: &Path, len: u64) {
        FsOpen::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    fn meta_len(&self) -> u64 {
        std::fs::metadata(&self.meta).unwrap().len()
    }

    fn bitmap_byte(&self, i: u64) -> u8 {
        std::fs::read(&self.meta).unwrap()[(self.bitmap + i) as usize]
    }
}

/// The only finding of `r` that is not a note, which must be of `severity` and mention `words`.
#[track_caller]
fn only(r: &CheckReport, severity: Severity, repaired: bool, words: &[&str]) {
    let found: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.severity != Severity::Note)
        .collect();
    assert_eq!(found.len(), 1, "{r:#?}");
    let f = found[0];
    assert_eq!((f.severity, f.repaired), (severity, repaired), "{r:#?}");
    for w in words {
        assert!(
            f.message.contains(w),
            "{:?} does not mention {w:?}",
            f.message
        );
    }
}

/// A check without findings but notes.
#[track_caller]
fn clean(path: &Path) -> CheckReport {
    let r = check(path, false).unwrap();
    assert!(
        r.findings.iter().all(|f| f.severity == Severity::Note),
        "{r:#?}"
    );
    assert_eq!(r.exit_code(), 0);
    r
}

/// A check whose findings are notes, the first mentioning `words` (exit code 0).
#[track_caller]
fn note(path: &Path, words: &[&str]) {
    let r = check(path, false).unwrap();
    assert!(!r.findings.is_empty(), "no finding");
    assert!(
        r.findings.iter().all(|f| f.severity == Severity::Note),
        "{r:#?}"
    );
    for w in words {
        assert!(r.findings[0].message.contains(w), "{r:#?}: no {w:?}");
    }
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn a_clean_image_and_its_allocation() {
    for layout in [1, 2] {
        let img = image(layout, 10 * K64);
        img.write(K64 + 1, b"x");
        let r = clean(&img.meta);
        assert!(r.findings.is_empty(), "{r:#?}");
        let per = if layout == 2 { 16 } else { 1 };
        assert_eq!((r.allocated_clusters, r.total_clusters), (1, 10 * per));
    }
}

#[test]
fn corrupt_headers_are_corruptions() {
    for (layout, at, byte, words) in [
        (1, 0, b'X', &["bad magic"][..]),
        (1, 2100, 1, &["reserved"][..]),
        (2, 24, 1, &["incompatible feature bit 0"][..]),
    ] {
        let img = image(layout, K64);
        img.poke(&img.meta, at, &[byte]);
        let r = check(&img.meta, true).unwrap();
        only(&r, Severity::Corruption, false, words);
        assert_eq!(r.exit_code(), 2);
    }
}

#[test]
fn a_missing_image_file_is_a_corruption() {
    let img = image(1, K64);
    std::fs::remove_file(&img.raw).unwrap();
    let r = check(&img.meta, false).unwrap();
    only(&r, Severity::Corruption, false, &["img.raw"]);
}

#[test]
fn a_short_bitmap_without_data_is_extended_and_open_refuses_it_until_then() {
    for layout in [1, 2] {
        let img = image(layout, 8 * K64);
        img.write(0, &[5u8; 100]);
        // The image file grows outside the library, sparsely: its new clusters have no bits
        // (past layout 2's padding, 32768 clusters of 4 KiB).
        let grown = if layout == 2 { 256 << 20 } else { 64 * K64 };
        img.set_len(&img.raw, grown);
        let before = img.read_all();
        assert_err(
            Image::open(&img.meta, &rw()),
            libc::EINVAL,
            &["bitmap is shorter", "check"],
        );
        let r = check(&img.meta, false).unwrap();
        only(
            &r,
            Severity::Corruption,
            false,
            &["no bit", "holds no data"],
        );
        assert_eq!(r.exit_code(), 2);
        let r = check(&img.meta, true).unwrap();
        only(&r, Severity::Corruption, true, &["no bit"]);
        assert_eq!(r.exit_code(), 0);
        clean(&img.meta);
        assert_eq!(
            img.read_all(),
            before,
            "layout {layout}: repair changed the content"
        );
        Image::open(&img.meta, &rw()).unwrap().close().unwrap();
    }
}

#[test]
fn a_short_bitmap_over_data_is_left_alone() {
    let img = image(1, 8 * K64);
    img.set_len(&img.raw, 64 * K64);
    img.poke(&img.raw, 40 * K64, b"data nobody can place");
    let len = img.meta_len();
    let r = check(&img.meta, true).unwrap();
    only(
        &r,
        Severity::Corruption,
        false,
        &["holds data at offset 2621440", "not repaired"],
    );
    assert_eq!(r.exit_code(), 2);
    assert_eq!(img.meta_len(), len, "a repair that guessed");
    assert_err(Image::open(&img.meta, &rw()), libc::EINVAL, &["check"]);
}

#[test]
fn stale_bytes_past_the_bitmap_are_a_leak() {
    for layout in [1, 2] {
        let img = image(layout, 8 * K64);
        let len = img.meta_len();
        img.poke(&img.meta, len + 10, &[0xFF]);
        let r = check(&img.meta, false).unwrap();
        only(&r, Severity::Leak, false, &["stale bytes"]);
        assert_eq!(r.exit_code(), 3);
        only(&check(&img.meta, true).unwrap(), Severity::Leak, true, &[]);
        assert_eq!(img.meta_len(), len);
        clean(&img.meta);
    }
}

#[test]
fn stray_bits_past_the_last_cluster_are_a_leak() {
    // Layout 1: 5 clusters, the spare bits of the only byte. Layout 2: 4 KiB clusters, 40
    // clusters: the spare bits are none, the padding holds one.
    for (layout, size, at, byte, keep) in [
        (1, 5 * K64, 0, 0b1110_0001, 0b0000_0001),
        (2, 40 * K4, 100, 0x80, 0),
    ] {
        let img = image(layout, size);
        if layout == 1 {
            img.write(0, b"a");
        }
        let before = img.read_all();
        img.poke(&img.meta, img.bitmap + at, &[byte]);
        let r = check(&img.meta, false).unwrap();
        only(&r, Severity::Leak, false, &["past the last cluster"]);
        only(&check(&img.meta, true).unwrap(), Severity::Leak, true, &[]);
        assert_eq!(img.bitmap_byte(at), keep, "layout {layout}");
        clean(&img.meta);
        assert_eq!(img.read_all(), before);
    }
}

#[test]
fn missing_layout2_padding_is_a_leak() {
    let img = image(2, 40 * K4);
    let len = img.meta_len();
    img.set_len(&img.meta, img.bitmap + 5);
    only(
        &check(&img.meta, true).unwrap(),
        Severity::Leak,
        true,
        &["padding"],
    );
    assert_eq!(img.meta_len(), len);
    clean(&img.meta);
}

#[test]
fn the_all_allocated_bit_over_clear_bits_is_a_note() {
    // Valid (another writer may leave the bitmap all zeros): the bit wins, nothing to repair.
    let img = image(2, 10 * K4 + 512);
    img.write(0, &vec![3u8; (10 * K4 + 512) as usize]);
    assert_ne!(std::fs::read(&img.meta).unwrap()[32] & 1, 0, "bit not set");
    let before = img.read_all();
    img.poke(&img.meta, img.bitmap + 1, &[0b0000_0010]); // clusters 8 and 10 clear
    note(&img.meta, &["all-allocated", "2 of 11"]);
    let r = check(&img.meta, true).unwrap();
    assert!(
        !r.findings[0].repaired && r.allocated_clusters == 11,
        "{r:#?}"
    );
    assert_eq!(
        img.bitmap_byte(1),
        0b0000_0010,
        "a repair that was not needed"
    );
    // A bitmap cut short under the bit is harmless: a leak, extended by a repair, and a
    // read-write open accepts it.
    img.set_len(&img.meta, img.bitmap);
    Image::open(&img.meta, &rw()).unwrap().close().unwrap();
    let r = check(&img.meta, true).unwrap();
    assert!(
        r.findings
            .iter()
            .any(|f| f.severity == Severity::Leak && f.repaired && f.message.contains("short")),
        "{r:#?}"
    );
    assert_eq!(img.meta_len(), img.bitmap + K4);
    assert_eq!(img.read_all(), before);
}

#[test]
fn the_backing_file() {
    // Missing while unallocated clusters read from it: a corruption.
    let img = image(1, 2 * K64);
    std::fs::remove_file(&img.base).unwrap();
    only(
        &check(&img.meta, true).unwrap(),
        Severity::Corruption,
        false,
        &["base.raw", "cannot be opened"],
    );
    // Missing but not needed: a note.
    let img = image(2, 2 * K4);
    img.write(0, &[1u8; 2 * K4 as usize]);
    std::fs::remove_file(&img.base).unwrap();
    note(&img.meta, &["not needed"]);
    // Shorter than the image: a note.
    let img = image(1, 4 * K64);
    img.set_len(&img.base, K64);
    note(&img.meta, &["shorter than the image"]);
}

#[test]
fn an_image_in_use() {
    let img = image(1, K64);
    let open = Image::open(&img.meta, &rw()).unwrap();
    note(&img.meta, &["in use"]);
    assert_err(check(&img.meta, true), libc::EBUSY, &["in use"]);
    open.close().unwrap();
    clean(&img.meta);
}

#[test]
fn unknown_compatible_bits_are_a_note() {
    let img = image(2, K4);
    img.poke(&img.meta, 32, &[0b100]);
    note(&img.meta, &["0x4"]);
}

/// Whether the image file holds data (not a hole) anywhere in `range`, by `SEEK_DATA`.
fn holds_data(path: &Path, range: std::ops::Range<u64>) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: lseek takes no pointers; `f` is open.
    let at = unsafe { libc::lseek(f.as_raw_fd(), range.start as libc::off_t, libc::SEEK_DATA) };
    at >= 0 && (at as u64) < range.end
}

#[test]
fn data_in_unallocated_clusters_is_a_leak_punched_by_repair() {
    for layout in [1, 2] {
        let cs = if layout == 2 { K4 } else { K64 };
        let img = image(layout, 10 * cs);
        img.write(2 * cs, &vec![0x22u8; cs as usize]);
        img.write(6 * cs, b"six");
        let unpoked = img.read_all();
        // Copy-on-writes that crashed before their bits were set: cluster 3 (its data starts
        // in allocated cluster 2, whose bytes must survive) and clusters 4 and 8.
        img.poke(&img.raw, 3 * cs - 100, &[0x33u8; 200]);
        img.poke(&img.raw, 4 * cs + 1, &[0x44u8; 10]);
        img.poke(&img.raw, 8 * cs, &vec![0x88u8; cs as usize]);
        let before = img.read_all();
        let from = (3 * cs) as usize;
        assert!(
            before[from..] == unpoked[from..],
            "leaked data is never read"
        );
        let r = check(&img.meta, false).unwrap();
        let at = (3 * cs).to_string();
        only(&r, Severity::Leak, false, &["3 unallocated clusters", &at]);
        assert_eq!(r.exit_code(), 3);
        let r = check(&img.meta, true).unwrap();
        only(&r, Severity::Leak, true, &["punched"]);
        assert_eq!(r.exit_code(), 0);
        clean(&img.meta);
        for c in [3, 4, 8] {
            assert!(!holds_data(&img.raw, c * cs..(c + 1) * cs), "cluster {c}");
        }
        let raw = std::fs::read(&img.raw).unwrap();
        let c2 = &raw[(2 * cs) as usize..(3 * cs) as usize];
        assert!(c2[..(cs - 100) as usize].iter().all(|&b| b == 0x22));
        assert!(c2[(cs - 100) as usize..].iter().all(|&b| b == 0x33));
        assert_eq!(&raw[(6 * cs) as usize..(6 * cs + 3) as usize], b"six");
        assert_eq!(raw.len() as u64, 10 * cs, "the image file keeps its length");
        assert!(
            img.read_all() == before,
            "layout {layout}: repair changed the content"
        );
    }
}

#[test]
fn data_in_an_unallocated_partial_last_cluster_is_punched() {
    let size = 3 * K64 + 1000;
    let img = image(1, size);
    img.write(0, b"zero");
    img.poke(&img.raw, size - 10, &[0xEEu8; 10]);
    let before = img.read_all();
    only(
        &check(&img.meta, false).unwrap(),
        Severity::Leak,
        false,
        &["1 unallocated clusters", &(3 * K64).to_string()],
    );
    only(&check(&img.meta, true).unwrap(), Severity::Leak, true, &[]);
    assert!(!holds_data(&img.raw, 3 * K64..size));
    assert!(
        holds_data(&img.raw, 0..K64),
        "an allocated cluster was punched"
    );
    assert_eq!(std::fs::metadata(&img.raw).unwrap().len(), size);
    assert!(img.read_all() == before, "repair changed the content");
    clean(&img.meta);
}

#[test]
fn data_in_allocated_clusters_and_under_the_all_allocated_bit_is_no_leak() {
    let img = image(1, 4 * K64);
    img.write(0, &vec![1u8; (4 * K64) as usize]);
    clean(&img.meta);
    // Layout 2's bit: every cluster reads the image file, whatever the bitmap says.
    let img = image(2, 10 * K4);
    img.write(0, &vec![3u8; (10 * K4) as usize]);
    img.poke(&img.meta, img.bitmap, &[0]);
    let r = check(&img.meta, true).unwrap();
    assert_eq!(r.count(Severity::Leak, true), 0, "{r:#?}");
    assert!(holds_data(&img.raw, 0..8 * K4));
}
