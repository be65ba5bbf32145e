//! Engine unit tests over in-memory storage.

use super::*;
use crate::layout::Header;
use crate::storage::{MemStorage, Storage};
use std::io::{IoSlice, IoSliceMut};

const CS: u64 = 65536;

struct Fixture {
    meta: MemStorage,
    data: MemStorage,
    backing: MemStorage,
}

impl Fixture {
    /// An image of `size` bytes over a backing file of `backing_len` bytes of pattern 0xB0+n.
    fn new(size: u64, backing_len: u64) -> Fixture {
        let header = Header::new(b"img", Some(b"base")).unwrap();
        let meta = MemStorage::from_bytes(header.to_bytes().to_vec());
        let data = MemStorage::new();
        data.resize(size).unwrap();
        let backing: Vec<u8> = (0..backing_len).map(pattern).collect();
        Fixture {
            meta,
            data,
            backing: MemStorage::from_bytes(backing),
        }
    }

    fn open(&self, opts: &OpenOptions) -> Image {
        let parts = Parts {
            meta: (Box::new(self.meta.clone()), "meta".into()),
            image: (Box::new(self.data.clone()), "data".into()),
            backing: Some(Backing::raw(Box::new(self.backing.clone()), "backing")),
        };
        Image::open_parts(parts, opts).unwrap()
    }

    fn rw(&self) -> Image {
        self.open(&OpenOptions {
            writable: true,
            ..Default::default()
        })
    }
}

fn pattern(i: u64) -> u8 {
    (i % 251) as u8 ^ 0xB0
}

fn read(img: &Image, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    img.read_at(offset, &mut buf).unwrap();
    buf
}

#[test]
fn unallocated_reads_backing_then_zeros_past_its_end() {
    let f = Fixture::new(3 * CS, CS + 777);
    let img = f.rw();
    let got = read(&img, 0, 3 * CS);
    let want: Vec<u8> = (0..3 * CS)
        .map(|i| if i < CS + 777 { pattern(i) } else { 0 })
        .collect();
    assert_eq!(got, want);
    assert_eq!(img.is_allocated(0, 3 * CS).unwrap(), (false, 3 * CS));
}

#[test]
fn sub_cluster_write_completes_the_cluster_from_backing() {
    let f = Fixture::new(4 * CS, 4 * CS);
    let img = f.rw();
    img.write_at(CS + 512, &[0xAA; 1024]).unwrap();
    assert_eq!(img.is_allocated(0, 4 * CS).unwrap(), (false, CS));
    assert_eq!(img.is_allocated(CS, 4 * CS).unwrap(), (true, CS));
    assert_eq!(img.is_allocated(CS + 100, 10).unwrap(), (true, 10));
    assert_eq!(img.is_allocated(2 * CS, 4 * CS).unwrap(), (false, 2 * CS));
    let data = f.data.to_vec();
    for i in CS..2 * CS {
        let want = if (CS + 512..CS + 1536).contains(&i) {
            0xAA
        } else {
            pattern(i)
        };
        assert_eq!(data[i as usize], want, "image file byte {i}");
    }
    assert!(
        data[..CS as usize].iter().all(|&b| b == 0),
        "cluster 0 untouched"
    );
}

#[test]
fn write_spanning_allocated_and_unallocated_clusters() {
    let f = Fixture::new(4 * CS, 4 * CS);
    let img = f.rw();
    img.write_at(CS, &[1; 10]).unwrap();
    img.write_at(CS - 5, &vec![2; (2 * CS) as usize]).unwrap();
    let got = read(&img, 0, 4 * CS);
    for (i, &b) in got.iter().enumerate() {
        let i = i as u64;
        let want = if (CS - 5..3 * CS - 5).contains(&i) {
            2
        } else {
            pattern(i)
        };
        assert_eq!(b, want, "byte {i}");
    }
    assert_eq!(img.is_allocated(0, 4 * CS).unwrap(), (true, 3 * CS));
}

#[test]
fn bounds_and_read_only() {
    let f = Fixture::new(CS + 100, CS);
    let img = f.rw();
    assert_eq!(
        img.read_at(CS + 99, &mut [0; 2]).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(
        img.write_at(u64::MAX, &[0; 2]).unwrap_err().errno(),
        libc::EINVAL
    );
    img.read_at(CS + 100, &mut []).unwrap();
    assert_eq!(img.is_allocated(CS + 100, 5).unwrap(), (false, 0));
    assert_eq!(img.is_allocated(0, 0).unwrap(), (false, 0));
    img.write_at(CS + 99, &[7]).unwrap();
    assert_eq!(img.is_allocated(CS, u64::MAX).unwrap(), (true, 100));
    let ro = f.open(&OpenOptions::default());
    assert_eq!(ro.write_at(0, &[1]).unwrap_err().errno(), libc::EPERM);
    assert_eq!(ro.truncate(0).unwrap_err().errno(), libc::EPERM);
}

#[test]
fn bits_reach_disk_at_flush_and_survive_reopen() {
    let f = Fixture::new(20 * CS, 20 * CS);
    {
        let img = f.rw();
        img.write_at(9 * CS, &[5; 3]).unwrap();
        assert_eq!(
            f.meta.to_vec().len(),
            2560,
            "writeback: no bitmap write before flush"
        );
        img.flush().unwrap();
        assert_eq!(f.meta.to_vec()[2561], 0b10);
        img.write_at(0, &[5; 3]).unwrap();
    }
    assert_eq!(f.meta.to_vec()[2560], 1, "drop flushes");
    let img = f.open(&OpenOptions::default());
    assert_eq!(read(&img, 9 * CS, 4), [5, 5, 5, pattern(9 * CS + 3)]);
}

#[test]
fn writethrough_persists_bits_before_returning() {
    let f = Fixture::new(2 * CS, 2 * CS);
    let img = f.open(&OpenOptions {
        writable: true,
        writethrough: true,
        ..Default::default()
    });
    img.write_at(CS, &[1]).unwrap();
    assert_eq!(f.meta.to_vec()[2560], 0b10);
}

#[test]
fn without_backing_unallocated_reads_zero() {
    let f = Fixture::new(2 * CS, 2 * CS);
    let img = f.open(&OpenOptions {
        no_backing: true,
        ..Default::default()
    });
    assert!(read(&img, 0, 2 * CS).iter().all(|&b| b == 0));
}

#[test]
fn grow_over_longer_backing_allocates_zeros() {
    let f = Fixture::new(CS + 1000, 4 * CS);
    let img = f.rw();
    img.truncate(3 * CS).unwrap();
    let got = read(&img, 0, 3 * CS);
    for (i, &b) in got.iter().enumerate() {
        let i = i as u64;
        assert_eq!(b, if i < CS + 1000 { pattern(i) } else { 0 }, "byte {i}");
    }
    assert_eq!(img.is_allocated(0, 3 * CS).unwrap(), (false, CS));
    assert_eq!(img.is_allocated(CS, 3 * CS).unwrap(), (true, 2 * CS));
    img.flush().unwrap();
    assert_eq!(f.meta.to_vec().len(), 2561);
    assert_eq!(f.data.to_vec().len() as u64, 3 * CS);
}

#[test]
fn grow_past_shorter_backing_stays_unallocated() {
    let f = Fixture::new(2 * CS, CS);
    let img = f.rw();
    img.truncate(5 * CS + 3).unwrap();
    assert_eq!(img.size(), 5 * CS + 3);
    assert_eq!(img.is_allocated(0, u64::MAX).unwrap(), (false, 5 * CS + 3));
    assert!(read(&img, CS, 4 * CS + 3).iter().all(|&b| b == 0));
}

#[test]
fn shrink_then_grow_drops_old_bits() {
    let f = Fixture::new(10 * CS, 0);
    let img = f.rw();
    img.write_at(0, &vec![9; (10 * CS) as usize]).unwrap();
    img.truncate(CS + 1).unwrap();
    assert_eq!(img.is_allocated(0, u64::MAX).unwrap(), (true, CS + 1));
    img.truncate(10 * CS).unwrap();
    assert_eq!(img.is_allocated(0, u64::MAX).unwrap(), (true, 2 * CS));
    assert_eq!(img.is_allocated(2 * CS, u64::MAX).unwrap(), (false, 8 * CS));
    let got = read(&img, CS, 2 * CS);
    assert_eq!(got[0], 9);
    assert!(got[1..].iter().all(|&b| b == 0));
    img.flush().unwrap();
    assert_eq!(f.meta.to_vec()[2560], 0b11);
}

#[test]
fn failed_write_back_keeps_pages_dirty() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    /// Writes fail with ENOSPC while the flag is set.
    struct Failing(MemStorage, Arc<AtomicBool>);
    impl Storage for Failing {
        fn read_vectored_at(&self, b: &mut [IoSliceMut<'_>], o: u64) -> std::io::Result<()> {
            self.0.read_vectored_at(b, o)
        }
        fn write_vectored_at(&self, b: &[IoSlice<'_>], o: u64) -> std::io::Result<()> {
            if self.1.load(SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.0.write_vectored_at(b, o)
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn len(&self) -> std::io::Result<u64> {
            self.0.len()
        }
        fn resize(&self, l: u64) -> std::io::Result<()> {
            self.0.resize(l)
        }
    }
    let f = Fixture::new(2 * CS, 2 * CS);
    let failing = Arc::new(AtomicBool::new(true));
    let meta = Failing(f.meta.clone(), failing.clone());
    let parts = Parts {
        meta: (Box::new(meta), "meta".into()),
        image: (Box::new(f.data.clone()), "data".into()),
        backing: None,
    };
    let img = Image::open_parts(
        parts,
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    img.write_at(0, &[1]).unwrap();
    let err = img.flush().unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("write bitmap of meta"), "{err}");
    // The page stayed dirty: once the file takes writes again, the next flush writes the bit.
    assert_eq!(f.meta.to_vec().get(2560).copied().unwrap_or(0), 0);
    failing.store(false, SeqCst);
    img.flush().unwrap();
    assert_eq!(f.meta.to_vec()[2560], 1, "page stays dirty");
}

/// Counts reads (clones share the counters) and reports a fixed length without holding bytes.
#[derive(Clone, Default)]
struct Sparse {
    len: u64,
    reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
    read_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    header: Vec<u8>,
}

impl Storage for Sparse {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        self.reads.fetch_add(1, SeqCst);
        self.read_bytes
            .fetch_add(crate::storage::iov_len(bufs), SeqCst);
        MemStorage::from_bytes(self.header.clone()).read_vectored_at(bufs, offset)
    }
    fn write_vectored_at(&self, _: &[IoSlice<'_>], _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
    fn resize(&self, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn open_reads_the_header_only_and_queries_load_one_page() {
    use std::sync::atomic::Ordering::SeqCst;
    let header = Header::new(b"img", None).unwrap().to_bytes().to_vec();
    let tib16 = 16u64 << 40;
    let meta = Sparse {
        len: 2560 + tib16 / CS / 8,
        header,
        ..Default::default()
    };
    let data = Sparse {
        len: tib16,
        ..Default::default()
    };
    let parts = Parts {
        meta: (Box::new(meta.clone()), "meta".into()),
        image: (Box::new(data), "data".into()),
        backing: None,
    };
    let img = Image::open_parts(parts, &OpenOptions::default()).unwrap();
    assert_eq!(img.size(), tib16);
    // One read of the first 4 KiB: the header (2560 bytes) and a little of the bitmap.
    assert_eq!(meta.reads.load(SeqCst), 1, "open reads the header once");
    assert_eq!(meta.read_bytes.load(SeqCst), 4096);
    assert_eq!(
        img.is_allocated(10 << 40, 1 << 20).unwrap(),
        (false, 1 << 20)
    );
    assert_eq!(meta.read_bytes.load(SeqCst), 4096 + 4096, "one bitmap page");
}

/// An add-cow backing image reads zeros past its end at any length, 0 bytes included: a
/// read past the end must never become a request to the lower image (which refuses one past
/// its end with EINVAL, even of 0 bytes).
#[test]
fn an_add_cow_backing_image_reads_zeros_past_its_end_at_any_length() {
    let f = Fixture::new(CS, CS);
    let backing = Backing::AddCow(Box::new(f.open(&OpenOptions::default())));
    for (offset, len) in [(2 * CS, 0), (CS, 0), (CS + 1, 10), (CS - 3, 10), (0, 0)] {
        let mut buf = vec![0xFFu8; len];
        backing
            .read(&mut [IoSliceMut::new(&mut buf)], offset)
            .unwrap_or_else(|e| panic!("{len} bytes at {offset}: {e}"));
        let want: Vec<u8> = (offset..offset + len as u64)
            .map(|i| if i < CS { pattern(i) } else { 0 })
            .collect();
        assert_eq!(buf, want, "{len} bytes at {offset}");
    }
}
