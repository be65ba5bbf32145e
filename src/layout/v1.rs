//! Layout 1 (the 2012 v9 seed), all numbers big-endian:
//!
//! | bytes      | field        |
//! |------------|--------------|
//! | 0–7        | magic `"ADD_COW\xff"` |
//! | 8–11       | version = 1  |
//! | 12–1035    | backing file name, NUL-padded, ≤ 1023 bytes, empty = none |
//! | 1036–2059  | image file name, NUL-padded, ≤ 1023 bytes |
//! | 2060–2559  | reserved, zero |
//! | 2560–      | COW bitmap: bit `c % 8` of byte `c / 8` is cluster `c` |
//!
//! Clusters are 64 KiB. The bitmap is `ceil(clusters / 8)` bytes, unpadded.

use super::Header;
use crate::error::{Error, Result};

/// The magic at byte 0 of layout 1.
pub const MAGIC: [u8; 8] = *b"ADD_COW\xff";
/// The only version layout 1 knows.
pub const VERSION: u32 = 1;
/// Size of the layout-1 header; the bitmap starts here.
pub const HEADER_SIZE: usize = 2560;
/// Room for one name, NUL padding included.
pub const NAME_FIELD: usize = 1024;
/// Layout 1's cluster size: 64 KiB.
pub(super) const CLUSTER_BITS: u32 = 16;

const BACKING_AT: usize = 12;
const IMAGE_AT: usize = BACKING_AT + NAME_FIELD;
const RESERVED_AT: usize = IMAGE_AT + NAME_FIELD;

/// Layout 1's magic and version 1 (12 bytes are enough).
pub(super) fn probe(buf: &[u8]) -> bool {
    matches!(buf.get(..12), Some(head) if head[..8] == MAGIC && head[8..12] == VERSION.to_be_bytes())
}

/// `EINVAL` for a bad magic, `ENOTSUP` for another version.
pub(super) fn check_magic(buf: &[u8]) -> Result<()> {
    if buf.len() < 12 || buf[..8] != MAGIC {
        return Err(Error::invalid("not an add-cow file: bad magic"));
    }
    let version = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(Error::Unsupported(format!(
            "add-cow version {version} is not supported (layout 1 has only version {VERSION})"
        )));
    }
    Ok(())
}

/// Both names fit their 1024-byte fields (NUL included).
pub(super) fn check_fits(image: &[u8], backing: Option<&[u8]>) -> Result<()> {
    for (what, name) in [("image file", Some(image)), ("backing file", backing)] {
        let len = name.map_or(0, <[u8]>::len);
        if len >= NAME_FIELD {
            return Err(Error::invalid(format!(
                "{what} name is {len} bytes; at most {} fit in layout 1",
                NAME_FIELD - 1
            )));
        }
    }
    Ok(())
}

/// Parses and validates the first [`HEADER_SIZE`] bytes of a layout-1 `.add-cow` file.
pub(super) fn parse(buf: &[u8]) -> Result<Header> {
    check_magic(buf)?;
    if buf.len() < HEADER_SIZE {
        return Err(Error::invalid(format!(
            "add-cow header truncated: {} of {HEADER_SIZE} bytes",
            buf.len()
        )));
    }
    let backing = parse_name("backing file", &buf[BACKING_AT..IMAGE_AT])?;
    let image = parse_name("image file", &buf[IMAGE_AT..RESERVED_AT])?;
    if buf[RESERVED_AT..HEADER_SIZE].iter().any(|&b| b != 0) {
        return Err(Error::invalid(
            "add-cow header: reserved bytes 2060-2559 are not zero",
        ));
    }
    Header::new(image, Some(backing))
}

/// The header's 2560 bytes.
pub(super) fn to_bytes(h: &Header) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_SIZE];
    buf[..8].copy_from_slice(&MAGIC);
    buf[8..12].copy_from_slice(&VERSION.to_be_bytes());
    if let Some(b) = &h.backing_file {
        buf[BACKING_AT..BACKING_AT + b.len()].copy_from_slice(b);
    }
    buf[IMAGE_AT..IMAGE_AT + h.image_file.len()].copy_from_slice(&h.image_file);
    buf
}

/// The write that replaces a backing name of `old` bytes with `new` in the name field: at
/// byte 12, the new name and zeros, as far as the longer of both reaches (the bytes after it
/// are zero already).
pub(super) fn backing_field(new: Option<&[u8]>, old: usize) -> (u64, Vec<u8>) {
    let new = new.unwrap_or_default();
    let mut field = vec![0u8; new.len().max(old)];
    field[..new.len()].copy_from_slice(new);
    (BACKING_AT as u64, field)
}

/// A NUL-padded name: the bytes before the first NUL, which must come within the field.
fn parse_name<'a>(what: &str, field: &'a [u8]) -> Result<&'a [u8]> {
    let end = field.iter().position(|&b| b == 0).ok_or_else(|| {
        Error::invalid(format!("add-cow header: {what} name is not NUL-terminated"))
    })?;
    if field[end..].iter().any(|&b| b != 0) {
        return Err(Error::invalid(format!(
            "add-cow header: {what} name has bytes after its NUL padding"
        )));
    }
    Ok(&field[..end])
}
