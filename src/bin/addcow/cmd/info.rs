//! `addcow info`: what an image is, in qemu-img info's words and JSON keys.

use crate::fail::{on, Failure, Outcome};
use crate::output::{print_json, Format};
use crate::progress::percent;
use crate::size::human;
use addcow::layout::Header;
use addcow::storage::FileStorage;
use addcow::{BackingFormat, Error, Image, OpenOptions};
use serde::Serialize;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Show an image's layout, sizes, files, backing file, allocation and lock state.
#[derive(clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    output: Format,
    /// Also show every image of the backing chain.
    #[arg(long = "backing-chain")]
    backing_chain: bool,
    /// Accepted for qemu-img compatibility: info always opens shared and reports an image in
    /// use by a writer as such.
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// The `.add-cow` file.
    file: PathBuf,
}

/// One image of a chain, with qemu-img info's keys.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Info {
    virtual_size: u64,
    filename: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_size: Option<u64>,
    format: &'static str,
    actual_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    full_backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backing_filename_format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format_specific: Option<Specific>,
    dirty_flag: bool,
}

/// qemu-img's `format-specific`: `{"type": "add-cow", "data": {...}}`.
#[derive(Serialize)]
struct Specific {
    r#type: &'static str,
    data: Data,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Data {
    layout: u32,
    image_file: String,
    image_format: &'static str,
    features: Features,
    allocated_clusters: u64,
    total_clusters: u64,
    /// Another process has the image open for writing (a read-only open was refused).
    in_use: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Features {
    /// The compatible feature bits (layout 2; 0 for layout 1).
    compatible: u64,
    /// Layout 2's "all allocated" bit.
    all_allocated: bool,
}

pub fn run(a: Args) -> Outcome {
    let _ = a.force_share;
    let mut chain = vec![add_cow(&a.file)?];
    while let Some(next) = chain
        .last()
        .and_then(next_level)
        .filter(|_| a.backing_chain)
    {
        chain.push(match next {
            (path, "add-cow") => add_cow(&path)?,
            (path, _) => raw(&path)?,
        });
    }
    match (a.output, a.backing_chain) {
        (Format::Json, true) => print_json(&chain),
        (Format::Json, false) => print_json(&chain[0]),
        (Format::Human, _) => {
            let text: Vec<String> = chain.iter().map(human_text).collect();
            print!("{}", text.join("\n"));
        }
    }
    Ok(0)
}

/// The backing file of `info` and its format, when it has one.
fn next_level(info: &Info) -> Option<(PathBuf, &'static str)> {
    let path = PathBuf::from(info.full_backing_filename.as_ref()?);
    Some((path, info.backing_filename_format.unwrap_or("raw")))
}

/// Reads the header of the `.add-cow` file at `path`.
pub fn header(path: &Path) -> Result<Header, Failure> {
    let file = File::open(path).map_err(on(path))?;
    addcow::read_header(&FileStorage::new(file), &path.display().to_string()).map_err(on(path))
}

/// `name` (as a header stores it) resolved against the directory of `path`.
pub fn resolve(path: &Path, name: &[u8]) -> PathBuf {
    let name = Path::new(std::ffi::OsStr::from_bytes(name));
    path.parent().unwrap_or(Path::new("")).join(name)
}

/// The backing file's format: the header's (layout 2), else probed from its first bytes.
pub fn backing_format(header: &Header, path: &Path) -> BackingFormat {
    if let Some(f) = header.backing_format {
        return f;
    }
    let mut buf = Vec::new();
    let read = File::open(path).and_then(|f| f.take(4096).read_to_end(&mut buf));
    match read.is_ok() && addcow::probe(&buf) > 0 {
        true => BackingFormat::AddCow,
        false => BackingFormat::Raw,
    }
}

/// Opens `path` read-only without its backing file; `(image, in use)`: an image another
/// process writes is opened shared (force share) instead.
fn open_shared(path: &Path) -> Result<(Image, bool), Error> {
    let opts = OpenOptions {
        no_backing: true,
        ..OpenOptions::default()
    };
    match Image::open(path, &opts) {
        Err(Error::Busy(_)) => {
            let shared = OpenOptions {
                force_share: true,
                ..opts
            };
            Image::open(path, &shared).map(|i| (i, true))
        }
        other => other.map(|i| (i, false)),
    }
}

/// Bytes allocated on disk for `paths`.
fn disk_usage(paths: &[&Path]) -> u64 {
    let used = |p: &&Path| std::fs::metadata(p).map_or(0, |m| m.blocks() * 512);
    paths.iter().map(used).sum()
}

fn add_cow(path: &Path) -> Result<Info, Failure> {
    let header = header(path)?;
    let (image, in_use) = open_shared(path).map_err(on(path))?;
    let allocation = image.allocation().map_err(on(path))?;
    let image_file = resolve(path, &header.image_file);
    let backing = header.backing_file.as_deref().map(|b| {
        let full = resolve(path, b);
        let format = backing_format(&header, &full);
        (String::from_utf8_lossy(b).into_owned(), full, format)
    });
    let info = Info {
        virtual_size: image.size(),
        filename: path.display().to_string(),
        cluster_size: Some(image.cluster_size()),
        format: "add-cow",
        actual_size: disk_usage(&[path, &image_file]),
        backing_filename: backing.as_ref().map(|b| b.0.clone()),
        full_backing_filename: backing.as_ref().map(|b| b.1.display().to_string()),
        backing_filename_format: backing.as_ref().map(|b| b.2.name()),
        format_specific: Some(Specific {
            r#type: "add-cow",
            data: Data {
                layout: header.layout_number(),
                image_file: String::from_utf8_lossy(&header.image_file).into_owned(),
                image_format: header.image_format(),
                features: Features {
                    compatible: header.compatible_features(),
                    all_allocated: header.all_allocated(),
                },
                allocated_clusters: allocation.allocated,
                total_clusters: allocation.total,
                in_use,
            },
        }),
        dirty_flag: false,
    };
    image.close().map_err(on(path))?;
    Ok(info)
}

fn raw(path: &Path) -> Result<Info, Failure> {
    let meta = std::fs::metadata(path).map_err(on(path))?;
    Ok(Info {
        virtual_size: meta.len(),
        filename: path.display().to_string(),
        cluster_size: None,
        format: "raw",
        actual_size: meta.blocks() * 512,
        backing_filename: None,
        full_backing_filename: None,
        backing_filename_format: None,
        format_specific: None,
        dirty_flag: false,
    })
}

/// qemu-img info's human form.
fn human_text(i: &Info) -> String {
    let mut s = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        i.filename,
        i.format,
        human(i.virtual_size),
        i.virtual_size,
        human(i.actual_size)
    );
    if let Some(c) = i.cluster_size {
        s += &format!("cluster_size: {c}\n");
    }
    if let (Some(b), Some(full)) = (&i.backing_filename, &i.full_backing_filename) {
        match b == full {
            true => s += &format!("backing file: {b}\n"),
            false => s += &format!("backing file: {b} (actual path: {full})\n"),
        }
    }
    if let Some(f) = i.backing_filename_format {
        s += &format!("backing file format: {f}\n");
    }
    if let Some(Specific { data: d, .. }) = &i.format_specific {
        s += &format!(
            "Format specific information:\n    layout: {}\n    image file: {}\n    \
             image format: {}\n    compatible features: {:#x}{}\n    \
             allocated clusters: {}/{} ({:.2}%)\n    in use: {}\n",
            d.layout,
            d.image_file,
            d.image_format,
            d.features.compatible,
            match d.features.all_allocated {
                true => " (all allocated)",
                false => "",
            },
            d.allocated_clusters,
            d.total_clusters,
            percent(d.allocated_clusters, d.total_clusters),
            match d.in_use {
                true => "yes (another process has it open for writing)",
                false => "no",
            }
        );
    }
    s
}
