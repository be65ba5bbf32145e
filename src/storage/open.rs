//! Opening the local files an image is made of.
//!
//! - Only regular files and block devices: every file is opened with `O_NONBLOCK | O_CLOEXEC`
//!   (a FIFO cannot hang the open) and its type checked before anything reads it.
//! - Names from a header resolve in a [`Dir`], the directory of the `.add-cow` file that holds
//!   them. A *confined* open resolves them beneath it: `openat2` with
//!   `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` refuses absolute names, `..` and symlinks that
//!   leave it, and `/proc` magic links. Where the kernel lacks `openat2`, a component-by-component
//!   walk is stricter still: no `..` and no symlink at all.

use crate::error::{Error, Op, Result};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// Whether and how `open` may create the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// The file must exist.
    No,
    /// Created; it must not exist yet.
    New,
}

/// How to open a file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access {
    pub writable: bool,
    pub create: Create,
    /// Resolve beneath the directory (names from untrusted headers).
    pub confine: bool,
    /// `O_DIRECT`: I/O bypasses the page cache (read and write it with a
    /// [`super::DirectStorage`]). A file system without direct I/O refuses the open (`EINVAL`).
    pub direct: bool,
}

impl Access {
    pub(crate) fn read(confine: bool) -> Access {
        Access {
            writable: false,
            create: Create::No,
            confine,
            direct: false,
        }
    }

    pub(crate) fn write(writable: bool, confine: bool) -> Access {
        Access {
            writable,
            ..Access::read(confine)
        }
    }

    fn flags(self) -> libc::c_int {
        let mode = match self.writable {
            true => libc::O_RDWR,
            false => libc::O_RDONLY,
        };
        let create = match self.create {
            Create::No => 0,
            Create::New => libc::O_CREAT | libc::O_EXCL,
        };
        let direct = match self.direct {
            true => libc::O_DIRECT,
            false => 0,
        };
        mode | create | direct | libc::O_NONBLOCK | libc::O_CLOEXEC
    }
}

/// A directory that names resolve in: a handle (so that it cannot change under us) and its path
/// for messages.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Another handle on the same directory.
    pub(crate) fn try_clone(&self) -> Result<Dir> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::io(Op::OpenDir, &self.describe(), 0, e))?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    /// The directory holding `file`, a path given by the caller.
    pub(crate) fn of(file: &Path) -> Result<Dir> {
        let path = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let fd = openat(libc::AT_FDCWD, &path, dir_flags(), 0, None)
            .map_err(|e| Error::io(Op::OpenDir, &path.display().to_string(), 0, e))?;
        Ok(Dir { fd, path })
    }

    /// The path of `name` resolved here, for messages (absolute names stand alone).
    pub(crate) fn join(&self, name: &Path) -> PathBuf {
        self.path.join(name)
    }

    /// The directory holding `name` (a name resolved here): where the names inside an add-cow
    /// file found at `name` resolve.
    pub(crate) fn of_name(&self, name: &Path, confine: bool) -> Result<Dir> {
        let parent = name.parent().filter(|p| !p.as_os_str().is_empty());
        let Some(parent) = parent else {
            let fd = self
                .fd
                .try_clone()
                .map_err(|e| Error::io(Op::OpenDir, &self.describe(), 0, e))?;
            return Ok(Dir {
                fd,
                path: self.path.clone(),
            });
        };
        let path = self.join(parent);
        let what = format!("directory '{}'", path.display());
        let fd = self.resolve(parent, dir_flags(), 0, confine, &what)?;
        Ok(Dir { fd, path })
    }

    /// Renames `from` to `to` in this directory (both plain file names).
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (c_path(from)?, c_path(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: a valid directory descriptor and two NUL-terminated names.
        match unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Removes the file `name` (resolved here).
    pub(crate) fn remove(&self, name: &Path) -> io::Result<()> {
        let name = c_path(name)?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        match unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Makes the directory's entries (creations, renames) durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        File::from(openat(self.fd.as_raw_fd(), Path::new("."), flags, 0, None)?).sync_all()
    }

    fn describe(&self) -> String {
        format!("directory '{}'", self.path.display())
    }

    /// Opens `name` resolved here (confined when `access.confine`): a regular file or a block
    /// device, or `EINVAL` naming what it is. `what` names the file in messages.
    pub(crate) fn open(&self, name: &Path, access: Access, what: &str) -> Result<File> {
        let fd = self
            .resolve(name, access.flags(), 0o666, access.confine, what)
            .map_err(|e| direct_refused(e, access))?;
        checked_file(fd, what)
    }

    fn resolve(
        &self,
        name: &Path,
        flags: libc::c_int,
        mode: libc::mode_t,
        confine: bool,
        what: &str,
    ) -> Result<OwnedFd> {
        if !confine {
            return openat(self.fd.as_raw_fd(), name, flags, mode, None)
                .map_err(|e| open_error(e, what));
        }
        let escape = || {
            Error::Confined(format!(
                "{what}: the name '{}' leaves directory '{}' (absolute, '..', a symlink out of \
                 it, or a magic link), refused by a confined open",
                name.display(),
                self.path.display()
            ))
        };
        if name.is_absolute() {
            return Err(escape());
        }
        let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        match openat(self.fd.as_raw_fd(), name, flags, mode, Some(resolve)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                walk_beneath(&self.fd, name, flags, mode).map_err(|e| match e {
                    Walk::Escape => escape(),
                    Walk::Io(e) => open_error(e, what),
                })
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::ELOOP)) => Err(escape()),
            other => other.map_err(|e| open_error(e, what)),
        }
    }
}

/// Opens a path the caller gave (not a name from a header): a regular file or a block device.
pub(crate) fn open_path(path: &Path, access: Access, what: &str) -> Result<File> {
    let fd = openat(libc::AT_FDCWD, path, access.flags(), 0o666, None)
        .map_err(|e| direct_refused(open_error(e, what), access))?;
    checked_file(fd, what)
}

/// `EINVAL` from an open with `O_DIRECT` says which flag the file system refused.
fn direct_refused(e: Error, access: Access) -> Error {
    match e {
        Error::Io { file, source, .. }
            if access.direct && source.raw_os_error() == Some(libc::EINVAL) =>
        {
            Error::Io {
                op: Op::OpenDirect,
                file,
                offset: 0,
                source,
            }
        }
        other => other,
    }
}

/// An `open` failure; `EISDIR` (a directory opened for writing) is the same refusal as a
/// directory found by [`checked_file`].
fn open_error(e: io::Error, what: &str) -> Error {
    match e.raw_os_error() {
        Some(libc::EISDIR) => refused(what, "a directory"),
        _ => Error::io(Op::Open, what, 0, e),
    }
}

fn refused(what: &str, kind: &str) -> Error {
    Error::invalid(format!(
        "{what} is {kind}: only regular files and block devices can be used"
    ))
}

fn dir_flags() -> libc::c_int {
    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC
}

/// Refuses anything but a regular file or a block device, then clears `O_NONBLOCK`.
fn checked_file(fd: OwnedFd, what: &str) -> Result<File> {
    let file = File::from(fd);
    let kind = file
        .metadata()
        .map_err(|e| Error::io(Op::Stat, what, 0, e))?
        .file_type();
    let kind_refused = match () {
        _ if kind.is_file() || kind.is_block_device() => None,
        _ if kind.is_dir() => Some("a directory"),
        _ if kind.is_fifo() => Some("a FIFO"),
        _ if kind.is_char_device() => Some("a character device"),
        _ if kind.is_socket() => Some("a socket"),
        _ => Some("not a regular file"),
    };
    if let Some(kind) = kind_refused {
        return Err(refused(what, kind));
    }
    clear_nonblock(&file).map_err(|e| Error::io(Op::Fcntl, what, 0, e))?;
    Ok(file)
}

fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on a valid descriptor takes no pointer.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a valid descriptor with an int argument.
    match unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat`, or `openat2` with `resolve` flags; retried on `EINTR`.
fn openat(
    dir: RawFd,
    name: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
    resolve: Option<u64>,
) -> io::Result<OwnedFd> {
    let name = c_path(name)?;
    loop {
        let fd = match resolve {
            None => {
                // SAFETY: a valid directory descriptor (or AT_FDCWD) and a NUL-terminated name.
                unsafe { libc::openat(dir, name.as_ptr(), flags, libc::c_uint::from(mode)) }
            }
            Some(resolve) => {
                let how = open_how(flags, mode, resolve);
                // SAFETY: as above, with a valid `open_how` of the size we pass.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_openat2,
                        dir,
                        name.as_ptr(),
                        &how,
                        std::mem::size_of::<libc::open_how>(),
                    )
                };
                r as libc::c_int
            }
        };
        if fd >= 0 {
            // SAFETY: a descriptor the kernel just returned to us, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn open_how(flags: libc::c_int, mode: libc::mode_t, resolve: u64) -> libc::open_how {
    // SAFETY: `open_how` is plain data; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.mode = match flags & libc::O_CREAT {
        0 => 0,
        _ => u64::from(mode),
    };
    how.resolve = resolve;
    how
}

/// Why the fallback walk stopped.
#[derive(Debug)]
pub(crate) enum Walk {
    /// `..`, an absolute name or a symlink: not followed without `openat2`.
    Escape,
    Io(io::Error),
}

/// The fallback for kernels without `openat2`: opens `name` beneath `dir` one component at a
/// time with `O_NOFOLLOW`, refusing `..` and every symlink (stricter than `RESOLVE_BENEATH`).
pub(crate) fn walk_beneath(
    dir: &OwnedFd,
    name: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> std::result::Result<OwnedFd, Walk> {
    let parts: Vec<&OsStr> = name
        .components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(p) => Ok(p),
            _ => Err(Walk::Escape),
        })
        .collect::<std::result::Result<_, _>>()?;
    let Some((last, dirs)) = parts.split_last() else {
        return Err(Walk::Io(io::Error::from_raw_os_error(libc::ENOENT)));
    };
    let nofollow = |e: io::Error| match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => Walk::Escape,
        _ => Walk::Io(e),
    };
    let mut cur: Option<OwnedFd> = None;
    for part in dirs {
        let at = cur.as_ref().unwrap_or(dir).as_raw_fd();
        let next = openat(at, Path::new(part), dir_flags() | libc::O_NOFOLLOW, 0, None);
        cur = Some(next.map_err(nofollow)?);
    }
    let at = cur.as_ref().unwrap_or(dir).as_raw_fd();
    openat(at, Path::new(last), flags | libc::O_NOFOLLOW, mode, None).map_err(nofollow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn dir(p: &Path) -> Dir {
        Dir::of(&p.join("x")).unwrap()
    }

    #[test]
    fn refuses_special_files_by_name() {
        let t = tempfile::tempdir().unwrap();
        let d = dir(t.path());
        std::fs::create_dir(t.path().join("sub")).unwrap();
        let fifo = CString::new(t.path().join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for (name, kind) in [("sub", "a directory"), ("fifo", "a FIFO")] {
            let e = d
                .open(Path::new(name), Access::read(false), name)
                .unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL);
            assert!(e.to_string().contains(kind), "{e}");
        }
        let e = open_path(Path::new("/dev/null"), Access::read(false), "null").unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");
    }

    /// procfs has no direct I/O: the open fails with `EINVAL`, and the message says why.
    #[test]
    fn o_direct_refused_says_so() {
        let direct = Access {
            direct: true,
            ..Access::read(false)
        };
        let path = Path::new("/proc/self/status");
        open_path(path, Access::read(false), "status").unwrap();
        let e = open_path(path, direct, "status").unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.to_string().contains("O_DIRECT"), "{e}");
    }

    #[test]
    fn confined_names_stay_beneath() {
        let t = tempfile::tempdir().unwrap();
        let inner = t.path().join("in");
        std::fs::create_dir_all(inner.join("sub")).unwrap();
        std::fs::write(t.path().join("outside"), b"x").unwrap();
        std::fs::write(inner.join("sub/f"), b"x").unwrap();
        symlink("../outside", inner.join("out-link")).unwrap();
        symlink("sub/f", inner.join("in-link")).unwrap();
        let d = dir(&inner);
        let ok = |n: &str| d.open(Path::new(n), Access::read(true), n).map(|_| ());
        ok("sub/f").unwrap();
        ok("sub/../sub/f").unwrap();
        ok("in-link").unwrap();
        for bad in ["../outside", "out-link", "/etc/passwd", "/proc/self/exe"] {
            assert_eq!(ok(bad).unwrap_err().errno(), libc::EACCES, "{bad}");
        }
        // Unconfined, the same names open.
        d.open(Path::new("out-link"), Access::read(false), "x")
            .unwrap();
    }

    #[test]
    fn the_fallback_walk_refuses_dot_dot_and_every_symlink() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::fs::write(t.path().join("sub/f"), b"x").unwrap();
        symlink("sub/f", t.path().join("link")).unwrap();
        symlink("sub", t.path().join("dirlink")).unwrap();
        let d = dir(t.path());
        let walk = |n: &str| walk_beneath(&d.fd, Path::new(n), libc::O_RDONLY, 0);
        walk("sub/f").unwrap();
        walk("./sub/./f").unwrap();
        for bad in ["../x", "sub/../sub/f", "link", "dirlink/f", "/etc/passwd"] {
            assert!(matches!(walk(bad), Err(Walk::Escape)), "{bad}");
        }
        assert!(matches!(walk("missing"), Err(Walk::Io(_))));
    }
}
