//! An in-memory byte source, for tests and for hosts that keep images in RAM.

use super::Storage;
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::{Arc, RwLock};

/// A growable byte vector as a [`Storage`]. Clones share the same bytes, so a test can keep a
/// handle to inspect what an image wrote.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    bytes: Arc<RwLock<Vec<u8>>>,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// A storage holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> MemStorage {
        MemStorage {
            bytes: Arc::new(RwLock::new(bytes)),
        }
    }

    /// A copy of the current contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn index(offset: u64) -> io::Result<usize> {
    usize::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

impl Storage for MemStorage {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        let mut pos = index(offset)?;
        for buf in bufs {
            let start = pos.min(bytes.len());
            let avail = (bytes.len() - start).min(buf.len());
            buf[..avail].copy_from_slice(&bytes[start..start + avail]);
            buf[avail..].fill(0);
            pos += buf.len();
        }
        Ok(())
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let mut pos = index(offset)?;
        let end = pos + bufs.iter().map(|b| b.len()).sum::<usize>();
        if end > bytes.len() {
            bytes.resize(end, 0);
        }
        for buf in bufs {
            bytes[pos..pos + buf.len()].copy_from_slice(buf);
            pos += buf.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero_range(offset, len)
    }

    /// Zeros the bytes inside the current length.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let end = bytes.len();
        let start = index(offset)?.min(end);
        let stop = index(offset.saturating_add(len))?.min(end);
        bytes[start..stop].fill(0);
        Ok(())
    }

    fn resize(&self, len: u64) -> io::Result<()> {
        let len = index(len)?;
        self.bytes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_round_trip() {
        let s = MemStorage::new();
        s.write_vectored_at(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")], 3)
            .unwrap();
        assert_eq!(s.to_vec(), b"\0\0\0abcd");
        let mut buf = [9u8; 6];
        s.read_at(&mut buf, 5).unwrap();
        assert_eq!(&buf, b"cd\0\0\0\0");
        s.zero_range(4, 10).unwrap();
        assert_eq!(s.to_vec(), b"\0\0\0a\0\0\0", "zeros inside the length only");
        s.resize(2).unwrap();
        assert_eq!(s.len().unwrap(), 2);
    }
}
