//! Opening an image: read the header (only the header: the cost does not grow with the image),
//! resolve and open the files it names, refuse names that point back at the image itself.

use super::{claims::Claims, Backing, Image, State};
use crate::bitmap::Bitmap;
use crate::error::{Error, Result};
use crate::layout::{self, Geometry, Header, HEADER_SIZE};
use crate::storage::{FileStorage, Storage};
use crossbeam_utils::sync::ShardedLock;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions as FsOpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Backing chains deeper than this are refused.
pub const MAX_CHAIN_DEPTH: usize = 16;

/// What the backing file is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackingFormat {
    /// Raw bytes (the default).
    #[default]
    Raw,
    /// Another add-cow image. Its own backing file is opened as add-cow when it carries the
    /// add-cow magic and as raw otherwise: asking for add-cow opts in to chains.
    AddCow,
}

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
    /// Cap on the memory of cached bitmap pages, in bytes: clean pages are evicted above it
    /// (dirty ones stay until written back). 0 = the default, 32 MiB; less than a page means
    /// one page.
    pub bitmap_cache_bytes: u64,
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

/// Reads and validates the header of a `.add-cow` file, e.g. to learn which files to open.
/// `name` says which file it is in error messages.
pub fn read_header(meta: &dyn Storage, name: &str) -> Result<Header> {
    let len = meta
        .len()
        .map_err(|e| Error::io("get length of", name, 0, e))?;
    let mut buf = vec![0u8; (len.min(HEADER_SIZE as u64)) as usize];
    meta.read_at(&mut buf, 0)
        .map_err(|e| Error::io("read header of", name, 0, e))?;
    Header::parse(&buf).map_err(|e| match e {
        Error::Invalid(msg) => Error::Invalid(format!("{name}: {msg}")),
        Error::Unsupported(msg) => Error::Unsupported(format!("{name}: {msg}")),
        other => other,
    })
}

impl Image {
    /// Opens the `.add-cow` file at `path` and the files its header names; relative names
    /// resolve against `path`'s directory.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Image> {
        open_chained(path.as_ref(), opts, &mut Vec::new())
    }

    /// Builds an image from byte sources the caller opened.
    pub fn open_parts(parts: Parts, opts: &OpenOptions) -> Result<Image> {
        let Parts {
            meta: (meta, meta_name),
            image: (data, data_name),
            backing,
        } = parts;
        let header = read_header(meta.as_ref(), &meta_name)?;
        let size = data
            .len()
            .map_err(|e| Error::io("get length of", &data_name, 0, e))?;
        let geometry = Geometry::new(header.cluster_bits(), size);
        Ok(Image {
            meta,
            meta_name,
            data,
            data_name,
            backing: if opts.no_backing { None } else { backing },
            header,
            read_only: !opts.writable,
            writethrough: opts.writethrough,
            state: ShardedLock::new(State {
                bitmap: Bitmap::new(geometry.clusters(), opts.bitmap_cache_bytes),
                geometry,
            }),
            claims: Claims::new(),
            commit: Mutex::new(()),
            closed: false,
        })
    }
}

/// (device, inode) of a file, to recognise the same file under two names.
type FileId = (u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether two names denote the same file: the same inode when both exist, otherwise the same
/// canonical path (a missing file's parent directory resolved, so `..` and symlinks count).
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (file_id(a), file_id(b)) {
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

/// A name from the header, resolved against the `.add-cow` file's directory.
pub(super) fn resolve(meta_path: &Path, name: &[u8]) -> PathBuf {
    let name = Path::new(OsStr::from_bytes(name));
    match meta_path.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_path_buf(),
    }
}

pub(super) fn describe(role: &str, path: &Path) -> String {
    format!("{role} '{}'", path.display())
}

pub(super) fn open_file(path: &Path, writable: bool, role: &str) -> Result<File> {
    FsOpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| Error::io("open", &describe(role, path), 0, e))
}

fn open_chained(path: &Path, opts: &OpenOptions, chain: &mut Vec<FileId>) -> Result<Image> {
    let meta_name = describe("add-cow file", path);
    let meta = FileStorage::new(open_file(path, opts.writable, "add-cow file")?);
    if let Some(id) = file_id(path) {
        if chain.contains(&id) {
            return Err(Error::invalid(format!(
                "backing chain loop: {meta_name} is its own backing file"
            )));
        }
        chain.push(id);
    }
    let header = read_header(&meta, &meta_name)?;
    let image_path = resolve(path, &header.image_file);
    if same_file(&image_path, path) {
        return Err(Error::invalid(format!(
            "{meta_name}: the image file '{}' is the add-cow file itself",
            image_path.display()
        )));
    }
    let data_name = describe("image file", &image_path);
    let data = FileStorage::new(open_file(&image_path, opts.writable, "image file")?);
    let backing = match (&header.backing_file, opts.no_backing) {
        (Some(name), false) => {
            let backing_path = resolve(path, name);
            if same_file(&backing_path, &image_path) {
                return Err(Error::invalid(format!(
                    "{meta_name}: the backing file '{}' is the image file",
                    backing_path.display()
                )));
            }
            Some(open_backing(&backing_path, opts.backing_format, chain)?)
        }
        _ => None,
    };
    Image::open_parts(
        Parts {
            meta: (Box::new(meta), meta_name),
            image: (Box::new(data), data_name),
            backing,
        },
        opts,
    )
}

fn open_backing(path: &Path, format: BackingFormat, chain: &mut Vec<FileId>) -> Result<Backing> {
    let name = describe("backing file", path);
    let storage = FileStorage::new(open_file(path, false, "backing file")?);
    let add_cow = match format {
        BackingFormat::Raw => false,
        // The direct backing file must be add-cow (a bad header is an error); deeper levels are
        // add-cow when they carry the magic, raw otherwise.
        BackingFormat::AddCow => chain.len() == 1 || has_magic(&storage, &name)?,
    };
    if !add_cow {
        return Ok(Backing::raw(Box::new(storage), name));
    }
    if chain.len() >= MAX_CHAIN_DEPTH {
        return Err(Error::invalid(format!(
            "backing chain deeper than {MAX_CHAIN_DEPTH} images at {name}"
        )));
    }
    let opts = OpenOptions {
        backing_format: BackingFormat::AddCow,
        ..OpenOptions::default()
    };
    Ok(Backing::AddCow(Box::new(open_chained(path, &opts, chain)?)))
}

fn has_magic(storage: &FileStorage, name: &str) -> Result<bool> {
    let mut head = [0u8; 12];
    storage
        .read_at(&mut head, 0)
        .map_err(|e| Error::io("read", name, 0, e))?;
    Ok(layout::probe(&head) == 100)
}
