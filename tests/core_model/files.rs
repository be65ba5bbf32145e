//! The host's byte sources. The image file and the backing file belong to the host (the core
//! never touches them); the `.add-cow` file is the core's metadata source. The image file and
//! the `.add-cow` file keep what a crash would leave (their state as of their last flush)
//! beside their current contents.

use crate::common::harness::{backing, GARBAGE};
use addcow::storage::Storage;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, IoSlice, IoSliceMut};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

pub const CS: u64 = 65536;

/// Clusters needed for `size` bytes.
pub fn clusters(size: u64) -> u64 {
    size.div_ceil(CS)
}

/// The image file at one moment: sparse, one buffer per written cluster (copy-on-write between
/// the current and the durable state). Bytes never written read [`GARBAGE`] inside the file's
/// original extent and zeros where the file grew; bytes of a buffer past the end are zeros.
#[derive(Clone)]
pub struct ImageState {
    pub len: u64,
    clusters: BTreeMap<u64, Rc<Vec<u8>>>,
    garbage_end: u64,
}

impl ImageState {
    fn new(len: u64) -> ImageState {
        ImageState {
            len,
            clusters: BTreeMap::new(),
            garbage_end: len,
        }
    }

    /// Fills `buf` with what the bytes never written of the cluster starting at `start` read,
    /// from byte `at` of the cluster on.
    fn unwritten(&self, start: u64, buf: &mut [u8], at: usize) {
        let garbage = self.garbage_end.clamp(start, start + CS) - start;
        let split = (garbage as usize).saturating_sub(at).min(buf.len());
        buf[..split].fill(GARBAGE);
        buf[split..].fill(0);
    }

    /// Calls `f(cluster, range in the cluster, range in the buffer)` for each cluster of
    /// `offset..offset + len`.
    fn chunks(offset: u64, len: u64, mut f: impl FnMut(u64, (usize, usize), (usize, usize))) {
        let mut i = offset;
        while i < offset + len {
            let c = i / CS;
            let end = ((c + 1) * CS).min(offset + len);
            let at = (i - c * CS) as usize;
            let n = (end - i) as usize;
            f(
                c,
                (at, at + n),
                ((i - offset) as usize, (i - offset) as usize + n),
            );
            i = end;
        }
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        assert!(
            offset + buf.len() as u64 <= self.len,
            "host bug: image-file read {offset}+{} past its end {}",
            buf.len(),
            self.len
        );
        Self::chunks(offset, buf.len() as u64, |c, (a, b), (x, y)| {
            match self.clusters.get(&c) {
                Some(data) => buf[x..y].copy_from_slice(&data[a..b]),
                None => self.unwritten(c * CS, &mut buf[x..y], a),
            }
        });
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        assert!(
            offset + data.len() as u64 <= self.len,
            "host bug: image-file write {offset}+{} past its end {}",
            data.len(),
            self.len
        );
        Self::chunks(offset, data.len() as u64, |c, (a, b), (x, y)| {
            if !self.clusters.contains_key(&c) {
                let mut fresh = vec![0u8; CS as usize];
                self.unwritten(c * CS, &mut fresh, 0);
                self.clusters.insert(c, Rc::new(fresh));
            }
            let buf = Rc::make_mut(self.clusters.get_mut(&c).expect("just inserted"));
            buf[a..b].copy_from_slice(&data[x..y]);
        });
    }

    /// Shrinks (the bytes past the new end are gone: a later grow reads zeros there) or grows
    /// with zeros.
    pub fn resize(&mut self, len: u64) {
        if len < self.len {
            self.clusters.retain(|&c, _| c * CS < len);
            if let Some(buf) = self.clusters.get_mut(&(len / CS)) {
                Rc::make_mut(buf)[(len % CS) as usize..].fill(0);
            }
            self.garbage_end = self.garbage_end.min(len);
        }
        self.len = len;
    }
}

/// The image file: its current contents, and what a crash leaves (as of the last flush).
pub struct ImageFile {
    pub current: ImageState,
    durable: ImageState,
}

impl ImageFile {
    pub fn new(len: u64) -> ImageFile {
        ImageFile {
            current: ImageState::new(len),
            durable: ImageState::new(len),
        }
    }

    pub fn flush(&mut self) {
        self.durable = self.current.clone();
    }

    /// A crash: what was not flushed is gone.
    pub fn crash(&mut self) {
        self.current = self.durable.clone();
    }
}

/// The backing file: `len` bytes (none: no backing file) of a pattern that depends on
/// `version`, so that replacing the file changes what unallocated clusters read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackingFile {
    pub len: Option<u64>,
    pub version: u64,
}

impl BackingFile {
    /// Bytes `offset..offset + len` as a read of the file returns them: zeros past its end.
    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let inside = self.len.unwrap_or(0).saturating_sub(offset).min(len) as usize;
        let mut out = vec![0; len as usize];
        out[..inside].copy_from_slice(&backing(offset + self.version * 1000, inside as u64));
        out
    }
}

/// The `.add-cow` file as a [`Storage`]: current bytes and the bytes as of the last flush, and
/// one-shot failures the scheduler arms.
#[derive(Clone, Default)]
pub struct MetaFile(Arc<Mutex<MetaState>>);

/// A file-system block, as `SEEK_DATA` sees the file.
const BLOCK: usize = 4096;

#[derive(Default)]
struct MetaState {
    current: Vec<u8>,
    synced: Vec<u8>,
    /// `next_data` reports holes (all-zero blocks) as `SEEK_DATA` does; otherwise it knows
    /// none.
    holes: bool,
    /// Fail the write after this many more succeed.
    fail_write_after: Option<u32>,
    fail_flush: bool,
    fail_read: bool,
}

/// The index of the first nonzero byte of `bytes` (whole blocks compared at once: debug builds
/// are slow byte by byte).
pub fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    const ZEROS: [u8; BLOCK] = [0; BLOCK];
    let (k, block) = bytes
        .chunks(BLOCK)
        .enumerate()
        .find(|(_, b)| **b != ZEROS[..b.len()])?;
    block.iter().position(|&b| b != 0).map(|i| k * BLOCK + i)
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl MetaFile {
    pub fn new(bytes: Vec<u8>, holes: bool) -> MetaFile {
        MetaFile(Arc::new(Mutex::new(MetaState {
            synced: bytes.clone(),
            current: bytes,
            holes,
            ..MetaState::default()
        })))
    }

    fn state(&self) -> MutexGuard<'_, MetaState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current(&self) -> Vec<u8> {
        self.state().current.clone()
    }

    pub fn synced(&self) -> Vec<u8> {
        self.state().synced.clone()
    }

    /// A crash: what was not flushed is gone.
    pub fn crash(&self) {
        let mut s = self.state();
        s.current = s.synced.clone();
    }

    pub fn fail_write_after(&self, n: u32) {
        self.state().fail_write_after = Some(n);
    }

    pub fn fail_flush(&self) {
        self.state().fail_flush = true;
    }

    pub fn fail_read(&self) {
        self.state().fail_read = true;
    }

    /// Disarms the failures that the calls since they were armed did not meet.
    pub fn disarm(&self) {
        let mut s = self.state();
        s.fail_write_after = None;
        s.fail_flush = false;
        s.fail_read = false;
    }
}

impl Storage for MetaFile {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let mut s = self.state();
        if std::mem::replace(&mut s.fail_read, false) {
            return Err(eio());
        }
        let mut pos = offset as usize;
        for buf in bufs {
            let start = pos.min(s.current.len());
            let avail = (s.current.len() - start).min(buf.len());
            buf[..avail].copy_from_slice(&s.current[start..start + avail]);
            buf[avail..].fill(0);
            pos += buf.len();
        }
        Ok(())
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut s = self.state();
        match s.fail_write_after {
            Some(0) => {
                s.fail_write_after = None;
                return Err(eio());
            }
            Some(n) => s.fail_write_after = Some(n - 1),
            None => {}
        }
        let mut pos = offset as usize;
        let end = pos + bufs.iter().map(|b| b.len()).sum::<usize>();
        if end > s.current.len() {
            s.current.resize(end, 0);
        }
        for buf in bufs {
            s.current[pos..pos + buf.len()].copy_from_slice(buf);
            pos += buf.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut s = self.state();
        if std::mem::replace(&mut s.fail_flush, false) {
            return Err(eio());
        }
        s.synced = s.current.clone();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state().current.len() as u64)
    }

    /// The start of the first block from `offset` that holds a nonzero byte (but not before
    /// `offset`).
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        let s = self.state();
        if !s.holes {
            return Ok(Some(offset));
        }
        let from = (offset as usize).min(s.current.len());
        Ok(
            first_nonzero(&s.current[from..])
                .map(|i| ((from + i) / BLOCK * BLOCK).max(from) as u64),
        )
    }

    fn resize(&self, len: u64) -> io::Result<()> {
        self.state().current.resize(len as usize, 0);
        Ok(())
    }
}

/// The set bits of `bitmap` below cluster `limit`.
pub fn bits_of(bitmap: &[u8], limit: u64) -> BTreeSet<u64> {
    let mut bits = BTreeSet::new();
    let mut from = 0;
    while let Some(i) = first_nonzero(&bitmap[from..]) {
        let k = from + i;
        for j in 0..8 {
            let c = k as u64 * 8 + j;
            if bitmap[k] >> j & 1 == 1 && c < limit {
                bits.insert(c);
            }
        }
        from = k + 1;
    }
    bits
}
