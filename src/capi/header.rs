//! Reading a header before opening anything else: a host that supplies its own I/O learns here
//! which image and backing files to open.

use super::boundary::{bad_arg, c_str, ffi};
use super::host::{AddCowIo, HostStorage, Needs, META};
use crate::engine::read_header;
use crate::error::{Error, Result};
use crate::storage::{open_path, Access, FileStorage};
use std::ffi::{c_char, c_int, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A parsed `.add-cow` header. Opaque: read it with `addcow_header_read` or
/// `addcow_header_read_io`, free it with `addcow_header_free`.
pub struct AddCowHeader {
    layout: u32,
    cluster_size: u32,
    image_file: CString,
    backing_file: Option<CString>,
}

/// Reads a header and stores a new handle for it in `*out` (NULL on failure).
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn store(
    out: *mut *mut AddCowHeader,
    read: impl FnOnce() -> Result<crate::layout::Header>,
) -> Result<c_int> {
    if out.is_null() {
        return Err(bad_arg("out is NULL"));
    }
    // SAFETY: non-NULL and writable per the caller; cleared so that failure leaves NULL.
    unsafe { out.write(std::ptr::null_mut()) };
    let h = read()?;
    let name = |b: &[u8]| CString::new(b).map_err(|_| Error::invalid("a name holds a NUL byte"));
    let header = AddCowHeader {
        layout: h.layout_number(),
        cluster_size: 1 << h.cluster_bits(),
        image_file: name(&h.image_file)?,
        backing_file: h.backing_file.as_deref().map(name).transpose()?,
    };
    // SAFETY: as above.
    unsafe { out.write(Box::into_raw(Box::new(header))) };
    Ok(0)
}

/// Reads and validates the header of the `.add-cow` file at `path` without opening the files
/// it names. 0 with a new header in `*out`, or -errno (NULL stored) as for `addcow_open`.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_read(
    path: *const c_char,
    out: *mut *mut AddCowHeader,
) -> c_int {
    ffi("addcow_header_read", || {
        let read = || {
            // SAFETY: the caller's guarantee.
            let path = OsStr::from_bytes(unsafe { c_str(path, "path")? }.to_bytes());
            let name = format!("add-cow file '{}'", path.to_string_lossy());
            let file = open_path(Path::new(path), Access::read(false), &name)?;
            read_header(&FileStorage::new(file), &name)
        };
        // SAFETY: the caller's guarantee on `out`, forwarded.
        unsafe { store(out, read) }
    })
}

/// As `addcow_header_read`, through the host's I/O for the `.add-cow` file (only `preadv` and
/// `get_length` are called).
///
/// # Safety
/// `meta` is NULL or a valid table; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_read_io(
    meta: *const AddCowIo,
    out: *mut *mut AddCowHeader,
) -> c_int {
    ffi("addcow_header_read_io", || {
        let read = || {
            // SAFETY: the caller's guarantee on the table.
            let storage = unsafe { HostStorage::new(meta, ("meta", META), Needs::Read)? };
            read_header(&storage, META)
        };
        // SAFETY: the caller's guarantee on `out`, forwarded.
        unsafe { store(out, read) }
    })
}

/// # Safety
/// `h` is NULL or a live header.
unsafe fn get<'a>(h: *const AddCowHeader) -> Option<&'a AddCowHeader> {
    // SAFETY: the caller's guarantee.
    unsafe { h.as_ref() }
}

/// The header's layout (1 = the seed's), or 0 for NULL.
///
/// # Safety
/// `h` is NULL or a live header.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_layout(h: *const AddCowHeader) -> u32 {
    ffi("addcow_header_layout", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { get(h) }.map_or(0, |h| h.layout))
    })
}

/// The cluster size in bytes, or 0 for NULL.
///
/// # Safety
/// `h` is NULL or a live header.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_cluster_size(h: *const AddCowHeader) -> u32 {
    ffi("addcow_header_cluster_size", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { get(h) }.map_or(0, |h| h.cluster_size))
    })
}

/// The image file name exactly as stored (relative names are relative to the `.add-cow` file's
/// directory); NULL for a NULL header. Valid until `addcow_header_free`.
///
/// # Safety
/// `h` is NULL or a live header.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_image_file(h: *const AddCowHeader) -> *const c_char {
    ffi("addcow_header_image_file", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { get(h) }.map_or(std::ptr::null(), |h| h.image_file.as_ptr()))
    })
}

/// The backing file name as stored, or NULL when there is none (or for a NULL header). Valid
/// until `addcow_header_free`.
///
/// # Safety
/// `h` is NULL or a live header.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_backing_file(h: *const AddCowHeader) -> *const c_char {
    ffi("addcow_header_backing_file", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { get(h) }
            .and_then(|h| h.backing_file.as_ref())
            .map_or(std::ptr::null(), |b| b.as_ptr()))
    })
}

/// Frees a header; NULL is a no-op.
///
/// # Safety
/// `h` is NULL or a live header, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_free(h: *mut AddCowHeader) {
    ffi("addcow_header_free", || {
        if !h.is_null() {
            // SAFETY: a live header from Box::into_raw, handed back exactly once.
            drop(unsafe { Box::from_raw(h) });
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::c_void;

    unsafe extern "C" fn preadv(
        _: *mut c_void,
        offset: u64,
        iov: *const libc::iovec,
        iovcnt: c_int,
    ) -> c_int {
        let header = crate::layout::Header::new(b"img", None).unwrap().to_bytes();
        let mut at = offset as usize;
        // SAFETY: the library passes `iovcnt` valid, writable iovecs.
        for v in unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) } {
            // SAFETY: as above.
            let buf = unsafe { std::slice::from_raw_parts_mut(v.iov_base.cast::<u8>(), v.iov_len) };
            for b in buf {
                *b = header.get(at).copied().unwrap_or(0);
                at += 1;
            }
        }
        0
    }

    unsafe extern "C" fn get_length(_: *mut c_void) -> i64 {
        2560
    }

    #[test]
    fn header_read_io_needs_only_preadv_and_get_length() {
        let io = AddCowIo {
            opaque: std::ptr::null_mut(),
            preadv: Some(preadv),
            pwritev: None,
            flush: None,
            get_length: Some(get_length),
            truncate: None,
        };
        let mut h = std::ptr::null_mut();
        // SAFETY: a valid table and a writable out pointer.
        assert_eq!(unsafe { addcow_header_read_io(&io, &mut h) }, 0);
        // SAFETY: a live header, freed once.
        unsafe {
            assert_eq!(addcow_header_layout(h), 1);
            addcow_header_free(h);
        }
        let no_read = AddCowIo { preadv: None, ..io };
        // SAFETY: a valid table and a writable out pointer.
        let r = unsafe { addcow_header_read_io(&no_read, &mut h) };
        assert_eq!(r, -libc::EINVAL);
        assert!(h.is_null());
    }
}
