//! libaddcow: the add-cow disk-image format.
//!
//! An add-cow image is a raw *image file* with a *backing file*: a small `.add-cow` file names
//! both and keeps one bit per cluster (0 = read the backing file, 1 = read the image file). The
//! first write to a cluster copies the rest of it from the backing file into the image file,
//! then sets the bit. Once every bit is set the raw file stands alone.
//!
//! Layers, bottom up:
//! - [`storage`]: byte sources (files, memory), how local files are opened and locked; and
//!   [`cluster`], the cluster index both layers above count in;
//! - beside each other, depending on neither: [`layout`] (the bytes of the `.add-cow` file,
//!   the geometry) and `bitmap` (the COW bitmap in memory, loaded through a `bitmap::Store`);
//! - [`mapping`]: the mapping core, the format logic without data I/O (layout + bitmap over a
//!   metadata `Storage`);
//! - `engine`: the generic I/O loop ([`Image`], a host of the core) and the lifecycle (open,
//!   create, truncate);
//! - [`capi`]: the C boundary.
//!
//! The public Rust API is what a Rust host needs: [`Image`] with [`OpenOptions`], [`Parts`],
//! [`Backing`] and [`BackingFormat`]; hydration ([`Image::hydrate`], the background
//! [`HydrateJob`] with [`HydrateOptions`], [`Progress`], [`JobState`], [`Outcome`]); [`create`] with [`CreateOptions`]; [`read_header`],
//! [`probe`]; [`Error`], [`Op`], [`Result`]; the [`storage::Storage`] trait with
//! [`storage::MemStorage`] and [`storage::FileStorage`]; the [`mapping`] core; the header
//! ([`layout::Header`]) and [`cluster::Cluster`]; and [`capi`], the C exports (the fuzz targets
//! drive them from Rust). Everything else is internal to the crate.

#![warn(clippy::undocumented_unsafe_blocks)]

pub(crate) mod bitmap;
pub mod capi;
pub mod cluster;
mod engine;
mod error;
pub mod layout;
pub mod mapping;
pub mod storage;

pub use engine::{check, commit, detach, Allocation, CheckReport, Finding, Severity};
pub use engine::{
    create, read_header, Backing, BackingFormat, CreateOptions, Image, OpenOptions, Parts, Status,
    ZeroFlags,
};
pub use engine::{HydrateJob, HydrateOptions, JobState, Outcome, Progress};
pub use error::{Error, Op, Result};
pub use layout::probe;
