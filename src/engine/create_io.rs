//! Creating the `.add-cow` file on a byte source the host supplies (a non-local protocol:
//! QEMU's `bdrv_co_create` over any `file` child). The host creates and sizes the image file
//! itself; here only the header and an all-unallocated bitmap are written.
//!
//! # Order
//! The bitmap first (a resize to zero and back, so every byte past the header reads zero; or
//! zeros written over it where the source cannot resize), then the header, then one flush:
//! until the header lands, the file has no add-cow header and opens as nothing (a crash never
//! leaves a valid header over a stale bitmap).

use super::open::check_size;
use super::CreateOptions;
use crate::error::{Error, Op, Result};
use crate::layout::Geometry;
use crate::storage::Storage;

/// Zeros written per call where the source cannot resize.
const ZEROS: usize = 1 << 20;

/// Lays out a new `.add-cow` file on `meta` (`name` for messages) for an image of exactly
/// `opts.size` bytes (0 too): the header `opts` describes and an all-unallocated bitmap,
/// flushed. `confine` is refused (`EINVAL`: the host resolves its names); nothing else of the
/// image or backing file is opened. `EINVAL` or `ENOTSUP` for what no layout allows, `EFBIG`
/// above the largest size, the source's errors.
pub fn create_on(meta: &dyn Storage, name: &str, opts: &CreateOptions) -> Result<()> {
    if opts.confine {
        return Err(Error::invalid(
            "confine is for local files: a host creating through its own I/O resolves names \
             itself",
        ));
    }
    let header = opts.header()?;
    check_size(opts.size, "the requested size")?;
    let clusters = Geometry::new(header.cluster_bits(), opts.size).clusters();
    let len = header.file_len(clusters);
    let io = |op, at| move |e| Error::io(op, name, at, e);
    let bitmap_at = header.bitmap_offset();
    match meta.resize(0).and_then(|()| meta.resize(len)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
            let zeros = vec![0u8; ZEROS];
            let mut at = bitmap_at;
            while at < len {
                let n = (len - at).min(ZEROS as u64) as usize;
                meta.write_at(&zeros[..n], at).map_err(io(Op::Write, at))?;
                at += n as u64;
            }
        }
        Err(e) => return Err(io(Op::Resize, len)(e)),
    }
    meta.write_at(&header.to_bytes(), 0)
        .map_err(io(Op::Write, 0))?;
    meta.flush().map_err(io(Op::Flush, 0))
}
