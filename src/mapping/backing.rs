//! Changing the backing file the header names, in place (QEMU's change-backing-file: rebase,
//! the end of stream and commit jobs).
//!
//! # Durability order
//! Layout 2: the new name is written into bytes of the name area that neither name points at,
//! and the metadata source flushed; then bytes 4..60 (the backing name's offset and size, the
//! fields between unchanged, the backing format) are written in one write inside the first
//! sector, and the source flushed again. A crash before that write lands reads the old header
//! (nothing it points at changed); after, the new one; a sector is written whole or not at
//! all, so never a mix. Layout 1 has no room beside its fixed 1023-byte name field: the field
//! is overwritten in one write, as far as the longer of both names reaches; inside the first
//! sector (both names at most 500 bytes) that is atomic the same way, beyond it a crash may
//! leave a torn name (the header then fails to open or names a file that does not exist).
//! The names in memory change only once all of it succeeded; on failure the file names the
//! old or the new backing file: call again.

use super::Core;
use crate::error::{Error, Op, Result};
use crate::layout::{BackingFormat, REWRITE_PREFIX};

impl Core {
    /// Makes the header name `backing` (a name and its format; `None`: no backing file) as its
    /// backing file, crash-safely (see the module docs); flushes the metadata source (once or
    /// twice). Only the header changes: the host attaches the new backing data itself
    /// ([`Core::set_backing_len`]). Layout 1 stores no format and ignores it. `EPERM` on a
    /// read-only core, `EINVAL` for a name the layout refuses (empty, with a NUL, too long,
    /// the image file's name in layout 2, or no unused run in layout 2's name area long
    /// enough), `EBUSY` beside another header rewrite (the module docs of `header.rs`).
    pub fn set_backing_file(&self, backing: Option<(&[u8], BackingFormat)>) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly(Op::Write));
        }
        let _exclusive = self.header_lock.try_exclusive()?;
        let mut prefix = [0u8; REWRITE_PREFIX];
        self.meta
            .read_at(&mut prefix, 0)
            .map_err(|e| Error::io(Op::ReadHeader, &self.meta_name, 0, e))?;
        let plan = self.header().backing_rewrite(&prefix, backing)?;
        if let Some((at, name)) = &plan.name {
            self.write_header(*at, name)?;
        }
        self.write_header(plan.switch.0, &plan.switch.1)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = plan.header;
        Ok(())
    }

    /// Writes `bytes` at `at` of the header and flushes the metadata source.
    fn write_header(&self, at: u64, bytes: &[u8]) -> Result<()> {
        if !bytes.is_empty() {
            self.meta
                .write_at(bytes, at)
                .map_err(|e| Error::io(Op::Write, &self.meta_name, at, e))?;
        }
        self.meta
            .flush()
            .map_err(|e| Error::io(Op::Flush, &self.meta_name, 0, e))
    }
}
