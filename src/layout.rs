//! On-disk layout: the bytes of the `.add-cow` file, nothing else.
//!
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
//! The cluster size is a parameter of [`Geometry`] so that a second layout with other cluster
//! sizes can sit beside this one.

#![forbid(unsafe_code)]

use crate::cluster::Cluster;
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
const CLUSTER_BITS: u32 = 16;
/// The largest virtual size the library supports: 2^56 bytes (64 PiB). Open, create and
/// truncate refuse larger sizes with `EFBIG`. Up to it, opening costs the same at any size.
pub const MAX_SIZE: u64 = 1 << 56;

const BACKING_AT: usize = 12;
const IMAGE_AT: usize = BACKING_AT + NAME_FIELD;
const RESERVED_AT: usize = IMAGE_AT + NAME_FIELD;

/// Confidence (0..=100) that `buf` starts an add-cow file: 100 for the magic and version 1,
/// 0 otherwise. Twelve bytes are enough; shorter buffers score 0.
pub fn probe(buf: &[u8]) -> u8 {
    match buf.get(..12) {
        Some(head) if head[..8] == MAGIC && head[8..12] == VERSION.to_be_bytes() => 100,
        _ => 0,
    }
}

/// A parsed and validated layout-1 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Name of the raw image file, as stored (relative names resolve against the `.add-cow`
    /// file's directory).
    pub image_file: Vec<u8>,
    /// Name of the backing file, as stored; `None` when the field is empty.
    pub backing_file: Option<Vec<u8>>,
}

impl Header {
    /// Builds a header, checking that both names fit their fields.
    pub fn new(image_file: &[u8], backing_file: Option<&[u8]>) -> Result<Header> {
        check_name("image file", image_file)?;
        if image_file.is_empty() {
            return Err(Error::invalid("the image file name is empty"));
        }
        let backing_file = backing_file.filter(|b| !b.is_empty());
        if let Some(b) = backing_file {
            check_name("backing file", b)?;
        }
        Ok(Header {
            image_file: image_file.to_vec(),
            backing_file: backing_file.map(<[u8]>::to_vec),
        })
    }

    /// Parses and validates the first [`HEADER_SIZE`] bytes of a `.add-cow` file.
    pub fn parse(buf: &[u8]) -> Result<Header> {
        if buf.len() < 12 || buf[..8] != MAGIC {
            return Err(Error::invalid("not an add-cow file: bad magic"));
        }
        let version = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(Error::Unsupported(format!(
                "add-cow version {version} is not supported (only version {VERSION})"
            )));
        }
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

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut buf = [0u8; HEADER_SIZE];
        buf[..8].copy_from_slice(&MAGIC);
        buf[8..12].copy_from_slice(&VERSION.to_be_bytes());
        if let Some(b) = &self.backing_file {
            buf[BACKING_AT..BACKING_AT + b.len()].copy_from_slice(b);
        }
        buf[IMAGE_AT..IMAGE_AT + self.image_file.len()].copy_from_slice(&self.image_file);
        buf
    }

    /// Byte offset of the COW bitmap in the `.add-cow` file.
    pub fn bitmap_offset(&self) -> u64 {
        HEADER_SIZE as u64
    }

    /// log2 of the cluster size.
    pub fn cluster_bits(&self) -> u32 {
        CLUSTER_BITS
    }
}

fn check_name(what: &str, name: &[u8]) -> Result<()> {
    if name.len() >= NAME_FIELD {
        return Err(Error::invalid(format!(
            "{what} name is {} bytes; at most {} fit",
            name.len(),
            NAME_FIELD - 1
        )));
    }
    if name.contains(&0) {
        return Err(Error::invalid(format!("{what} name contains a NUL byte")));
    }
    Ok(())
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

/// Cluster arithmetic for an image of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    cluster_bits: u32,
    size: u64,
}

impl Geometry {
    pub fn new(cluster_bits: u32, size: u64) -> Geometry {
        Geometry { cluster_bits, size }
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn cluster_bits(&self) -> u32 {
        self.cluster_bits
    }

    /// The same cluster size at another image size.
    pub fn with_size(&self, size: u64) -> Geometry {
        Geometry::new(self.cluster_bits, size)
    }

    /// Number of clusters: ceil(size / cluster size).
    pub fn clusters(&self) -> u64 {
        self.size.div_ceil(self.cluster_size())
    }

    /// Bitmap length in bytes: ceil(clusters / 8).
    pub fn bitmap_len(&self) -> u64 {
        self.clusters().div_ceil(8)
    }

    /// The cluster holding byte `offset`.
    pub fn cluster_of(&self, offset: u64) -> Cluster {
        Cluster(offset >> self.cluster_bits)
    }

    /// Byte offset where cluster `c` starts.
    pub fn cluster_start(&self, c: Cluster) -> u64 {
        c.0 << self.cluster_bits
    }

    /// Byte offset where cluster `c` ends, clamped to the image size (the last cluster may be
    /// partial).
    pub fn cluster_end(&self, c: Cluster) -> u64 {
        self.cluster_start(c + 1).min(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_offsets() {
        let h = Header::new(b"disk.raw", Some(b"/base/golden.img")).unwrap();
        let bytes = h.to_bytes();
        assert_eq!(&bytes[..8], b"ADD_COW\xff");
        assert_eq!(&bytes[8..12], &[0, 0, 0, 1]);
        assert_eq!(&bytes[12..28], b"/base/golden.img");
        assert_eq!(bytes[28], 0);
        assert_eq!(&bytes[1036..1044], b"disk.raw");
        assert!(bytes[2060..].iter().all(|&b| b == 0));
        assert_eq!(Header::parse(&bytes).unwrap(), h);
        assert_eq!(h.bitmap_offset(), 2560);
    }

    #[test]
    fn empty_backing_is_none() {
        let h = Header::new(b"i", Some(b"")).unwrap();
        assert_eq!(h.backing_file, None);
        assert_eq!(Header::parse(&h.to_bytes()).unwrap().backing_file, None);
    }

    #[test]
    fn name_limits() {
        let max = vec![b'a'; 1023];
        let h = Header::new(&max, Some(&max)).unwrap();
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
        let long = vec![b'a'; 1024];
        assert!(Header::new(&long, None)
            .unwrap_err()
            .to_string()
            .contains("1024 bytes"));
        assert!(Header::new(b"i", Some(&long)).is_err());
        assert!(Header::new(b"", None).is_err());
        assert!(Header::new(b"a\0b", None).is_err());
    }

    #[test]
    fn malformed_headers() {
        let good = Header::new(b"img", Some(b"base")).unwrap().to_bytes();
        let mut b = good;
        b[0] = b'X';
        assert_eq!(Header::parse(&b).unwrap_err().errno(), libc::EINVAL);
        let mut b = good;
        b[11] = 2;
        let e = Header::parse(&b).unwrap_err();
        assert_eq!(e.errno(), libc::ENOTSUP);
        assert!(e.to_string().contains("version 2"));
        assert!(Header::parse(&good[..2000])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        let mut b = good;
        b[12..1036].fill(b'x');
        assert!(Header::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("NUL-terminated"));
        let mut b = good;
        b[1100] = b'x';
        assert!(Header::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("after its NUL"));
        let mut b = good;
        b[1036] = 0;
        b[1037] = 0;
        b[1038] = 0;
        assert!(Header::parse(&b).unwrap_err().to_string().contains("empty"));
        let mut b = good;
        b[2559] = 1;
        assert!(Header::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("reserved"));
    }

    #[test]
    fn probe_scores() {
        let good = Header::new(b"img", None).unwrap().to_bytes();
        assert_eq!(probe(&good), 100);
        assert_eq!(probe(&good[..12]), 100);
        assert_eq!(probe(&good[..11]), 0);
        assert_eq!(probe(&[]), 0);
        let mut v2 = good;
        v2[11] = 2;
        assert_eq!(probe(&v2), 0);
        assert_eq!(probe(&[0u8; 512]), 0);
    }

    #[test]
    fn geometry_of_odd_sizes() {
        let g = Geometry::new(16, 0);
        assert_eq!((g.clusters(), g.bitmap_len()), (0, 0));
        let g = Geometry::new(16, 1);
        assert_eq!((g.clusters(), g.bitmap_len()), (1, 1));
        assert_eq!(g.cluster_end(Cluster(0)), 1);
        let g = Geometry::new(16, 65536);
        assert_eq!((g.clusters(), g.bitmap_len()), (1, 1));
        let g = Geometry::new(16, 65537);
        assert_eq!((g.clusters(), g.bitmap_len()), (2, 1));
        assert_eq!(g.cluster_end(Cluster(1)), 65537);
        let g = Geometry::new(16, 8 * 65536 + 512);
        assert_eq!((g.clusters(), g.bitmap_len()), (9, 2));
        let g = Geometry::new(16, 1 << 40);
        assert_eq!(g.bitmap_len(), 2 << 20, "2 MiB of bitmap per TiB");
        let g = Geometry::new(12, 10_000);
        assert_eq!((g.cluster_size(), g.clusters()), (4096, 3));
        assert_eq!(g.cluster_of(8191), Cluster(1));
        assert_eq!(g.cluster_start(Cluster(2)), 8192);
        assert_eq!(Cluster(2) + 3, Cluster(5));
        assert_eq!(Cluster(5) - Cluster(2), 3);
    }
}
