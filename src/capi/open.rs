//! Opening images from C: `addcow_open`/`addcow_open_io` with flags, and their extensible
//! forms taking `AddCowOpenOptions`.

use super::boundary::{bad_arg, c_str, ffi, store_handle};
use super::host::{AddCowIo, HostStorage, Needs, BACKING, IMAGE, META};
use super::versioned::{self, Versioned};
use super::AddCowImage;
use crate::engine::{Backing, BackingFormat, Image, OpenOptions, Parts};
use crate::error::Result;
use std::ffi::{c_char, c_int, OsStr};
use std::mem::{offset_of, size_of};
use std::os::unix::ffi::OsStrExt;

/// Open for reading and writing (default: read-only).
pub const ADDCOW_OPEN_RDWR: u32 = 1 << 0;
/// Every write is durable when it returns (default: writeback until flush or close).
pub const ADDCOW_OPEN_WRITETHROUGH: u32 = 1 << 1;
/// Do not open the backing file: unallocated clusters read as zeros.
pub const ADDCOW_OPEN_NO_BACKING: u32 = 1 << 2;
/// The backing file is an add-cow image (default: raw). Its own backing file is opened as
/// add-cow when it carries the add-cow magic, as raw otherwise. Not for `addcow_open_io`.
pub const ADDCOW_OPEN_BACKING_ADDCOW: u32 = 1 << 3;
/// Read-only opens only (-EINVAL with `ADDCOW_OPEN_RDWR`): take no lock that conflicts with
/// other users, not even with a writer (`qemu-img -U`). The content may change underneath.
pub const ADDCOW_OPEN_FORCE_SHARE: u32 = 1 << 4;
/// Every name in every header of the chain must resolve beneath the directory of the `.add-cow`
/// file that holds it: absolute names, `..` or symlinks leading out of it, and `/proc` magic
/// links give -EACCES. Use it for images you did not make (a server opening uploaded images).
/// Not for `addcow_open_io` (the host resolves names itself).
pub const ADDCOW_OPEN_CONFINE: u32 = 1 << 5;
/// Direct I/O, QEMU's `cache=none`: every file of the chain (the `.add-cow` file, the image
/// file, the backing files) is opened with `O_DIRECT`, so that reads and writes bypass the page
/// cache (`addcow_flush` still makes them durable). Requests of any offset, length and buffer
/// alignment work: the library takes the file system's alignment (`statx` `STATX_DIOALIGN`, or
/// 4096) and moves unaligned requests through aligned bounce buffers; requests aligned to it in
/// offset, length and memory (4 KiB-aligned buffers are, on common file systems) go to the
/// kernel without a copy. The file system must support direct I/O: one that does not gives
/// -EINVAL at open (tmpfs before Linux 6.6, procfs, some FUSE file systems). Not for
/// `addcow_open_io` (-EINVAL: the host does its own I/O).
pub const ADDCOW_OPEN_DIRECT: u32 = 1 << 6;

/// Copy-on-read (QEMU's `copy-on-read`): a read of unallocated clusters within the backing
/// data also hydrates them (as `addcow_hydrate` does): it copies them into the image file and
/// marks them allocated, so the next read of them comes from the image file. A read that does
/// so returns only after the copy (and its error, if the copy fails); it is durable as a write
/// is. Clusters past the backing file's end are left alone. Read-write opens only: -EINVAL with
/// a read-only open.
pub const ADDCOW_OPEN_COPY_ON_READ: u32 = 1 << 7;

const KNOWN_FLAGS: u32 = ADDCOW_OPEN_RDWR
    | ADDCOW_OPEN_WRITETHROUGH
    | ADDCOW_OPEN_NO_BACKING
    | ADDCOW_OPEN_BACKING_ADDCOW
    | ADDCOW_OPEN_FORCE_SHARE
    | ADDCOW_OPEN_CONFINE
    | ADDCOW_OPEN_DIRECT
    | ADDCOW_OPEN_COPY_ON_READ;

/// How `addcow_open_ext` and `addcow_open_io_ext` open an image. Set `struct_size` to
/// `sizeof(AddCowOpenOptions)` as compiled by the caller: fields past it take their zero
/// default, and a larger struct from a newer header is accepted when its extra bytes are zero.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AddCowOpenOptions {
    /// sizeof(AddCowOpenOptions) as the caller compiled it.
    pub struct_size: u32,
    /// `ADDCOW_OPEN_*` flags.
    pub flags: u32,
    /// Most bytes of bitmap kept in memory: clean bitmap pages beyond it are evicted (dirty
    /// ones stay until written back). 0 = the default, 32 MiB (the bitmap of 16 TiB at 64 KiB
    /// clusters); less than one 4 KiB page means one page. Backing images down the chain use
    /// the same cap each.
    pub bitmap_cache_size: u64,
}

// SAFETY: repr(C), starts with struct_size, integers only.
unsafe impl Versioned for AddCowOpenOptions {
    const NAME: &'static str = "AddCowOpenOptions";
    const MIN_SIZE: usize = offset_of!(AddCowOpenOptions, flags) + size_of::<u32>();
}

fn open_options(o: &AddCowOpenOptions) -> Result<OpenOptions> {
    let flags = o.flags;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(bad_arg(&format!(
            "unknown open flags {:#x}",
            flags & !KNOWN_FLAGS
        )));
    }
    let has = |f: u32| flags & f != 0;
    Ok(OpenOptions {
        writable: has(ADDCOW_OPEN_RDWR),
        writethrough: has(ADDCOW_OPEN_WRITETHROUGH),
        no_backing: has(ADDCOW_OPEN_NO_BACKING),
        backing_format: match has(ADDCOW_OPEN_BACKING_ADDCOW) {
            false => BackingFormat::Raw,
            true => BackingFormat::AddCow,
        },
        force_share: has(ADDCOW_OPEN_FORCE_SHARE),
        confine: has(ADDCOW_OPEN_CONFINE),
        bitmap_cache_bytes: o.bitmap_cache_size,
        direct: has(ADDCOW_OPEN_DIRECT),
        copy_on_read: has(ADDCOW_OPEN_COPY_ON_READ),
        backing_writable: false,
    })
}

fn with_flags(flags: u32) -> AddCowOpenOptions {
    AddCowOpenOptions {
        struct_size: size_of::<AddCowOpenOptions>() as u32,
        flags,
        bitmap_cache_size: 0,
    }
}

/// The caller's options, or the defaults for NULL.
///
/// # Safety
/// `opts` is NULL or points at `opts->struct_size` readable bytes.
unsafe fn read_options(opts: *const AddCowOpenOptions) -> Result<OpenOptions> {
    match opts.is_null() {
        true => open_options(&with_flags(0)),
        // SAFETY: non-NULL, and the caller's guarantee on its size.
        false => open_options(&unsafe { versioned::read(opts)? }),
    }
}

/// Opens, and stores the new handle in `*out` (NULL on failure).
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn hand_out(
    out: *mut *mut AddCowImage,
    open: impl FnOnce() -> Result<Image>,
) -> Result<c_int> {
    // SAFETY: the caller's guarantee, forwarded.
    unsafe { store_handle(out, || open().map(AddCowImage::new)) }.map(|()| 0)
}

/// # Safety
/// `path` is NULL or NUL-terminated; `out` is NULL or writable.
unsafe fn open_path(
    path: *const c_char,
    opts: impl FnOnce() -> Result<OpenOptions>,
    out: *mut *mut AddCowImage,
) -> Result<c_int> {
    // SAFETY: the caller's guarantees, forwarded.
    unsafe {
        hand_out(out, || {
            let path = OsStr::from_bytes(c_str(path, "path")?.to_bytes());
            Image::open(path, &opts()?)
        })
    }
}

/// Opens the `.add-cow` file at `path` and the files its header names (relative names resolve
/// against `path`'s directory), and locks them as QEMU does: a read-write open excludes every
/// other user of its `.add-cow` and image files, a read-only open excludes writers, and every
/// backing file down the chain is kept from writers. `flags`: `ADDCOW_OPEN_*`; unknown bits
/// give -EINVAL. On success stores a new handle in `*out` and returns 0; on failure stores NULL
/// and returns -errno: -ENOENT a missing file, -EBUSY a file in use by another process (or
/// another open handle) whose lock conflicts, -EINVAL a malformed header, a file that is not a
/// regular file or block device, or a chain naming one file twice, -ENOTSUP an unknown version,
/// -EFBIG an image larger than `ADDCOW_MAX_SIZE`, -EACCES a name refused by
/// `ADDCOW_OPEN_CONFINE`, -EINVAL with `ADDCOW_OPEN_DIRECT` a file on a file system without
/// direct I/O. Opening reads only the header: it costs the same at any size.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_open(
    path: *const c_char,
    flags: u32,
    out: *mut *mut AddCowImage,
) -> c_int {
    ffi("addcow_open", || {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { open_path(path, || open_options(&with_flags(flags)), out) }
    })
}

/// `addcow_open` with options: `opts` NULL means the defaults (read-only).
///
/// # Safety
/// `path` is NULL or NUL-terminated; `opts` is NULL or points at `opts->struct_size` readable
/// bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_open_ext(
    path: *const c_char,
    opts: *const AddCowOpenOptions,
    out: *mut *mut AddCowImage,
) -> c_int {
    ffi("addcow_open_ext", || {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { open_path(path, || read_options(opts), out) }
    })
}

/// A file of an image the library flushes: every callback but `truncate` is required.
///
/// # Safety
/// `table` is NULL or a valid table.
unsafe fn host(table: *const AddCowIo, arg: &str, role: &str) -> Result<HostStorage> {
    // SAFETY: the caller's guarantee, forwarded.
    unsafe { HostStorage::new(table, (arg, role), Needs::ReadWriteFlush) }
}

/// # Safety
/// `meta`, `image`, `backing` are NULL or valid tables.
unsafe fn open_host(
    meta: *const AddCowIo,
    image: *const AddCowIo,
    backing: *const AddCowIo,
    opts: OpenOptions,
) -> Result<Image> {
    if opts.backing_format != BackingFormat::Raw {
        return Err(bad_arg(
            "a host-supplied backing file is raw: ADDCOW_OPEN_BACKING_ADDCOW is refused",
        ));
    }
    if opts.confine {
        return Err(bad_arg(
            "the host resolves the names of host-supplied files: ADDCOW_OPEN_CONFINE is refused",
        ));
    }
    if opts.direct {
        return Err(bad_arg(
            "the host does the I/O of host-supplied files: ADDCOW_OPEN_DIRECT is refused",
        ));
    }
    let backing = match backing.is_null() || opts.no_backing {
        true => None,
        // SAFETY: the caller's guarantee on the table, forwarded.
        false => Some(Backing::raw(
            Box::new(unsafe { host(backing, "backing", BACKING)? }),
            BACKING,
        )),
    };
    let parts = Parts {
        // SAFETY: as above.
        meta: (Box::new(unsafe { host(meta, "meta", META)? }), META.into()),
        // SAFETY: as above.
        image: (
            Box::new(unsafe { host(image, "image", IMAGE)? }),
            IMAGE.into(),
        ),
        backing,
    };
    Image::open_parts(parts, &opts)
}

/// Opens an image whose files the host supplies: `meta` is the `.add-cow` file, `image` the raw
/// image file, `backing` the raw backing file or NULL for none. `flags` as for `addcow_open`
/// (`ADDCOW_OPEN_BACKING_ADDCOW`, `ADDCOW_OPEN_CONFINE` and `ADDCOW_OPEN_DIRECT` give -EINVAL:
/// a host backing is raw, and the host resolves names and does its own I/O). The host owns its
/// files: nothing is locked (so `ADDCOW_OPEN_FORCE_SHARE` changes nothing, and is refused with
/// `ADDCOW_OPEN_RDWR` as everywhere); lock them the host's way. The tables are copied; the host
/// keeps each `opaque` valid, and its callbacks callable from any thread, until
/// `addcow_close` returns. Use `addcow_header_read_io` first to learn which files to supply.
/// -EFBIG when the image file is larger than `ADDCOW_MAX_SIZE`.
///
/// # Safety
/// `meta`, `image`, `backing` are NULL or valid tables; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_open_io(
    meta: *const AddCowIo,
    image: *const AddCowIo,
    backing: *const AddCowIo,
    flags: u32,
    out: *mut *mut AddCowImage,
) -> c_int {
    ffi("addcow_open_io", || {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe {
            hand_out(out, || {
                open_host(meta, image, backing, open_options(&with_flags(flags))?)
            })
        }
    })
}

/// `addcow_open_io` with options: `opts` NULL means the defaults (read-only).
///
/// # Safety
/// `meta`, `image`, `backing` are NULL or valid tables; `opts` is NULL or points at
/// `opts->struct_size` readable bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_open_io_ext(
    meta: *const AddCowIo,
    image: *const AddCowIo,
    backing: *const AddCowIo,
    opts: *const AddCowOpenOptions,
    out: *mut *mut AddCowImage,
) -> c_int {
    ffi("addcow_open_io_ext", || {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { hand_out(out, || open_host(meta, image, backing, read_options(opts)?)) }
    })
}
