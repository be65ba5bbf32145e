//! Changing the backing file an open image's header names ([`Image::set_backing_file`]); the
//! core's `mapping/backing.rs` does it crash-safely.

use super::{BackingFormat, Image};
use crate::error::Result;

impl Image {
    /// Makes the header name `backing` (a name and its format; `None`: none) as the backing
    /// file, crash-safely (`Core::set_backing_file`). Exclusive of writes and flushes, as a
    /// truncate (it waits for those in flight). The image keeps reading the backing file it
    /// opened; the next open opens the new one.
    pub fn set_backing_file(&self, backing: Option<(&[u8], BackingFormat)>) -> Result<()> {
        let _gate = self.exclusive();
        self.core().set_backing_file(backing)
    }
}
