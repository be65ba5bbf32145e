//! The header in the metadata source: reading it, excluding its rewrites from each other, and
//! reloading it with the bitmap ([`Core::reload`]: QEMU's invalidate-cache, after another
//! process, e.g. a migration source, wrote the image).
//!
//! # Header rewrites
//! [`Core::set_all_allocated`] writes the feature field, [`Core::set_backing_file`] the backing
//! fields, [`Core::reload`] replaces the header in memory. They never wait for each other (a
//! host's callbacks may yield, and a lock held across them could deadlock a coroutine host):
//! a [`HeaderLock`] lets feature writes share it and takes it whole for the other two, and
//! whoever finds it taken gets `EBUSY`. The host serializes them (QEMU: a `CoMutex`; the
//! generic I/O loop: its exclusive gate).

use super::Core;
use crate::error::{Error, Op, Result};
use crate::layout::Header;
use crate::storage::Storage;
use std::sync::atomic::{AtomicU64, Ordering};

/// The first read of a header: every layout-1 header, and layout-2 headers of 4 KiB.
const FIRST_READ: u64 = 4096;

/// Reads and validates the header of a `.add-cow` file, e.g. to learn which files to open.
/// `name` says which file it is in error messages.
pub fn read_header(meta: &dyn Storage, name: &str) -> Result<Header> {
    let len = meta
        .len()
        .map_err(|e| Error::io(Op::GetLength, name, 0, e))?;
    let read = |n: u64| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n.min(len) as usize];
        meta.read_at(&mut buf, 0)
            .map_err(|e| Error::io(Op::ReadHeader, name, 0, e))?;
        Ok(buf)
    };
    // The first 4 KiB hold a layout-1 header, or a layout-2 header of 4 KiB, or the start of
    // a longer one that tells its length: one read, or two for a longer header.
    let prefix = read(FIRST_READ)?;
    let parsed = Header::len_of(&prefix).and_then(|n| match n <= prefix.len() {
        true => Header::parse(&prefix[..n]),
        false => Header::parse(&read(n as u64)?),
    });
    parsed.map_err(|e| match e {
        Error::Invalid(msg) => Error::Invalid(format!("{name}: {msg}")),
        Error::Unsupported(msg) => Error::Unsupported(format!("{name}: {msg}")),
        other => other,
    })
}

/// A reader-writer lock that never waits: shared by feature-bit writes, exclusive for backing
/// rewrites and reloads; taken, it answers `EBUSY`.
#[derive(Default)]
pub(super) struct HeaderLock(AtomicU64);

/// The exclusive state of a [`HeaderLock`]; below it, the number of shared holders.
const EXCLUSIVE: u64 = u64::MAX;

/// A held side of a [`HeaderLock`], released when dropped.
pub(super) struct HeaderGuard<'a> {
    lock: &'a AtomicU64,
    exclusive: bool,
}

impl Drop for HeaderGuard<'_> {
    fn drop(&mut self) {
        match self.exclusive {
            true => self.lock.store(0, Ordering::Release),
            false => drop(self.lock.fetch_sub(1, Ordering::Release)),
        }
    }
}

fn busy() -> Error {
    Error::Busy(
        "another header rewrite (backing file, feature bits, reload) is running on this image"
            .into(),
    )
}

impl HeaderLock {
    pub(super) fn try_shared(&self) -> Result<HeaderGuard<'_>> {
        self.0
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                n.checked_add(1).filter(|&m| m < EXCLUSIVE)
            })
            .map_err(|_| busy())?;
        Ok(HeaderGuard {
            lock: &self.0,
            exclusive: false,
        })
    }

    pub(super) fn try_exclusive(&self) -> Result<HeaderGuard<'_>> {
        self.0
            .compare_exchange(0, EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| busy())?;
        Ok(HeaderGuard {
            lock: &self.0,
            exclusive: true,
        })
    }
}

impl Core {
    /// Drops what the core cached of the metadata source and reads the header again: clean
    /// bitmap pages are reloaded on demand, the names, the feature bits and the "all
    /// allocated" state come from the file as it is now. For a host whose `.add-cow` file was
    /// written by someone else since it opened the core (QEMU's invalidate-cache after a
    /// migration). The host runs it with no write, zeroing or write-back in flight and none
    /// starting (lookups may run beside it: they see the old or the new state); the size
    /// stays the core's, and so does the source's length where the source caches it (host
    /// callbacks: after a resize elsewhere, make a new core). `EBUSY` while a transaction or write-back is open or a bitmap page is
    /// dirty (flush first), or beside another header rewrite; `EINVAL` when the header on disk
    /// has another cluster size or bitmap offset (open a new core); the source's errors. On
    /// failure the core is as it was.
    pub fn reload(&self) -> Result<()> {
        let _exclusive = self.header_lock.try_exclusive()?;
        if self.claims.any() || self.writeback_open.load(Ordering::Acquire) {
            return Err(Error::Busy(
                "an allocation or a write-back is open: end it before reloading".into(),
            ));
        }
        let header = read_header(&*self.meta, &self.meta_name)?;
        if header.cluster_bits() != self.header.cluster_bits()
            || header.bitmap_offset() != self.header.bitmap_offset()
        {
            return Err(Error::invalid(format!(
                "{}: the header on disk has another cluster size or bitmap offset than when \
                 the image was opened: open it again",
                self.meta_name
            )));
        }
        if !self.bitmap.drop_all_clean() {
            return Err(Error::Busy(
                "bitmap pages are dirty: flush before reloading".into(),
            ));
        }
        self.all_allocated
            .store(header.all_allocated(), Ordering::Release);
        self.header_unsynced.store(false, Ordering::Release);
        self.scan_from.store(0, Ordering::Release);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = header;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_lock_is_shared_or_exclusive_and_never_waits() {
        let lock = HeaderLock::default();
        let busy = |r: Result<HeaderGuard<'_>>| r.err().map(|e| e.errno());
        let a = lock.try_shared().unwrap();
        let b = lock.try_shared().unwrap();
        assert_eq!(busy(lock.try_exclusive()), Some(libc::EBUSY));
        drop(a);
        assert_eq!(busy(lock.try_exclusive()), Some(libc::EBUSY));
        drop(b);
        let x = lock.try_exclusive().unwrap();
        assert_eq!(busy(lock.try_shared()), Some(libc::EBUSY));
        assert_eq!(busy(lock.try_exclusive()), Some(libc::EBUSY));
        drop(x);
        drop(lock.try_shared().unwrap());
        drop(lock.try_exclusive().unwrap());
    }
}
