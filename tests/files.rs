//! File-level behaviour over real files in temporary directories: `create` (sizes, names,
//! refusals), `open` errors, short backing files, add-cow chains, loops and the depth limit,
//! `no_backing`, writethrough versus writeback durability, and truncate on files.

mod common;

use addcow::{create, BackingFormat, CreateOptions, Image, OpenOptions};
use common::{assert_err, ro, rw};
use std::path::{Path, PathBuf};

const CS: u64 = 65536;
const HEADER: u64 = 2560;

// ---------------------------------------------------------------------------------------------
// Helpers.

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Base (raw backing) bytes: non-zero, different per cluster.
fn base_byte(i: u64) -> u8 {
    ((i % 251) as u8 ^ ((i / CS) as u8).wrapping_mul(29)) | 1
}

fn base_bytes(len: u64) -> Vec<u8> {
    (0..len).map(base_byte).collect()
}

fn write_base(path: &Path, len: u64) {
    std::fs::write(path, base_bytes(len)).unwrap();
}

fn opts(image: &str, backing: Option<&str>, size: u64) -> CreateOptions {
    CreateOptions {
        image_file: image.into(),
        backing_file: backing.map(PathBuf::from),
        size,
        ..CreateOptions::default()
    }
}

fn chained(writable: bool) -> OpenOptions {
    OpenOptions {
        writable,
        backing_format: BackingFormat::AddCow,
        ..OpenOptions::default()
    }
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn bitmap_len(size: u64) -> u64 {
    size.div_ceil(CS).div_ceil(8)
}

fn read(img: &Image, offset: u64, n: u64) -> Vec<u8> {
    let mut buf = vec![0xA5u8; n as usize];
    img.read_at(offset, &mut buf).unwrap();
    buf
}

fn read_all(img: &Image) -> Vec<u8> {
    read(img, 0, img.size())
}

/// The allocation of every cluster.
fn clusters(img: &Image) -> Vec<bool> {
    (0..img.size().div_ceil(CS))
        .map(|c| {
            let (a, n) = img.is_allocated(c * CS, CS).unwrap();
            assert_eq!(n, CS.min(img.size() - c * CS), "pnum of cluster {c}");
            a
        })
        .collect()
}

/// The NUL-padded name field of a header.
fn name_field(meta: &[u8], at: usize) -> &[u8] {
    let field = &meta[at..at + 1024];
    let end = field.iter().position(|&b| b == 0).unwrap();
    assert!(field[end..].iter().all(|&b| b == 0), "NUL padding");
    &field[..end]
}

const BACKING_FIELD: usize = 12;
const IMAGE_FIELD: usize = 1036;

/// A header with raw name bytes, as another tool might have written it.
fn header_bytes(image: &[u8], backing: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; HEADER as usize];
    h[..8].copy_from_slice(b"ADD_COW\xff");
    h[8..12].copy_from_slice(&1u32.to_be_bytes());
    h[BACKING_FIELD..BACKING_FIELD + backing.len()].copy_from_slice(backing);
    h[IMAGE_FIELD..IMAGE_FIELD + image.len()].copy_from_slice(image);
    h
}

// ---------------------------------------------------------------------------------------------
// create: sizes.

#[test]
fn create_with_size_creates_the_image_file() {
    let d = tmp();
    write_base(&d.path().join("base.raw"), 10 * CS);
    let meta = d.path().join("disk.add-cow");
    let size = 3 * CS + 100;
    create(&meta, &opts("disk.raw", Some("base.raw"), size)).unwrap();
    assert_eq!(len(&d.path().join("disk.raw")), size);
    assert_eq!(len(&meta), HEADER + 1);
    let bytes = std::fs::read(&meta).unwrap();
    assert_eq!(&bytes[..8], b"ADD_COW\xff");
    assert_eq!(&bytes[8..12], &[0, 0, 0, 1]);
    assert_eq!(name_field(&bytes, IMAGE_FIELD), b"disk.raw");
    assert_eq!(name_field(&bytes, BACKING_FIELD), b"base.raw");
    assert!(bytes[2060..].iter().all(|&b| b == 0), "reserved and bitmap");
    let img = Image::open(&meta, &ro()).unwrap();
    assert_eq!(img.size(), size);
    assert_eq!(read_all(&img), base_bytes(size));
    assert_eq!(img.is_allocated(0, u64::MAX).unwrap(), (false, size));
}

#[test]
fn create_with_size_resizes_an_existing_image_file() {
    let d = tmp();
    let meta = d.path().join("disk.add-cow");
    let image = d.path().join("disk.raw");
    for (existing, size) in [(10 * CS, CS + 1), (100, 2 * CS)] {
        std::fs::write(&image, vec![7u8; existing as usize]).unwrap();
        create(&meta, &opts("disk.raw", None, size)).unwrap();
        assert_eq!(len(&image), size, "{existing} -> {size}");
        assert_eq!(len(&meta), HEADER + bitmap_len(size));
        let img = Image::open(&meta, &ro()).unwrap();
        assert_eq!(img.size(), size);
        // Nothing allocated, no backing file: zeros, whatever the image file held.
        assert!(read_all(&img).iter().all(|&b| b == 0));
    }
}

#[test]
fn create_without_size_takes_the_existing_image_length() {
    let d = tmp();
    write_base(&d.path().join("base.raw"), CS);
    let meta = d.path().join("disk.add-cow");
    let image = d.path().join("disk.raw");
    let size = 5 * CS + 3;
    std::fs::write(&image, vec![0u8; size as usize]).unwrap();
    create(&meta, &opts("disk.raw", Some("base.raw"), 0)).unwrap();
    assert_eq!(len(&image), size);
    assert_eq!(len(&meta), HEADER + 1);
    assert_eq!(Image::open(&meta, &ro()).unwrap().size(), size);
}

#[test]
fn create_without_size_makes_a_missing_image_as_long_as_the_backing_file() {
    let d = tmp();
    let backing_len = 9 * CS + 999;
    write_base(&d.path().join("base.raw"), backing_len);
    let meta = d.path().join("disk.add-cow");
    create(&meta, &opts("disk.raw", Some("base.raw"), 0)).unwrap();
    assert_eq!(len(&d.path().join("disk.raw")), backing_len);
    assert_eq!(len(&meta), HEADER + 2);
    let img = Image::open(&meta, &ro()).unwrap();
    assert_eq!(read_all(&img), base_bytes(backing_len));
}

#[test]
fn create_without_size_or_backing_needs_the_image_file() {
    let d = tmp();
    let meta = d.path().join("disk.add-cow");
    assert_err(
        create(&meta, &opts("disk.raw", None, 0)),
        libc::ENOENT,
        &["image file", "disk.raw"],
    );
    assert!(!meta.exists(), "no .add-cow file after a failed create");
    assert!(!d.path().join("disk.raw").exists());
}

#[test]
fn add_cow_file_length_is_header_plus_bitmap() {
    let d = tmp();
    let meta = d.path().join("disk.add-cow");
    let image = d.path().join("disk.raw");
    for size in [
        0,
        1,
        CS - 1,
        CS,
        CS + 1,
        8 * CS,
        8 * CS + 1,
        17 * CS - 3,
        64 * CS,
        100 * CS + 5,
    ] {
        let _ = std::fs::remove_file(&image);
        if size == 0 {
            std::fs::write(&image, b"").unwrap();
        }
        create(&meta, &opts("disk.raw", None, size)).unwrap();
        assert_eq!(
            len(&meta),
            HEADER + size.div_ceil(CS).div_ceil(8),
            "size {size}"
        );
        assert_eq!(len(&image), size);
        let img = Image::open(&meta, &rw()).unwrap();
        assert_eq!(img.size(), size);
        img.close().unwrap();
        assert_eq!(
            len(&meta),
            HEADER + bitmap_len(size),
            "size {size}, reopened"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// create: names.

/// A path to `target` relative to the current directory (through `..` up to the root).
fn relative_to_cwd(target: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let mut rel = PathBuf::new();
    for _ in cwd.components().skip(1) {
        rel.push("..");
    }
    rel.join(target.strip_prefix("/").unwrap())
}

#[test]
fn relative_names_resolve_against_the_add_cow_directory() {
    // The current directory (the crate root under cargo) is not the temporary directory.
    let d = tmp();
    let root = d.path().canonicalize().unwrap();
    assert_ne!(std::env::current_dir().unwrap(), root.join("sub"));
    std::fs::create_dir(root.join("sub")).unwrap();
    write_base(&root.join("base-files-rs.raw"), 3 * CS);
    let meta = root.join("sub").join("x.add-cow");
    let image_name = "./img-files-rs-relative.raw";
    let backing_name = "../base-files-rs.raw";
    create(&meta, &opts(image_name, Some(backing_name), 2 * CS + 7)).unwrap();
    assert_eq!(
        len(&root.join("sub").join("img-files-rs-relative.raw")),
        2 * CS + 7
    );
    assert!(
        !Path::new(image_name).exists(),
        "image created in the current directory"
    );
    let bytes = std::fs::read(&meta).unwrap();
    assert_eq!(name_field(&bytes, IMAGE_FIELD), image_name.as_bytes());
    assert_eq!(name_field(&bytes, BACKING_FIELD), backing_name.as_bytes());
    let want = base_bytes(2 * CS + 7);
    {
        let img = Image::open(&meta, &rw()).unwrap();
        assert_eq!(read_all(&img), want);
        img.write_at(CS + 5, b"hello").unwrap();
        img.close().unwrap();
    }
    // The same image through a relative path to the .add-cow file (with `..` in it).
    let rel = relative_to_cwd(&meta);
    assert!(rel.is_relative());
    let img = Image::open(&rel, &ro()).unwrap();
    let mut want = want;
    want[(CS + 5) as usize..(CS + 10) as usize].copy_from_slice(b"hello");
    assert_eq!(read_all(&img), want);
    assert_eq!(clusters(&img), [false, true, false]);
}

#[test]
fn absolute_names_are_stored_and_used_as_given() {
    let d = tmp();
    let other = tmp();
    let base = other.path().join("golden.raw");
    write_base(&base, 2 * CS);
    let image = other.path().join("data.raw");
    let meta = d.path().join("disk.add-cow");
    let o = CreateOptions {
        image_file: image.clone(),
        backing_file: Some(base.clone()),
        size: 0,
        ..CreateOptions::default()
    };
    create(&meta, &o).unwrap();
    assert_eq!(len(&image), 2 * CS);
    let bytes = std::fs::read(&meta).unwrap();
    assert_eq!(
        name_field(&bytes, IMAGE_FIELD),
        image.as_os_str().as_encoded_bytes()
    );
    assert_eq!(
        name_field(&bytes, BACKING_FIELD),
        base.as_os_str().as_encoded_bytes()
    );
    assert_eq!(
        read_all(&Image::open(&meta, &ro()).unwrap()),
        base_bytes(2 * CS)
    );
}

#[test]
fn names_up_to_1023_bytes_fit() {
    let d = tmp();
    // A relative name of exactly 1023 bytes: directories of 200 bytes, then the file.
    let mut name = String::new();
    while name.len() + 201 < 1023 {
        name.push_str(&"d".repeat(200));
        name.push('/');
    }
    name.push_str(&"f".repeat(1023 - name.len()));
    assert_eq!(name.len(), 1023);
    std::fs::create_dir_all(d.path().join(&name).parent().unwrap()).unwrap();
    let meta = d.path().join("disk.add-cow");
    create(&meta, &opts(&name, None, CS)).unwrap();
    assert_eq!(len(&d.path().join(&name)), CS);
    let bytes = std::fs::read(&meta).unwrap();
    assert_eq!(name_field(&bytes, IMAGE_FIELD), name.as_bytes());
    assert_eq!(Image::open(&meta, &ro()).unwrap().size(), CS);
}

// ---------------------------------------------------------------------------------------------
// create: refusals (EINVAL, a message naming the problem, no file touched).

#[track_caller]
fn assert_refused(dir: &Path, meta: &Path, o: &CreateOptions, words: &[&str]) {
    let before: Vec<_> = list(dir);
    assert_err(create(meta, o), libc::EINVAL, words);
    assert_eq!(list(dir), before, "a refused create touched files");
}

/// Every file under `dir` with its length.
fn list(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            out.extend(list(&p));
        } else {
            out.push((p.clone(), e.metadata().unwrap().len()));
        }
    }
    out.sort();
    out
}

#[test]
fn create_refuses_the_add_cow_file_as_image_file() {
    let d = tmp();
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let meta = sub.join("x.add-cow");
    for name in [
        "x.add-cow".to_string(),
        "./x.add-cow".to_string(),
        meta.to_str().unwrap().to_string(),
    ] {
        assert_refused(
            d.path(),
            &meta,
            &opts(&name, None, CS),
            &["image file", "add-cow file"],
        );
        assert!(!meta.exists(), "{name}");
    }
    // Also when the .add-cow file exists already (being replaced).
    std::fs::write(&meta, b"old").unwrap();
    assert_refused(
        d.path(),
        &meta,
        &opts("x.add-cow", None, CS),
        &["image file", "add-cow file"],
    );
}

#[test]
fn create_refuses_the_add_cow_file_as_image_file_through_dot_dot() {
    // The same file through `..`: the .add-cow file does not exist yet, so it cannot be
    // recognised by inode; the name must still be seen to point at it.
    let d = tmp();
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let meta = sub.join("x.add-cow");
    assert_refused(
        d.path(),
        &meta,
        &opts("../sub/x.add-cow", None, CS),
        &["image file", "add-cow file"],
    );
}

#[test]
fn create_refuses_the_backing_file_as_image_file() {
    let d = tmp();
    write_base(&d.path().join("base.raw"), 2 * CS);
    let meta = d.path().join("disk.add-cow");
    let abs = d.path().join("base.raw");
    for (image, backing) in [
        ("base.raw", "base.raw"),
        ("./base.raw", "base.raw"),
        ("base.raw", abs.to_str().unwrap()),
    ] {
        for size in [0, CS] {
            assert_refused(
                d.path(),
                &meta,
                &opts(image, Some(backing), size),
                &["image file", "backing file"],
            );
            assert_eq!(std::fs::read(&abs).unwrap(), base_bytes(2 * CS));
        }
    }
}

#[test]
fn create_refuses_names_of_1024_bytes() {
    let d = tmp();
    write_base(&d.path().join("base.raw"), CS);
    let meta = d.path().join("disk.add-cow");
    let long = "n".repeat(1024);
    assert_refused(
        d.path(),
        &meta,
        &opts(&long, None, CS),
        &["image file", "1024 bytes"],
    );
    assert_refused(
        d.path(),
        &meta,
        &opts("disk.raw", Some(&long), CS),
        &["backing file", "1024 bytes"],
    );
    let longer = "n".repeat(5000);
    assert_refused(d.path(), &meta, &opts(&longer, None, CS), &["5000 bytes"]);
}

// ---------------------------------------------------------------------------------------------
// open: errors.

/// A valid image: `disk.add-cow` over `disk.raw` (2 clusters) and `base.raw`.
fn valid(d: &Path) -> PathBuf {
    write_base(&d.join("base.raw"), 2 * CS);
    let meta = d.join("disk.add-cow");
    create(&meta, &opts("disk.raw", Some("base.raw"), 2 * CS)).unwrap();
    meta
}

#[test]
fn open_missing_add_cow_file() {
    let d = tmp();
    let meta = d.path().join("nope.add-cow");
    assert_err(Image::open(&meta, &ro()), libc::ENOENT, &["nope.add-cow"]);
    assert_err(Image::open(&meta, &rw()), libc::ENOENT, &["nope.add-cow"]);
}

#[test]
fn open_missing_image_file() {
    let d = tmp();
    let meta = valid(d.path());
    std::fs::remove_file(d.path().join("disk.raw")).unwrap();
    assert_err(
        Image::open(&meta, &ro()),
        libc::ENOENT,
        &["image file", "disk.raw"],
    );
}

#[test]
fn open_missing_backing_file() {
    let d = tmp();
    let meta = valid(d.path());
    std::fs::remove_file(d.path().join("base.raw")).unwrap();
    assert_err(
        Image::open(&meta, &ro()),
        libc::ENOENT,
        &["backing file", "base.raw"],
    );
    // Without the backing file: fine, unallocated clusters read zeros.
    let o = OpenOptions {
        no_backing: true,
        ..OpenOptions::default()
    };
    let img = Image::open(&meta, &o).unwrap();
    assert!(read_all(&img).iter().all(|&b| b == 0));
}

#[test]
fn open_malformed_headers() {
    let d = tmp();
    let meta = valid(d.path());
    let good = std::fs::read(&meta).unwrap();
    let cases: Vec<(&str, Vec<u8>, i32, &[&str])> = vec![
        (
            "bad magic",
            {
                let mut b = good.clone();
                b[0] = b'X';
                b
            },
            libc::EINVAL,
            &["magic"],
        ),
        ("raw bytes", vec![0u8; 4096], libc::EINVAL, &["magic"]),
        (
            "version 2",
            {
                let mut b = good.clone();
                b[11] = 2;
                b
            },
            libc::ENOTSUP,
            &["version 2"],
        ),
        (
            "short header",
            good[..100].to_vec(),
            libc::EINVAL,
            &["truncated"],
        ),
        (
            "header cut in the magic",
            good[..5].to_vec(),
            libc::EINVAL,
            &[],
        ),
        ("empty file", Vec::new(), libc::EINVAL, &[]),
        (
            "unterminated name",
            {
                let mut b = good.clone();
                b[BACKING_FIELD..IMAGE_FIELD].fill(b'x');
                b
            },
            libc::EINVAL,
            &["backing file"],
        ),
    ];
    for (what, bytes, errno, words) in cases {
        std::fs::write(&meta, &bytes).unwrap();
        let Err(err) = Image::open(&meta, &ro()) else {
            panic!("{what}: opened");
        };
        let msg = err.to_string();
        assert_eq!(err.errno(), errno, "{what}: {msg}");
        for w in words.iter().chain(&["disk.add-cow"]) {
            assert!(msg.contains(w), "{what}: {msg:?} does not mention {w:?}");
        }
    }
}

#[test]
fn open_refuses_an_image_name_that_is_the_add_cow_file() {
    let d = tmp();
    let meta = valid(d.path());
    for name in [
        b"disk.add-cow".to_vec(),
        b"./disk.add-cow".to_vec(),
        meta.as_os_str().as_encoded_bytes().to_vec(),
    ] {
        let mut h = header_bytes(&name, b"base.raw");
        h.push(0);
        std::fs::write(&meta, &h).unwrap();
        assert_err(
            Image::open(&meta, &rw()),
            libc::EINVAL,
            &["image file", "add-cow file"],
        );
        assert_eq!(
            std::fs::read(&meta).unwrap(),
            h,
            "the .add-cow file was changed"
        );
    }
}

#[test]
fn open_refuses_a_backing_name_that_is_the_image_file() {
    let d = tmp();
    let meta = valid(d.path());
    for backing in [&b"disk.raw"[..], b"./disk.raw"] {
        let mut h = header_bytes(b"disk.raw", backing);
        h.push(0);
        std::fs::write(&meta, &h).unwrap();
        assert_err(
            Image::open(&meta, &ro()),
            libc::EINVAL,
            &["backing file", "image file"],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A backing file shorter than the image, with an odd length (qemu-iotests 028).

#[test]
fn short_backing_file_with_an_odd_length() {
    let d = tmp();
    let backing_len = 3 * CS + 12345;
    write_base(&d.path().join("base.raw"), backing_len);
    let meta = d.path().join("disk.add-cow");
    let size = 6 * CS;
    create(&meta, &opts("disk.raw", Some("base.raw"), size)).unwrap();
    let mut want: Vec<u8> = (0..size)
        .map(|i| if i < backing_len { base_byte(i) } else { 0 })
        .collect();
    let img = Image::open(&meta, &rw()).unwrap();
    assert_eq!(read_all(&img), want, "reads past the backing end are zeros");
    // Sub-cluster writes: across the backing end, right at it, in a cluster past it.
    let writes: [(u64, &[u8]); 4] = [
        (backing_len - 100, &[0xC1; 512]),
        (backing_len, &[0xC2]),
        (4 * CS + 777, &[0xC3; 1000]),
        (CS + 3, &[0xC4; 10]),
    ];
    for (at, data) in writes {
        img.write_at(at, data).unwrap();
        want[at as usize..at as usize + data.len()].copy_from_slice(data);
    }
    assert_eq!(read_all(&img), want);
    assert_eq!(clusters(&img), [false, true, false, true, true, false]);
    img.close().unwrap();
    // The image file holds the completed clusters: backing data up to its end, then zeros.
    let file = std::fs::read(d.path().join("disk.raw")).unwrap();
    for c in [1usize, 3, 4] {
        let r = c * CS as usize..(c + 1) * CS as usize;
        assert_eq!(&file[r.clone()], &want[r], "image file cluster {c}");
    }
    let img = Image::open(&meta, &ro()).unwrap();
    assert_eq!(read_all(&img), want);
    assert_eq!(clusters(&img), [false, true, false, true, true, false]);
}

// ---------------------------------------------------------------------------------------------
// Chains.

/// base.raw (4 clusters + 77 bytes) <- middle.add-cow (6 clusters; clusters 1 and 5 written)
/// <- top.add-cow (created with size 0: as long as middle). Returns the middle's content.
fn chain(d: &Path) -> Vec<u8> {
    let base_len = 4 * CS + 77;
    write_base(&d.join("base.raw"), base_len);
    create(
        d.join("middle.add-cow"),
        &opts("middle.raw", Some("base.raw"), 6 * CS),
    )
    .unwrap();
    let mut want: Vec<u8> = (0..6 * CS)
        .map(|i| if i < base_len { base_byte(i) } else { 0 })
        .collect();
    let middle = Image::open(d.join("middle.add-cow"), &rw()).unwrap();
    for (at, byte, n) in [(CS + 100, 0xD1u8, 300u64), (5 * CS + 9, 0xD5, 70_000 - 9)] {
        let n = n.min(6 * CS - at);
        middle.write_at(at, &vec![byte; n as usize]).unwrap();
        want[at as usize..(at + n) as usize].fill(byte);
    }
    middle.close().unwrap();
    let o = CreateOptions {
        image_file: "top.raw".into(),
        backing_file: Some("middle.add-cow".into()),
        backing_format: BackingFormat::AddCow,
        size: 0,
        ..CreateOptions::default()
    };
    create(d.join("top.add-cow"), &o).unwrap();
    want
}

#[test]
fn chain_reads_fall_through_and_writes_copy_from_the_chain() {
    let d = tmp();
    let middle_want = chain(d.path());
    assert_eq!(len(&d.path().join("top.raw")), 6 * CS, "size from middle");
    let middle_raw = std::fs::read(d.path().join("middle.raw")).unwrap();
    let middle_meta = std::fs::read(d.path().join("middle.add-cow")).unwrap();
    let top = Image::open(d.path().join("top.add-cow"), &chained(true)).unwrap();
    assert_eq!(read_all(&top), middle_want);
    assert_eq!(clusters(&top), [false; 6]);
    // Sub-cluster writes to top: cluster 1 completes from middle's data, 2 from base, 4 from
    // base then zeros past base's end, 5 from middle's data past base's end.
    let mut want = middle_want.clone();
    for at in [CS + 50, 2 * CS + 4000, 4 * CS + 10, 5 * CS + 1] {
        top.write_at(at, &[0xE0; 20]).unwrap();
        want[at as usize..at as usize + 20].fill(0xE0);
    }
    assert_eq!(read_all(&top), want);
    assert_eq!(clusters(&top), [false, true, true, false, true, true]);
    top.close().unwrap();
    let file = std::fs::read(d.path().join("top.raw")).unwrap();
    for c in [1usize, 2, 4, 5] {
        let r = c * CS as usize..(c + 1) * CS as usize;
        assert_eq!(&file[r.clone()], &want[r], "top image file cluster {c}");
    }
    // The middle image is untouched.
    assert_eq!(
        std::fs::read(d.path().join("middle.raw")).unwrap(),
        middle_raw
    );
    assert_eq!(
        std::fs::read(d.path().join("middle.add-cow")).unwrap(),
        middle_meta
    );
    let top = Image::open(d.path().join("top.add-cow"), &chained(false)).unwrap();
    assert_eq!(read_all(&top), want);
    // no_backing: unallocated clusters read zeros.
    let o = OpenOptions {
        no_backing: true,
        ..chained(false)
    };
    let top = Image::open(d.path().join("top.add-cow"), &o).unwrap();
    let got = read_all(&top);
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let allocated = [1, 2, 4, 5].contains(&(i as u64 / CS));
        assert_eq!(g, if allocated { w } else { 0 }, "no_backing byte {i}");
    }
}

#[test]
fn chain_top_longer_than_its_backing_image_reads_zeros_past_it() {
    let d = tmp();
    let middle_want = chain(d.path());
    let o = CreateOptions {
        image_file: "big.raw".into(),
        backing_file: Some("middle.add-cow".into()),
        backing_format: BackingFormat::AddCow,
        size: 8 * CS + 5,
        ..CreateOptions::default()
    };
    create(d.path().join("big.add-cow"), &o).unwrap();
    let big = Image::open(d.path().join("big.add-cow"), &chained(true)).unwrap();
    let mut want = middle_want;
    want.resize((8 * CS + 5) as usize, 0);
    assert_eq!(read_all(&big), want);
    // A write straddling the middle's end completes from it, then zeros.
    big.write_at(6 * CS - 3, &[0xF0; 6]).unwrap();
    want[(6 * CS - 3) as usize..(6 * CS + 3) as usize].fill(0xF0);
    assert_eq!(read_all(&big), want);
    assert_eq!(
        clusters(&big),
        [false, false, false, false, false, true, true, false, false]
    );
}

#[test]
fn backing_chain_loop_is_refused() {
    let d = tmp();
    let add_cow = |name: &str, image: &str, backing: &str| {
        let o = CreateOptions {
            image_file: image.into(),
            backing_file: Some(backing.into()),
            backing_format: BackingFormat::AddCow,
            size: CS,
            ..CreateOptions::default()
        };
        create(d.path().join(name), &o).unwrap();
    };
    add_cow("a.add-cow", "a.raw", "b.add-cow");
    add_cow("b.add-cow", "b.raw", "a.add-cow");
    for (name, o) in [("a.add-cow", chained(false)), ("b.add-cow", chained(true))] {
        assert_err(
            Image::open(d.path().join(name), &o),
            libc::EINVAL,
            &["loop"],
        );
    }
    // A longer loop: c -> d -> e -> c.
    add_cow("c.add-cow", "c.raw", "d.add-cow");
    add_cow("d.add-cow", "d.raw", "e.add-cow");
    add_cow("e.add-cow", "e.raw", "c.add-cow");
    assert_err(
        Image::open(d.path().join("c.add-cow"), &chained(false)),
        libc::EINVAL,
        &["loop"],
    );
    // An image that is its own backing file (a header create would refuse to write).
    let mut h = header_bytes(b"s.raw", b"s.add-cow");
    h.push(0);
    std::fs::write(d.path().join("s.add-cow"), &h).unwrap();
    std::fs::write(d.path().join("s.raw"), vec![0u8; CS as usize]).unwrap();
    assert_err(
        Image::open(d.path().join("s.add-cow"), &chained(false)),
        libc::EINVAL,
        &["loop"],
    );
}

#[test]
fn backing_chain_depth_is_limited_to_16_images() {
    let d = tmp();
    write_base(&d.path().join("base.raw"), 2 * CS);
    // img0 over base.raw, img{k} over img{k-1}: img{k} heads a chain of k + 1 add-cow images.
    let make = |k: usize, format: BackingFormat| {
        let backing = match k {
            0 => "base.raw".to_string(),
            _ => format!("img{}.add-cow", k - 1),
        };
        let o = CreateOptions {
            image_file: format!("img{k}.raw").into(),
            backing_file: Some(backing.into()),
            backing_format: format,
            size: 2 * CS,
            ..CreateOptions::default()
        };
        create(d.path().join(format!("img{k}.add-cow")), &o)
    };
    make(0, BackingFormat::Raw).unwrap();
    for k in 1..16 {
        make(k, BackingFormat::AddCow).unwrap();
    }
    // Seventeen: create refuses what open would refuse.
    assert_err(make(16, BackingFormat::AddCow), libc::EINVAL, &["16"]);
    // As raw, the backing file is just bytes: no chain, no limit.
    make(16, BackingFormat::Raw).unwrap();
    // Give the chain some content: img3 has cluster 1.
    {
        let img3 = Image::open(d.path().join("img3.add-cow"), &chained(true)).unwrap();
        img3.write_at(CS + 1, &[0x77; 3]).unwrap();
        img3.close().unwrap();
    }
    let mut want = base_bytes(2 * CS);
    want[(CS + 1) as usize..(CS + 4) as usize].fill(0x77);
    // Sixteen images: fine, and reads fall through all of them.
    let top = Image::open(d.path().join("img15.add-cow"), &chained(false)).unwrap();
    assert_eq!(read_all(&top), want);
    drop(top);
    // Seventeen: refused at open too.
    assert_err(
        Image::open(d.path().join("img16.add-cow"), &chained(false)),
        libc::EINVAL,
        &["16"],
    );
    Image::open(d.path().join("img16.add-cow"), &ro()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// no_backing, writethrough, writeback.

#[test]
fn no_backing_reads_zeros_for_unallocated_clusters() {
    let d = tmp();
    let meta = valid(d.path());
    {
        let img = Image::open(&meta, &rw()).unwrap();
        img.write_at(CS + 10, &[0x42; 10]).unwrap();
        img.close().unwrap();
    }
    let o = OpenOptions {
        no_backing: true,
        ..OpenOptions::default()
    };
    let img = Image::open(&meta, &o).unwrap();
    assert!(img.backing().is_none());
    let got = read_all(&img);
    assert!(got[..CS as usize].iter().all(|&b| b == 0));
    let mut cluster1 = base_bytes(2 * CS)[CS as usize..].to_vec();
    cluster1[10..20].fill(0x42);
    assert_eq!(&got[CS as usize..], &cluster1[..]);
}

/// A fresh read-only handle's view: (allocation of every cluster, content). Force share: the
/// image is open read-write elsewhere in this process.
fn fresh_view(meta: &Path) -> (Vec<bool>, Vec<u8>) {
    let o = OpenOptions {
        force_share: true,
        ..ro()
    };
    let img = Image::open(meta, &o).unwrap();
    (clusters(&img), read_all(&img))
}

#[test]
fn writethrough_writes_are_visible_to_a_fresh_open_at_once() {
    let d = tmp();
    let meta = valid(d.path());
    let o = OpenOptions {
        writable: true,
        writethrough: true,
        ..OpenOptions::default()
    };
    let img = Image::open(&meta, &o).unwrap();
    img.write_at(CS + 7, &[0x99; 9]).unwrap();
    let mut want = base_bytes(2 * CS);
    want[(CS + 7) as usize..(CS + 16) as usize].fill(0x99);
    assert_eq!(fresh_view(&meta), (vec![false, true], want.clone()));
    // In place, then allocating cluster 0 too.
    img.write_at(CS + 8, &[0x98]).unwrap();
    img.write_at(3, &[0x97]).unwrap();
    want[(CS + 8) as usize] = 0x98;
    want[3] = 0x97;
    assert_eq!(fresh_view(&meta), (vec![true, true], want.clone()));
    // Truncate too: the new size and the new bits.
    img.truncate(3 * CS + 1).unwrap();
    assert_eq!(len(&meta), HEADER + 1);
    want.resize((3 * CS + 1) as usize, 0);
    // The backing file (2 clusters) is not longer than the old size: the new area stays
    // unallocated and reads zeros.
    assert_eq!(
        fresh_view(&meta),
        (vec![true, true, false, false], want.clone())
    );
    drop(img);
}

#[test]
fn writeback_writes_are_durable_at_flush_and_close() {
    let d = tmp();
    let meta = valid(d.path());
    let base = base_bytes(2 * CS);
    let img = Image::open(&meta, &rw()).unwrap();
    img.write_at(CS + 7, &[0x99; 9]).unwrap();
    let mut want = base.clone();
    want[(CS + 7) as usize..(CS + 16) as usize].fill(0x99);
    // Writeback: until a flush, the bitmap on disk does not have the bit (what makes the
    // writethrough test above meaningful).
    assert_eq!(fresh_view(&meta), (vec![false, false], base.clone()));
    img.flush().unwrap();
    assert_eq!(fresh_view(&meta), (vec![false, true], want.clone()));
    img.write_at(0, &[0x11]).unwrap();
    want[0] = 0x11;
    img.close().unwrap();
    assert_eq!(fresh_view(&meta), (vec![true, true], want));
}

// ---------------------------------------------------------------------------------------------
// Truncate on files.

#[test]
fn truncate_changes_both_file_lengths() {
    let d = tmp();
    write_base(&d.path().join("base.raw"), 40 * CS);
    let meta = d.path().join("disk.add-cow");
    let image = d.path().join("disk.raw");
    create(&meta, &opts("disk.raw", Some("base.raw"), 3 * CS)).unwrap();
    let img = Image::open(&meta, &rw()).unwrap();
    img.write_at(CS + 1, &[5; 5]).unwrap();
    let steps = [20 * CS + 1, CS - 7, 0, 9 * CS, 9 * CS, 30 * CS + 3, 8 * CS];
    for size in steps {
        img.truncate(size).unwrap();
        assert_eq!(img.size(), size);
        assert_eq!(len(&image), size, "image file after truncate({size})");
        assert_eq!(
            len(&meta),
            HEADER + bitmap_len(size),
            ".add-cow file after truncate({size})"
        );
    }
    img.close().unwrap();
    assert_eq!(len(&image), 8 * CS);
    assert_eq!(len(&meta), HEADER + 1);
    // 0 -> 9 clusters over a longer backing file: allocated zeros; 9 -> 30 + 3 bytes -> 8:
    // still allocated zeros.
    let img = Image::open(&meta, &ro()).unwrap();
    assert_eq!(clusters(&img), [true; 8]);
    assert!(read_all(&img).iter().all(|&b| b == 0));
}

#[test]
fn truncate_grow_over_a_longer_backing_file_completes_the_partial_cluster() {
    let d = tmp();
    write_base(&d.path().join("base.raw"), 4 * CS);
    let meta = d.path().join("disk.add-cow");
    create(&meta, &opts("disk.raw", Some("base.raw"), CS + 1000)).unwrap();
    {
        let img = Image::open(&meta, &rw()).unwrap();
        img.truncate(3 * CS).unwrap();
        img.close().unwrap();
    }
    let img = Image::open(&meta, &ro()).unwrap();
    let want: Vec<u8> = (0..3 * CS)
        .map(|i| if i < CS + 1000 { base_byte(i) } else { 0 })
        .collect();
    assert_eq!(read_all(&img), want, "no backing data shows through");
    assert_eq!(clusters(&img), [false, true, true]);
    let file = std::fs::read(d.path().join("disk.raw")).unwrap();
    assert_eq!(&file[CS as usize..], &want[CS as usize..]);
}

#[test]
fn read_only_and_out_of_range_requests() {
    let d = tmp();
    let meta = valid(d.path());
    let img = Image::open(&meta, &ro()).unwrap();
    assert!(img.is_read_only());
    assert_err(img.write_at(0, &[1]), libc::EPERM, &["read-only"]);
    assert_err(img.truncate(CS), libc::EPERM, &["read-only"]);
    img.flush().unwrap();
    drop(img);
    let img = Image::open(&meta, &rw()).unwrap();
    assert_err(img.read_at(2 * CS - 1, &mut [0; 2]), libc::EINVAL, &[]);
    assert_err(img.write_at(2 * CS, &[1]), libc::EINVAL, &[]);
    assert_err(img.write_at(u64::MAX - 1, &[1; 4]), libc::EINVAL, &[]);
    assert_eq!(img.is_allocated(2 * CS, 1).unwrap(), (false, 0));
    img.close().unwrap();
    // Nothing was written.
    assert_eq!(fresh_view(&meta), (vec![false, false], base_bytes(2 * CS)));
}
