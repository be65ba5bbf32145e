//! `addcow create`: a new `.add-cow` file over an image file and a backing file.

use crate::fail::{on, Outcome};
use addcow::{BackingFormat, CreateOptions};
use clap::ValueEnum;
use std::path::PathBuf;

/// Create an add-cow image: FILE (the `.add-cow` file) naming IMAGE_FILE and BACKING.
///
/// Names are stored as given; relative names resolve against FILE's directory. Without SIZE the
/// image file gives the size when it exists, else the backing file does.
#[derive(clap::Args)]
pub struct Args {
    /// The raw image file that holds the written clusters (created when missing).
    #[arg(short = 'o', long = "image-file", value_name = "IMAGE_FILE")]
    image_file: PathBuf,
    /// The backing file that unwritten clusters read from.
    #[arg(short = 'b', long = "backing", value_name = "BACKING")]
    backing: Option<PathBuf>,
    /// The backing file's format.
    #[arg(
        short = 'F',
        long = "backing-format",
        value_enum,
        default_value = "raw",
        requires = "backing"
    )]
    backing_format: Format,
    /// On-disk layout: 1 (64 KiB clusters only) or 2 (any cluster size, feature bits).
    #[arg(short = 'l', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    layout: u32,
    /// Cluster size (layout 2: a power of two from 4k to 2M; default 64k).
    #[arg(short = 'c', long = "cluster-size", value_parser = crate::size::parse)]
    cluster_size: Option<u64>,
    /// Refuse names that leave FILE's directory (absolute names, `..`, symlinks out).
    #[arg(long)]
    confine: bool,
    /// Suppress the confirmation line.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The `.add-cow` file to create.
    file: PathBuf,
    /// Virtual size (e.g. 10G); the image file is created or resized to it.
    #[arg(value_parser = crate::size::parse)]
    size: Option<u64>,
}

/// A backing file's format, as `-F` spells it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Raw,
    #[value(name = "add-cow")]
    AddCow,
}

impl From<Format> for BackingFormat {
    fn from(f: Format) -> BackingFormat {
        match f {
            Format::Raw => BackingFormat::Raw,
            Format::AddCow => BackingFormat::AddCow,
        }
    }
}

pub fn run(a: Args) -> Outcome {
    let opts = CreateOptions {
        image_file: a.image_file,
        backing_file: a.backing,
        backing_format: a.backing_format.into(),
        size: a.size.unwrap_or(0),
        confine: a.confine,
        layout: a.layout,
        cluster_size: a.cluster_size.unwrap_or(0),
        // A SIZE given, even 0, is the size (qemu-img's rule); none: the backing file's.
        exact_size: a.size.is_some(),
    };
    addcow::create(&a.file, &opts).map_err(on(&a.file))?;
    if !a.quiet {
        let backing = match &opts.backing_file {
            Some(b) => format!(
                " backing_file={} backing_fmt={}",
                b.display(),
                BackingFormat::from(a.backing_format).name()
            ),
            None => String::new(),
        };
        println!(
            "Formatting '{}', fmt=add-cow layout={} image_file={}{backing}",
            a.file.display(),
            a.layout,
            opts.image_file.display()
        );
    }
    Ok(0)
}
