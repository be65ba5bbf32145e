//! Creating an image, atomically, leaving nothing behind on failure.
//!
//! Before any file is written: the names are checked, the size against [`MAX_SIZE`] (`EFBIG`),
//! the backing chain is opened read-only (force share: only its length and the identity of its
//! files are needed), and the image file and any `.add-cow` file already at the target are
//! checked against the chain and locked for writing (`EBUSY` while another user has them).
//!
//! Then, in this order: the `.add-cow` file is written under a temporary name in its directory
//! and made durable; the image file gets its size and is made durable; the temporary file is
//! renamed into place and the directory made durable. A failure removes the temporary file and
//! an image file that this call created; a crash leaves at most a stray temporary file (named
//! `.NAME.addcow-tmp-*`), never a half-written `.add-cow` file.

use super::files::{admit, same_file, Chain, Role, Use};
use super::open::{check_size, open_backing, Format};
use super::{BackingFormat, OpenOptions};
use crate::error::{Error, Op, Result};
use crate::layout::{v2, Geometry, Header};
use crate::storage::{open_path, Access, Create, Dir, FileStorage, Storage};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What to create.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Name of the raw image file, stored as given; relative names resolve against the
    /// `.add-cow` file's directory.
    pub image_file: PathBuf,
    /// Name of the backing file, stored as given; `None` (or empty) for none.
    pub backing_file: Option<PathBuf>,
    /// Format of the backing file (used to learn its length).
    pub backing_format: BackingFormat,
    /// `> 0`: the image file is created if missing and resized to `size`.
    /// `0`: the image file must exist and gives the size, or, when it is missing and there is
    /// a backing file, it is created with the backing file's length (unless `exact_size`).
    pub size: u64,
    /// `size` is the size even when it is 0: the image file is created if missing and resized
    /// to `size`, as for any size above 0 (an empty image, as `qemu-img create IMG 0`).
    pub exact_size: bool,
    /// The image and backing names (and every name down the backing chain) must resolve
    /// beneath the `.add-cow` file's directory (`EACCES` otherwise).
    pub confine: bool,
    /// The on-disk layout: 0 or 1 = the seed's (the default), 2 = the series' final one.
    pub layout: u32,
    /// Cluster size in bytes; 0 = the layout's default (64 KiB). Layout 1 allows only 64 KiB,
    /// layout 2 any power of two from 4 KiB to 2 MiB.
    pub cluster_size: u64,
}

impl CreateOptions {
    /// The options give the size (not the image file or the backing file).
    fn sized(&self) -> bool {
        self.size > 0 || self.exact_size
    }

    /// The header these options describe (names, layout, cluster size); `EINVAL` or `ENOTSUP`
    /// for what no layout allows.
    pub(super) fn header(&self) -> Result<Header> {
        let image = bytes(&self.image_file);
        let backing = self.backing_file.as_deref().map(bytes);
        match self.layout {
            0 | 1 => {
                if !matches!(self.cluster_size, 0 | 65536) {
                    return Err(Error::invalid(format!(
                        "cluster size {} is not allowed by layout 1 (only 65536)",
                        self.cluster_size
                    )));
                }
                Header::new(image, backing)
            }
            2 => {
                let size = match self.cluster_size {
                    0 => 1 << v2::DEFAULT_CLUSTER_BITS,
                    s => s,
                };
                if !size.is_power_of_two() {
                    return Err(Error::invalid(format!(
                        "cluster size {size} is not a power of two"
                    )));
                }
                let backing = backing.map(|b| (b, self.backing_format));
                Header::new_v2(image, backing, size.trailing_zeros())
            }
            other => Err(Error::Unsupported(format!(
                "layout {other} is not supported (layouts 1 and 2)"
            ))),
        }
    }
}

/// Creates the `.add-cow` file at `path` (replacing any file there that is not in use) with an
/// all-unallocated bitmap, and the image file as `opts.size` says.
pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<()> {
    let path = path.as_ref();
    let header = opts.header()?;
    check_size(opts.size, "the requested size")?;
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("'{}' names no file", path.display())))?;
    let dir = Dir::of(path)?;
    let image_name = name(&header.image_file);
    if same_file(&dir.join(image_name), path) {
        return Err(Error::invalid(format!(
            "the image file '{}' is the add-cow file itself",
            dir.join(image_name).display()
        )));
    }
    if let Some(b) = header.backing_file.as_deref().map(name) {
        if same_file(&dir.join(b), path) {
            return Err(Error::invalid(format!(
                "the backing file '{}' is the add-cow file itself",
                dir.join(b).display()
            )));
        }
    }
    let mut chain = Chain::default();
    let backing_len = match &header.backing_file {
        Some(b) => backing_len(&dir, name(b), opts, &mut chain)?,
        None => None,
    };
    let _replaced = lock_target(path, &mut chain)?;
    let (image, created) = open_image(&dir, image_name, opts, backing_len.is_some(), &mut chain)?;
    let result = (|| {
        let size = match (opts.size, created) {
            (size, _) if opts.exact_size => size,
            (0, false) => image
                .storage
                .len()
                .map_err(|e| Error::io(Op::GetLength, &image.what, 0, e))?,
            (0, true) => backing_len.unwrap_or(0),
            (size, _) => size,
        };
        check_size(size, &image.what)?;
        let geometry = Geometry::new(header.cluster_bits(), size);
        let temp = write_temp(&dir, file_name, &header, geometry)?;
        let placed = size_image(&image, size).and_then(|()| {
            dir.rename(&temp, Path::new(file_name))
                .and_then(|()| dir.sync())
                .map_err(|e| Error::io(Op::Rename, &Role::AddCow.describe(path), 0, e))
        });
        if placed.is_err() {
            let _ = dir.remove(&temp);
        }
        placed
    })();
    if result.is_err() && created {
        let _ = dir.remove(image_name);
    }
    result
}

fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn name(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// An open image file and its name for messages.
struct ImageFile {
    storage: FileStorage,
    what: String,
}

/// The backing file's length, opening its whole chain to record its files. With an explicit
/// size, a chain that cannot be opened to its end (a file missing, e.g. images created in any
/// order) is checked as far as it opened, and `None` is returned.
fn backing_len(
    dir: &Dir,
    backing: &Path,
    opts: &CreateOptions,
    chain: &mut Chain,
) -> Result<Option<u64>> {
    let open = OpenOptions {
        backing_format: opts.backing_format,
        force_share: true,
        confine: opts.confine,
        ..OpenOptions::default()
    };
    match open_backing(
        dir,
        backing,
        Format::Is(opts.backing_format),
        &open,
        1,
        chain,
    ) {
        Ok(b) => Ok(Some(b.size()?)),
        Err(e) if e.errno() == libc::ENOENT && opts.sized() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `.add-cow` file already at `path`, if any: not a file of the chain, not in use. Held
/// (locked) until the new one replaces it.
fn lock_target(path: &Path, chain: &mut Chain) -> Result<Option<FileStorage>> {
    let what = Role::AddCow.describe(path);
    let file = match open_path(path, Access::write(true, false), &what) {
        Ok(file) => file,
        Err(e) if e.errno() == libc::ENOENT => return Ok(None),
        Err(e) => return Err(e),
    };
    admit(
        &file,
        Use::top(true, false, false),
        Role::AddCow,
        &what,
        chain,
    )?;
    Ok(Some(FileStorage::new(file)))
}

/// Opens the image file, creating it when missing (and a size or a backing length says how
/// long it is); returns whether this call created it.
fn open_image(
    dir: &Dir,
    name: &Path,
    opts: &CreateOptions,
    has_backing: bool,
    chain: &mut Chain,
) -> Result<(ImageFile, bool)> {
    let what = Role::Image.describe(&dir.join(name));
    let mut access = Access::write(true, opts.confine);
    let (file, created) = match dir.open(name, access, &what) {
        Ok(file) => (file, false),
        Err(e) if e.errno() == libc::ENOENT && !opts.sized() && !has_backing => {
            return Err(Error::io(
                Op::Open,
                &format!("{what} (no size or backing file was given to create it)"),
                0,
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ))
        }
        Err(e) if e.errno() == libc::ENOENT => {
            access.create = Create::New;
            (dir.open(name, access, &what)?, true)
        }
        Err(e) => return Err(e),
    };
    let how = Use::top(true, false, opts.confine);
    match admit(&file, how, Role::Image, &what, chain) {
        Ok(()) => Ok((
            ImageFile {
                storage: FileStorage::new(file),
                what,
            },
            created,
        )),
        Err(e) => {
            if created {
                let _ = dir.remove(name);
            }
            Err(e)
        }
    }
}

/// Writes the header and an all-zero bitmap to a new temporary file beside `file_name`, durably;
/// returns the temporary name.
fn write_temp(dir: &Dir, file_name: &OsStr, header: &Header, g: Geometry) -> Result<PathBuf> {
    let access = Access {
        writable: true,
        create: Create::New,
        confine: false,
        direct: false,
    };
    let mut attempt = 0;
    let (temp, file) = loop {
        let mut n = OsString::from(".");
        n.push(file_name);
        n.push(format!(".addcow-tmp-{}-{attempt}", std::process::id()));
        let temp = PathBuf::from(n);
        let what = Role::AddCow.describe(&dir.join(&temp));
        match dir.open(&temp, access, &what) {
            Err(e) if e.errno() == libc::EEXIST && attempt < 16 => attempt += 1,
            other => break (temp, other?),
        }
    };
    let meta = FileStorage::new(file);
    let len = header.file_len(g.clusters());
    let written = meta
        .write_at(&header.to_bytes(), 0)
        .and_then(|()| meta.resize(len))
        .and_then(|()| meta.flush());
    if let Err(e) = written {
        let _ = dir.remove(&temp);
        return Err(Error::io(
            Op::Write,
            &Role::AddCow.describe(&dir.join(&temp)),
            0,
            e,
        ));
    }
    Ok(temp)
}

/// Gives the image file its size (when it differs) and makes it durable.
fn size_image(image: &ImageFile, size: u64) -> Result<()> {
    let ImageFile { storage, what } = image;
    if storage
        .len()
        .map_err(|e| Error::io(Op::GetLength, what, 0, e))?
        != size
    {
        storage
            .resize(size)
            .map_err(|e| Error::io(Op::Resize, what, size, e))?;
    }
    storage
        .flush()
        .map_err(|e| Error::io(Op::Flush, what, 0, e))
}
