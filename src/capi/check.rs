//! `addcow_check`: checking and repairing an image's files from C, with the findings behind an
//! opaque result.

use super::boundary::{bad_arg, c_str, ffi, store_handle};
use crate::engine::{check, CheckReport, Severity};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `addcow_check` flag: repair what can be repaired without guessing.
pub const ADDCOW_CHECK_REPAIR: u32 = 1 << 0;

/// `addcow_check_count`: corruptions found and not repaired.
pub const ADDCOW_CHECK_CORRUPTIONS: u32 = 0;
/// `addcow_check_count`: leaks found and not repaired.
pub const ADDCOW_CHECK_LEAKS: u32 = 1;
/// `addcow_check_count`: corruptions repaired.
pub const ADDCOW_CHECK_CORRUPTIONS_FIXED: u32 = 2;
/// `addcow_check_count`: leaks repaired.
pub const ADDCOW_CHECK_LEAKS_FIXED: u32 = 3;
/// `addcow_check_count`: clusters whose bit is set.
pub const ADDCOW_CHECK_ALLOCATED_CLUSTERS: u32 = 4;
/// `addcow_check_count`: clusters of the image.
pub const ADDCOW_CHECK_TOTAL_CLUSTERS: u32 = 5;
/// `addcow_check_count`: findings of every kind (notes included), for `addcow_check_finding`.
pub const ADDCOW_CHECK_FINDINGS: u32 = 6;

/// `addcow_check_finding` kind: a corruption (what the image reads is wrong or undecidable, or
/// it cannot be opened).
pub const ADDCOW_CHECK_CORRUPTION: c_int = 1;
/// `addcow_check_finding` kind: a leak (a harmless leftover: stray bits, stale bytes, image-file
/// data in unallocated clusters).
pub const ADDCOW_CHECK_LEAK: c_int = 2;
/// `addcow_check_finding` kind: a note, counted nowhere (the image in use by another process, a
/// backing file shorter than the image, unknown compatible feature bits).
pub const ADDCOW_CHECK_NOTE: c_int = 3;
/// Or'ed into the kind `addcow_check_finding` returns: this check repaired the finding.
pub const ADDCOW_CHECK_REPAIRED: c_int = 0x100;

/// The findings of one `addcow_check`. Opaque: read it with `addcow_check_count` and
/// `addcow_check_finding`, free it with `addcow_check_free`.
pub struct AddCowCheckResult {
    report: CheckReport,
    messages: Vec<CString>,
}

/// Checks the image at `path` for consistency (`qemu-img check`'s model): the header and its
/// feature bits, the image file, the bitmap's length against the image file's (a short bitmap,
/// stale bytes past it, layout 2's padding), bits set past the last cluster, the backing file
/// (missing while needed; shorter than the image), image-file data in unallocated clusters
/// (found with `SEEK_DATA`: a leak; a note where the file system has no `SEEK_DATA`), and
/// whether another process uses the image (checked anyway, with a note). Under layout 2's "all allocated" bit every cluster counts as
/// allocated whatever the bitmap says (a note when it disagrees). With `ADDCOW_CHECK_REPAIR`
/// (which locks the files for writing: -EBUSY while another user has them) it repairs what
/// needs no guess: a short bitmap is extended as unallocated only when the image file holds no
/// data in the clusters it lacks; stray bits are cleared; stale bytes cut; missing padding
/// added; data in unallocated clusters punched out of the image file (never read; reported
/// where the file system cannot punch). Everything else is only reported.
///
/// On success stores the findings in `*out` (free them with `addcow_check_free`) and returns
/// the exit code of the model: 0 nothing left to repair, 2 corruptions left, 3 leaks left and
/// no corruption. A negative errno (NULL stored) when the check could not be made (the CLI's
/// exit code 1): -EINVAL a NULL argument or unknown flags, -ENOENT no `.add-cow` file, -EBUSY
/// a repair of an image in use, an I/O error. A header that does not parse is a corruption,
/// not an error.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_check(
    path: *const c_char,
    flags: u32,
    out: *mut *mut AddCowCheckResult,
) -> c_int {
    ffi("addcow_check", || {
        let mut code = 0;
        let run = || {
            if flags & !ADDCOW_CHECK_REPAIR != 0 {
                return Err(bad_arg(&format!(
                    "unknown check flags {:#x}",
                    flags & !ADDCOW_CHECK_REPAIR
                )));
            }
            // SAFETY: the caller's guarantee.
            let path = Path::new(OsStr::from_bytes(
                unsafe { c_str(path, "path")? }.to_bytes(),
            ));
            let report = check(path, flags & ADDCOW_CHECK_REPAIR != 0)?;
            let messages = report
                .findings
                .iter()
                .map(|f| CString::new(f.message.replace('\0', "\\0")).unwrap_or_default())
                .collect();
            code = report.exit_code();
            Ok(AddCowCheckResult { report, messages })
        };
        // SAFETY: the caller's guarantee on `out`, forwarded.
        unsafe { store_handle(out, run) }?;
        Ok(code)
    })
}

/// # Safety
/// `r` is NULL or a live result.
unsafe fn get<'a>(r: *const AddCowCheckResult) -> Result<&'a AddCowCheckResult> {
    // SAFETY: the caller's guarantee; NULL is refused.
    unsafe { r.as_ref() }.ok_or_else(|| bad_arg("result is NULL"))
}

/// One count of a check result: `which` is an `ADDCOW_CHECK_*` counter (`CORRUPTIONS`,
/// `LEAKS`, `CORRUPTIONS_FIXED`, `LEAKS_FIXED`, `ALLOCATED_CLUSTERS`, `TOTAL_CLUSTERS`,
/// `FINDINGS`). -EINVAL for a NULL result or an unknown counter.
///
/// # Safety
/// `r` is NULL or a live result.
#[no_mangle]
pub unsafe extern "C" fn addcow_check_count(r: *const AddCowCheckResult, which: u32) -> i64 {
    ffi("addcow_check_count", || {
        // SAFETY: the caller's guarantee.
        let r = &unsafe { get(r)? }.report;
        let n = match which {
            ADDCOW_CHECK_CORRUPTIONS => r.count(Severity::Corruption, false),
            ADDCOW_CHECK_LEAKS => r.count(Severity::Leak, false),
            ADDCOW_CHECK_CORRUPTIONS_FIXED => r.count(Severity::Corruption, true),
            ADDCOW_CHECK_LEAKS_FIXED => r.count(Severity::Leak, true),
            ADDCOW_CHECK_ALLOCATED_CLUSTERS => r.allocated_clusters,
            ADDCOW_CHECK_TOTAL_CLUSTERS => r.total_clusters,
            ADDCOW_CHECK_FINDINGS => r.findings.len() as u64,
            other => return Err(bad_arg(&format!("unknown check counter {other}"))),
        };
        i64::try_from(n).map_err(|_| Error::invalid("count beyond 2^63"))
    })
}

/// Finding `i` (0 ≤ i < the `ADDCOW_CHECK_FINDINGS` count) of a check result: returns its kind
/// (`ADDCOW_CHECK_CORRUPTION`, `_LEAK` or `_NOTE`, with `ADDCOW_CHECK_REPAIRED` or'ed in when
/// this check repaired it) and, when `message` is not NULL, stores its message there (valid
/// until `addcow_check_free`). -EINVAL for a NULL result or `i` out of range.
///
/// # Safety
/// `r` is NULL or a live result; `message` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_check_finding(
    r: *const AddCowCheckResult,
    i: u64,
    message: *mut *const c_char,
) -> c_int {
    ffi("addcow_check_finding", || {
        // SAFETY: the caller's guarantee.
        let r = unsafe { get(r)? };
        let n = r.report.findings.len();
        let at = usize::try_from(i)
            .ok()
            .filter(|&at| at < n)
            .ok_or_else(|| bad_arg(&format!("finding {i} of {n}")))?;
        let f = &r.report.findings[at];
        if !message.is_null() {
            // SAFETY: non-NULL and writable per the caller.
            unsafe { message.write(r.messages[at].as_ptr()) };
        }
        let kind = match f.severity {
            Severity::Corruption => ADDCOW_CHECK_CORRUPTION,
            Severity::Leak => ADDCOW_CHECK_LEAK,
            Severity::Note => ADDCOW_CHECK_NOTE,
        };
        Ok(kind | if f.repaired { ADDCOW_CHECK_REPAIRED } else { 0 })
    })
}

/// Frees a check result; NULL is a no-op.
///
/// # Safety
/// `r` is NULL or a live result, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn addcow_check_free(r: *mut AddCowCheckResult) {
    ffi("addcow_check_free", || {
        if !r.is_null() {
            // SAFETY: a live result from Box::into_raw, handed back exactly once.
            drop(unsafe { Box::from_raw(r) });
        }
        Ok(())
    })
}
