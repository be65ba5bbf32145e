//! Where the bitmap's bytes are kept: the engine's `.add-cow` file, a buffer in tests.

use crate::error::Result;

/// The stored bitmap, in bitmap coordinates: offset 0 is the bitmap's first byte, wherever the
/// bitmap starts in its file.
pub(crate) trait Store {
    /// Fills `buf` from bitmap byte `offset`; bytes past the end of the store read as zeros.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The first bitmap byte at or after `offset` that may be nonzero, or `None` when every
    /// byte from `offset` on reads as zero. `Some(offset)` ("data may be here") is always a
    /// correct answer; a smaller one lets the bitmap skip all-zero stretches without reading
    /// them.
    fn next_data(&self, offset: u64) -> Result<Option<u64>>;
}
