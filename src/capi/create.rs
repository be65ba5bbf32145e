//! `addcow_create` and its versioned options struct.

use super::boundary::{bad_arg, c_str, ffi, opt_c_str};
use super::host::{AddCowIo, HostStorage, Needs, META};
use super::versioned::{self, Versioned};
use crate::engine::{create, create_on, BackingFormat, CreateOptions};
use crate::error::Result;
use std::ffi::{c_char, c_int, CStr, OsStr};
use std::mem::{offset_of, size_of};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Create flag: the image and backing names must resolve beneath the `.add-cow` file's
/// directory, as `ADDCOW_OPEN_CONFINE` checks them at open (-EACCES otherwise).
pub const ADDCOW_CREATE_CONFINE: u32 = 1 << 0;
/// Create flag: `size` is the virtual size even when it is 0: the image file is created if
/// missing and resized to `size`, so 0 makes an empty image (`qemu-img create IMG 0`). Without
/// it, a `size` of 0 takes the size from the image file or the backing file.
pub const ADDCOW_CREATE_SIZE_EXACT: u32 = 1 << 1;
const CREATE_FLAGS: u32 = ADDCOW_CREATE_CONFINE | ADDCOW_CREATE_SIZE_EXACT;

/// What `addcow_create` makes. Set `struct_size` to `sizeof(AddCowCreateOptions)` as compiled
/// by the caller: fields past it take their zero default, and a larger struct from a newer
/// header is accepted when its extra bytes are zero.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AddCowCreateOptions {
    /// sizeof(AddCowCreateOptions) as the caller compiled it.
    pub struct_size: u32,
    /// 0 = the default = 1 = the seed's layout; 2 = the series' final layout (names by offset
    /// and length, feature bits, configurable clusters); others give -ENOTSUP.
    pub layout: u32,
    /// Name of the raw image file (required), stored as given; relative names resolve against
    /// the `.add-cow` file's directory.
    pub image_file: *const c_char,
    /// Name of the backing file; NULL or "" = none.
    pub backing_file: *const c_char,
    /// Format of the backing file: NULL = "raw"; "add-cow" allowed.
    pub backing_fmt: *const c_char,
    /// Above 0 (or with `ADDCOW_CREATE_SIZE_EXACT`): the image file is created if missing and
    /// resized to `size`. 0: the image file must exist and gives the size, or, missing with a
    /// backing file, is created with its length.
    pub size: u64,
    /// 0 = the layout's default (65536); layout 1 accepts only 0 or 65536, layout 2 a power of
    /// two from 4096 to 2 MiB (-EINVAL otherwise).
    pub cluster_size: u32,
    /// `ADDCOW_CREATE_*` flags; unknown bits give -EINVAL.
    pub flags: u32,
}

// SAFETY: repr(C), starts with struct_size, integers and nullable pointers only.
unsafe impl Versioned for AddCowCreateOptions {
    const NAME: &'static str = "AddCowCreateOptions";
    /// The fields every caller must provide: up to and including `size`.
    const MIN_SIZE: usize = offset_of!(AddCowCreateOptions, size) + size_of::<u64>();
}

fn to_path(s: &CStr) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(s.to_bytes()))
}

/// A backing format argument: NULL (or "") and "raw" are raw, "add-cow" is add-cow; others
/// give `EINVAL`.
pub(super) fn backing_format(fmt: Option<&CStr>) -> Result<BackingFormat> {
    match fmt.map(CStr::to_bytes) {
        None | Some(b"raw") => Ok(BackingFormat::Raw),
        Some(b"add-cow") => Ok(BackingFormat::AddCow),
        Some(other) => Err(bad_arg(&format!(
            "backing_fmt '{}' is not supported (raw or add-cow)",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// # Safety
/// The string fields are NULL or NUL-terminated.
unsafe fn to_options(o: &AddCowCreateOptions) -> Result<CreateOptions> {
    if o.flags & !CREATE_FLAGS != 0 {
        return Err(bad_arg(&format!(
            "unknown create flags {:#x}",
            o.flags & !CREATE_FLAGS
        )));
    }
    // SAFETY: the caller's guarantee on the string fields.
    let (image, backing, fmt) = unsafe {
        (
            c_str(o.image_file, "image_file")?,
            opt_c_str(o.backing_file),
            opt_c_str(o.backing_fmt),
        )
    };
    Ok(CreateOptions {
        image_file: to_path(image),
        backing_file: backing.map(to_path),
        backing_format: backing_format(fmt)?,
        size: o.size,
        exact_size: o.flags & ADDCOW_CREATE_SIZE_EXACT != 0,
        confine: o.flags & ADDCOW_CREATE_CONFINE != 0,
        layout: o.layout,
        cluster_size: u64::from(o.cluster_size),
    })
}

/// Creates the `.add-cow` file at `path` (replacing any file there that is not in use) and, as
/// `opts->size` says, the image file. Atomic: the `.add-cow` file appears complete or not at
/// all, and a failure removes the files this call created. Before touching any file it refuses
/// (-EINVAL) an image file that is the `.add-cow` file or any file of the backing chain, and
/// names of 1024 bytes or more; -EFBIG for sizes above `ADDCOW_MAX_SIZE`; -EBUSY when the image
/// file or the `.add-cow` file being replaced is in use; -EACCES for a name that leaves the
/// directory under `ADDCOW_CREATE_CONFINE`. 0 or -errno.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `opts` is NULL or points at `opts->struct_size` readable
/// bytes whose string fields are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn addcow_create(
    path: *const c_char,
    opts: *const AddCowCreateOptions,
) -> c_int {
    ffi("addcow_create", || {
        // SAFETY: the caller's guarantees; NULLs are refused.
        unsafe {
            let p = c_str(path, "path")?;
            if opts.is_null() {
                return Err(bad_arg("opts is NULL"));
            }
            create(to_path(p), &to_options(&versioned::read(opts)?)?).map(|()| 0)
        }
    })
}

/// Creates the `.add-cow` file through the host's I/O (a non-local protocol): writes the header
/// `opts` describes and an all-unallocated bitmap for an image of exactly `opts->size` bytes (0
/// too; `ADDCOW_CREATE_SIZE_EXACT` is implied), then flushes. The host creates and sizes the
/// image file itself, and checks the backing file; nothing but `meta` is touched. `meta`
/// needs `preadv`, `pwritev`, `flush` and `get_length`; with `truncate` the file is cut to
/// zero and grown to its length (the bitmap reads zeros, sparse where the host can), without
/// it zeros are written over the bitmap. The header is written last: a crash before the flush
/// leaves no add-cow header, never one over a stale bitmap. 0, or -EINVAL (NULL arguments, a
/// missing callback, `ADDCOW_CREATE_CONFINE`: the host resolves names, what no layout allows),
/// -ENOTSUP (an unknown layout), -EFBIG (above `ADDCOW_MAX_SIZE`), or the host's -errno.
///
/// # Safety
/// `meta` is NULL or a valid table whose callbacks may be called during the call; `opts` is
/// NULL or points at `opts->struct_size` readable bytes whose string fields are NULL or
/// NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn addcow_create_io(
    meta: *const AddCowIo,
    opts: *const AddCowCreateOptions,
) -> c_int {
    ffi("addcow_create_io", || {
        if opts.is_null() {
            return Err(bad_arg("opts is NULL"));
        }
        // SAFETY: the caller's guarantees on both.
        let (storage, opts) = unsafe {
            (
                HostStorage::new(meta, ("meta", META), Needs::ReadWriteFlush)?,
                to_options(&versioned::read(opts)?)?,
            )
        };
        create_on(&storage, META, &opts).map(|()| 0)
    })
}
