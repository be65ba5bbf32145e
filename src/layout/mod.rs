//! On-disk layout: the bytes of the `.add-cow` file, nothing else. Two layouts (see
//! `docs/format.md`): layout 1, the 2012 v9 seed ([`v1`]: big-endian, 1023-byte name fields,
//! 64 KiB clusters, the bitmap at byte 2560), and layout 2, the series' final revision ([`v2`]:
//! little-endian, names by offset and length, feature bits, 4 KiB – 2 MiB clusters, the bitmap
//! at a cluster-aligned `header_size`, padded to whole clusters). Everything above this module
//! is layout-blind: it asks a [`Header`] where the bitmap lives and how long it is.

#![forbid(unsafe_code)]

pub mod v1;
pub mod v2;

use crate::cluster::Cluster;
use crate::error::{Error, Result};

/// The largest virtual size the library supports: 2^56 bytes (64 PiB). Open, create and
/// truncate refuse larger sizes with `EFBIG`. Up to it, opening costs the same at any size.
pub const MAX_SIZE: u64 = 1 << 56;

/// What the backing file is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackingFormat {
    /// Raw bytes (the default).
    #[default]
    Raw,
    /// Another add-cow image. Its own backing file is opened as add-cow when it carries the
    /// add-cow magic and as raw otherwise (layout 1), or as its header says (layout 2).
    AddCow,
}

impl BackingFormat {
    /// The name a layout-2 header stores.
    pub fn name(self) -> &'static str {
        match self {
            BackingFormat::Raw => "raw",
            BackingFormat::AddCow => "add-cow",
        }
    }
}

/// Which layout a header is, with what only layout 2 has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    V1,
    V2 {
        cluster_bits: u32,
        /// Compatible feature bits, unknown ones included (kept as they are on rewrite).
        compatible: u64,
    },
}

/// A parsed and validated header of either layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Name of the raw image file, as stored (relative names resolve against the `.add-cow`
    /// file's directory).
    pub image_file: Vec<u8>,
    /// Name of the backing file, as stored; `None` when there is none.
    pub backing_file: Option<Vec<u8>>,
    /// The backing file's format as a layout-2 header names it; `None` for layout 1 (the
    /// opener says) and without a backing file.
    pub backing_format: Option<BackingFormat>,
    layout: Layout,
}

/// Confidence (0..=100) that `buf` starts an add-cow file: 100 for layout 1's magic and
/// version 1 (12 bytes are enough) or layout 2's magic (4 bytes), 0 otherwise.
pub fn probe(buf: &[u8]) -> u8 {
    match v1::probe(buf) || v2::probe(buf) {
        true => 100,
        false => 0,
    }
}

impl Header {
    /// A layout-1 header, checking that both names fit their fields.
    pub fn new(image_file: &[u8], backing_file: Option<&[u8]>) -> Result<Header> {
        check_name("image file", image_file)?;
        let backing_file = backing_file.filter(|b| !b.is_empty());
        if let Some(b) = backing_file {
            check_name("backing file", b)?;
        }
        v1::check_fits(image_file, backing_file)?;
        Ok(Header {
            image_file: image_file.to_vec(),
            backing_file: backing_file.map(<[u8]>::to_vec),
            backing_format: None,
            layout: Layout::V1,
        })
    }

    /// A layout-2 header with clusters of `1 << cluster_bits` bytes (12..=21).
    pub fn new_v2(
        image_file: &[u8],
        backing: Option<(&[u8], BackingFormat)>,
        cluster_bits: u32,
    ) -> Result<Header> {
        check_name("image file", image_file)?;
        let backing = backing.filter(|(b, _)| !b.is_empty());
        if let Some((b, _)) = backing {
            check_name("backing file", b)?;
            if b == image_file {
                return Err(Error::invalid(
                    "the image file and the backing file have the same name",
                ));
            }
        }
        v2::check_cluster_bits(cluster_bits)?;
        v2::check_fits(image_file, backing.map(|(b, _)| b), cluster_bits)?;
        Ok(Header {
            image_file: image_file.to_vec(),
            backing_file: backing.map(|(b, _)| b.to_vec()),
            backing_format: backing.map(|(_, f)| f),
            layout: Layout::V2 {
                cluster_bits,
                compatible: 0,
            },
        })
    }

    /// How many bytes the header starting with `prefix` (at least 76 bytes, or the whole file
    /// when it is shorter) spans: read that many, then [`Header::parse`].
    pub fn len_of(prefix: &[u8]) -> Result<usize> {
        if v2::probe(prefix) {
            return v2::header_size(prefix);
        }
        v1::check_magic(prefix)?;
        Ok(v1::HEADER_SIZE)
    }

    /// Parses and validates a header of either layout (its first [`Header::len_of`] bytes).
    pub fn parse(buf: &[u8]) -> Result<Header> {
        match v2::probe(buf) {
            true => v2::parse(buf),
            false => v1::parse(buf),
        }
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self.layout {
            Layout::V1 => v1::to_bytes(self),
            Layout::V2 {
                cluster_bits,
                compatible,
            } => v2::to_bytes(self, cluster_bits, compatible),
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// 1 or 2.
    pub fn layout_number(&self) -> u32 {
        match self.layout {
            Layout::V1 => 1,
            Layout::V2 { .. } => 2,
        }
    }

    /// log2 of the cluster size.
    pub fn cluster_bits(&self) -> u32 {
        match self.layout {
            Layout::V1 => v1::CLUSTER_BITS,
            Layout::V2 { cluster_bits, .. } => cluster_bits,
        }
    }

    /// Length of the header: where the COW bitmap starts in the `.add-cow` file.
    pub fn bitmap_offset(&self) -> u64 {
        match self.layout {
            Layout::V1 => v1::HEADER_SIZE as u64,
            Layout::V2 { cluster_bits, .. } => v2::header_size_for(cluster_bits) as u64,
        }
    }

    /// Length of the bitmap on disk for `clusters` clusters: one bit each, rounded up to a
    /// byte; layout 2 pads it to whole clusters.
    pub fn bitmap_len(&self, clusters: u64) -> u64 {
        let bytes = clusters.div_ceil(8);
        match self.layout {
            Layout::V1 => bytes,
            Layout::V2 { cluster_bits, .. } => bytes.next_multiple_of(1 << cluster_bits),
        }
    }

    /// The `.add-cow` file's length for `clusters` clusters.
    pub fn file_len(&self, clusters: u64) -> u64 {
        self.bitmap_offset() + self.bitmap_len(clusters)
    }

    /// The compatible feature bits (0 for layout 1).
    pub fn compatible_features(&self) -> u64 {
        match self.layout {
            Layout::V1 => 0,
            Layout::V2 { compatible, .. } => compatible,
        }
    }

    /// Layout 2's "all allocated" bit: every cluster lives in the image file; the backing file
    /// is not needed. Always false for layout 1.
    pub fn all_allocated(&self) -> bool {
        self.compatible_features() & v2::ALL_ALLOCATED != 0
    }

    /// Sets or clears the "all allocated" bit (layout 2 only: `false` for layout 1, which has
    /// no such bit).
    pub fn set_all_allocated(&mut self, on: bool) -> bool {
        match &mut self.layout {
            Layout::V1 => false,
            Layout::V2 { compatible, .. } => {
                match on {
                    true => *compatible |= v2::ALL_ALLOCATED,
                    false => *compatible &= !v2::ALL_ALLOCATED,
                }
                true
            }
        }
    }

    /// Where the compatible feature field lies in the `.add-cow` file, and its bytes (layout 2;
    /// `None` for layout 1). A feature bit is changed by writing these 8 bytes alone: one
    /// sector-atomic write that leaves every other byte of the header, the names above all,
    /// where it is (a whole-header rewrite would re-lay out the names of a header another
    /// writer made, and a torn one would point them at zeros).
    pub fn features_field(&self) -> Option<(u64, [u8; 8])> {
        match self.layout {
            Layout::V1 => None,
            Layout::V2 { compatible, .. } => {
                Some((v2::COMPATIBLE_AT as u64, compatible.to_le_bytes()))
            }
        }
    }

    /// The image file's format name ("raw").
    pub fn image_format(&self) -> &'static str {
        "raw"
    }
}

/// The bytes of the header's start that [`Header::backing_rewrite`] reads from the file (the
/// fixed fields of layout 2, where the names' offsets are).
pub const REWRITE_PREFIX: usize = v2::FIXED;

/// A sector: the unit a disk writes atomically.
const SECTOR: u64 = 512;

/// How to change the backing file a header names, in place and crash-safely, from
/// [`Header::backing_rewrite`]. Durability order: write `name` (if any) and make it durable,
/// then write `switch` and make it durable. Before `switch` lands the header reads as before
/// (`name` went into bytes no field points at); `switch` is one write inside one sector when
/// `atomic`, so the header then reads as before or as `header`, never torn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingRewrite {
    /// Layout 2: the new name, at an offset in the name area outside both names the header
    /// points at now.
    pub name: Option<(u64, Vec<u8>)>,
    /// The write that switches to the new backing file: layout 2's offset, size and format
    /// fields (bytes 4..60, the fields between written as they are); layout 1's name field,
    /// as far as the longer of both names reaches. May be empty (layout 1, no name before or
    /// after).
    pub switch: (u64, Vec<u8>),
    /// `switch` lies inside one sector: always for layout 2; for layout 1 when both names
    /// end by byte 512 of the file (at most 500 bytes each).
    pub atomic: bool,
    /// The header afterwards.
    pub header: Header,
}

impl Header {
    /// The header with another backing file (`None`: none), checked as a new header of this
    /// layout would be. Layout 1 stores no format: it is ignored.
    pub fn with_backing(&self, backing: Option<(&[u8], BackingFormat)>) -> Result<Header> {
        let backing = backing.filter(|(b, _)| !b.is_empty());
        let mut header = match self.layout {
            Layout::V1 => Header::new(&self.image_file, backing.map(|(b, _)| b))?,
            Layout::V2 { cluster_bits, .. } => {
                Header::new_v2(&self.image_file, backing, cluster_bits)?
            }
        };
        header.layout = self.layout;
        Ok(header)
    }

    /// The writes that make the file's header name `backing` instead (see [`BackingRewrite`]).
    /// `prefix` is the file's first [`REWRITE_PREFIX`] bytes as they are now (layout 2 reads the
    /// names' offsets there). `EINVAL` for a name the layout refuses, or (layout 2) when the
    /// name area has no run of unused bytes long enough for the new name.
    pub fn backing_rewrite(
        &self,
        prefix: &[u8],
        backing: Option<(&[u8], BackingFormat)>,
    ) -> Result<BackingRewrite> {
        let header = self.with_backing(backing)?;
        let new = header.backing_file.as_deref();
        let (name, switch, atomic) = match self.layout {
            Layout::V1 => {
                let old = self.backing_file.as_ref().map_or(0, Vec::len);
                let (at, field) = v1::backing_field(new, old);
                let atomic = at + field.len() as u64 <= SECTOR;
                (None, (at, field), atomic)
            }
            Layout::V2 { cluster_bits, .. } => {
                let size = v2::header_size_for(cluster_bits);
                let (name, switch) = v2::backing_rewrite(prefix, size, new, header.backing_format)?;
                (name, switch, true)
            }
        };
        Ok(BackingRewrite {
            name,
            switch,
            atomic,
            header,
        })
    }
}

/// A name: non-empty, without NUL bytes.
fn check_name(what: &str, name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("the {what} name is empty")));
    }
    if name.contains(&0) {
        return Err(Error::invalid(format!("{what} name contains a NUL byte")));
    }
    Ok(())
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
mod tests;
