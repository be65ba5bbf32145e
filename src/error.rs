//! Errors: what failed, where, and the errno the C boundary returns (negated).
//!
//! errno mapping (QEMU's convention):
//! - [`Error::Io`]: the OS errno of the failed call, passed through (`EIO`, `ENOSPC`, `ENOENT`, …);
//! - [`Error::Invalid`], [`Error::OutOfRange`]: `EINVAL` (bad argument, malformed header);
//! - [`Error::Unsupported`]: `ENOTSUP` (unknown version, a feature this build lacks);
//! - [`Error::ReadOnly`]: `EPERM` (write or truncate on a read-only image);
//! - [`Error::Busy`]: `EBUSY` (another process, or another open, holds a conflicting lock; or an
//!   image not ready for the operation: a detach before every cluster is allocated);
//! - [`Error::Confined`]: `EACCES` (a confined open met a name that leaves its directory);
//! - [`Error::TooLarge`]: `EFBIG` (a size beyond [`crate::layout::MAX_SIZE`]).

#![forbid(unsafe_code)]

use std::io;

/// What was being done when a call on a file (or a host byte source) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    Open,
    /// An open with `O_DIRECT` that the file system refused.
    OpenDirect,
    OpenDir,
    Stat,
    Lock,
    Fcntl,
    Read,
    Write,
    Flush,
    GetLength,
    Resize,
    ReadHeader,
    ReadBitmap,
    WriteBitmap,
    FindData,
    Rename,
    Truncate,
    /// Unlinking a file (and syncing its directory).
    Remove,
    PunchHole,
    ZeroRange,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Open => "open",
            Op::OpenDirect => "open with O_DIRECT (does the file system support direct I/O?)",
            Op::OpenDir => "open directory",
            Op::Stat => "stat",
            Op::Lock => "lock",
            Op::Fcntl => "fcntl",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::GetLength => "get length of",
            Op::Resize => "resize",
            Op::ReadHeader => "read header of",
            Op::ReadBitmap => "read bitmap of",
            Op::WriteBitmap => "write bitmap of",
            Op::FindData => "find data in",
            Op::Rename => "rename into place",
            Op::Truncate => "truncate",
            Op::Remove => "remove",
            Op::PunchHole => "punch a hole in",
            Op::ZeroRange => "zero a range of",
        })
    }
}

/// Every failure of the library. More kinds may come: match with a wildcard, or on
/// [`Error::errno`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call on one of the files (or host byte sources) failed.
    #[error("{op} {file} at offset {offset}: {source}")]
    Io {
        /// What was being done.
        op: Op,
        /// Which file, with its role: `image file 'disk.raw'`.
        file: String,
        /// Byte offset of the request in that file (0 where none applies).
        offset: u64,
        source: io::Error,
    },
    /// A bad argument or a malformed header.
    #[error("{0}")]
    Invalid(String),
    /// A request outside the image.
    #[error(
        "request at offset {offset} of {len} bytes is past the end of the image ({size} bytes)"
    )]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// Something this version does not support.
    #[error("{0}")]
    Unsupported(String),
    /// A write or truncate on an image opened read-only.
    #[error("{0} on an image opened read-only")]
    ReadOnly(Op),
    /// A file is in use: another process (or another open of it) holds a conflicting lock; or
    /// an image is not ready for the operation (a detach before every cluster is allocated).
    #[error("{0}")]
    Busy(String),
    /// A confined open refused a name: absolute, or resolving outside its directory.
    #[error("{0}")]
    Confined(String),
    /// A size beyond what the library supports.
    #[error("{0}")]
    TooLarge(String),
    /// What a background job failed with, as it recorded it (its own error's errno and
    /// message), reported again to whoever asks for the job's outcome.
    #[error("{message}")]
    Job { errno: i32, message: String },
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The positive errno for this error; the C boundary returns it negated.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::Invalid(_) | Error::OutOfRange { .. } => libc::EINVAL,
            Error::Unsupported(_) => libc::ENOTSUP,
            Error::ReadOnly(_) => libc::EPERM,
            Error::Busy(_) => libc::EBUSY,
            Error::Confined(_) => libc::EACCES,
            Error::TooLarge(_) => libc::EFBIG,
            Error::Job { errno, .. } => *errno,
        }
    }

    /// Wraps an OS error with what failed and where.
    pub(crate) fn io(op: Op, file: &str, offset: u64, source: io::Error) -> Error {
        Error::Io {
            op,
            file: file.to_owned(),
            offset,
            source,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let e = Error::io(
            Op::Read,
            "image file 'x'",
            7,
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(e.errno(), libc::ENOSPC);
        assert!(e.to_string().contains("image file 'x' at offset 7"));
        let custom = Error::io(Op::Read, "x", 0, io::Error::other("host said no"));
        assert_eq!(custom.errno(), libc::EIO);
        assert_eq!(Error::invalid("bad").errno(), libc::EINVAL);
        assert_eq!(Error::Unsupported("v2".into()).errno(), libc::ENOTSUP);
        assert_eq!(Error::ReadOnly(Op::Write).errno(), libc::EPERM);
        assert_eq!(Error::Busy("x".into()).errno(), libc::EBUSY);
        assert_eq!(Error::Confined("x".into()).errno(), libc::EACCES);
        assert_eq!(Error::TooLarge("x".into()).errno(), libc::EFBIG);
        let r = Error::OutOfRange {
            offset: 1,
            len: 2,
            size: 2,
        };
        assert_eq!(r.errno(), libc::EINVAL);
    }
}
