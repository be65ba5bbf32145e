//! Slicing a guest's iovec list at byte boundaries (cluster edges).

use std::io::{IoSlice, IoSliceMut};

/// The buffers covering bytes `start..start + len` of `bufs`.
pub(crate) fn slice_mut<'a>(
    bufs: &'a mut [IoSliceMut<'_>],
    start: u64,
    len: u64,
) -> Vec<IoSliceMut<'a>> {
    let mut out = Vec::new();
    let (mut skip, mut want) = (start as usize, len as usize);
    for buf in bufs.iter_mut() {
        if want == 0 {
            break;
        }
        if skip >= buf.len() {
            skip -= buf.len();
            continue;
        }
        let take = (buf.len() - skip).min(want);
        out.push(IoSliceMut::new(&mut buf[skip..skip + take]));
        want -= take;
        skip = 0;
    }
    out
}

/// The buffers covering bytes `start..start + len` of `bufs`.
pub(crate) fn slice<'a>(bufs: &'a [IoSlice<'_>], start: u64, len: u64) -> Vec<IoSlice<'a>> {
    let mut out = Vec::new();
    let (mut skip, mut want) = (start as usize, len as usize);
    for buf in bufs {
        if want == 0 {
            break;
        }
        if skip >= buf.len() {
            skip -= buf.len();
            continue;
        }
        let take = (buf.len() - skip).min(want);
        out.push(IoSlice::new(&buf[skip..skip + take]));
        want -= take;
        skip = 0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
