//! A model test of the lifecycle operations mixed into random sequences: writes, flushes,
//! truncates, commits (emptying or not), the allocation query and detach's check, over both
//! layouts and backing files shorter and longer than the image, in memory. After every step the
//! image must read the model's content with the model's allocation, `allocation()` must count
//! it, and after every commit the backing file must hold the content (grown to the size when it
//! was shorter) and, reopened from its bytes, the image must read the same.

mod common;
use addcow::layout::Header;
use addcow::storage::{MemStorage, Storage};
use addcow::{Backing, BackingFormat, Image, OpenOptions, Parts};
use common::Rng;

struct Model {
    content: Vec<u8>,
    alloc: Vec<bool>,
    backing: Vec<u8>,
    cluster: u64,
}

impl Model {
    fn clusters(&self) -> usize {
        (self.content.len() as u64).div_ceil(self.cluster) as usize
    }
}

struct Files {
    meta: MemStorage,
    data: MemStorage,
    backing: MemStorage,
}

impl Files {
    fn open(&self) -> Image {
        let parts = Parts {
            meta: (Box::new(self.meta.clone()), "meta".into()),
            image: (Box::new(self.data.clone()), "data".into()),
            backing: Some(Backing::raw(Box::new(self.backing.clone()), "backing")),
        };
        let opts = OpenOptions {
            writable: true,
            ..OpenOptions::default()
        };
        Image::open_parts(parts, &opts).unwrap()
    }

    /// A fresh image over copies of the current bytes (what a reopen after close sees).
    fn copy(&self) -> Files {
        Files {
            meta: MemStorage::from_bytes(self.meta.to_vec()),
            data: MemStorage::from_bytes(self.data.to_vec()),
            backing: MemStorage::from_bytes(self.backing.to_vec()),
        }
    }
}

fn verify(img: &Image, m: &Model, when: &str) {
    let mut got = vec![0u8; m.content.len()];
    img.read_at(0, &mut got).unwrap();
    if got != m.content {
        let i = got
            .iter()
            .zip(&m.content)
            .position(|(a, b)| a != b)
            .unwrap();
        panic!(
            "{when}: byte {i} reads {} instead of {}",
            got[i], m.content[i]
        );
    }
    for (c, &want) in m.alloc.iter().enumerate() {
        let got = img.is_allocated(c as u64 * m.cluster, 1).unwrap().0;
        assert_eq!(got, want, "{when}: cluster {c}");
    }
    let a = img.allocation().unwrap();
    let want = m.alloc.iter().filter(|&&a| a).count() as u64;
    assert_eq!(
        (a.allocated, a.total),
        (want, m.clusters() as u64),
        "{when}"
    );
}

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let layout = 1 + (seed % 2) as u32;
    let cluster: u64 = if layout == 1 { 65536 } else { 4096 };
    let size = rng.range(1, 12) * cluster - rng.below(2) * 512;
    let backing_len = rng.range(0, 14 * cluster);
    let backing: Vec<u8> = (0..backing_len).map(|i| (i % 253) as u8 + 1).collect();
    let header = match layout {
        1 => Header::new(b"data", Some(b"backing")).unwrap(),
        _ => Header::new_v2(b"data", Some((b"backing", BackingFormat::Raw)), 12).unwrap(),
    };
    let clusters = size.div_ceil(cluster);
    let mut meta = header.to_bytes();
    meta.resize(header.file_len(clusters) as usize, 0);
    let files = Files {
        meta: MemStorage::from_bytes(meta),
        data: MemStorage::from_bytes(vec![0xEE; size as usize]),
        backing: MemStorage::from_bytes(backing.clone()),
    };
    let mut content = backing.clone();
    content.resize(size as usize, 0);
    let mut m = Model {
        content,
        alloc: vec![false; clusters as usize],
        backing,
        cluster,
    };
    let mut img = files.open();
    let mut log = Vec::new();
    for step in 0..25 {
        let size = m.content.len() as u64;
        let op = rng.below(100);
        let what = match op {
            0..=49 => {
                let offset = rng.below(size);
                let len = rng.range(1, (3 * cluster).min(size - offset));
                let byte = 0x80 + (step as u8);
                img.write_at(offset, &vec![byte; len as usize]).unwrap();
                m.content[offset as usize..(offset + len) as usize].fill(byte);
                for c in offset / cluster..(offset + len).div_ceil(cluster) {
                    m.alloc[c as usize] = true;
                }
                format!("write {offset}+{len}")
            }
            50..=59 => {
                img.flush().unwrap();
                "flush".into()
            }
            60..=69 => {
                let new = rng.range(1, 12) * cluster - rng.below(2) * 512;
                img.truncate(new).unwrap();
                let old = size;
                m.content.resize(new as usize, 0);
                m.alloc.resize(new.div_ceil(cluster) as usize, false);
                if new > old && m.backing.len() as u64 > old {
                    for c in old / cluster..new.div_ceil(cluster) {
                        m.alloc[c as usize] = true;
                    }
                }
                format!("truncate {new}")
            }
            70..=79 => {
                let full = m.alloc.iter().all(|&a| a);
                match img.detach_prepare() {
                    Ok(()) => assert!(full, "detach accepted unallocated clusters"),
                    Err(e) => {
                        assert!(!full, "detach refused a full image: {e}");
                        assert_eq!(e.errno(), libc::EBUSY);
                    }
                }
                "detach check".into()
            }
            _ => {
                let empty = rng.chance(50);
                img.commit(empty).unwrap();
                let mut want = m.content.clone();
                if m.backing.len() > want.len() {
                    want.extend_from_slice(&m.backing[want.len()..]);
                }
                assert!(
                    files.backing.to_vec() == want,
                    "seed {seed}, {log:?}: the backing file after commit"
                );
                m.backing = want;
                if empty {
                    m.alloc.iter_mut().for_each(|a| *a = false);
                }
                let reopened = files.copy().open();
                verify(&reopened, &m, &format!("seed {seed}, {log:?}, reopened"));
                format!("commit{}", if empty { " and empty" } else { "" })
            }
        };
        log.push(what);
        verify(&img, &m, &format!("seed {seed} (layout {layout}), {log:?}"));
    }
    img.close().unwrap();
    assert_eq!(files.data.len().unwrap(), m.content.len() as u64);
}

#[test]
fn lifecycle_model() {
    for seed in 0..150 {
        run(seed);
    }
}
