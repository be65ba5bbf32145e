//! A guest's iovec list: its checked total, and slices of it at byte boundaries (cluster
//! edges).

use crate::error::{Error, Result};
use std::io::{IoSlice, IoSliceMut};
use std::ops::{Deref, Range};

/// The total length of a guest's buffers; `EINVAL` when the sum overflows or exceeds
/// `SSIZE_MAX`, the most one request may transfer.
pub(crate) fn total<B: Deref<Target = [u8]>>(bufs: &[B]) -> Result<u64> {
    bufs.iter()
        .try_fold(0u64, |sum, b| sum.checked_add(b.len() as u64))
        .filter(|&n| n <= isize::MAX as u64)
        .ok_or_else(|| Error::invalid("the buffers add up to more than SSIZE_MAX bytes"))
}

/// Walks buffers of the given lengths and returns, for each, the part of it that falls within
/// the wanted bytes (or `None`). `skip` bytes are passed over first, then `want` bytes taken.
fn part(buf_len: usize, skip: &mut usize, want: &mut usize) -> Option<Range<usize>> {
    if *skip >= buf_len {
        *skip -= buf_len;
        return None;
    }
    let part = *skip..*skip + (buf_len - *skip).min(*want);
    *skip = 0;
    *want -= part.len();
    (!part.is_empty()).then_some(part)
}

/// The buffers covering bytes `start..start + len` of `bufs`.
pub(crate) fn slice_mut<'a>(
    bufs: &'a mut [IoSliceMut<'_>],
    start: u64,
    len: u64,
) -> Vec<IoSliceMut<'a>> {
    let (mut skip, mut want) = (start as usize, len as usize);
    bufs.iter_mut()
        .filter_map(|b| part(b.len(), &mut skip, &mut want).map(|r| IoSliceMut::new(&mut b[r])))
        .collect()
}

/// The buffers covering bytes `start..start + len` of `bufs`.
pub(crate) fn slice<'a>(bufs: &'a [IoSlice<'_>], start: u64, len: u64) -> Vec<IoSlice<'a>> {
    let (mut skip, mut want) = (start as usize, len as usize);
    bufs.iter()
        .filter_map(|b| part(b.len(), &mut skip, &mut want).map(|r| IoSlice::new(&b[r])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_checked() {
        let (a, b) = ([0u8; 3], [0u8; 4]);
        assert_eq!(total(&[&a[..], &b[..]]).unwrap(), 7);
        assert_eq!(total::<&[u8]>(&[]).unwrap(), 0);
    }

    #[test]
    fn slices_across_buffers() {
        let (a, b, c) = (*b"abc", *b"", *b"defgh");
        let bufs = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let s = slice(&bufs, 2, 4);
        let flat: Vec<u8> = s.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(flat, b"cdef");
        assert_eq!(s.len(), 2);
        assert!(slice(&bufs, 8, 0).is_empty());
        let (mut x, mut y) = ([0u8; 2], [0u8; 3]);
        let mut m = [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)];
        for s in slice_mut(&mut m, 1, 3) {
            s.into_inner_fill();
        }
        assert_eq!((x, y), ([0, 1], [1, 1, 0]));
    }

    trait Fill {
        fn into_inner_fill(self);
    }
    impl Fill for IoSliceMut<'_> {
        fn into_inner_fill(mut self) {
            self.fill(1);
        }
    }
}
