//! Write-zeroes, discard and block status over real files (holes punched for real) and over a
//! byte source that cannot punch (the fallback writes zeros), with racing guest writes.

mod common;

use addcow::storage::{MemStorage, Storage};
use addcow::{create, Backing, CreateOptions, Image, OpenOptions, Parts, Status, ZeroFlags};
use common::{assert_err, rw};
use std::io::{self, IoSlice, IoSliceMut};
use std::path::Path;

const CS: u64 = 65536;

fn base_byte(i: u64) -> u8 {
    ((i % 251) as u8 ^ ((i / CS) as u8).wrapping_mul(29)) | 1
}

/// An image of `size` bytes over a raw backing file of `backing` bytes, in `dir`.
fn image(dir: &Path, size: u64, backing: u64, opts: &OpenOptions) -> Image {
    let base: Vec<u8> = (0..backing).map(base_byte).collect();
    std::fs::write(dir.join("base.raw"), base).unwrap();
    let c = CreateOptions {
        image_file: "disk.raw".into(),
        backing_file: Some("base.raw".into()),
        size,
        ..CreateOptions::default()
    };
    create(dir.join("disk.add-cow"), &c).unwrap();
    Image::open(dir.join("disk.add-cow"), opts).unwrap()
}

fn read(img: &Image, offset: u64, n: u64) -> Vec<u8> {
    let mut buf = vec![0xA5u8; n as usize];
    img.read_at(offset, &mut buf).unwrap();
    buf
}

fn status(img: &Image, offset: u64) -> (bool, bool, u64) {
    let Status {
        allocated,
        zero,
        len,
    } = img.block_status(offset, u64::MAX).unwrap();
    (allocated, zero, len)
}

/// Bytes of the file that hold data (not holes), by SEEK_DATA/SEEK_HOLE through a storage.
fn data_bytes(path: &Path) -> u64 {
    let s = addcow::storage::FileStorage::new(std::fs::File::open(path).unwrap());
    let (mut at, mut total) = (0, 0);
    while let Some(d) = s.next_data(at).unwrap() {
        let h = s.next_hole(d).unwrap();
        total += h - d;
        at = h;
    }
    total
}

const UNMAP: ZeroFlags = ZeroFlags {
    may_unmap: true,
    no_fallback: false,
};

#[test]
fn write_zeroes_whole_clusters_allocate_without_copy_and_stay_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 8 * CS, 6 * CS + 100, &rw());
    img.write_at(0, &vec![7u8; 2 * CS as usize]).unwrap();
    // Allocated (0..2), unallocated over the backing file (2..6, and 6 holds its end), and
    // unallocated past it (7).
    img.write_zeroes(CS, 7 * CS, UNMAP).unwrap();
    assert_eq!(read(&img, 0, CS), vec![7u8; CS as usize]);
    assert_eq!(read(&img, CS, 7 * CS), vec![0u8; 7 * CS as usize]);
    assert_eq!(status(&img, 0), (true, false, CS));
    assert_eq!(status(&img, CS), (true, true, 6 * CS), "allocated holes");
    assert_eq!(
        status(&img, 7 * CS),
        (false, true, CS),
        "past the backing end: left"
    );
    img.flush().unwrap();
    assert_eq!(
        data_bytes(&dir.path().join("disk.raw")),
        CS,
        "nothing else written"
    );

    // Without MAY_UNMAP the zeroed space stays allocated in the image file (ZERO_RANGE): the
    // two holes get their blocks back (whether SEEK_DATA calls unwritten space data depends on
    // the file system; its block count does not).
    let disk = dir.path().join("disk.raw");
    let before = allocated_bytes(&disk);
    let keep = ZeroFlags::default();
    img.write_zeroes(2 * CS, 2 * CS, keep).unwrap();
    assert_eq!(read(&img, 2 * CS, 2 * CS), vec![0u8; 2 * CS as usize]);
    assert!(status(&img, 2 * CS).0);
    assert!(
        allocated_bytes(&disk) >= before + 2 * CS,
        "ZERO_RANGE keeps (allocates) the space: {before} -> {}",
        allocated_bytes(&disk)
    );
}

/// Bytes of storage the file holds (its block count).
fn allocated_bytes(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(path).unwrap()) * 512
}

#[test]
fn write_zeroes_partial_clusters_copy_on_write_with_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 4 * CS, 4 * CS, &rw());
    img.write_zeroes(100, 2 * CS, UNMAP).unwrap();
    let got = read(&img, 0, 4 * CS);
    for (i, &b) in got.iter().enumerate() {
        let i = i as u64;
        let want = match (100..2 * CS + 100).contains(&i) {
            true => 0,
            false => base_byte(i),
        };
        assert_eq!(b, want, "byte {i}");
    }
    assert_eq!(img.is_allocated(0, 4 * CS).unwrap(), (true, 3 * CS));
    // One byte inside one cluster.
    img.write_zeroes(3 * CS + 5, 1, UNMAP).unwrap();
    assert_eq!(
        read(&img, 3 * CS + 4, 3),
        [base_byte(3 * CS + 4), 0, base_byte(3 * CS + 6)]
    );
}

#[test]
fn no_fallback_refuses_partial_clusters_before_changing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 4 * CS, 2 * CS, &rw());
    let fast = ZeroFlags {
        may_unmap: true,
        no_fallback: true,
    };
    assert_err(
        img.write_zeroes(10, 2 * CS, fast),
        libc::ENOTSUP,
        &["fallback"],
    );
    assert_eq!(img.is_allocated(0, 4 * CS).unwrap(), (false, 4 * CS));
    // Partial clusters past the backing end read zeros already: nothing to write.
    img.write_zeroes(CS, 3 * CS - 10, fast).unwrap();
    assert_eq!(img.is_allocated(0, 4 * CS).unwrap(), (false, CS));
    assert_eq!(img.is_allocated(CS, 4 * CS).unwrap(), (true, CS));
    assert_eq!(read(&img, CS, CS), vec![0u8; CS as usize]);
}

#[test]
fn discard_whole_clusters_read_zeros_and_partial_ones_are_left() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 4 * CS, 2 * CS, &rw());
    img.write_at(3 * CS, &[9u8; 100]).unwrap();
    img.discard(10, 4 * CS - 10).unwrap();
    assert_eq!(
        read(&img, 0, 10),
        (0..10).map(base_byte).collect::<Vec<_>>()
    );
    assert_eq!(
        read(&img, 10, CS - 10),
        (10..CS).map(base_byte).collect::<Vec<_>>()
    );
    assert_eq!(read(&img, CS, 3 * CS), vec![0u8; 3 * CS as usize]);
    assert_eq!(
        status(&img, 0),
        (false, false, CS),
        "partial: left unallocated"
    );
    assert_eq!(
        status(&img, CS),
        (true, true, 3 * CS),
        "allocated holes, even past the end"
    );
    img.flush().unwrap();
    assert_eq!(data_bytes(&dir.path().join("disk.raw")), 0);
    // Zeroing part of a hole writes nothing: it reads zeros already.
    img.write_zeroes(CS + 10, 100, ZeroFlags::default())
        .unwrap();
    img.flush().unwrap();
    assert_eq!(data_bytes(&dir.path().join("disk.raw")), 0);
    // Inside one cluster: nothing.
    img.discard(5, 10).unwrap();
    assert_eq!(status(&img, 0), (false, false, CS));
}

#[test]
fn read_only_and_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(image(dir.path(), 2 * CS, 2 * CS, &rw()));
    let img = Image::open(dir.path().join("disk.add-cow"), &OpenOptions::default()).unwrap();
    assert_err(img.write_zeroes(0, CS, UNMAP), libc::EPERM, &["read-only"]);
    assert_err(img.discard(0, CS), libc::EPERM, &["read-only"]);
    drop(img);
    let img = Image::open(dir.path().join("disk.add-cow"), &rw()).unwrap();
    assert_err(
        img.write_zeroes(CS, 2 * CS, UNMAP),
        libc::EINVAL,
        &["past the end"],
    );
    assert_err(img.discard(u64::MAX, 2), libc::EINVAL, &["past the end"]);
    assert_eq!(img.block_status(2 * CS, 1).unwrap().len, 0);
    assert_eq!(status(&img, 0), (false, false, 2 * CS));
}

/// A memory file that cannot punch or zero ranges (the trait's defaults): a host byte source.
#[derive(Clone, Default)]
struct NoPunch(MemStorage);

impl Storage for NoPunch {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        self.0.read_vectored_at(bufs, offset)
    }
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.0.write_vectored_at(bufs, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn resize(&self, len: u64) -> io::Result<()> {
        self.0.resize(len)
    }
}

#[test]
fn without_punch_zeros_are_written_unless_no_fallback() {
    let header = addcow::layout::Header::new(b"img", Some(b"base")).unwrap();
    let meta = MemStorage::from_bytes(header.to_bytes().to_vec());
    let data = NoPunch::default();
    data.resize(4 * CS).unwrap();
    let base = MemStorage::from_bytes((0..4 * CS).map(base_byte).collect());
    let parts = Parts {
        meta: (Box::new(meta), "meta".into()),
        image: (Box::new(data.clone()), "data".into()),
        backing: Some(Backing::raw(Box::new(base), "base")),
    };
    let img = Image::open_parts(parts, &rw()).unwrap();
    img.write_at(0, &[3u8; 10]).unwrap();
    let fast = ZeroFlags {
        may_unmap: true,
        no_fallback: true,
    };
    assert_err(
        img.write_zeroes(0, CS, fast),
        libc::ENOTSUP,
        &["punch", "fallback"],
    );
    assert_eq!(read(&img, 0, 1), [3]);
    assert_err(img.write_zeroes(CS, CS, fast), libc::ENOTSUP, &["fallback"]);
    assert_eq!(img.is_allocated(CS, CS).unwrap(), (false, CS), "aborted");
    img.write_zeroes(0, 2 * CS, UNMAP).unwrap();
    img.discard(2 * CS, 2 * CS).unwrap();
    assert_eq!(read(&img, 0, 4 * CS), vec![0u8; 4 * CS as usize]);
    assert_eq!(img.is_allocated(0, 4 * CS).unwrap(), (true, 4 * CS));
    assert_eq!(data.0.to_vec(), vec![0u8; 4 * CS as usize]);
    // No holes known: allocated zeros are data.
    assert_eq!(status(&img, 0), (true, false, 4 * CS));
}

#[test]
fn guest_writes_racing_zeroes_and_discards_on_the_same_clusters_stay_whole() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 16 * CS, 16 * CS, &rw());
    // Each thread owns half of every cluster's 4 KiB pieces; the zeroer zeroes and discards
    // whole clusters under them. Afterwards every piece reads either zeros or its writer's
    // last byte, never backing data and never a mix within a piece.
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 0..20u64 {
                let c = round % 16;
                match round % 2 {
                    0 => img.discard(c * CS, 2 * CS).unwrap(),
                    _ => img.write_zeroes(c * CS, CS, UNMAP).unwrap(),
                }
            }
        });
        s.spawn(|| {
            for round in 0..200u64 {
                let c = round * 7 % 16;
                img.write_at(c * CS + 4096 * (round % 16), &[0xEE; 4096])
                    .unwrap();
            }
        });
    });
    let all = read(&img, 0, 16 * CS);
    for (i, piece) in all.chunks(4096).enumerate() {
        let first = piece[0];
        assert!(
            first == 0 || first == 0xEE,
            "piece {i}: backing data {first:#x}"
        );
        assert!(piece.iter().all(|&b| b == first), "piece {i} is mixed");
    }
}

#[test]
fn parts_of_2_mib_clusters_longer_than_a_cluster_are_written_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let m2 = 2 << 20;
    std::fs::write(dir.path().join("base.raw"), vec![5u8; 4 * m2]).unwrap();
    let c = CreateOptions {
        image_file: "disk.raw".into(),
        backing_file: Some("base.raw".into()),
        size: 4 * m2 as u64,
        layout: 2,
        cluster_size: m2 as u64,
        ..CreateOptions::default()
    };
    create(dir.path().join("disk.add-cow"), &c).unwrap();
    let img = Image::open(dir.path().join("disk.add-cow"), &rw()).unwrap();
    // No whole cluster: the end of cluster 0 and most of cluster 1, 3 MiB of zeros.
    img.write_zeroes(1000, 3 << 20, UNMAP).unwrap();
    let got = read(&img, 0, 2 * m2 as u64);
    assert!(got[..1000].iter().all(|&b| b == 5));
    assert!(got[1000..1000 + (3 << 20)].iter().all(|&b| b == 0));
    assert!(got[1000 + (3 << 20)..].iter().all(|&b| b == 5));
    assert_eq!(
        img.is_allocated(0, u64::MAX).unwrap(),
        (true, 2 * m2 as u64)
    );
}

#[test]
fn a_partial_last_cluster_counts_as_whole_and_its_last_block_is_freed() {
    // 3 clusters and 1000 bytes: the last cluster and the file's last block are partial.
    let size = 3 * CS + 1000;
    for discard in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), size, size, &rw());
        img.write_at(0, &vec![7u8; size as usize]).unwrap();
        match discard {
            true => img.discard(2 * CS, CS + 1000).unwrap(),
            false => img.write_zeroes(2 * CS, CS + 1000, UNMAP).unwrap(),
        }
        assert_eq!(
            read(&img, 2 * CS, CS + 1000),
            vec![0u8; (CS + 1000) as usize]
        );
        assert_eq!(
            status(&img, 2 * CS),
            (true, true, CS + 1000),
            "discard {discard}"
        );
        img.flush().unwrap();
        assert_eq!(
            data_bytes(&dir.path().join("disk.raw")),
            2 * CS,
            "discard {discard}: the last block was not freed"
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("disk.raw"))
                .unwrap()
                .len(),
            size
        );
    }
}
