//! Layout 2 (the series' final revision, 2013 "V19/V20"), all numbers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0–3 | magic `"ACOW"` |
//! | 4–7 | backing name offset: 0 = no backing file, else ≥ 76 |
//! | 8–11 | backing name size: 0 iff the offset is 0 |
//! | 12–15 | image name offset: ≥ 76 |
//! | 16–19 | image name size: ≥ 1 |
//! | 20–23 | `cluster_bits`: 12 (4 KiB) … 21 (2 MiB) |
//! | 24–31 | incompatible features: any bit set → refused (none is known) |
//! | 32–39 | compatible features: bit 0 = all allocated; unknown bits kept as they are |
//! | 40–43 | `header_size` = max(4096, cluster size) |
//! | 44–59 | backing file format: NUL-terminated, zero-padded; "raw" or "add-cow", empty iff none |
//! | 60–75 | image file format: NUL-terminated, zero-padded; "raw" (empty reads as "raw") |
//! | 76–`header_size` | name area: the two names, without NUL, not overlapping |
//! | `header_size`– | COW bitmap, LSB first, padded with zero bits to a multiple of the cluster size |
//!
//! The choices the 2013 text leaves loose are fixed in `docs/format.md`; every refusal carries
//! a message.

use super::{BackingFormat, Header, Layout};
use crate::error::{Error, Result};

/// The magic at byte 0 of layout 2.
pub(crate) const MAGIC: [u8; 4] = *b"ACOW";
/// The fixed fields end here; the name area starts here.
pub(crate) const FIXED: usize = 76;
pub(crate) const MIN_CLUSTER_BITS: u32 = 12;
pub(crate) const MAX_CLUSTER_BITS: u32 = 21;
/// The default cluster size of layout 2: 64 KiB.
pub(crate) const DEFAULT_CLUSTER_BITS: u32 = 16;
/// Compatible feature bit 0: every cluster is allocated.
pub(crate) const ALL_ALLOCATED: u64 = 1 << 0;

/// Where the compatible feature field (8 bytes) lies: inside the first sector, so rewriting it
/// alone is one sector-atomic write.
pub(super) const COMPATIBLE_AT: usize = 32;

const FORMAT_LEN: usize = 16;
const BACKING_FORMAT_AT: usize = 44;
const IMAGE_FORMAT_AT: usize = 60;

/// Layout 2's magic (4 bytes are enough).
pub(super) fn probe(buf: &[u8]) -> bool {
    buf.get(..4) == Some(&MAGIC[..])
}

/// `header_size` for a cluster size: max(4096, cluster size).
pub(super) fn header_size_for(cluster_bits: u32) -> usize {
    (1usize << cluster_bits).max(4096)
}

pub(super) fn check_cluster_bits(bits: u32) -> Result<()> {
    match (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
        true => Ok(()),
        false => Err(Error::invalid(format!(
            "cluster_bits {bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS} \
             (clusters of 4 KiB to 2 MiB)"
        ))),
    }
}

/// Both names fit the name area of the header.
pub(super) fn check_fits(image: &[u8], backing: Option<&[u8]>, cluster_bits: u32) -> Result<()> {
    let room = header_size_for(cluster_bits) - FIXED;
    let len = image.len() + backing.map_or(0, <[u8]>::len);
    match len <= room {
        true => Ok(()),
        false => Err(Error::invalid(format!(
            "the names take {len} bytes; a layout-2 header with clusters of {} bytes has room \
             for {room}",
            1u64 << cluster_bits
        ))),
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// The header's length (`header_size`), validated, from its first [`FIXED`] bytes.
pub(super) fn header_size(buf: &[u8]) -> Result<usize> {
    if buf.len() < FIXED {
        return Err(Error::invalid(format!(
            "layout-2 header truncated: {} of at least {FIXED} bytes",
            buf.len()
        )));
    }
    let bits = u32_at(buf, 20);
    check_cluster_bits(bits)?;
    let want = header_size_for(bits);
    let size = u32_at(buf, 40) as usize;
    if size != want {
        return Err(Error::invalid(format!(
            "layout-2 header_size is {size}; with clusters of {} bytes it must be {want}",
            1u64 << bits
        )));
    }
    Ok(size)
}

/// Parses and validates a whole layout-2 header (its `header_size` bytes).
pub(super) fn parse(buf: &[u8]) -> Result<Header> {
    let size = header_size(buf)?;
    if buf.len() < size {
        return Err(Error::invalid(format!(
            "layout-2 header truncated: {} of {size} bytes (the file is shorter than its \
             header_size)",
            buf.len()
        )));
    }
    let incompatible = u64_at(buf, 24);
    if incompatible != 0 {
        let bit = incompatible.trailing_zeros();
        return Err(Error::Unsupported(format!(
            "layout-2 header: incompatible feature bit {bit} is not supported"
        )));
    }
    let image_format = format_field(buf, IMAGE_FORMAT_AT, "image")?;
    if !matches!(image_format, b"" | b"raw") {
        return Err(Error::Unsupported(format!(
            "layout-2 header: image file format '{}' is not supported (only raw)",
            String::from_utf8_lossy(image_format)
        )));
    }
    let image = name(buf, 12, size, "image file")?.ok_or_else(|| {
        Error::invalid("layout-2 header: the image file name is missing (offset 0)")
    })?;
    let backing = name(buf, 4, size, "backing file")?;
    let backing_format = format_field(buf, BACKING_FORMAT_AT, "backing")?;
    let backing = match (backing, backing_format) {
        (None, b"") => None,
        (Some(b), b"raw") => Some((b, BackingFormat::Raw)),
        (Some(b), b"add-cow") => Some((b, BackingFormat::AddCow)),
        (Some(_), b"") => {
            return Err(Error::invalid(
                "layout-2 header: a backing file is named but its format is empty",
            ))
        }
        (None, _) => {
            return Err(Error::invalid(
                "layout-2 header: a backing format is given but no backing file",
            ))
        }
        (Some(_), other) => {
            return Err(Error::Unsupported(format!(
                "layout-2 header: backing file format '{}' is not supported (raw or add-cow)",
                String::from_utf8_lossy(other)
            )))
        }
    };
    if let Some((b, _)) = backing {
        let (io, is) = (u32_at(buf, 12) as usize, image.len());
        let (bo, bs) = (u32_at(buf, 4) as usize, b.len());
        if io < bo + bs && bo < io + is {
            return Err(Error::invalid(
                "layout-2 header: the image and backing file names overlap",
            ));
        }
    }
    let mut header = Header::new_v2(image, backing, u32_at(buf, 20))?;
    header.layout = Layout::V2 {
        cluster_bits: u32_at(buf, 20),
        compatible: u64_at(buf, COMPATIBLE_AT),
    };
    Ok(header)
}

/// The name at the offset/size pair at `at`: `None` for offset 0 (size 0); inside the name
/// area, without NUL.
fn name<'a>(buf: &'a [u8], at: usize, size: usize, what: &str) -> Result<Option<&'a [u8]>> {
    let (off, len) = (u32_at(buf, at) as usize, u32_at(buf, at + 4) as usize);
    match (off, len) {
        (0, 0) => return Ok(None),
        (0, _) | (_, 0) => {
            return Err(Error::invalid(format!(
                "layout-2 header: the {what} name has offset {off} and size {len} (both 0 or \
                 neither)"
            )))
        }
        _ => {}
    }
    if off < FIXED || !matches!(off.checked_add(len), Some(end) if end <= size) {
        return Err(Error::invalid(format!(
            "layout-2 header: the {what} name at {off}+{len} is outside the name area \
             {FIXED}..{size}"
        )));
    }
    let name = &buf[off..off + len];
    if name.contains(&0) {
        return Err(Error::invalid(format!(
            "layout-2 header: the {what} name contains a NUL byte"
        )));
    }
    Ok(Some(name))
}

/// The byte range of the name the offset/size pair at `at` of `prefix` points at (empty for
/// none).
fn name_range(prefix: &[u8], at: usize) -> std::ops::Range<usize> {
    let off = u32_at(prefix, at) as usize;
    off..off + u32_at(prefix, at + 4) as usize
}

/// Layout 2's backing rewrite (see `BackingRewrite`) for a header of `size` bytes whose fixed
/// fields are `prefix`: the new name goes into the first run of the name area that overlaps
/// neither name the header points at now; the switch rewrites bytes 4..60 (the backing
/// offset and size, the fields between as `prefix` holds them, the backing format).
#[allow(clippy::type_complexity)]
pub(super) fn backing_rewrite(
    prefix: &[u8],
    size: usize,
    new: Option<&[u8]>,
    format: Option<BackingFormat>,
) -> Result<(Option<(u64, Vec<u8>)>, (u64, Vec<u8>))> {
    if prefix.len() < FIXED || !probe(prefix) {
        return Err(Error::invalid(
            "layout-2 header changed on disk: not a layout-2 header any more",
        ));
    }
    let taken = [name_range(prefix, 12), name_range(prefix, 4)];
    let mut switch = prefix[4..BACKING_FORMAT_AT + FORMAT_LEN].to_vec();
    let put = |buf: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        buf[at - 4..at - 4 + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut switch, BACKING_FORMAT_AT, &[0; FORMAT_LEN]);
    let Some(new) = new else {
        put(&mut switch, 4, &[0; 8]);
        return Ok((None, (4, switch)));
    };
    let free = |r: &std::ops::Range<usize>| {
        r.end <= size
            && taken
                .iter()
                .all(|t| t.is_empty() || r.end <= t.start || t.end <= r.start)
    };
    let at = [FIXED, taken[0].end, taken[1].end]
        .into_iter()
        .map(|start| start..start + new.len())
        .find(free)
        .ok_or_else(|| {
            Error::invalid(format!(
                "no {} unused bytes in the header's name area ({FIXED}..{size}) for the new \
                 backing file name: it cannot be rewritten in place",
                new.len()
            ))
        })?
        .start;
    put(&mut switch, 4, &(at as u32).to_le_bytes());
    put(&mut switch, 8, &(new.len() as u32).to_le_bytes());
    let format = format
        .expect("a backing file has a format")
        .name()
        .as_bytes();
    put(&mut switch, BACKING_FORMAT_AT, format);
    Ok((Some((at as u64, new.to_vec())), (4, switch)))
}

/// A 16-byte format field: the bytes before its NUL, zero-padded after it.
fn format_field<'a>(buf: &'a [u8], at: usize, what: &str) -> Result<&'a [u8]> {
    let field = &buf[at..at + FORMAT_LEN];
    let end = field.iter().position(|&b| b == 0).ok_or_else(|| {
        Error::invalid(format!(
            "layout-2 header: the {what} format field is not NUL-terminated"
        ))
    })?;
    if field[end..].iter().any(|&b| b != 0) {
        return Err(Error::invalid(format!(
            "layout-2 header: the {what} format field has bytes after its NUL"
        )));
    }
    Ok(&field[..end])
}

/// The header's `header_size` bytes: the image name at the start of the name area, the
/// backing name right after it, every other byte zero.
pub(super) fn to_bytes(h: &Header, cluster_bits: u32, compatible: u64) -> Vec<u8> {
    let size = header_size_for(cluster_bits);
    let mut buf = vec![0u8; size];
    let put32 =
        |buf: &mut Vec<u8>, at: usize, v: u32| buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
    buf[..4].copy_from_slice(&MAGIC);
    let image_at = FIXED;
    buf[image_at..image_at + h.image_file.len()].copy_from_slice(&h.image_file);
    put32(&mut buf, 12, image_at as u32);
    put32(&mut buf, 16, h.image_file.len() as u32);
    if let (Some(b), Some(f)) = (&h.backing_file, h.backing_format) {
        let at = image_at + h.image_file.len();
        buf[at..at + b.len()].copy_from_slice(b);
        put32(&mut buf, 4, at as u32);
        put32(&mut buf, 8, b.len() as u32);
        let name = f.name().as_bytes();
        buf[BACKING_FORMAT_AT..BACKING_FORMAT_AT + name.len()].copy_from_slice(name);
    }
    put32(&mut buf, 20, cluster_bits);
    buf[COMPATIBLE_AT..COMPATIBLE_AT + 8].copy_from_slice(&compatible.to_le_bytes());
    put32(&mut buf, 40, size as u32);
    buf[IMAGE_FORMAT_AT..IMAGE_FORMAT_AT + 3].copy_from_slice(b"raw");
    buf
}
