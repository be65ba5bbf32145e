//! The local files of an image and its backing chain: how names resolve, which file is which,
//! and the locks that keep other users out. Used by open and create.
//!
//! Rules enforced here:
//! - every file is a regular file or a block device, opened without blocking (`storage::open`);
//! - no two files of a chain — each level's `.add-cow` file and image file, and the final
//!   backing file — are the same file (device and inode): `EINVAL` naming both roles;
//! - each file is locked the way QEMU locks it (`storage::lock`), *after* the identity check, so
//!   that a chain naming one file twice gets the identity error, not a lock conflict with itself:
//!   `EBUSY` naming the file when another user conflicts.

use crate::error::{Error, Op, Result};
use crate::storage::{self, Access, Dir, DirectStorage, FileStorage, Lock, Storage};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a file is to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    AddCow,
    Image,
    Backing,
}

impl Role {
    pub(super) fn name(self) -> &'static str {
        match self {
            Role::AddCow => "add-cow file",
            Role::Image => "image file",
            Role::Backing => "backing file",
        }
    }

    /// `role 'path'`, how messages name a file.
    pub(super) fn describe(self, path: &Path) -> String {
        format!("{} '{}'", self.name(), path.display())
    }
}

/// (device, inode): the identity of a file, whatever its names.
type FileId = (u64, u64);

/// The files of one backing chain opened so far, with their roles and names.
#[derive(Default, Clone)]
pub(super) struct Chain {
    files: Vec<(FileId, Role, String)>,
}

impl Chain {
    /// Records `file`, `what` (its role and name); `EINVAL` when the chain already holds it.
    pub(super) fn add(&mut self, file: &File, role: Role, what: &str) -> Result<()> {
        let meta = file
            .metadata()
            .map_err(|e| Error::io(Op::Stat, what, 0, e))?;
        let id = (meta.dev(), meta.ino());
        if let Some((_, other_role, other)) = self.files.iter().find(|(known, ..)| *known == id) {
            let why = match (role, *other_role) {
                (Role::AddCow, Role::AddCow) => "backing chain loop",
                _ => "a file appears twice in the backing chain",
            };
            return Err(Error::invalid(format!(
                "{why}: {what} is the same file as {other}"
            )));
        }
        self.files.push((id, role, what.to_owned()));
        Ok(())
    }
}

/// How a file of an image is opened and locked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Use {
    pub writable: bool,
    pub lock: Lock,
    pub confine: bool,
    /// `O_DIRECT`, read and written as a [`DirectStorage`].
    pub direct: bool,
}

impl Use {
    /// The `.add-cow` and image files of the image being opened.
    pub(super) fn top(writable: bool, force_share: bool, confine: bool) -> Use {
        let lock = match (writable, force_share) {
            (true, _) => Lock::Write,
            (false, true) => Lock::Shared,
            (false, false) => Lock::Read,
        };
        Use {
            writable,
            lock,
            confine,
            direct: false,
        }
    }

    /// Every file below the top: read-only.
    pub(super) fn backing(force_share: bool, confine: bool) -> Use {
        Use::top(false, force_share, confine)
    }

    /// With direct I/O or without.
    pub(super) fn direct(self, direct: bool) -> Use {
        Use { direct, ..self }
    }

    /// How to open a file named in a header.
    pub(super) fn access(self) -> Access {
        Access {
            direct: self.direct,
            ..Access::write(self.writable, self.confine)
        }
    }
}

/// A local file of an image, read and written through the page cache or around it.
pub(super) enum LocalFile {
    Buffered(FileStorage),
    Direct(DirectStorage),
}

impl LocalFile {
    /// `file`, opened as `how` says (with `O_DIRECT` when `how.direct`).
    pub(super) fn new(file: File, how: Use, what: &str) -> Result<LocalFile> {
        Ok(match how.direct {
            false => LocalFile::Buffered(FileStorage::new(file)),
            true => LocalFile::Direct(
                DirectStorage::new(file).map_err(|e| Error::io(Op::GetLength, what, 0, e))?,
            ),
        })
    }

    pub(super) fn file(&self) -> &File {
        match self {
            LocalFile::Buffered(s) => s.file(),
            LocalFile::Direct(s) => s.file(),
        }
    }

    pub(super) fn storage(&self) -> &dyn Storage {
        match self {
            LocalFile::Buffered(s) => s,
            LocalFile::Direct(s) => s,
        }
    }

    pub(super) fn into_storage(self) -> Box<dyn Storage> {
        match self {
            LocalFile::Buffered(s) => Box::new(s),
            LocalFile::Direct(s) => Box::new(s),
        }
    }
}

/// How often a conflicting lock is tried again, and the first pause (doubled each time): about
/// 0.25 s in all.
const LOCK_ATTEMPTS: u32 = 8;
const LOCK_PAUSE: Duration = Duration::from_millis(2);

/// Takes `mode` on `file`; `EBUSY` naming `role` when another user conflicts.
///
/// A conflict is tried again for a short while before it is reported: a child process that
/// another thread has just forked shares our open file descriptions, and the locks on them,
/// until it executes its program, so a file this process closed and reopens may look busy for
/// that instant.
fn take_lock(file: &File, mode: Lock, role: &str) -> Result<()> {
    let mut pause = LOCK_PAUSE;
    let mut attempt = 1;
    loop {
        match storage::lock(file, mode).map_err(|e| Error::io(Op::Lock, role, 0, e))? {
            Ok(()) => return Ok(()),
            Err(_) if attempt < LOCK_ATTEMPTS => std::thread::sleep(pause),
            Err(conflict) => {
                return Err(Error::Busy(format!(
                    "{role}: {}: it is in use by another process or another open image",
                    conflict.0
                )))
            }
        }
        pause *= 2;
        attempt += 1;
    }
}

/// Opens `name` (a name from the header of the `.add-cow` file whose directory is `dir`) as
/// `role`, checks it against the chain and locks it. Returns it with its name for messages.
pub(super) fn open_named(
    dir: &Dir,
    name: &Path,
    how: Use,
    role: Role,
    chain: &mut Chain,
) -> Result<(Box<dyn Storage>, String)> {
    let what = role.describe(&dir.join(name));
    let local = LocalFile::new(dir.open(name, how.access(), &what)?, how, &what)?;
    admit(local.file(), how, role, &what, chain)?;
    Ok((local.into_storage(), what))
}

/// Checks an open file against the chain, then locks it.
pub(super) fn admit(
    file: &File,
    how: Use,
    role: Role,
    what: &str,
    chain: &mut Chain,
) -> Result<()> {
    chain.add(file, role, what)?;
    take_lock(file, how.lock, what)
}

/// Whether two paths name the same file, for files that may not exist yet: the same inode when
/// both exist, otherwise the same canonical path (a missing file's parent directory resolved,
/// so `..` and symlinks count).
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (id(a), id(b)) {
        (Some(x), Some(y)) => x == y,
        _ => canonical(a) == canonical(b),
    }
}

/// The canonical path of `p`, or of its parent directory joined with its name when `p` does
/// not exist yet; the plain absolute path when neither resolves.
fn canonical(p: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(p)
        .ok()
        .or_else(|| {
            let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = std::fs::canonicalize(parent.unwrap_or(Path::new("."))).ok()?;
            Some(dir.join(p.file_name()?))
        })
        .or_else(|| std::path::absolute(p).ok())
}
