//! Reading a header before opening anything else: a host that supplies its own I/O learns here
//! which image and backing files to open.

use super::boundary::{c_str, ffi, store_handle};
use super::host::{AddCowIo, HostStorage, Needs, META};
use crate::error::{Error, Result};
use crate::mapping::read_header;
use crate::storage::{open_path, Access, FileStorage};
use std::ffi::{c_char, c_int, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Compatible feature bit 0 of layout 2 (`addcow_header_compatible_features`): every cluster
/// is allocated, so the image file alone is the disk and the backing file is not needed.
pub const ADDCOW_COMPAT_ALL_ALLOCATED: u64 = 1 << 0;
const _: () = assert!(ADDCOW_COMPAT_ALL_ALLOCATED == crate::layout::v2::ALL_ALLOCATED);

/// A parsed `.add-cow` header of either layout. Opaque: read it with `addcow_header_read` or
/// `addcow_header_read_io`, free it with `addcow_header_free`.
pub struct AddCowHeader {
    layout: u32,
    cluster_size: u32,
    bitmap_offset: u64,
    compatible: u64,
    image_file: CString,
    image_format: CString,
    backing_file: Option<CString>,
    backing_format: Option<CString>,
}

impl AddCowHeader {
    fn new(h: &crate::layout::Header) -> Result<AddCowHeader> {
        let name =
            |b: &[u8]| CString::new(b).map_err(|_| Error::invalid("a name holds a NUL byte"));
        let format = |f: &str| CString::new(f).expect("format names hold no NUL");
        Ok(AddCowHeader {
            layout: h.layout_number(),
            cluster_size: 1 << h.cluster_bits(),
            bitmap_offset: h.bitmap_offset(),
            compatible: h.compatible_features(),
            image_file: name(&h.image_file)?,
            image_format: format(h.image_format()),
            backing_file: h.backing_file.as_deref().map(name).transpose()?,
            backing_format: h.backing_format.map(|f| format(f.name())),
        })
    }
}

/// Reads a header and stores a new handle for it in `*out` (NULL on failure).
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn store(
    out: *mut *mut AddCowHeader,
    read: impl FnOnce() -> Result<crate::layout::Header>,
) -> Result<c_int> {
    // SAFETY: the caller's guarantee, forwarded.
    unsafe { store_handle(out, || AddCowHeader::new(&read()?)) }.map(|()| 0)
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

/// The header's layout: 1 (the seed's) or 2 (the series' final one); 0 for NULL.
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

/// The cluster size in bytes: 65536 for layout 1, a power of two from 4096 to 2 MiB for
/// layout 2; 0 for NULL.
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

/// The backing file's format as the header records it: "raw" or "add-cow" (layout 2). NULL
/// when there is no backing file, for layout 1 (its header does not record the format: the
/// opener chooses, raw unless `ADDCOW_OPEN_BACKING_ADDCOW`), and for a NULL header. Valid
/// until `addcow_header_free`.
///
/// # Safety
/// `h` is NULL or a live header.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_backing_format(h: *const AddCowHeader) -> *const c_char {
    ffi("addcow_header_backing_format", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { get(h) }
            .and_then(|h| h.backing_format.as_ref())
            .map_or(std::ptr::null(), |f| f.as_ptr()))
    })
}

/// The image file's format: "raw" (the only one either layout allows); NULL for a NULL header.
/// Valid until `addcow_header_free`.
///
/// # Safety
/// `h` is NULL or a live header.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_image_format(h: *const AddCowHeader) -> *const c_char {
    ffi("addcow_header_image_format", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { get(h) }.map_or(std::ptr::null(), |h| h.image_format.as_ptr()))
    })
}

/// The compatible feature bits as stored, unknown bits included (`ADDCOW_COMPAT_ALL_ALLOCATED`
/// is bit 0); always 0 for layout 1, which has none, and for a NULL header.
///
/// # Safety
/// `h` is NULL or a live header.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_compatible_features(h: *const AddCowHeader) -> u64 {
    ffi("addcow_header_compatible_features", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { get(h) }.map_or(0, |h| h.compatible))
    })
}

/// The incompatible feature bits: always 0. None is defined, and a layout-2 header with any
/// bit set is refused by `addcow_header_read` (-ENOTSUP, naming the bit); layout 1 has none.
/// Callers that print a header's features can print both sets without a special case.
#[no_mangle]
pub extern "C" fn addcow_header_incompatible_features(h: *const AddCowHeader) -> u64 {
    ffi("addcow_header_incompatible_features", || {
        let _ = h;
        Ok(0)
    })
}

/// The header's length, where the COW bitmap starts in the `.add-cow` file: 2560 for layout 1,
/// `header_size` = max(4096, cluster size) for layout 2; 0 for NULL.
///
/// # Safety
/// `h` is NULL or a live header.
#[no_mangle]
pub unsafe extern "C" fn addcow_header_bitmap_offset(h: *const AddCowHeader) -> u64 {
    ffi("addcow_header_bitmap_offset", || {
        // SAFETY: the caller's guarantee.
        Ok(unsafe { get(h) }.map_or(0, |h| h.bitmap_offset))
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
    use crate::layout::{BackingFormat, Header};
    use std::ffi::{c_void, CStr};

    /// Reads from the header bytes `opaque` points at (a `Vec<u8>`), zeros past them.
    unsafe extern "C" fn preadv(
        opaque: *mut c_void,
        offset: u64,
        iov: *const libc::iovec,
        iovcnt: c_int,
    ) -> c_int {
        // SAFETY: the tests pass a live Vec<u8> as opaque.
        let header = unsafe { &*opaque.cast::<Vec<u8>>() };
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

    unsafe extern "C" fn get_length(opaque: *mut c_void) -> i64 {
        // SAFETY: as in preadv.
        unsafe { &*opaque.cast::<Vec<u8>>() }.len() as i64
    }

    fn table(bytes: &mut Vec<u8>) -> AddCowIo {
        AddCowIo {
            opaque: (bytes as *mut Vec<u8>).cast(),
            preadv: Some(preadv),
            pwritev: None,
            flush: None,
            get_length: Some(get_length),
            truncate: None,
        }
    }

    /// # Safety
    /// `s` is NULL or NUL-terminated.
    unsafe fn text<'a>(s: *const c_char) -> Option<&'a str> {
        // SAFETY: the caller's guarantee.
        (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_str().unwrap())
    }

    #[test]
    fn header_read_io_needs_only_preadv_and_get_length() {
        let mut bytes = Header::new(b"img", None).unwrap().to_bytes();
        let io = table(&mut bytes);
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

    #[test]
    fn accessors_report_either_layout() {
        let v1 = Header::new(b"img", Some(b"base")).unwrap();
        let mut v2 = Header::new_v2(b"img", Some((b"base", BackingFormat::AddCow)), 21).unwrap();
        assert!(v2.set_all_allocated(true));
        // (header, layout, cluster size, bitmap offset, backing format, compatible features)
        let cases = [
            (v1, 1, 65536, 2560, None, 0),
            (
                v2,
                2,
                2 << 20,
                2 << 20,
                Some("add-cow"),
                ADDCOW_COMPAT_ALL_ALLOCATED,
            ),
        ];
        for (header, layout, cluster, bitmap, backing_format, compat) in cases {
            let mut bytes = header.to_bytes();
            let io = table(&mut bytes);
            let mut h = std::ptr::null_mut();
            // SAFETY: a valid table and a writable out pointer; then a live header, freed once.
            unsafe {
                assert_eq!(addcow_header_read_io(&io, &mut h), 0);
                assert_eq!(addcow_header_layout(h), layout);
                assert_eq!(addcow_header_cluster_size(h), cluster);
                assert_eq!(addcow_header_bitmap_offset(h), bitmap);
                assert_eq!(text(addcow_header_image_file(h)), Some("img"));
                assert_eq!(text(addcow_header_backing_file(h)), Some("base"));
                assert_eq!(text(addcow_header_backing_format(h)), backing_format);
                assert_eq!(text(addcow_header_image_format(h)), Some("raw"));
                assert_eq!(addcow_header_compatible_features(h), compat);
                assert_eq!(addcow_header_incompatible_features(h), 0);
                addcow_header_free(h);
            }
        }
    }
}
