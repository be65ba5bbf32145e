//! The backing file: raw bytes or another add-cow image, read with zeros past its end.

use super::{iov, Image};
use crate::error::{Error, Op, Result};
use crate::storage::{iov_len, zero_fill, Storage};
use std::io::IoSliceMut;

/// What unallocated clusters read from.
pub enum Backing {
    /// A raw file (or host byte source) and its name for messages.
    Raw {
        storage: Box<dyn Storage>,
        name: String,
    },
    /// Another add-cow image, opened read-only.
    AddCow(Box<Image>),
}

impl Backing {
    /// A raw backing source; `name` says which file it is in error messages.
    pub fn raw(storage: Box<dyn Storage>, name: impl Into<String>) -> Backing {
        Backing::Raw {
            storage,
            name: name.into(),
        }
    }

    /// Length of the backing data in bytes.
    pub fn size(&self) -> Result<u64> {
        match self {
            Backing::Raw { storage, name } => storage
                .len()
                .map_err(|e| Error::io(Op::GetLength, name, 0, e)),
            Backing::AddCow(image) => Ok(image.size()),
        }
    }

    /// Fills `bufs` from `offset`; zeros past the backing data's end, at any length.
    pub(crate) fn read(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<()> {
        match self {
            Backing::Raw { storage, name } => storage
                .read_vectored_at(bufs, offset)
                .map_err(|e| Error::io(Op::Read, name, offset, e)),
            Backing::AddCow(image) => {
                // Only the part inside the lower image is asked of it, and only when there is
                // one: it refuses a request past its end, even of 0 bytes.
                let len = iov_len(bufs);
                let inside = image.size().saturating_sub(offset).min(len);
                if inside == 0 {
                    zero_fill(bufs);
                    return Ok(());
                }
                if inside == len {
                    return image.read(offset, bufs);
                }
                image.read(offset, &mut iov::slice_mut(bufs, 0, inside))?;
                zero_fill(&mut iov::slice_mut(bufs, inside, len - inside));
                Ok(())
            }
        }
    }
}
