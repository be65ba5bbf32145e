//! `addcow bench`: qemu-img bench over the library: COUNT requests of SIZE bytes, DEPTH in
//! flight (one thread each), each STEP bytes after the one before, wrapping at the end.

use crate::fail::{on, Failure, Outcome};
use addcow::{Image, OpenOptions};
use clap::ValueEnum;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Run a simple sequential I/O benchmark on an image (qemu-img bench's options).
#[derive(clap::Args)]
pub struct Args {
    /// Number of requests.
    #[arg(short = 'c', long = "count", default_value_t = 75000)]
    count: u64,
    /// Requests in flight (threads).
    #[arg(short = 'd', long = "depth", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    depth: u64,
    /// Flush after every N requests (writes; 0: never).
    #[arg(long = "flush-interval", default_value_t = 0)]
    flush_interval: u64,
    /// Direct I/O, bypassing the page cache (same as -t none).
    #[arg(short = 'n', long = "nocache")]
    nocache: bool,
    /// Offset of the first request.
    #[arg(short = 'o', long = "offset", value_parser = crate::size::parse, default_value = "0")]
    offset: u64,
    /// Byte written by write requests (decimal, or hex with 0x).
    #[arg(long, default_value = "0xa5", value_parser = byte)]
    pattern: u8,
    /// Print only errors.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Bytes per request.
    #[arg(short = 's', long = "size", value_parser = crate::size::parse, default_value = "4k")]
    size: u64,
    /// Bytes from one request's offset to the next (default: the request size).
    #[arg(short = 'S', long = "step", value_parser = crate::size::parse)]
    step: Option<u64>,
    /// Cache mode.
    #[arg(short = 't', long = "cache", value_enum, default_value = "writeback")]
    cache: Cache,
    /// Open without locks that conflict with a writer (read benchmarks).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Write instead of read.
    #[arg(short = 'w', long = "write")]
    write: bool,
    /// The `.add-cow` file.
    file: PathBuf,
}

/// qemu's cache modes, as the library has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Cache {
    Writeback,
    Writethrough,
    None,
    Directsync,
}

pub fn run(a: Args) -> Outcome {
    let path = &a.file;
    let opts = OpenOptions {
        writable: a.write,
        force_share: a.force_share,
        direct: a.nocache || matches!(a.cache, Cache::None | Cache::Directsync),
        writethrough: matches!(a.cache, Cache::Writethrough | Cache::Directsync),
        ..OpenOptions::default()
    };
    let image = Image::open(path, &opts).map_err(on(path))?;
    let step = a.step.unwrap_or(a.size);
    let span = image.size().checked_sub(a.offset.saturating_add(a.size));
    let Some(span) = span.filter(|_| a.size > 0) else {
        return Err(Failure::new(
            path,
            format!(
                "requests of {} bytes at offset {} do not fit in the image",
                a.size, a.offset
            ),
        ));
    };
    let slots = match step {
        0 => 1,
        s => span / s + 1,
    };
    if !a.quiet {
        let kind = if a.write { "write" } else { "read" };
        println!(
            "Sending {} {kind} requests, {} bytes each, {} in parallel (starting at offset {}, step size {step})",
            a.count, a.size, a.depth, a.offset
        );
        if a.flush_interval > 0 && a.write {
            println!("Sending flush every {} requests", a.flush_interval);
        }
    }
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        let workers: Vec<_> = (0..a.depth.min(a.count.max(1)))
            .map(|_| s.spawn(|| worker(&image, &a, &next, slots, step)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a bench thread panicked"))
            .collect::<addcow::Result<Vec<()>>>()
    });
    result.map_err(on(path))?;
    if a.write {
        image.flush().map_err(on(path))?;
    }
    let secs = started.elapsed().as_secs_f64();
    image.close().map_err(on(path))?;
    if !a.quiet {
        println!("Run completed in {secs:.3} seconds.");
    }
    Ok(0)
}

/// A byte, as qemu-img spells numbers: `66` or `0x42`.
fn byte(text: &str) -> Result<u8, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("'{text}' is not a byte: {e}"))
}

/// Takes requests until COUNT were taken.
fn worker(image: &Image, a: &Args, next: &AtomicU64, slots: u64, step: u64) -> addcow::Result<()> {
    let mut buf = vec![a.pattern; a.size as usize];
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= a.count {
            return Ok(());
        }
        let offset = a.offset + (i % slots) * step;
        match a.write {
            true => image.write_at(offset, &buf)?,
            false => image.read_at(offset, &mut buf)?,
        }
        if a.write && a.flush_interval > 0 && (i + 1) % a.flush_interval == 0 {
            image.flush()?;
        }
    }
}
