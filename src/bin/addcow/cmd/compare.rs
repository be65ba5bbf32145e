//! `addcow compare`: whether two images read the same, like qemu-img compare: exit 0 identical,
//! 1 different, 2 an image could not be opened, 4 a read failed.

use crate::fail::{on, Failure, Outcome};
use crate::progress::Meter;
use addcow::{Image, OpenOptions};
use clap::ValueEnum;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes compared per step.
const CHUNK: u64 = 1 << 20;

/// Compare the content of two images (add-cow or raw).
///
/// Exit status: 0 identical, 1 different, 2 an image could not be opened, 4 a read failed.
/// Unless -s, a longer image matches when its extra bytes read zeros.
#[derive(clap::Args)]
pub struct Args {
    /// Format of FILE (default: probed).
    #[arg(short = 'f', value_enum)]
    format: Option<Kind>,
    /// Format of OTHER (default: probed).
    #[arg(short = 'F', value_enum)]
    other_format: Option<Kind>,
    /// Strict: images of different sizes differ.
    #[arg(short = 's', long)]
    strict: bool,
    /// Show progress.
    #[arg(short = 'p', long)]
    progress: bool,
    /// Open add-cow images without locks that conflict with a writer.
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    file: PathBuf,
    other: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Raw,
    #[value(name = "add-cow")]
    AddCow,
}

/// Something that reads like a disk.
enum Source {
    AddCow(Box<Image>),
    Raw(File),
}

impl Source {
    fn open(path: &Path, kind: Option<Kind>, force_share: bool) -> Result<Source, Failure> {
        let fail = |e: String| Failure::new(path, e).code(2);
        let file = File::open(path).map_err(|e| fail(e.to_string()))?;
        let kind = kind.unwrap_or_else(|| {
            let mut head = Vec::new();
            let _ = (&file).take(4096).read_to_end(&mut head);
            match addcow::probe(&head) > 0 {
                true => Kind::AddCow,
                false => Kind::Raw,
            }
        });
        match kind {
            Kind::Raw => Ok(Source::Raw(file)),
            Kind::AddCow => {
                let opts = OpenOptions {
                    force_share,
                    ..OpenOptions::default()
                };
                Image::open(path, &opts)
                    .map(|i| Source::AddCow(Box::new(i)))
                    .map_err(|e| fail(e.to_string()))
            }
        }
    }

    fn size(&self) -> std::io::Result<u64> {
        match self {
            Source::AddCow(i) => Ok(i.size()),
            Source::Raw(f) => f.metadata().map(|m| m.len()),
        }
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), String> {
        match self {
            Source::AddCow(i) => i.read_at(offset, buf).map_err(|e| e.to_string()),
            Source::Raw(f) => f.read_exact_at(buf, offset).map_err(|e| e.to_string()),
        }
    }
}

pub fn run(a: Args) -> Outcome {
    let one = Source::open(&a.file, a.format, a.force_share)?;
    let two = Source::open(&a.other, a.other_format, a.force_share)?;
    let size = |s: &Source, p: &Path| s.size().map_err(|e| Failure::new(p, e).code(4));
    let (n1, n2) = (size(&one, &a.file)?, size(&two, &a.other)?);
    if a.strict && n1 != n2 {
        println!("Strict mode: Image size mismatch!");
        return Ok(1);
    }
    let common = n1.min(n2);
    let mut meter = Meter::new(a.progress, "compare", n1.max(n2).div_ceil(CHUNK));
    let (mut b1, mut b2) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut pos = 0;
    while pos < common {
        let n = (common - pos).min(CHUNK) as usize;
        one.read(&mut b1[..n], pos)
            .map_err(on(&a.file))
            .map_err(|f| f.code(4))?;
        two.read(&mut b2[..n], pos)
            .map_err(on(&a.other))
            .map_err(|f| f.code(4))?;
        if let Some(i) = (0..n).find(|&i| b1[i] != b2[i]) {
            meter.finish();
            println!("Content mismatch at offset {}!", pos + i as u64);
            return Ok(1);
        }
        pos += n as u64;
        meter.update(pos / CHUNK, 0);
    }
    let (longer, path, end) = match n1 > n2 {
        true => (&one, &a.file, n1),
        false => (&two, &a.other, n2),
    };
    while pos < end {
        let n = (end - pos).min(CHUNK) as usize;
        longer
            .read(&mut b1[..n], pos)
            .map_err(on(path))
            .map_err(|f| f.code(4))?;
        if let Some(i) = b1[..n].iter().position(|&b| b != 0) {
            meter.finish();
            println!("Content mismatch at offset {}!", pos + i as u64);
            return Ok(1);
        }
        pos += n as u64;
    }
    meter.finish();
    println!("Images are identical.");
    Ok(0)
}
