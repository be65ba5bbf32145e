//! Writing the bitmap back to the metadata source, in the steps the host orders against its
//! own flushes: copy the dirty pages ([`Core::writeback_begin`]), flush the image file (the
//! host), write the copies ([`Core::writeback_write`]), flush the metadata source (the host, or
//! [`Core::sync_meta`]), then end the write-back ([`Core::writeback_end`]): only then do the
//! pages turn clean, so a page whose write or flush failed is written again by the next
//! write-back (a failed `fsync` may have dropped it from the page cache).

use super::write::Begin;
use super::Core;
use crate::bitmap;
use crate::error::{Error, Op, Result};
use std::sync::atomic::Ordering;

/// Copies of the dirty bitmap pages, taken by [`Core::writeback_begin`]. Until it ends, those
/// pages stay in memory and no other write-back starts. Owned and `Send`: a host may keep it in
/// a handle and end it on another thread; one never ended blocks every later write-back.
#[derive(Debug)]
#[must_use = "a write-back must be ended"]
pub struct WriteBack {
    pages: bitmap::WriteBack,
}

impl WriteBack {
    /// No page was dirty: nothing to write.
    pub fn is_empty(&self) -> bool {
        self.pages.pages().is_empty()
    }

    /// How many bitmap pages it copied (0: nothing to write).
    pub fn pages(&self) -> usize {
        self.pages.pages().len()
    }
}

impl Core {
    /// Copies the dirty bitmap pages for a write-back. Every bit in the copies had its data
    /// written to the image file before: flush the image file, then
    /// [`Core::writeback_write`].
    pub fn writeback_begin(&self) -> Result<Begin<WriteBack>> {
        let generation = self.generation();
        Ok(match self.bitmap.take_dirty() {
            Some(pages) => {
                self.writeback_open.store(true, Ordering::Release);
                Begin::Ready(WriteBack { pages })
            }
            None => Begin::Busy(generation),
        })
    }

    /// Writes the copies to the metadata source (without flushing it).
    pub fn writeback_write(&self, wb: &WriteBack) -> Result<()> {
        self.touch_meta();
        wb.pages.pages().iter().try_for_each(|page| {
            let at = self.header.bitmap_offset() + page.offset;
            self.meta
                .write_at(&page.bytes, at)
                .map_err(|e| Error::io(Op::WriteBitmap, &self.meta_name, at, e))
        })
    }

    /// Ends a write-back: `durable` when the copies were written and the metadata source
    /// flushed (the pages turn clean, unless bits were set in them since); otherwise the pages
    /// are dirty again, for the next write-back.
    pub fn writeback_end(&self, wb: WriteBack, durable: bool) {
        self.writeback_open.store(false, Ordering::Release);
        match durable {
            true => self.bitmap.writeback_done(wb.pages),
            false => self.bitmap.writeback_failed(wb.pages),
        }
        self.claims.advance();
    }

    /// Flushes the metadata source, if anything changed in it since the last flush.
    pub fn sync_meta(&self) -> Result<()> {
        if !self.meta_unsynced.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.meta.flush().map_err(|e| {
            self.touch_meta();
            Error::io(Op::Flush, &self.meta_name, 0, e)
        })
    }

    /// Records a change to the metadata source that the next [`Core::sync_meta`] must flush.
    pub(super) fn touch_meta(&self) {
        self.meta_unsynced.store(true, Ordering::Release);
    }
}
