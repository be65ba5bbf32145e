//! The engine: the generic I/O loop over the mapping core ([`Image`], in `image.rs`) and the
//! lifecycle of images: open (`open.rs`, with the file rules of `files.rs`), create, truncate.

#![forbid(unsafe_code)]

mod backing;
mod backing_name;
mod check;
mod commit;
mod create;
mod create_io;
mod detach;
mod files;
mod hydrate;
mod image;
mod iov;
mod job;
mod open;
mod truncate;
mod zero;

pub use crate::layout::BackingFormat;
pub use backing::Backing;
pub use check::{check, CheckReport, Finding, Severity};
pub use commit::commit;
pub use create::{create, CreateOptions};
pub use create_io::create_on;
pub use detach::{detach, Allocation};
pub use image::Image;
pub use job::{HydrateJob, HydrateOptions, JobState, Outcome, Progress};
pub use open::{read_header, OpenOptions, Parts};
pub use zero::{Status, ZeroFlags};

#[cfg(test)]
mod tests;
