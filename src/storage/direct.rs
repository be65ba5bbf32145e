//! A file opened with `O_DIRECT` (QEMU's `cache=none`): I/O bypasses the page cache, and
//! requests that do not meet the file's alignment ([`Align`]) go through aligned bounce
//! buffers.
//!
//! - **Aligned requests** (offset, length, and every buffer's address and length) go straight
//!   to the kernel, without a copy: one `pread`/`pwrite` (or `preadv`/`pwritev`).
//! - **Reads** otherwise read the aligned span that covers them into a bounce buffer and copy
//!   out. Past the end of the file they read zeros, as every [`Storage`] does.
//! - **Writes** otherwise copy into a bounce buffer over the covering aligned span, after
//!   reading the partial first and last blocks (read-modify-write).
//!
//! # Lock order
//! 1. `grow` (a mutex), only for writes whose aligned span reaches past the length hint (the
//!    file's length when last known to this storage), and for `resize`.
//! 2. `writes` ([`RangeLock`]): every write holds its aligned span across its own I/O, so two
//!    writes to different bytes of one block (two sectors of a 4 KiB block) both survive, and
//!    an aligned write is never undone by a concurrent read-modify-write of its block. Reads
//!    take no lock.
//! 3. the bounce pool's mutex, only to take or give back a buffer.
//!
//! # Length
//! A write ending past the end of the file grows it to exactly the write's end. The bounce
//! path writes whole blocks, so under `grow` it cuts the file back when the aligned tail went
//! past that end. Writes whose span ends within the length hint cannot change the length and
//! take no `grow`: the hint never exceeds the real length, because it is only set under `grow`
//! to a length just established, and only this storage writes the file (an image's write lock
//! keeps other writers out). `resize` must not run concurrently with writes past its new
//! length (the engine's truncate is exclusive).

use super::align::Align;
use super::bounce::{gather, scatter, Pool};
use super::range_lock::RangeLock;
use super::{iov_len, FileStorage, Storage};
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bounce buffers hold this much (or one block, when blocks are larger): two 64 KiB clusters,
/// so that a cluster at any offset takes one pass.
const BOUNCE: u64 = 128 << 10;

/// A file opened with `O_DIRECT` as a [`Storage`].
#[derive(Debug)]
pub(crate) struct DirectStorage {
    file: FileStorage,
    align: Align,
    pool: Pool,
    writes: RangeLock,
    grow: Mutex<()>,
    /// A length the file has at least (see the module docs).
    len_hint: AtomicU64,
}

impl DirectStorage {
    /// `file` must be open with `O_DIRECT`; its alignment is queried here.
    pub(crate) fn new(file: File) -> io::Result<DirectStorage> {
        let align = Align::of(&file);
        DirectStorage::with_align(file, align)
    }

    fn with_align(file: File, align: Align) -> io::Result<DirectStorage> {
        let file = FileStorage::new(file);
        let len = file.len()?;
        let bounce = BOUNCE.max(align.block()) as usize;
        Ok(DirectStorage {
            file,
            align,
            pool: Pool::new(bounce, align.buffer() as usize),
            writes: RangeLock::default(),
            grow: Mutex::new(()),
            len_hint: AtomicU64::new(len),
        })
    }

    /// The underlying file.
    pub(crate) fn file(&self) -> &File {
        self.file.file()
    }

    /// The aligned span `offset..offset + len` lies in; `EINVAL` past the largest file offset.
    fn span(&self, offset: u64, len: u64) -> io::Result<(u64, u64)> {
        match offset.checked_add(len) {
            Some(end) if end <= i64::MAX as u64 => {
                Ok((self.align.down(offset), self.align.up(end)))
            }
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// Fills `buf` (aligned) from `start` (aligned); zeros from the end of the file on.
    fn read_blocks(&self, buf: &mut [u8], start: u64) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = self
                .file
                .read_once(&mut [IoSliceMut::new(&mut buf[got..])], start + got as u64)?;
            got += n as usize;
            // An unaligned count ends at the end of the file.
            if n == 0 || !self.align.is_aligned(got as u64) {
                break;
            }
        }
        buf[got..].fill(0);
        Ok(())
    }

    /// Writes all of `buf` (aligned) at `start` (aligned).
    fn write_blocks(&self, buf: &[u8], start: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self
                .file
                .write_once(&[IoSlice::new(&buf[done..])], start + done as u64)?
            {
                0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                n => done += n as usize,
            }
        }
        Ok(())
    }

    /// A read through bounce buffers, pass by pass over the covering aligned span.
    fn read_bounced(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let len = iov_len(bufs);
        if len == 0 {
            return Ok(());
        }
        let (_, end) = self.span(offset, len)?;
        let mut bounce = self.pool.take();
        let mut pos = 0;
        while pos < len {
            let at = offset + pos;
            let start = self.align.down(at);
            let size = (end - start).min(bounce.len() as u64) as usize;
            let span = &mut bounce[..size];
            self.read_blocks(span, start)?;
            let skip = (at - start) as usize;
            let n = (span.len() - skip).min((len - pos) as usize);
            scatter(&span[skip..skip + n], bufs, pos as usize);
            pos += n as u64;
        }
        Ok(())
    }

    /// A write through bounce buffers: the partial first and last blocks are read first.
    fn write_bounced(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let len = iov_len(bufs);
        let (_, end) = self.span(offset, len)?;
        let block = self.align.block();
        let mut bounce = self.pool.take();
        let mut pos = 0;
        while pos < len {
            let at = offset + pos;
            let start = self.align.down(at);
            let size = (end - start).min(bounce.len() as u64) as usize;
            let span = &mut bounce[..size];
            let span_end = start + span.len() as u64;
            let n = (span_end - at).min(len - pos);
            let skip = (at - start) as usize;
            if at > start {
                self.read_blocks(&mut span[..block as usize], start)?;
            }
            let last = span_end - block;
            if at + n < span_end && (last > start || at == start) {
                let tail = span.len() - block as usize;
                self.read_blocks(&mut span[tail..], last)?;
            }
            gather(bufs, pos as usize, &mut span[skip..skip + n as usize]);
            self.write_blocks(span, start)?;
            pos += n;
        }
        Ok(())
    }

    /// Runs `clear` (a punch or zero of `offset..offset + len`) under the range lock of its
    /// aligned span, like a write: a read-modify-write of a block it touches never brings back
    /// the bytes it cleared.
    fn clear_locked(
        &self,
        offset: u64,
        len: u64,
        clear: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (start, end) = self.span(offset, len)?;
        let _held = self.writes.lock(start..end);
        clear()
    }

    /// A write under its range lock: straight to the kernel while aligned, bounced otherwise.
    fn write_locked(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.file.write_all(bufs, offset, |rest, at| {
            (!self.align.fits(at, rest)).then(|| self.write_bounced(rest, at))
        })
    }
}

impl Storage for DirectStorage {
    /// Straight to the kernel while aligned, bounced otherwise; an unaligned count (the end
    /// of the file in the middle of a block) bounces the rest.
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        self.file.read_all(bufs, offset, |rest, at| {
            (!self.align.fits_mut(at, rest)).then(|| self.read_bounced(rest, at))
        })
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let len = iov_len(bufs);
        if len == 0 {
            return Ok(());
        }
        let (start, end) = self.span(offset, len)?;
        let grow = (end > self.len_hint.load(Ordering::Acquire))
            .then(|| self.grow.lock().unwrap_or_else(|e| e.into_inner()));
        let old_len = match grow {
            Some(_) => self.file.len()?,
            None => 0,
        };
        let _held = self.writes.lock(start..end);
        self.write_locked(bufs, offset)?;
        if grow.is_some() {
            let new_len = old_len.max(offset + len);
            if end > new_len {
                self.file.resize(new_len)?;
            }
            self.len_hint.store(new_len, Ordering::Release);
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.flush()
    }

    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn resize(&self, len: u64) -> io::Result<()> {
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        self.file.resize(len)?;
        self.len_hint.store(len, Ordering::Release);
        Ok(())
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.file.next_data(offset)
    }

    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        self.file.next_hole(offset)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.clear_locked(offset, len, || self.file.punch_hole(offset, len))
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.clear_locked(offset, len, || self.file.zero_range(offset, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;

    /// A new empty file in the temporary directory, opened with `O_DIRECT`, its blocks at least
    /// `block` bytes. Fails loudly where the file system refuses direct I/O: these tests need
    /// one that has it (ext4, xfs, btrfs; `/tmp` on the project's machines).
    fn storage(block: u64) -> (tempfile::TempDir, DirectStorage) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.path().join("f"))
            .unwrap_or_else(|e| {
                panic!(
                    "O_DIRECT refused in {}: run the tests where the file system supports \
                     direct I/O: {e}",
                    dir.path().display()
                )
            });
        // SAFETY: F_GETFL on a valid descriptor takes no pointer.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_DIRECT, 0, "the file is not in direct mode");
        let align = Align::of(&file).at_least(block);
        (dir, DirectStorage::with_align(file, align).unwrap())
    }

    /// `len` bytes at a `block`-aligned address (or at `shift` bytes past one).
    struct Aligned {
        vec: Vec<u8>,
        at: usize,
        len: usize,
    }

    impl Aligned {
        fn new(len: usize, block: usize, shift: usize) -> Aligned {
            let vec = vec![0u8; len + block + shift];
            let at = vec.as_ptr().align_offset(block) + shift;
            Aligned { vec, at, len }
        }
        fn bytes(&mut self) -> &mut [u8] {
            &mut self.vec[self.at..self.at + self.len]
        }
    }

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((i * 31 + seed * 7) % 251) as u8 | 1)
            .collect()
    }

    /// The whole file, read through the storage (unaligned buffer, bounce path).
    fn contents(s: &DirectStorage) -> Vec<u8> {
        let mut all = vec![0xA5u8; s.len().unwrap() as usize + 1];
        s.read_at(&mut all[1..], 0).unwrap();
        all.remove(0);
        all
    }

    fn pooled(s: &DirectStorage) -> usize {
        s.pool.pooled()
    }

    #[test]
    fn aligned_requests_take_no_bounce_buffer() {
        let (_d, s) = storage(4096);
        let mut buf = Aligned::new(8192, 4096, 0);
        buf.bytes().copy_from_slice(&pattern(1, 8192));
        s.write_at(buf.bytes(), 4096).unwrap();
        let (mut a, mut b) = (Aligned::new(4096, 4096, 0), Aligned::new(8192, 4096, 0));
        s.read_vectored_at(
            &mut [IoSliceMut::new(a.bytes()), IoSliceMut::new(b.bytes())],
            0,
        )
        .unwrap();
        assert_eq!(
            pooled(&s),
            0,
            "an aligned request went through a bounce buffer"
        );
        assert_eq!(s.len().unwrap(), 12288);
        assert_eq!(a.bytes(), &[0u8; 4096][..], "the hole before the write");
        assert_eq!(&b.bytes()[..], &pattern(1, 8192)[..]);
        // The same data through an unaligned buffer is bounced, and reads the same.
        let mut odd = Aligned::new(8192, 4096, 1);
        s.read_at(odd.bytes(), 4096).unwrap();
        assert_eq!(pooled(&s), 1);
        assert_eq!(&odd.bytes()[..], &pattern(1, 8192)[..]);
    }

    /// Writes and reads at every kind of boundary (inside one block, the first or last block
    /// partial, both, many blocks, several bounce passes, past the end), checked against a
    /// model of the file, its length exact after each write.
    #[test]
    fn unaligned_requests_at_every_boundary() {
        for block in [512, 4096] {
            let (_d, s) = storage(block);
            let mut model = pattern(0, 3 * 4096 + 100);
            s.write_at(&model, 0).unwrap();
            let offsets = [0, 1, 511, 512, 4095, 4096, 4097, 8191, 12387, 12388, 20000];
            let lens = [1, 100, 511, 512, 4095, 4096, 4097, 8192, 12289, 300_000];
            let mut seed = 1;
            for &off in &offsets {
                for &len in &lens {
                    seed += 1;
                    let data = pattern(seed, len);
                    // Two buffers, cut at an odd place: the second one is never aligned.
                    let (x, y) = data.split_at(len / 3);
                    s.write_vectored_at(&[IoSlice::new(x), IoSlice::new(y)], off)
                        .unwrap();
                    let end = off as usize + len;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[off as usize..end].copy_from_slice(&data);
                    let when = format!("block {block}, write {off}+{len}");
                    assert_eq!(s.len().unwrap(), model.len() as u64, "{when}: length");
                    let mut back = vec![0xA5u8; len + 1000];
                    s.read_at(&mut back, off).unwrap();
                    let want_end = (end + 1000).min(model.len());
                    assert!(back[..want_end - off as usize] == model[off as usize..want_end]);
                    assert!(
                        back[want_end - off as usize..].iter().all(|&b| b == 0),
                        "{when}"
                    );
                }
                assert!(
                    contents(&s) == model,
                    "block {block}, after writes at {off}"
                );
            }
        }
    }

    #[test]
    fn writes_past_the_end_leave_the_exact_length() {
        let (_d, s) = storage(4096);
        s.write_at(b"tail", 5000).unwrap();
        assert_eq!(s.len().unwrap(), 5004);
        s.write_at(b"x", 50).unwrap();
        assert_eq!(s.len().unwrap(), 5004, "a write inside the last block");
        s.write_at(b"y", 5003).unwrap();
        assert_eq!(s.len().unwrap(), 5004, "a write up to the end");
        s.write_at(b"z", 12289).unwrap();
        assert_eq!(
            s.len().unwrap(),
            12290,
            "a block boundary crossed past the end"
        );
        let mut block = Aligned::new(4096, 4096, 0);
        block.bytes().fill(7);
        s.write_at(block.bytes(), 16384).unwrap();
        assert_eq!(s.len().unwrap(), 20480, "an aligned write past the end");
        let mut want = vec![0u8; 20480];
        want[50] = b'x';
        want[5000..5004].copy_from_slice(b"tail");
        want[5003] = b'y';
        want[12289] = b'z';
        want[16384..].fill(7);
        assert!(contents(&s) == want);
        // After a resize, writes in the new last block keep its length too.
        s.resize(100).unwrap();
        s.write_at(b"ab", 60).unwrap();
        assert_eq!(s.len().unwrap(), 100);
        s.resize(9000).unwrap();
        s.write_at(b"cd", 8999).unwrap();
        assert_eq!(s.len().unwrap(), 9001);
        assert_eq!(&contents(&s)[8990..], b"\0\0\0\0\0\0\0\0\0cd");
    }

    #[test]
    fn reads_past_the_end_are_zeros() {
        let (_d, s) = storage(4096);
        s.write_at(&pattern(3, 5000), 0).unwrap();
        // Aligned, straddling the end: the kernel returns a short count mid-block.
        let mut buf = Aligned::new(8192, 4096, 0);
        buf.bytes().fill(0xA5);
        s.read_at(buf.bytes(), 4096).unwrap();
        assert_eq!(&buf.bytes()[..904], &pattern(3, 5000)[4096..]);
        assert!(buf.bytes()[904..].iter().all(|&b| b == 0));
        let mut far = [0xA5u8; 100];
        s.read_at(&mut far, 1 << 30).unwrap();
        assert_eq!(far, [0; 100]);
        buf.bytes().fill(0xA5);
        s.read_at(buf.bytes(), 1 << 30).unwrap();
        assert!(buf.bytes().iter().all(|&b| b == 0));
    }

    /// Threads write different pieces of the same blocks at once (512-byte sectors of 4 KiB
    /// blocks, and 64-byte pieces of 512-byte blocks): every read-modify-write must keep the
    /// others' pieces. Meanwhile a thread writes whole aligned blocks over the first sector's
    /// piece of each block: no read-modify-write may bring an older first piece back.
    #[test]
    fn concurrent_pieces_of_one_block_all_survive() {
        for (block, piece) in [(4096u64, 512u64), (512, 64)] {
            let (_d, s) = storage(block);
            let blocks = 64u64;
            let pieces = block / piece;
            s.resize(blocks * block).unwrap();
            let whole = {
                let mut b = Aligned::new(block as usize, block as usize, 0);
                b.bytes().fill(0xEE);
                b
            };
            std::thread::scope(|t| {
                for p in 1..pieces {
                    let s = &s;
                    t.spawn(move || {
                        let data = vec![p as u8; piece as usize];
                        for b in 0..blocks {
                            // Each thread goes through the blocks in its own order.
                            let b = (b * (2 * p + 1)) % blocks;
                            s.write_at(&data, b * block + p * piece).unwrap();
                        }
                    });
                }
                let (s, whole) = (&s, &whole);
                t.spawn(move || {
                    for b in (0..blocks).rev() {
                        s.write_at(&whole.vec[whole.at..whole.at + block as usize], b * block)
                            .unwrap();
                    }
                });
            });
            let all = contents(&s);
            for b in 0..blocks {
                let at = (b * block) as usize;
                assert!(
                    all[at..at + piece as usize].iter().all(|&x| x == 0xEE),
                    "block {b}: the aligned write was lost to a read-modify-write"
                );
                for p in 1..pieces {
                    let r = at + (p * piece) as usize..at + ((p + 1) * piece) as usize;
                    let v = all[r.start];
                    assert!(
                        (v == p as u8 || v == 0xEE) && all[r].iter().all(|&x| x == v),
                        "block {b} piece {p} (of {block}-byte blocks): {v:#x}"
                    );
                }
            }
            // Run again without the aligned writer: then every piece must be the thread's own.
            std::thread::scope(|t| {
                for p in 0..pieces {
                    let s = &s;
                    t.spawn(move || {
                        let data = vec![0x80 | p as u8; piece as usize];
                        for b in 0..blocks {
                            let b = (b * (2 * p + 1)) % blocks;
                            s.write_at(&data, b * block + p * piece).unwrap();
                        }
                    });
                }
            });
            let all = contents(&s);
            for (i, &x) in all.iter().enumerate() {
                let p = (i as u64 % block) / piece;
                assert_eq!(x, 0x80 | p as u8, "byte {i}: a piece was lost");
            }
        }
    }

    /// Writes growing the file from several threads at once, each past the end (unaligned):
    /// cutting one write's aligned tail back must never cut another's data.
    #[test]
    fn concurrent_growing_writes_keep_each_other() {
        let (_d, s) = storage(4096);
        let threads = 4u64;
        let each = 32u64;
        std::thread::scope(|t| {
            for th in 0..threads {
                let s = &s;
                t.spawn(move || {
                    for i in 0..each {
                        let at = (i * threads + th) * 1000 + 7;
                        s.write_at(&[th as u8 + 1; 10], at).unwrap();
                    }
                });
            }
        });
        let last = ((each - 1) * threads + threads - 1) * 1000 + 7 + 10;
        assert_eq!(s.len().unwrap(), last);
        let all = contents(&s);
        for i in 0..each * threads {
            let at = (i * 1000 + 7) as usize;
            let th = (i % threads) as u8 + 1;
            assert_eq!(&all[at..at + 10], &[th; 10], "write {i}");
        }
    }

    #[test]
    fn flush_and_next_data() {
        let (_d, s) = storage(4096);
        s.resize(1 << 30).unwrap();
        s.write_at(b"x", 600 << 20).unwrap();
        s.flush().unwrap();
        let data = s.next_data(4096).unwrap().unwrap();
        assert!(data > 4096 && data <= 600 << 20, "{data}");
        assert_eq!(s.next_data((600 << 20) + (1 << 20)).unwrap(), None);
        assert_eq!(s.len().unwrap(), 1 << 30);
    }

    #[test]
    fn punch_and_zero_range_beside_unaligned_writes() {
        let (_d, s) = storage(4096);
        s.write_at(&[5u8; 3 << 16], 0).unwrap();
        s.punch_hole(1 << 16, 1 << 16).unwrap();
        s.zero_range(100, 50).unwrap();
        s.write_at(b"ab", (1 << 16) + 7).unwrap();
        let back = contents(&s);
        assert_eq!(back.len(), 3 << 16);
        assert!(back[100..150].iter().all(|&b| b == 0));
        assert_eq!(&back[(1 << 16) + 5..(1 << 16) + 11], b"\0\0ab\0\0");
        assert!(back[2 << 16..].iter().all(|&b| b == 5));
        assert_eq!(s.next_hole(1 << 16).unwrap(), (1 << 16) + 4096);
    }
}
