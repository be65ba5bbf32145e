//! Opening an image: read the header (only the header: the cost does not grow with the image),
//! then open the files it names, level by level down the backing chain, through the rules of
//! [`super::files`] (file types, identity, locks, confinement).

use super::check::check_bitmap_len;
use super::files::{admit, open_named, Chain, LocalFile, Role, Use};
use super::{Backing, Image};
use crate::error::{Error, Op, Result};
use crate::layout::{self, BackingFormat, MAX_SIZE};
pub use crate::mapping::read_header;
use crate::mapping::{Core, CoreOptions};
use crate::storage::{open_path, Access, Dir, Storage};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Backing chains deeper than this are refused.
pub(super) const MAX_CHAIN_DEPTH: usize = 16;

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Open for writing (default: read-only).
    pub writable: bool,
    /// Every write is durable when it returns (default: writeback until flush or close).
    pub writethrough: bool,
    /// Do not open the backing file: unallocated clusters read as zeros.
    pub no_backing: bool,
    /// Format of the backing file.
    pub backing_format: BackingFormat,
    /// Read-only opens only: lock nothing that conflicts with other users, even writers
    /// (`qemu-img -U`). The content may change underneath.
    pub force_share: bool,
    /// Every name in every header of the chain must resolve beneath the directory of the
    /// `.add-cow` file that holds it: no absolute names, no `..` or symlink escapes (`EACCES`).
    /// For images made by someone else.
    pub confine: bool,
    /// Cap on the memory of cached bitmap pages, in bytes: clean pages are evicted above it
    /// (dirty ones stay until written back). 0 = the default, 32 MiB; less than a page means
    /// one page.
    pub bitmap_cache_bytes: u64,
    /// Direct I/O (QEMU's `cache=none`): every file of the chain is opened with `O_DIRECT`, so
    /// that reads and writes bypass the page cache (`flush` still makes them durable). Requests
    /// of any alignment work: unaligned ones go through aligned bounce buffers
    /// (`DirectStorage`). A file system without direct I/O refuses the open
    /// (`EINVAL`).
    pub direct: bool,
    /// Copy-on-read (QEMU's `copy-on-read`): a read of unallocated clusters within the backing
    /// data also hydrates them (`Image::hydrate`). Writable opens only.
    pub copy_on_read: bool,
    /// Open the backing file (of the top image only) read-write and locked for writing, as a
    /// commit needs (`Image::commit`). An add-cow backing image is opened writable, its own
    /// backing file read-only.
    pub backing_writable: bool,
}

impl OpenOptions {
    /// Refuses combinations that make no sense: force share on a writable open.
    fn check(&self) -> Result<()> {
        if self.writable && self.force_share {
            return Err(Error::invalid(
                "force share is for read-only opens: a writer must lock its files",
            ));
        }
        match self.copy_on_read && !self.writable {
            true => Err(Error::invalid(
                "copy-on-read writes the image file: it needs a writable open",
            )),
            false => Ok(()),
        }
    }
}

/// Already-open byte sources, for hosts that supply their own I/O.
pub struct Parts {
    /// The `.add-cow` file and its name for messages.
    pub meta: (Box<dyn Storage>, String),
    /// The raw image file and its name for messages.
    pub image: (Box<dyn Storage>, String),
    /// The backing source, if any.
    pub backing: Option<Backing>,
}

impl Image {
    /// Opens the `.add-cow` file at `path` and the files its header names; relative names
    /// resolve against `path`'s directory. Locks every file of the chain (see
    /// `storage::Lock`): `EBUSY` when another user conflicts.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Image> {
        let path = path.as_ref();
        opts.check()?;
        let how = Use::top(opts.writable, opts.force_share, opts.confine).direct(opts.direct);
        let what = Role::AddCow.describe(path);
        let access = Access {
            confine: false,
            ..how.access()
        };
        let meta = LocalFile::new(open_path(path, access, &what)?, how, &what)?;
        let mut chain = Chain::default();
        admit(meta.file(), how, Role::AddCow, &what, &mut chain)?;
        let meta = (meta.into_storage(), what);
        open_level(&Dir::of(path)?, meta, 1, how, opts, &mut chain)
    }

    /// Builds an image from byte sources the caller opened. Nothing is locked: the caller owns
    /// the sources.
    pub fn open_parts(parts: Parts, opts: &OpenOptions) -> Result<Image> {
        opts.check()?;
        let Parts {
            meta: (meta, meta_name),
            image: (data, data_name),
            backing,
        } = parts;
        let header = read_header(meta.as_ref(), &meta_name)?;
        let size = data
            .len()
            .map_err(|e| Error::io(Op::GetLength, &data_name, 0, e))?;
        check_size(size, &data_name)?;
        let core_opts = CoreOptions {
            writable: opts.writable,
            bitmap_cache_bytes: opts.bitmap_cache_bytes,
        };
        let core = Core::new((meta, meta_name), header, size, core_opts);
        let backing = if opts.no_backing { None } else { backing };
        let mut image = Image::from_core(core, (data, data_name), backing, opts.writethrough)?;
        image.copy_on_read = opts.copy_on_read;
        Ok(image)
    }
}

/// `EFBIG` for an image larger than the library supports.
pub(super) fn check_size(size: u64, what: &str) -> Result<()> {
    if size <= MAX_SIZE {
        return Ok(());
    }
    Err(Error::TooLarge(format!(
        "{what}: {size} bytes is larger than the largest image supported ({MAX_SIZE} bytes, \
         64 PiB)"
    )))
}

fn name(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// Opens one add-cow image of a chain, `level` 1 being the top, from its open `.add-cow` file
/// (`meta`, checked against the chain and locked): its image file, then its backing file, each
/// checked and locked.
fn open_level(
    dir: &Dir,
    (meta, meta_name): (Box<dyn Storage>, String),
    level: usize,
    how: Use,
    opts: &OpenOptions,
    chain: &mut Chain,
) -> Result<Image> {
    let header = read_header(meta.as_ref(), &meta_name)?;
    let (data, data_name) = open_named(dir, name(&header.image_file), how, Role::Image, chain)?;
    if opts.writable {
        check_bitmap_len(
            meta.as_ref(),
            &meta_name,
            &header,
            (data.as_ref(), &data_name),
        )?;
    }
    let format = match (header.backing_format, opts.backing_format) {
        // Layout 2: the header says.
        (Some(format), _) => Format::Is(format),
        // Layout 1: the opener says for the top's backing file; below, when chains were asked
        // for, the magic decides.
        (None, asked) if level == 1 => Format::Is(asked),
        (None, BackingFormat::AddCow) => Format::Sniff,
        (None, BackingFormat::Raw) => Format::Is(BackingFormat::Raw),
    };
    let (mut backing, mut deferred) = (None, None);
    if let (Some(file), false) = (&header.backing_file, opts.no_backing) {
        match header.all_allocated() {
            // Every cluster is in the image file: the backing file is not opened (nor needed)
            // unless a truncate must learn its length.
            true => deferred = Some(defer(dir, name(file), format, opts, level, chain)?),
            false => backing = Some(open_backing(dir, name(file), format, opts, level, chain)?),
        }
    }
    let mut image = Image::open_parts(
        Parts {
            meta: (meta, meta_name),
            image: (data, data_name),
            backing,
        },
        opts,
    )?;
    image.defer_backing(deferred);
    Ok(image)
}

/// Opens a backing file later, as [`open_backing`] would have at open, with the chain as it was
/// then.
pub(super) type Deferred = Box<dyn Fn() -> Result<Backing> + Send + Sync>;

fn defer(
    dir: &Dir,
    name: &Path,
    format: Format,
    opts: &OpenOptions,
    parent: usize,
    chain: &Chain,
) -> Result<Deferred> {
    let (dir, name, opts, chain) = (
        dir.try_clone()?,
        name.to_path_buf(),
        opts.clone(),
        chain.clone(),
    );
    Ok(Box::new(move || {
        open_backing(&dir, &name, format, &opts, parent, &mut chain.clone())
    }))
}

/// How the format of a backing file is decided.
#[derive(Debug, Clone, Copy)]
pub(super) enum Format {
    /// Known: a layout-2 header says, or the opener does for a layout-1 image's backing file
    /// (add-cow then means a bad header is an error).
    Is(BackingFormat),
    /// Below a layout-1 image, when chains were asked for: add-cow if the file carries the
    /// magic, raw otherwise.
    Sniff,
}

/// Opens the backing file `name` of the image whose directory is `dir`, read-only: raw bytes,
/// or another add-cow image with its own chain, as `format` decides. `parent` is the level of
/// the image whose backing file it is (1: the top).
pub(super) fn open_backing(
    dir: &Dir,
    name: &Path,
    format: Format,
    opts: &OpenOptions,
    parent: usize,
    chain: &mut Chain,
) -> Result<Backing> {
    let how = match opts.backing_writable {
        true => Use::top(true, false, opts.confine),
        false => Use::backing(opts.force_share, opts.confine),
    }
    .direct(opts.direct);
    let path = dir.join(name);
    let what = Role::Backing.describe(&path);
    let local = LocalFile::new(dir.open(name, how.access(), &what)?, how, &what)?;
    let add_cow = match format {
        Format::Is(BackingFormat::Raw) => false,
        Format::Is(BackingFormat::AddCow) => true,
        Format::Sniff => has_magic(local.storage(), &what)?,
    };
    if !add_cow {
        admit(local.file(), how, Role::Backing, &what, chain)?;
        return Ok(Backing::raw(local.into_storage(), what));
    }
    let what = Role::AddCow.describe(&path);
    if parent >= MAX_CHAIN_DEPTH {
        return Err(Error::invalid(format!(
            "backing chain deeper than {MAX_CHAIN_DEPTH} images at {what}"
        )));
    }
    admit(local.file(), how, Role::AddCow, &what, chain)?;
    let lower = OpenOptions {
        writable: opts.backing_writable,
        writethrough: false,
        no_backing: false,
        copy_on_read: false,
        backing_writable: false,
        ..opts.clone()
    };
    let dir = dir.of_name(name, opts.confine)?;
    let meta = (local.into_storage(), what);
    let image = open_level(&dir, meta, parent + 1, how, &lower, chain)?;
    Ok(Backing::AddCow(Box::new(image)))
}

fn has_magic(storage: &dyn Storage, name: &str) -> Result<bool> {
    let mut head = [0u8; 12];
    storage
        .read_at(&mut head, 0)
        .map_err(|e| Error::io(Op::Read, name, 0, e))?;
    Ok(layout::probe(&head) == 100)
}
