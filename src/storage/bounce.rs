//! Aligned bounce buffers for direct I/O, pooled so that unaligned requests do not allocate
//! and zero a buffer each time, and the copies between them and a caller's iovecs.

use std::io::{IoSlice, IoSliceMut};
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Most buffers a pool keeps for reuse (more may be out at once; the extra ones are freed).
const KEEP: usize = 4;

/// Buffers of one size and alignment.
#[derive(Debug)]
pub(super) struct Pool {
    size: usize,
    align: usize,
    free: Mutex<Vec<Vec<u8>>>,
}

/// A buffer taken from a [`Pool`]: `size` bytes at an `align`-aligned address, contents
/// unspecified. Goes back to the pool on drop.
pub(super) struct Bounce<'a> {
    pool: &'a Pool,
    /// `size + align` bytes, so that an aligned `size`-byte window fits whatever address the
    /// allocator returns. The window stays put: a Vec's heap buffer does not move with it.
    vec: Vec<u8>,
    at: usize,
}

impl Pool {
    /// `align`: a power of two.
    pub(super) fn new(size: usize, align: usize) -> Pool {
        Pool {
            size,
            align,
            free: Mutex::new(Vec::new()),
        }
    }

    /// A pooled buffer, or a new one when none is free.
    pub(super) fn take(&self) -> Bounce<'_> {
        let pooled = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let vec = pooled.unwrap_or_else(|| vec![0; self.size + self.align]);
        let at = vec.as_ptr().align_offset(self.align);
        Bounce {
            pool: self,
            vec,
            at,
        }
    }
}

#[cfg(test)]
impl Pool {
    /// Buffers kept for reuse.
    pub(super) fn pooled(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

impl Deref for Bounce<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.vec[self.at..self.at + self.pool.size]
    }
}

impl DerefMut for Bounce<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.at..self.at + self.pool.size]
    }
}

impl Drop for Bounce<'_> {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < KEEP {
            free.push(std::mem::take(&mut self.vec));
        }
    }
}

/// Copies bytes `from..from + into.len()` of the iovec list `bufs` into `into`.
pub(super) fn gather(bufs: &[IoSlice<'_>], mut from: usize, mut into: &mut [u8]) {
    for b in bufs {
        if into.is_empty() {
            return;
        }
        if from >= b.len() {
            from -= b.len();
            continue;
        }
        let n = (b.len() - from).min(into.len());
        let (head, rest) = into.split_at_mut(n);
        head.copy_from_slice(&b[from..from + n]);
        into = rest;
        from = 0;
    }
}

/// Copies `from` into the iovec list `bufs`, starting at byte `at` of the list.
pub(super) fn scatter(mut from: &[u8], bufs: &mut [IoSliceMut<'_>], mut at: usize) {
    for b in bufs {
        if from.is_empty() {
            return;
        }
        if at >= b.len() {
            at -= b.len();
            continue;
        }
        let n = (b.len() - at).min(from.len());
        b[at..at + n].copy_from_slice(&from[..n]);
        from = &from[n..];
        at = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_reused() {
        let pool = Pool::new(8192, 4096);
        let first = pool.take();
        let addr = first.as_ptr();
        assert_eq!(addr as usize % 4096, 0);
        assert_eq!(first.len(), 8192);
        let second = pool.take();
        let reused = second.as_ptr();
        assert_ne!(reused, addr, "two buffers out at once");
        drop(first);
        drop(second);
        let again = pool.take();
        assert_eq!(
            again.as_ptr(),
            reused,
            "the last buffer returned is taken again"
        );
    }

    #[test]
    fn gather_and_scatter_across_buffers() {
        let (a, b, c) = (*b"abc", *b"", *b"defgh");
        let src = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let mut out = [0u8; 4];
        gather(&src, 2, &mut out);
        assert_eq!(&out, b"cdef");
        let (mut x, mut y) = ([0u8; 2], [0u8; 5]);
        let mut dst = [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)];
        scatter(b"WXYZ", &mut dst, 1);
        assert_eq!((x, y), (*b"\0W", *b"XYZ\0\0"));
    }
}
