//! In-kernel copies between two files (`copy_file_range`), for hydration: the backing file's
//! bytes reach the image file without a trip through user space (on ext4, a 1 MiB
//! `pread`/`pwrite` loop copies at about a seventh of the speed).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The most one call asks for (the kernel copies less than 2 GiB per call anyway).
const MAX_CALL: u64 = 1 << 30;

/// Copies `len` bytes at `offset` of `src` to the same offset of `dst`: how many bytes from
/// `offset` it copied. Fewer than `len` when the source ends first, or when the kernel cannot
/// copy between these files (another file system, a kernel without it): the caller copies the
/// rest another way.
pub(super) fn copy_file_range(src: &File, dst: &File, offset: u64, len: u64) -> io::Result<u64> {
    let mut done = 0;
    while done < len {
        let at = libc::loff_t::try_from(offset + done)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let (mut off_in, mut off_out) = (at, at);
        // SAFETY: both descriptors are open for as long as the borrowed files; the offsets are
        // valid `loff_t`s on the stack, borrowed for the call.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                (len - done).min(MAX_CALL) as usize,
                0,
            )
        };
        if n > 0 {
            done += n as u64;
            continue;
        }
        if n == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => break,
            _ => return Err(err),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::super::{FileStorage, Storage};

    #[test]
    fn copies_a_range_in_place_and_stops_at_the_source_end() {
        let (src, dst) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (src, dst) = (FileStorage::new(src), FileStorage::new(dst));
        src.write_at(&data, 0).unwrap();
        dst.resize(400_000).unwrap();
        assert_eq!(dst.copy_from(&src, 1000, 100_000).unwrap(), 100_000);
        assert_eq!(dst.copy_from(&src, 250_000, 100_000).unwrap(), 50_000);
        let mut got = vec![0u8; 400_000];
        dst.read_at(&mut got, 0).unwrap();
        let mut want = vec![0u8; 400_000];
        want[1000..101_000].copy_from_slice(&data[1000..101_000]);
        want[250_000..300_000].copy_from_slice(&data[250_000..]);
        assert!(got == want);
    }

    #[test]
    fn sources_without_a_file_copy_nothing() {
        let dst = FileStorage::new(tempfile::tempfile().unwrap());
        let mem = super::super::MemStorage::from_bytes(vec![1; 100]);
        assert_eq!(dst.copy_from(&mem, 0, 100).unwrap(), 0);
        assert_eq!(mem.copy_from(&dst, 0, 100).unwrap(), 0);
    }
}
