//! The input shapes the `ops` and `lifecycle` targets share: positions and lengths relative to
//! an image's size and clusters, and how a backing file relates to the image. Both targets
//! decode them the same way, so moving them here changed no corpus.

use arbitrary::Arbitrary;

/// The cluster size of every fuzzed image.
pub const CS: u64 = 65536;
/// Cluster indices `Pos::Near` reaches (the largest image has six clusters).
pub const NEAR_CLUSTERS: u64 = 8;

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Pos {
    /// `size * f / 65535`: anywhere in `0..=size`.
    Frac(u16),
    /// Near a cluster boundary (possibly past the end).
    Near(u8, i16),
    /// Near the end (possibly past it).
    End(i16),
}

impl Pos {
    pub fn at(self, size: u64) -> u64 {
        match self {
            Pos::Frac(f) => (u128::from(size) * u128::from(f) / 65535) as u64,
            Pos::Near(k, d) => {
                (u64::from(k) % NEAR_CLUSTERS * CS).saturating_add_signed(i64::from(d))
            }
            Pos::End(d) => size.saturating_add_signed(i64::from(d)),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Len {
    Zero,
    Small(u16),
    /// Up to three clusters.
    Big(u32),
    /// Up to the end, plus `d` (past the end when positive).
    ToEnd(i16),
    /// `u64::MAX` (allocation queries only; I/O uses the largest `Big`).
    Huge,
}

impl Len {
    pub fn of(self, size: u64, offset: u64) -> u64 {
        match self {
            Len::Zero => 0,
            Len::Small(n) => u64::from(n),
            Len::Big(n) => u64::from(n) % (3 * CS),
            Len::ToEnd(d) => size
                .saturating_sub(offset)
                .saturating_add_signed(i64::from(d)),
            Len::Huge => u64::MAX,
        }
    }

    /// A length a buffer can be allocated for.
    pub fn io(self, size: u64, offset: u64) -> u64 {
        match self {
            Len::Huge => 3 * CS - 1,
            other => other.of(size, offset),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum BackingLen {
    /// Longer than the image by up to three clusters.
    Longer(u32),
    Same,
    /// Shorter, with an odd length.
    Shorter(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum BackingSpec {
    /// No backing file.
    Absent,
    Present(BackingLen),
    /// A backing file the image is opened without (`no_backing`).
    Ignored(BackingLen),
}
