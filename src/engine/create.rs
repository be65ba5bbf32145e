//! Creating an image: the raw image file (when asked) and the `.add-cow` file.

use super::open::{describe, resolve, same_file};
use super::{BackingFormat, Image, OpenOptions};
use crate::error::{Error, Result};
use crate::layout::{Geometry, Header};
use crate::storage::{FileStorage, Storage};
use std::fs::{File, OpenOptions as FsOpenOptions};
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
    /// a backing file, it is created with the backing file's length.
    pub size: u64,
}

/// Creates the `.add-cow` file at `path` (replacing any file there) with an all-unallocated
/// bitmap, and the image file as `opts.size` says. Refuses an image file that is the `.add-cow`
/// file itself or the backing file, and names of 1024 bytes or more, before touching any file.
pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<()> {
    let path = path.as_ref();
    let backing_name = opts
        .backing_file
        .as_deref()
        .map(|b| b.as_os_str().as_bytes())
        .filter(|b| !b.is_empty());
    let header = Header::new(opts.image_file.as_os_str().as_bytes(), backing_name)?;
    let image_path = resolve(path, &header.image_file);
    let backing_path = header.backing_file.as_deref().map(|b| resolve(path, b));
    if same_file(&image_path, path) {
        return Err(Error::invalid(format!(
            "the image file '{}' is the add-cow file itself",
            image_path.display()
        )));
    }
    if let Some(b) = &backing_path {
        if same_file(b, &image_path) {
            return Err(Error::invalid(format!(
                "the image file '{}' is also the backing file",
                image_path.display()
            )));
        }
        if same_file(b, path) {
            return Err(Error::invalid(format!(
                "the backing file '{}' is the add-cow file itself",
                b.display()
            )));
        }
    }
    let image = create_image_file(&image_path, backing_path.as_deref(), opts)?;
    let size = image
        .len()
        .map_err(|e| Error::io("get length of", &describe("image file", &image_path), 0, e))?;
    write_metadata(path, &header, Geometry::new(header.cluster_bits(), size))?;
    image
        .flush()
        .map_err(|e| Error::io("flush", &describe("image file", &image_path), 0, e))
}

fn create_image_file(
    path: &Path,
    backing: Option<&Path>,
    opts: &CreateOptions,
) -> Result<FileStorage> {
    let name = describe("image file", path);
    let open = |create: bool| -> Result<File> {
        FsOpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("open", &name, 0, e))
    };
    let size = match (opts.size, backing) {
        (0, _) if path.exists() => return Ok(FileStorage::new(open(false)?)),
        (0, Some(b)) => backing_len(b, opts.backing_format)?,
        (0, None) => {
            return Err(Error::io(
                "open (no size or backing file was given to create it)",
                &name,
                0,
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ))
        }
        (size, _) => size,
    };
    let image = FileStorage::new(open(true)?);
    image
        .resize(size)
        .map_err(|e| Error::io("resize", &name, size, e))?;
    Ok(image)
}

fn backing_len(path: &Path, format: BackingFormat) -> Result<u64> {
    match format {
        BackingFormat::Raw => std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| Error::io("open", &describe("backing file", path), 0, e)),
        BackingFormat::AddCow => {
            let opts = OpenOptions {
                no_backing: true,
                ..OpenOptions::default()
            };
            Ok(Image::open(path, &opts)?.size())
        }
    }
}

fn write_metadata(path: &Path, header: &Header, geometry: Geometry) -> Result<()> {
    let name = describe("add-cow file", path);
    let file = File::create(path).map_err(|e| Error::io("create", &name, 0, e))?;
    let meta = FileStorage::new(file);
    let len = header.bitmap_offset() + geometry.bitmap_len();
    meta.write_at(&header.to_bytes(), 0)
        .and_then(|()| meta.resize(len))
        .and_then(|()| meta.flush())
        .map_err(|e| Error::io("write", &name, 0, e))
}
