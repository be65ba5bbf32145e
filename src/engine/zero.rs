//! Write-zeroes, discard and block status: the I/O loop over [`Core::begin_zero`] that keeps
//! the image file sparse.
//!
//! - **Write-zeroes** (QEMU's `bdrv_pwrite_zeroes`): whole clusters that do not read zeros
//!   already are made to without writing zero bytes: punched ([`ZeroFlags::may_unmap`]) or
//!   zeroed in place (`FALLOC_FL_ZERO_RANGE`); unallocated ones are marked allocated without
//!   copying the backing file. Unallocated clusters past the backing data's end already read
//!   zeros and stay as they are. Parts of clusters that do not read zeros already (a hole,
//!   or unallocated past the backing data) are a copy-on-write with zeros. Where the
//!   image file cannot punch or zero a range, zeros are written, unless
//!   [`ZeroFlags::no_fallback`] (then `ENOTSUP`, before anything changed).
//! - **Discard**: whole clusters only (partial ones are ignored, like qcow2): every one is
//!   punched and allocated, so it reads zeros afterwards (no backing data shows through).
//! - **Block status**: allocated, reads zeros, or reads the backing file, with holes of the
//!   image file (`SEEK_DATA`/`SEEK_HOLE`) as allocated zeros.
//!
//! # Durability order (the core's, as for an allocating write)
//! Punch or zero the clusters → (writethrough: sync the image file) → commit (bits set) →
//! (writethrough: metadata write-back) → return. In place: punch or zero → (writethrough: sync
//! the image file) → return.

use super::image::{zeros, ZEROS};
use super::Image;
use crate::error::{Error, Op, Result};
use crate::mapping::{Begin, Kind, Step};
use std::io::IoSlice;

/// How [`Image::write_zeroes`] may zero (QEMU's `BDRV_REQ_*` flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// `BDRV_REQ_MAY_UNMAP`: whole clusters become holes in the image file instead of zeroed
    /// allocated space.
    pub may_unmap: bool,
    /// `BDRV_REQ_NO_FALLBACK`: fail with `ENOTSUP` rather than write zero bytes.
    pub no_fallback: bool,
}

/// What a run of guest bytes reads, from [`Image::block_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Bytes from the offset asked for in this state (0 at or past the end).
    pub len: u64,
    /// The bytes live in the image file.
    pub allocated: bool,
    /// The bytes read zeros: a hole of the image file, or unallocated past the backing data.
    pub zero: bool,
}

impl Status {
    /// The bytes read the backing file.
    pub fn backing(&self) -> bool {
        !self.allocated && !self.zero
    }
}

/// How whole clusters are made to read zeros.
#[derive(Debug, Clone, Copy)]
struct Clear {
    /// Punch a hole rather than zero in place.
    unmap: bool,
    /// Write zeros where the image file cannot punch or zero.
    fallback: bool,
    /// Leave unallocated clusters that read zeros already.
    skip_zero: bool,
}

impl Image {
    /// Makes `offset..offset + bytes` read zeros (see the module docs). `EPERM` on a read-only
    /// image, `EINVAL` past the end, `ENOTSUP` with `no_fallback` where zeros would have to be
    /// written.
    pub fn write_zeroes(&self, offset: u64, bytes: u64, flags: ZeroFlags) -> Result<()> {
        let _gate = self.shared();
        let (start, end) = self.whole_clusters(offset, bytes)?;
        let partial = match start < end {
            true => [(offset, start - offset), (end, offset + bytes - end)],
            false => [(offset, bytes), (offset, 0)],
        };
        if flags.no_fallback {
            for (at, len) in partial {
                self.refuse_unless_zero(at, len)?;
            }
        }
        let clear = Clear {
            unmap: flags.may_unmap,
            fallback: !flags.no_fallback,
            skip_zero: true,
        };
        if start < end {
            self.clear_clusters(start, end, clear)?;
        }
        for (at, len) in partial {
            self.zero_partial(at, len)?;
        }
        Ok(())
    }

    /// Discards the whole clusters of `offset..offset + bytes`: afterwards they read zeros and
    /// are allocated (holes in the image file where it can punch). Partial clusters are left.
    /// `EPERM` on a read-only image, `EINVAL` past the end.
    pub fn discard(&self, offset: u64, bytes: u64) -> Result<()> {
        let _gate = self.shared();
        let (start, end) = self.whole_clusters(offset, bytes)?;
        if start >= end {
            return Ok(());
        }
        let clear = Clear {
            unmap: true,
            fallback: true,
            skip_zero: false,
        };
        self.clear_clusters(start, end, clear)
    }

    /// The state of the byte at `offset` and how many bytes from it, at most `bytes` and never
    /// past the end, share it (a shorter run is allowed: bounded work). `len` 0 at or past the
    /// end, or for `bytes == 0`.
    pub fn block_status(&self, offset: u64, bytes: u64) -> Result<Status> {
        let e = self.core().map(offset, bytes)?;
        let status = |allocated, zero, len| Status {
            len,
            allocated,
            zero,
        };
        Ok(match e.kind {
            _ if e.len == 0 => status(false, false, 0),
            Kind::Backing => status(false, false, e.len),
            Kind::Zero => status(false, true, e.len),
            Kind::Data => {
                let find = |err| Error::io(Op::FindData, self.data_name(), offset, err);
                match self.data().next_data(offset).map_err(find)? {
                    Some(data) if data == offset => {
                        let hole = self.data().next_hole(offset).map_err(find)?;
                        status(true, false, e.len.min(hole.max(offset + 1) - offset))
                    }
                    Some(data) => status(true, true, e.len.min(data - offset)),
                    None => status(true, true, e.len),
                }
            }
        })
    }

    /// Checks a write-like request and returns its whole clusters `start..end` (the last
    /// cluster counts as whole when the request reaches the image end); `start >= end` when
    /// there are none.
    fn whole_clusters(&self, offset: u64, bytes: u64) -> Result<(u64, u64)> {
        let core = self.core();
        if !core.is_writable() {
            return Err(Error::ReadOnly(Op::Write));
        }
        core.check(offset, bytes)?;
        let cs = core.geometry().cluster_size();
        let stop = offset + bytes;
        let start = offset.div_ceil(cs) * cs;
        let end = match stop == core.size() {
            true => stop,
            false => stop / cs * cs,
        };
        Ok((start, end))
    }

    /// `ENOTSUP` unless `offset..offset + len` reads zeros already.
    fn refuse_unless_zero(&self, offset: u64, len: u64) -> Result<()> {
        self.nonzero_runs(offset, len, |_, _| {
            Err(Error::Unsupported(format!(
                "zeroing {offset}+{len} would write zeros (part of a cluster), \
                 and the request allows no fallback"
            )))
        })
    }

    /// Zeros part of a cluster: written (a copy-on-write with zeros) where it does not read
    /// zeros already (a hole, or unallocated past the backing data's end).
    fn zero_partial(&self, offset: u64, len: u64) -> Result<()> {
        self.nonzero_runs(offset, len, |at, n| {
            let mut pos = 0;
            while pos < n {
                let chunk = (n - pos).min(ZEROS as u64);
                self.write_gated(at + pos, &[IoSlice::new(zeros(chunk))])?;
                pos += chunk;
            }
            Ok(())
        })
    }

    /// Calls `each(offset, len)` for every run of `offset..offset + len` that
    /// [`Image::block_status`] does not report as zeros.
    fn nonzero_runs(
        &self,
        offset: u64,
        len: u64,
        mut each: impl FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let mut pos = 0;
        while pos < len {
            let s = self.block_status(offset + pos, len - pos)?;
            if s.len == 0 {
                break;
            }
            if !s.zero {
                each(offset + pos, s.len)?;
            }
            pos += s.len;
        }
        Ok(())
    }

    /// Makes the whole clusters `start..end` read zeros as `clear` says, allocating the
    /// unallocated ones without copying.
    fn clear_clusters(&self, start: u64, end: u64, clear: Clear) -> Result<()> {
        let core = self.core();
        let g = core.geometry();
        let mut pos = start;
        let mut in_place = false;
        while pos < end {
            let e = core.map(pos, end - pos)?;
            let len = match e.kind {
                // The backing data may end inside a cluster: the rest of it is part of the run.
                Kind::Backing => g.cluster_end(g.cluster_of(pos + e.len - 1)).min(end) - pos,
                _ => e.len,
            };
            if len == 0 {
                break;
            }
            if clear.skip_zero && e.kind == Kind::Zero {
                pos += len;
                continue;
            }
            match core.begin_zero(pos, len)? {
                Begin::Busy(generation) => self.wait(core, generation),
                Begin::Ready(Step::InPlace(n)) => {
                    self.clear_data(pos, n, clear)?;
                    in_place = true;
                    pos += n;
                }
                Begin::Ready(Step::Allocate(txn)) => {
                    let n = txn.len();
                    let cleared = self.clear_data(txn.cluster_start(), n, clear);
                    self.settle(core, txn, cleared)?;
                    pos += n;
                }
            }
        }
        if in_place && self.writethrough {
            self.sync_data()?;
        }
        Ok(())
    }

    /// Makes `offset..offset + len` of the image file read zeros: a hole or zeroed space, or
    /// zeros written where the file cannot do either (unless `clear.fallback` is off:
    /// `ENOTSUP`).
    fn clear_data(&self, offset: u64, len: u64, clear: Clear) -> Result<()> {
        self.wrote_data();
        // A punch ending at the image end goes on to the cluster's end, past the end of the
        // file: the file system then frees the file's last block even when the image size is
        // not a multiple of it (it keeps the size).
        let g = self.core().geometry();
        let punch = match offset + len == g.size() {
            true => g.cluster_start(g.cluster_of(offset + len - 1) + 1) - offset,
            false => len,
        };
        let (op, done) = match clear.unmap {
            true => (Op::PunchHole, self.data().punch_hole(offset, punch)),
            false => (Op::ZeroRange, self.data().zero_range(offset, len)),
        };
        match done {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && clear.fallback => {
                self.write_zero_bytes(offset, len)
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                let file = self.data_name();
                Err(Error::Unsupported(format!(
                    "{op} {file}: not supported, and the request allows no fallback"
                )))
            }
            Err(e) => Err(Error::io(op, self.data_name(), offset, e)),
        }
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(ZEROS as u64);
            self.write_data(&[IoSlice::new(zeros(n))], offset + pos)?;
            pos += n;
        }
        Ok(())
    }
}
