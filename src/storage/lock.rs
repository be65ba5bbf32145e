//! Image locking that QEMU understands: open-file-description locks on the same bytes and with
//! the same meaning as QEMU's file driver (`block/file-posix.c`, `raw_apply_lock_bytes` and
//! `raw_check_lock_bytes`).
//!
//! QEMU names four permissions (bit 0 consistent read, 1 write, 2 write unchanged, 3 resize).
//! A user of a file holds a shared lock on byte `100 + bit` for every permission it uses, and on
//! byte `200 + bit` for every permission it does not let others use. Before it proceeds it checks
//! that no other open file description holds `200 + bit` for a permission it uses, nor
//! `100 + bit` for a permission it refuses to share. Locks are `F_OFD_SETLK` read locks, so they
//! belong to the open file (not the process): a second open in the same process conflicts like
//! another process does, and closing the file releases them.
//!
//! What libaddcow takes (the same as QEMU for a qcow2 image and its backing files):
//! - [`Lock::Write`], the `.add-cow` and image files of a read-write image: uses consistent read,
//!   write and resize; shares consistent read and write unchanged only.
//! - [`Lock::Read`], a read-only image and every backing file: uses consistent read; shares
//!   consistent read and write unchanged only (no writer, no resize while it is open).
//! - [`Lock::Shared`], `force share` read-only opens (`qemu-img -U`): uses consistent read and
//!   shares everything.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

const PERM_BASE: u64 = 100;
const SHARED_BASE: u64 = 200;

const CONSISTENT_READ: u8 = 1 << 0;
const WRITE: u8 = 1 << 1;
const WRITE_UNCHANGED: u8 = 1 << 2;
const RESIZE: u8 = 1 << 3;
const ALL: u8 = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE;

/// QEMU's names for the permission bits, as its messages spell them.
const NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];

/// How a file is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// Read-write use; no other writer or resizer.
    Write,
    /// Read-only use; no writer or resizer.
    Read,
    /// Read-only use that tolerates anything (force share).
    Shared,
}

impl Lock {
    /// (permissions used, permissions shared with others).
    fn perms(self) -> (u8, u8) {
        match self {
            Lock::Write => (
                CONSISTENT_READ | WRITE | RESIZE,
                CONSISTENT_READ | WRITE_UNCHANGED,
            ),
            Lock::Read => (CONSISTENT_READ, CONSISTENT_READ | WRITE_UNCHANGED),
            Lock::Shared => (CONSISTENT_READ, ALL),
        }
    }
}

/// Why a lock could not be taken, in QEMU's words: `Failed to get "write" lock` (another user
/// refuses to share a permission we need) or `Failed to get shared "write" lock` (another user
/// holds a permission we refuse to share).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflict(pub String);

/// Takes `lock` on `file` and checks that no other open file description conflicts with it.
/// `Ok(Err(conflict))` when one does, with our locks on `file` released again; `Err` when the
/// OS call fails. A file system without OFD lock support is used unlocked, as
/// QEMU's `locking=auto` does.
pub(crate) fn lock(file: &File, lock: Lock) -> io::Result<Result<(), Conflict>> {
    let (perm, shared) = lock.perms();
    let bits = || 0..NAMES.len() as u64;
    let used = bits().filter(|b| perm & (1 << b) != 0);
    let refused = bits().filter(|b| shared & (1 << b) == 0);
    for byte in used
        .map(|b| PERM_BASE + b)
        .chain(refused.map(|b| SHARED_BASE + b))
    {
        match set_read_lock(file, byte) {
            Err(e) if unsupported(&e) => return Ok(Ok(())),
            other => other?,
        }
    }
    let conflict = check(file, perm, shared)?;
    if conflict.is_some() {
        unlock(file)?;
    }
    Ok(conflict.map_or(Ok(()), Err))
}

fn check(file: &File, perm: u8, shared: u8) -> io::Result<Option<Conflict>> {
    for (bit, name) in NAMES.iter().enumerate() {
        let mask = 1 << bit;
        let bit = bit as u64;
        if perm & mask != 0 && held_by_other(file, SHARED_BASE + bit)? {
            return Ok(Some(Conflict(format!("failed to get \"{name}\" lock"))));
        }
        if shared & mask == 0 && held_by_other(file, PERM_BASE + bit)? {
            return Ok(Some(Conflict(format!(
                "failed to get shared \"{name}\" lock"
            ))));
        }
    }
    Ok(None)
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOLCK | libc::EOPNOTSUPP))
}

fn flock_at(byte: u64, kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is plain data; all-zero is a valid value (and l_pid must be 0 for OFD).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    fl
}

fn set_read_lock(file: &File, byte: u64) -> io::Result<()> {
    set(file, flock_at(byte, libc::F_RDLCK))
}

/// Releases every lock byte this open file description holds.
fn unlock(file: &File) -> io::Result<()> {
    let mut fl = flock_at(PERM_BASE, libc::F_UNLCK);
    fl.l_len = (SHARED_BASE + NAMES.len() as u64 - PERM_BASE) as libc::off_t;
    set(file, fl)
}

fn set(file: &File, fl: libc::flock) -> io::Result<()> {
    // SAFETY: a valid descriptor and a valid `flock` for the duration of the call.
    match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// Whether another open file description holds a lock on `byte` (a write lock there would
/// conflict with any lock).
fn held_by_other(file: &File, byte: u64) -> io::Result<bool> {
    let mut fl = flock_at(byte, libc::F_WRLCK);
    // SAFETY: a valid descriptor and a valid, writable `flock` for the duration of the call.
    match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(fl.l_type != libc::F_UNLCK as libc::c_short),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> File {
        File::options().read(true).write(true).open(path).unwrap()
    }

    #[test]
    fn writers_exclude_each_other_and_readers_but_readers_share() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let (a, b, c) = (open(tmp.path()), open(tmp.path()), open(tmp.path()));
        assert_eq!(lock(&a, Lock::Read).unwrap(), Ok(()));
        assert_eq!(lock(&b, Lock::Read).unwrap(), Ok(()));
        let err = lock(&c, Lock::Write).unwrap().unwrap_err();
        assert_eq!(err.0, "failed to get \"write\" lock");
        drop((a, b));
        let c = open(tmp.path());
        assert_eq!(lock(&c, Lock::Write).unwrap(), Ok(()));
        let err = lock(&open(tmp.path()), Lock::Read).unwrap().unwrap_err();
        assert_eq!(err.0, "failed to get shared \"write\" lock");
        assert_eq!(lock(&open(tmp.path()), Lock::Shared).unwrap(), Ok(()));
        // The same open file description never conflicts with itself.
        assert_eq!(lock(&c, Lock::Write).unwrap(), Ok(()));
    }
}
