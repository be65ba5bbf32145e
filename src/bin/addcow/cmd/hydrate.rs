//! `addcow hydrate`: copies every cluster still read from the backing file into the image file,
//! in the library's background job, with progress; Ctrl-C (SIGINT) or SIGTERM stops it cleanly
//! (the job flushes what it copied) and a new run resumes where it stopped: the bitmap is the
//! progress.

use crate::fail::{on, Failure, Outcome};
use crate::progress::{percent, Meter};
use addcow::{HydrateJob, HydrateOptions, Image, OpenOptions, Outcome as End};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Exit status after an interruption (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

/// Copy every cluster still read from the backing file into the image file.
///
/// Interrupt it at any time (Ctrl-C): what was copied is flushed and a new run resumes. Exit
/// status 0 when every cluster is allocated, 130 when interrupted.
#[derive(clap::Args)]
pub struct Args {
    /// Show progress: a bar on a terminal, a line a second otherwise.
    #[arg(short = 'p', long)]
    progress: bool,
    /// Most bytes per second read from the backing file (e.g. 100M); default no limit.
    #[arg(long, value_parser = crate::size::parse)]
    rate: Option<u64>,
    /// Bytes of contiguous clusters copied per batch (default 1M, at most 64M).
    #[arg(long, value_parser = crate::size::parse)]
    batch: Option<u64>,
    /// The `.add-cow` file.
    file: PathBuf,
}

pub fn run(a: Args) -> Outcome {
    let path = &a.file;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).map_err(on(path))?;
    }
    let opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let image = Arc::new(Image::open(path, &opts).map_err(on(path))?);
    let job_opts = HydrateOptions {
        rate: a.rate.unwrap_or(0),
        batch: a.batch.unwrap_or(0),
        ..HydrateOptions::default()
    };
    let job = HydrateJob::start(image.clone(), &job_opts).map_err(on(path))?;
    let mut meter = Meter::new(a.progress, "hydrate", job.progress().total);
    let end = loop {
        if stop.load(Ordering::Relaxed) {
            job.cancel();
        }
        let p = job.progress();
        meter.update(p.done, p.bytes_per_sec);
        if let Some(end) = job.wait(Some(Duration::from_millis(100))) {
            break end;
        }
    };
    meter.finish();
    let p = job.progress();
    drop(job);
    let image = Arc::into_inner(image).expect("the stopped job no longer holds the image");
    image.close().map_err(on(path))?;
    let status = format!(
        "{}/{} clusters allocated ({:.2}%), {} copied",
        p.done,
        p.total,
        percent(p.done, p.total),
        p.copied
    );
    match end {
        End::Completed => {
            println!("Hydrated: {status}; the image file no longer needs the backing file.");
            Ok(0)
        }
        End::Cancelled => {
            println!("Interrupted: {status}; run again to resume.");
            Ok(INTERRUPTED)
        }
        End::Failed { message, .. } => Err(Failure::new(path, message)),
    }
}
