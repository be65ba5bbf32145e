//! Helpers shared by the integration tests.
// Each test crate uses only some of them.
#![allow(dead_code)]

pub mod disk;
pub mod harness;
pub mod qemu;
pub mod workloads;

/// xorshift64*: small, deterministic, good enough for workloads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next() % (hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `len` bytes that differ from their neighbours and never repeat at cluster distance.
    pub fn noise(&mut self, len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| (self.next() >> 56) as u8 ^ (i % 251) as u8)
            .collect()
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// Creates `dir/img.add-cow` (image file `img.raw`) of `size` bytes, layout `layout` with
/// `cluster`-byte clusters, over the raw file `backing` (a name in `dir`) if any.
pub fn create_img(
    dir: &std::path::Path,
    layout: u32,
    cluster: u64,
    size: u64,
    backing: Option<&str>,
) -> std::path::PathBuf {
    let meta = dir.join("img.add-cow");
    addcow::create(
        &meta,
        &addcow::CreateOptions {
            image_file: "img.raw".into(),
            backing_file: backing.map(Into::into),
            backing_format: addcow::BackingFormat::Raw,
            size,
            layout,
            cluster_size: cluster,
            ..addcow::CreateOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("create {}: {e}", meta.display()));
    meta
}

/// Open options: read-write.
pub fn rw() -> addcow::OpenOptions {
    addcow::OpenOptions {
        writable: true,
        ..addcow::OpenOptions::default()
    }
}

/// Open options: read-only.
pub fn ro() -> addcow::OpenOptions {
    addcow::OpenOptions::default()
}

/// Everything the image reads, `0..size`.
pub fn read_all(img: &addcow::Image) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    img.read_at(0, &mut buf).unwrap();
    buf
}

/// Asserts the error's errno and that its message contains every one of `words`.
#[track_caller]
pub fn assert_err<T>(result: Result<T, addcow::Error>, errno: i32, words: &[&str]) {
    let Err(err) = result else {
        panic!("expected an error (errno {errno}, mentioning {words:?}), got Ok");
    };
    let msg = err.to_string();
    assert_eq!(
        err.errno(),
        errno,
        "errno of {msg:?} (want {errno}, got {})",
        err.errno()
    );
    for w in words {
        assert!(msg.contains(w), "message {msg:?} does not mention {w:?}");
    }
}
