//! Emptying the bitmap after a commit: every cluster unallocated again, on disk and in memory.

use super::Core;
use crate::error::{Error, Op, Result};
use std::sync::atomic::Ordering;

/// Zeros written per call.
const ZEROS: usize = 1 << 20;

impl Core {
    /// Makes every cluster unallocated: the stored bitmap is zeroed where its file holds data
    /// (holes already read zeros) and the `.add-cow` file synced, then the bitmap in memory is
    /// dropped (it reloads zeros). The caller guarantees that no other call on the core runs
    /// meanwhile, that no write-back is in flight or pending (flush first: no dirty page), that
    /// layout 2's "all allocated" bit is already clear, and that the backing file durably holds
    /// every allocated cluster's data: then a crash at any point reads the same content.
    ///
    /// Whatever fails, the memory is dropped too, so that it agrees with the disk.
    pub fn clear_all(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly(Op::Write));
        }
        if self.all_allocated() {
            return Err(Error::invalid(
                "clearing the bitmap under the all-allocated bit: clear the bit first",
            ));
        }
        let zeroed = self.zero_stored_bitmap();
        let clusters = self.geometry().clusters();
        let dropped = self
            .bitmap
            .resize(0, &self.store())
            .and_then(|()| self.bitmap.resize(clusters, &self.store()));
        self.scan_from.store(0, Ordering::Release);
        zeroed.and(dropped)
    }

    /// Writes zeros over every stretch of stored bitmap that may hold data, then syncs.
    fn zero_stored_bitmap(&self) -> Result<()> {
        let start = self.header.bitmap_offset();
        let end = start + self.header.bitmap_len(self.geometry().clusters());
        let zeros = vec![0u8; ZEROS];
        let mut at = start;
        while at < end {
            let data = self
                .meta
                .next_data(at)
                .map_err(|e| Error::io(Op::FindData, &self.meta_name, at, e))?;
            let Some(from) = data.filter(|&d| d < end) else {
                break;
            };
            let from = from.max(at);
            let len = (end - from).min(ZEROS as u64);
            self.touch_meta();
            self.meta
                .write_at(&zeros[..len as usize], from)
                .map_err(|e| Error::io(Op::WriteBitmap, &self.meta_name, from, e))?;
            at = from + len;
        }
        self.sync_meta()
    }
}
