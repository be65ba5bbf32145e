//! The end of an image's life, on real files: the allocation query, detach (the raw image file
//! equals what the library read, checked with `qemu-img compare`), and commit against QEMU's
//! `qemu-img commit` of a qcow2 overlay with an external data file over the same base (the
//! backing files must come out byte-identical).

mod common;
use addcow::{BackingFormat, CreateOptions, Image, OpenOptions};
use common::{assert_err, create_img, qemu, read_all, ro, rw, Rng};
use std::path::PathBuf;

const K64: u64 = 65536;

/// `(offset, len, pattern)` writes: random, some unaligned, some across clusters.
fn writes(rng: &mut Rng, size: u64, cluster: u64, n: usize) -> Vec<(u64, u64, u8)> {
    (0..n)
        .map(|i| {
            let offset = match rng.chance(50) {
                true => rng.below(size / cluster) * cluster,
                false => rng.below(size / 512) * 512,
            };
            let len = (rng.range(1, 3 * cluster / 512) * 512).min(size - offset);
            (offset, len, (i * 37 % 254 + 1) as u8)
        })
        .collect()
}

#[test]
fn allocation_counts_clusters() {
    for (layout, cluster) in [(1, K64), (2, 4096)] {
        let dir = tempfile::tempdir().unwrap();
        let size = 10 * cluster + 512;
        std::fs::write(dir.path().join("base.raw"), vec![7u8; 3 * cluster as usize]).unwrap();
        let meta = create_img(dir.path(), layout, cluster, size, Some("base.raw"));
        let img = Image::open(&meta, &rw()).unwrap();
        let a = img.allocation().unwrap();
        assert_eq!((a.allocated, a.total, a.is_full()), (0, 11, false));
        img.write_at(cluster + 5, b"x").unwrap();
        img.write_at(3 * cluster - 1, b"yz").unwrap();
        img.write_at(size - 1, b"e").unwrap();
        let a = img.allocation().unwrap();
        assert_eq!((a.allocated, a.total), (4, 11), "layout {layout}");
        assert!(!img.is_fully_allocated().unwrap());
        img.write_at(0, &vec![1u8; size as usize]).unwrap();
        assert!(img.is_fully_allocated().unwrap());
        assert!(img.allocation().unwrap().is_full());
        img.close().unwrap();
        let img = Image::open(&meta, &ro()).unwrap();
        assert_eq!(img.allocation().unwrap().allocated, 11);
    }
}

#[test]
fn detach_leaves_the_disk_the_guest_saw() {
    for (layout, cluster, remove) in [(1, K64, true), (2, 4096, true), (2, K64, false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(u64::from(layout) * 1000 + cluster);
        let size = 24 * cluster + 1536;
        let base = dir.path().join("base.raw");
        std::fs::write(&base, rng.noise(30 * cluster + 77)).unwrap();
        let meta = create_img(dir.path(), layout, cluster, size, Some("base.raw"));
        let img = Image::open(&meta, &rw()).unwrap();
        for (offset, len, p) in writes(&mut rng, size, cluster, 30) {
            img.write_at(offset, &vec![p; len as usize]).unwrap();
        }
        img.flush().unwrap();
        // Not every cluster is written yet: detach refuses and leaves the files alone.
        drop(img);
        assert_err(addcow::detach(&meta, true), libc::EBUSY, &["not allocated"]);
        assert!(meta.exists());
        // Hydrate the rest.
        let img = Image::open(&meta, &rw()).unwrap();
        let unallocated = {
            let a = img.allocation().unwrap();
            a.total - a.allocated
        };
        assert_eq!(img.hydrate(0, size, 0).unwrap(), unallocated);
        assert!(img.is_fully_allocated().unwrap());
        let seen = read_all(&img);
        img.close().unwrap();
        // The backing file is neither needed nor opened.
        std::fs::remove_file(&base).unwrap();
        addcow::detach(&meta, remove).unwrap();
        assert_eq!(meta.exists(), !remove, "layout {layout}");
        let expected = dir.path().join("expected.raw");
        std::fs::write(&expected, &seen).unwrap();
        qemu::run(
            qemu::command("qemu-img", dir.path())
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(dir.path().join("img.raw"))
                .arg(&expected),
        );
    }
}

#[test]
fn detach_refuses_an_image_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let meta = create_img(dir.path(), 2, 4096, 4096, None);
    let img = Image::open(&meta, &rw()).unwrap();
    img.write_at(0, &[1u8; 4096]).unwrap();
    assert_err(addcow::detach(&meta, true), libc::EBUSY, &["in use"]);
    img.close().unwrap();
    addcow::detach(&meta, true).unwrap();
    assert!(!meta.exists());
}

/// One commit oracle run: the same writes (inside the first `span` bytes) through the library
/// and through qemu-io on a qcow2 overlay with a data file, then `addcow::commit` and
/// `qemu-img commit`: the two backing files must be byte-identical, and our image must read the
/// same before and after.
fn commit_oracle(
    (layout, cluster): (u32, u64),
    (base_len, size, span): (u64, u64, u64),
    empty: bool,
    seed: u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = Rng::new(seed);
    let base = rng.noise(base_len);
    std::fs::write(d.join("base.raw"), &base).unwrap();
    std::fs::write(d.join("qbase.raw"), &base).unwrap();
    let meta = create_img(d, layout, cluster, size, Some("base.raw"));
    qemu::create_overlay(d, "qbase.raw", cluster, size);
    let ops = writes(&mut rng, span, cluster, 25);
    let img = Image::open(&meta, &rw()).unwrap();
    let mut io = qemu::command("qemu-io", d);
    io.args(["-f", "qcow2"]);
    for &(offset, len, p) in &ops {
        img.write_at(offset, &vec![p; len as usize]).unwrap();
        io.arg("-c").arg(format!("write -P {p} {offset} {len}"));
    }
    qemu::run(io.arg("overlay.qcow2"));
    let before = read_all(&img);
    img.close().unwrap();

    addcow::commit(&meta, &OpenOptions::default(), empty).unwrap();
    let mut qcommit = qemu::command("qemu-img", d);
    qcommit.args(["commit", "-q", "-f", "qcow2"]);
    if !empty {
        qcommit.arg("-d");
    }
    qemu::run(qcommit.arg("overlay.qcow2"));
    let ours = std::fs::read(d.join("base.raw")).unwrap();
    let theirs = std::fs::read(d.join("qbase.raw")).unwrap();
    let what = format!("layout {layout}, cluster {cluster}, base {base_len}, size {size}");
    assert_eq!(ours.len(), theirs.len(), "{what}: backing file lengths");
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!(
            "{what}: backing files differ at {i}: {} vs {}",
            ours[i], theirs[i]
        );
    }
    let img = Image::open(&meta, &ro()).unwrap();
    assert!(
        read_all(&img) == before,
        "{what}: the image reads differently"
    );
    let allocated = img.allocation().unwrap().allocated;
    match empty {
        true => assert_eq!(allocated, 0, "{what}: emptied"),
        false => assert!(allocated > 0, "{what}: kept"),
    }
    if empty {
        // The image file's space went back (tmpfs and ext4 punch holes).
        let image_file = std::fs::File::open(d.join("img.raw")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            image_file.metadata().unwrap().blocks(),
            0,
            "{what}: punched"
        );
    }
}

#[test]
fn commit_matches_qemu_img_commit() {
    // Backing longer than the image, shorter (QEMU grows it), and exactly as long.
    commit_oracle((1, K64), (40 * K64 + 333, 32 * K64, 32 * K64), false, 1);
    commit_oracle(
        (1, K64),
        (3 * K64 + 777, 8 * K64 + 4096, 8 * K64 + 4096),
        true,
        2,
    );
    // Nothing written near the end: the backing file still grows to the image's size.
    commit_oracle((1, K64), (3 * K64 + 777, 8 * K64 + 4096, 2 * K64), false, 5);
    commit_oracle(
        (2, 4096),
        (100 * 4096 + 5, 64 * 4096 + 512, 64 * 4096 + 512),
        true,
        3,
    );
    commit_oracle((2, K64), (16 * K64, 16 * K64, 16 * K64), false, 4);
}

#[test]
fn commit_into_an_add_cow_backing_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = Rng::new(9);
    std::fs::write(d.join("golden.raw"), rng.noise(8 * 4096)).unwrap();
    let mid = d.join("mid.add-cow");
    addcow::create(
        &mid,
        &CreateOptions {
            image_file: PathBuf::from("mid.raw"),
            backing_file: Some(PathBuf::from("golden.raw")),
            layout: 2,
            cluster_size: 4096,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let top = d.join("top.add-cow");
    addcow::create(
        &top,
        &CreateOptions {
            image_file: PathBuf::from("top.raw"),
            backing_file: Some(PathBuf::from("mid.add-cow")),
            backing_format: BackingFormat::AddCow,
            layout: 2,
            cluster_size: 4096,
            size: 8 * 4096,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let img = Image::open(&top, &rw()).unwrap();
    img.write_at(4096 + 100, &[0xAB; 5000]).unwrap();
    let before = read_all(&img);
    // Opened the usual way, the backing image is read-only: commit says so.
    let mut img = img;
    assert_err(img.commit(false), libc::EPERM, &["read-only"]);
    img.close().unwrap();
    addcow::commit(&top, &OpenOptions::default(), true).unwrap();
    let mid_img = Image::open(&mid, &ro()).unwrap();
    assert_eq!(read_all(&mid_img), before);
    // Only the two clusters written went into the middle image.
    assert_eq!(mid_img.allocation().unwrap().allocated, 2);
    let img = Image::open(&top, &ro()).unwrap();
    assert_eq!(read_all(&img), before);
    assert_eq!(img.allocation().unwrap().allocated, 0);
}

#[test]
fn commit_needs_a_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let meta = create_img(dir.path(), 1, K64, K64, None);
    assert_err(
        addcow::commit(&meta, &OpenOptions::default(), false),
        libc::EINVAL,
        &["no backing file"],
    );
}

#[test]
fn commit_an_all_allocated_image() {
    // The all-allocated bit means the backing file is not opened at open: commit opens it; and
    // the bitmap is not read: commit copies every cluster.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = Rng::new(11);
    std::fs::write(d.join("base.raw"), rng.noise(5 * 4096)).unwrap();
    let meta = create_img(d, 2, 4096, 6 * 4096 + 512, Some("base.raw"));
    let content = rng.noise(6 * 4096 + 512);
    let img = Image::open(&meta, &rw()).unwrap();
    img.write_at(0, &content).unwrap();
    img.close().unwrap();
    let header = addcow::read_header(
        &addcow::storage::MemStorage::from_bytes(std::fs::read(&meta).unwrap()),
        "meta",
    )
    .unwrap();
    assert!(header.all_allocated());
    // The bit wins over the bitmap, which another writer may have left all zeros.
    let mut bytes = std::fs::read(&meta).unwrap();
    bytes[4096..].fill(0);
    std::fs::write(&meta, bytes).unwrap();
    addcow::commit(&meta, &OpenOptions::default(), true).unwrap();
    assert_eq!(std::fs::read(d.join("base.raw")).unwrap(), content);
    let img = Image::open(&meta, &ro()).unwrap();
    assert_eq!(read_all(&img), content);
    assert_eq!(img.allocation().unwrap().allocated, 0);
}
