//! Layout 2 end to end over files: create with every cluster size, I/O and allocation as in
//! layout 1, the file as the specification lays it out, and the "all allocated" bit (set at
//! flush, the backing file then not needed, cleared durably before a grow leaves clusters
//! unallocated).

mod common;

use addcow::layout::Header;
use addcow::{create, BackingFormat, CreateOptions, Image};
use common::{assert_err, ro, rw};
use std::path::Path;

fn make(dir: &Path, cluster_size: u64, size: u64, backing_len: u64) -> std::path::PathBuf {
    std::fs::write(dir.join("base.raw"), vec![0xBA; backing_len as usize]).unwrap();
    let meta = dir.join("disk.add-cow");
    let o = CreateOptions {
        image_file: "disk.raw".into(),
        backing_file: Some("base.raw".into()),
        size,
        layout: 2,
        cluster_size,
        ..CreateOptions::default()
    };
    create(&meta, &o).unwrap();
    meta
}

#[test]
fn every_cluster_size_reads_writes_and_lays_out_as_specified() {
    for bits in 12..=21u32 {
        let cs = 1u64 << bits;
        let d = tempfile::tempdir().unwrap();
        let size = 5 * cs + 100;
        let meta = make(d.path(), cs, size, 2 * cs + 7);
        let bytes = std::fs::read(&meta).unwrap();
        let header_size = cs.max(4096);
        let bitmap = 6u64.div_ceil(8).next_multiple_of(cs);
        assert_eq!(
            bytes.len() as u64,
            header_size + bitmap,
            "cluster size {cs}"
        );
        assert_eq!(&bytes[..4], b"ACOW");
        let h = Header::parse(&bytes[..header_size as usize]).unwrap();
        assert_eq!((h.layout_number(), h.cluster_bits()), (2, bits));
        assert_eq!(h.backing_format, Some(BackingFormat::Raw));
        let img = Image::open(&meta, &rw()).unwrap();
        assert_eq!(img.cluster_size(), cs);
        img.write_at(cs + 3, b"hello").unwrap();
        let mut buf = vec![0u8; (3 * cs) as usize];
        img.read_at(0, &mut buf).unwrap();
        for (i, &b) in buf.iter().enumerate() {
            let i = i as u64;
            let want = match i {
                _ if (cs + 3..cs + 8).contains(&i) => b"hello"[(i - cs - 3) as usize],
                _ if i < 2 * cs + 7 => 0xBA,
                _ => 0,
            };
            assert_eq!(b, want, "byte {i}, cluster size {cs}");
        }
        assert_eq!(img.is_allocated(0, size).unwrap(), (false, cs));
        assert_eq!(img.is_allocated(cs, size).unwrap(), (true, cs));
        img.close().unwrap();
        let bytes = std::fs::read(&meta).unwrap();
        assert_eq!(
            bytes[header_size as usize], 0b10,
            "bit 1 at header_size, LSB first"
        );
    }
}

#[test]
fn truncate_keeps_the_bitmap_padded_to_whole_clusters() {
    let d = tempfile::tempdir().unwrap();
    let cs = 4096;
    let meta = make(d.path(), cs, 10 * cs, 0);
    let img = Image::open(&meta, &rw()).unwrap();
    for (size, bitmap) in [
        (cs * 8 * 4096 + 1, 8192),
        (3 * cs, 4096),
        (0, 0),
        (cs, 4096),
    ] {
        img.truncate(size).unwrap();
        assert_eq!(
            std::fs::metadata(&meta).unwrap().len(),
            4096 + bitmap,
            "after truncate to {size}"
        );
    }
}

#[test]
fn the_all_allocated_bit_is_set_at_flush_and_the_backing_file_is_then_not_needed() {
    let d = tempfile::tempdir().unwrap();
    let cs = 65536;
    let meta = make(d.path(), cs, 3 * cs, 3 * cs);
    let img = Image::open(&meta, &rw()).unwrap();
    img.write_at(0, &vec![1u8; (2 * cs) as usize]).unwrap();
    img.flush().unwrap();
    let bit = |m: &Path| {
        Header::parse(&std::fs::read(m).unwrap()[..65536])
            .unwrap()
            .all_allocated()
    };
    assert!(!bit(&meta), "cluster 2 is still unallocated");
    img.write_at(2 * cs + 1, &[2]).unwrap();
    img.close().unwrap();
    assert!(bit(&meta), "set at close once every cluster is allocated");
    // The backing file can go: nothing reads it any more.
    std::fs::remove_file(d.path().join("base.raw")).unwrap();
    let img = Image::open(&meta, &rw()).unwrap();
    assert!(img.backing().is_none());
    assert_eq!(img.is_allocated(0, 3 * cs).unwrap(), (true, 3 * cs));
    let mut buf = [0u8; 2];
    img.read_at(2 * cs, &mut buf).unwrap();
    assert_eq!(buf, [0xBA, 2], "the copied head of cluster 2 and the write");
    img.write_at(5, &[9]).unwrap();
    // A grow needs the backing file's length: it is gone.
    assert_err(img.truncate(4 * cs), libc::ENOENT, &["base.raw"]);
    assert_eq!(img.size(), 3 * cs);
    drop(img);
    assert!(bit(&meta), "a failed grow leaves the bit");
}

#[test]
fn a_grow_that_leaves_clusters_unallocated_clears_the_bit_first() {
    let d = tempfile::tempdir().unwrap();
    let cs = 4096;
    let meta = make(d.path(), cs, 2 * cs, cs);
    let img = Image::open(&meta, &rw()).unwrap();
    img.write_at(0, &vec![7u8; (2 * cs) as usize]).unwrap();
    img.close().unwrap();
    let bit = |m: &Path| {
        Header::parse(&std::fs::read(m).unwrap()[..4096])
            .unwrap()
            .all_allocated()
    };
    assert!(bit(&meta));
    let img = Image::open(&meta, &rw()).unwrap();
    // The backing file (1 cluster) is shorter than the image: new clusters stay unallocated.
    img.truncate(4 * cs).unwrap();
    assert!(!bit(&meta), "cleared, durably, by the grow");
    assert_eq!(img.is_allocated(0, 4 * cs).unwrap(), (true, 2 * cs));
    assert_eq!(img.is_allocated(2 * cs, 4 * cs).unwrap(), (false, 2 * cs));
    let mut buf = vec![1u8; (2 * cs) as usize];
    img.read_at(2 * cs, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    drop(img);
    // Reopened read-only: the backing file is opened again, the bit is gone.
    let img = Image::open(&meta, &ro()).unwrap();
    assert!(img.backing().is_some());
}

#[test]
fn layout_1_refuses_other_cluster_sizes_and_unknown_layouts_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut o = CreateOptions {
        image_file: "x.raw".into(),
        size: 65536,
        cluster_size: 4096,
        ..CreateOptions::default()
    };
    assert_err(
        create(d.path().join("x.add-cow"), &o),
        libc::EINVAL,
        &["layout 1"],
    );
    o.layout = 3;
    assert_err(
        create(d.path().join("x.add-cow"), &o),
        libc::ENOTSUP,
        &["layout 3"],
    );
    o.layout = 2;
    o.cluster_size = 3000;
    assert_err(
        create(d.path().join("x.add-cow"), &o),
        libc::EINVAL,
        &["power of two"],
    );
    o.cluster_size = 4 << 20;
    assert_err(
        create(d.path().join("x.add-cow"), &o),
        libc::EINVAL,
        &["cluster_bits 22"],
    );
    assert!(!d.path().join("x.add-cow").exists());
}

#[test]
fn chains_mix_layouts_and_a_layout_2_header_says_its_backing_format() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("golden.raw"), vec![0x60; 3 * 65536]).unwrap();
    // base: layout 1 over golden.raw; top: layout 2 over base (add-cow, said by its header).
    let base = CreateOptions {
        image_file: "base.raw".into(),
        backing_file: Some("golden.raw".into()),
        size: 3 * 65536,
        ..CreateOptions::default()
    };
    create(d.path().join("base.add-cow"), &base).unwrap();
    let b = Image::open(d.path().join("base.add-cow"), &rw()).unwrap();
    b.write_at(65536, &[0xB1; 10]).unwrap();
    b.close().unwrap();
    let top = CreateOptions {
        image_file: "top.raw".into(),
        backing_file: Some("base.add-cow".into()),
        backing_format: BackingFormat::AddCow,
        size: 4 * 65536,
        layout: 2,
        cluster_size: 4096,
        ..CreateOptions::default()
    };
    create(d.path().join("top.add-cow"), &top).unwrap();
    // No open flag needed: the header says add-cow.
    let t = Image::open(d.path().join("top.add-cow"), &rw()).unwrap();
    let mut buf = [0u8; 4];
    t.read_at(65536 + 8, &mut buf).unwrap();
    assert_eq!(buf, [0xB1, 0xB1, 0x60, 0x60]);
    // Past the base image's end (3 clusters), zeros: an allocating write spanning several
    // clusters there copies zeros (a bug once: a zero-length read past the lower image's end).
    t.write_at(3 * 65536 - 100, &vec![0x77; 20_000]).unwrap();
    let mut buf = vec![0u8; 65536];
    t.read_at(3 * 65536 - 4096, &mut buf).unwrap();
    assert!(buf[..4096 - 100].iter().all(|&b| b == 0x60));
    assert!(buf[4096 - 100..4096 - 100 + 20_000]
        .iter()
        .all(|&b| b == 0x77));
    assert!(buf[4096 - 100 + 20_000..].iter().all(|&b| b == 0));
}
