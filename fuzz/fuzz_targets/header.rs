//! Header parsing and probing on arbitrary bytes.
//!
//! - `probe` scores 100 exactly when the bytes start with layout 1's magic and version 1 or
//!   with layout 2's magic "ACOW", else 0; the C `addcow_probe` agrees with it.
//! - `Header::parse` never panics. A parsed layout-1 header's first 2560 bytes are canonical
//!   (equal to its re-serialization); a parsed header of either layout re-parses from its
//!   bytes to the same header. Errors are EINVAL, or ENOTSUP for layout 1's magic with another
//!   version; layout 2 refuses with EINVAL or ENOTSUP (feature bits, formats).
//! - `read_header` over a `MemStorage` holding the bytes agrees with `parse` of them.
//! - Names cut from the bytes: `Header::new` accepts exactly the names that fit, and what it
//!   builds round-trips.
#![no_main]

use addcow::layout::v1::{HEADER_SIZE, MAGIC, NAME_FIELD, VERSION};
use addcow::layout::Header;
use addcow::layout::Layout;
use addcow::storage::MemStorage;
use libfuzzer_sys::fuzz_target;

fn has_magic_and_version(data: &[u8]) -> bool {
    data.len() >= 12 && data[..8] == MAGIC && data[8..12] == VERSION.to_be_bytes()
}

fn is_layout2(data: &[u8]) -> bool {
    data.starts_with(b"ACOW")
}

fn check_probe(data: &[u8]) {
    let score = addcow::probe(data);
    let want = if has_magic_and_version(data) || is_layout2(data) {
        100
    } else {
        0
    };
    assert_eq!(score, want, "probe score");
    // SAFETY: `data` is `data.len()` readable bytes; the filename may be NULL.
    let c = unsafe { addcow::capi::addcow_probe(data.as_ptr(), data.len(), std::ptr::null()) };
    assert_eq!(c, i32::from(want), "addcow_probe score");
}

fn check_parse(data: &[u8]) -> Result<Header, i32> {
    match Header::parse(data) {
        Ok(h) => {
            let bytes = h.to_bytes();
            match h.layout() {
                Layout::V1 => {
                    assert!(has_magic_and_version(data));
                    assert_eq!(
                        &bytes[..],
                        &data[..HEADER_SIZE],
                        "a parsed layout-1 header is canonical"
                    );
                }
                // Names may lie anywhere in the name area, so only the round trip holds.
                Layout::V2 { .. } => {
                    assert!(is_layout2(data));
                    assert_eq!(bytes.len() as u64, h.bitmap_offset());
                }
            }
            assert_eq!(Header::parse(&bytes).expect("re-parse"), h);
            assert!(!h.image_file.is_empty() && !h.image_file.contains(&0));
            assert!(h.backing_file.as_ref().is_none_or(|b| !b.is_empty()));
            Ok(h)
        }
        Err(e) => {
            let errno = e.errno();
            let version_only =
                data.len() >= 12 && data[..8] == MAGIC && !has_magic_and_version(data);
            if is_layout2(data) {
                assert!(
                    errno == libc::EINVAL || errno == libc::ENOTSUP,
                    "layout-2 parse error {e}"
                );
            } else {
                let want = if version_only {
                    libc::ENOTSUP
                } else {
                    libc::EINVAL
                };
                assert_eq!(errno, want, "parse error {e}");
            }
            assert!(!e.to_string().is_empty());
            Err(errno)
        }
    }
}

fn check_read_header(data: &[u8], parsed: &Result<Header, i32>) {
    let storage = MemStorage::from_bytes(data.to_vec());
    let got = addcow::read_header(&storage, "fuzz").map_err(|e| e.errno());
    match (&got, parsed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("read_header {got:?} but parse {parsed:?}"),
    }
}

/// Two names cut from the bytes at the first 0xFF: `Header::new` must accept them exactly when
/// they fit, and what it builds must round-trip through bytes.
fn check_new(data: &[u8]) {
    let cut = data.iter().position(|&b| b == 0xff).unwrap_or(data.len());
    let image = &data[..cut];
    let backing = data.get(cut + 1..).unwrap_or(&[]);
    let fits = |n: &[u8]| n.len() < NAME_FIELD && !n.contains(&0);
    let ok = fits(image) && !image.is_empty() && (backing.is_empty() || fits(backing));
    match Header::new(image, Some(backing)) {
        Ok(h) => {
            assert!(ok, "Header::new accepted names that do not fit");
            let bytes = h.to_bytes();
            assert_eq!(addcow::probe(&bytes), 100);
            assert_eq!(Header::parse(&bytes).expect("round trip"), h);
            assert_eq!(h.image_file, image);
            assert_eq!(
                h.backing_file.as_deref(),
                (!backing.is_empty()).then_some(backing)
            );
        }
        Err(e) => {
            assert!(!ok, "Header::new refused names that fit: {e}");
            assert_eq!(e.errno(), libc::EINVAL);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_probe(data);
    let parsed = check_parse(data);
    check_read_header(data, &parsed);
    check_new(data);
});
