//! `addcow map`: where every byte of an image reads from, with exactly the entries of
//! `qemu-img map --output=json` (`start`, `length`, `depth`, `present`, `zero`, `data`,
//! `compressed`, `offset`), so that its consumers work unchanged.
//!
//! Depth 0 is the image itself, 1 its backing file, and so on. An allocated cluster is data at
//! the same offset of the image file (add-cow maps 1:1), or zeros where the image file has a
//! hole; an unallocated one reads the backing file (its data or holes, at the same offset), or
//! zeros past the backing data's end, which qemu-img reports as not present at that depth.

use crate::fail::{on, Failure, Outcome};
use crate::output::Format;
use addcow::{Backing, BackingFormat, Image, OpenOptions};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Show which file every range of an image reads from.
#[derive(clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    output: Format,
    /// First byte to map.
    #[arg(long = "start-offset", value_parser = crate::size::parse, default_value = "0")]
    start_offset: u64,
    /// Most bytes to map.
    #[arg(long = "max-length", value_parser = crate::size::parse)]
    max_length: Option<u64>,
    /// Open without locks that conflict with a writer (the map may change meanwhile).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// The `.add-cow` file.
    file: PathBuf,
}

/// The deepest chain whose file names human output looks up (the library's own limit).
const MAX_DEPTH: usize = 16;

/// One entry of `qemu-img map --output=json`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
struct Entry {
    start: u64,
    length: u64,
    depth: u32,
    present: bool,
    zero: bool,
    data: bool,
    compressed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    /// The file the range reads from (human output only).
    #[serde(skip)]
    file: String,
}

impl Entry {
    /// Whether `next` continues this entry (qemu-img map merges such entries).
    fn continued_by(&self, next: &Entry) -> bool {
        let same = (self.depth, self.present, self.zero, self.data, &self.file)
            == (next.depth, next.present, next.zero, next.data, &next.file);
        let offsets = match (self.offset, next.offset) {
            (None, None) => true,
            (Some(a), Some(b)) => a + self.length == b,
            _ => false,
        };
        same && offsets && self.start + self.length == next.start
    }
}

pub fn run(a: Args) -> Outcome {
    let opts = OpenOptions {
        force_share: a.force_share,
        ..OpenOptions::default()
    };
    let path = &a.file;
    let image = Image::open(path, &opts).map_err(on(path))?;
    let end = match a.max_length {
        Some(n) => a.start_offset.saturating_add(n).min(image.size()),
        None => image.size(),
    };
    let names = file_names(path)?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut pos = a.start_offset.min(end);
    while pos < end {
        let e = extent(&image, &names, 0, pos, end - pos).map_err(on(path))?;
        pos += e.length;
        match entries.last_mut() {
            Some(last) if last.continued_by(&e) => last.length += e.length,
            _ => entries.push(e),
        }
    }
    image.close().map_err(on(path))?;
    match a.output {
        Format::Json => print_entries(&entries),
        Format::Human => print_human(&entries),
    }
    Ok(0)
}

/// The file that each depth of the chain reads data from, as the user would find it (for human
/// output): the image file of each add-cow image, then the raw backing file.
fn file_names(path: &Path) -> Result<Vec<String>, Failure> {
    let (mut names, mut path) = (Vec::new(), path.to_path_buf());
    loop {
        let header = super::info::header(&path)?;
        names.push(super::info::resolve(&path, &header.image_file));
        let Some(backing) = header.backing_file.as_deref() else {
            break;
        };
        let full = super::info::resolve(&path, backing);
        match super::info::backing_format(&header, &full) {
            BackingFormat::AddCow if names.len() < MAX_DEPTH => path = full,
            _ => {
                names.push(full);
                break;
            }
        }
    }
    Ok(names.iter().map(|n| n.display().to_string()).collect())
}

/// The first run of bytes from `offset` (at most `len`) in one state, for `image` at `depth`;
/// `names[depth]` is its image file.
fn extent(
    image: &Image,
    names: &[String],
    depth: u32,
    offset: u64,
    len: u64,
) -> addcow::Result<Entry> {
    let file = names.get(depth as usize).map_or("", String::as_str);
    let s = image.block_status(offset, len)?;
    let entry = |depth, present, zero, file: &str| Entry {
        start: offset,
        length: s.len,
        depth,
        present,
        zero,
        data: present && !zero,
        compressed: false,
        offset: (present && !zero).then_some(offset),
        file: file.to_owned(),
    };
    if s.allocated {
        return Ok(entry(depth, true, s.zero, file));
    }
    match (s.zero, image.backing()) {
        (false, Some(backing)) => backing_extent(backing, names, depth + 1, offset, s.len),
        _ => Ok(entry(depth, false, true, file)),
    }
}

/// [`extent`] in a backing file: data or holes of a raw file, or the next add-cow image.
fn backing_extent(
    b: &Backing,
    names: &[String],
    depth: u32,
    offset: u64,
    len: u64,
) -> addcow::Result<Entry> {
    match b {
        Backing::AddCow(image) => extent(image, names, depth, offset, len),
        Backing::Raw { storage, name } => {
            let err = |e| addcow::Error::Invalid(format!("find data in {name}: {e}"));
            let data = storage.next_data(offset).map_err(err)?;
            let (zero, run) = match data {
                Some(d) if d == offset => (false, storage.next_hole(offset).map_err(err)? - offset),
                Some(d) => (true, d - offset),
                None => (true, len),
            };
            Ok(Entry {
                start: offset,
                length: run.clamp(1, len),
                depth,
                present: true,
                zero,
                data: !zero,
                compressed: false,
                offset: Some(offset),
                file: names.get(depth as usize).cloned().unwrap_or_default(),
            })
        }
    }
}

/// One entry per line, as qemu-img prints them.
fn print_entries(entries: &[Entry]) {
    let lines: Vec<String> = entries
        .iter()
        .map(|e| {
            let mut s = serde_json::to_string(e).expect("serializing to memory cannot fail");
            s = s.replacen('{', "{ ", 1);
            s.replace(",\"", ", \"").replace("\":", "\": ")
        })
        .collect();
    println!("[{}]", lines.join(",\n"));
}

/// qemu-img map's human form: the ranges that read data, where from.
fn print_human(entries: &[Entry]) {
    println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
    for e in entries.iter().filter(|e| e.data) {
        println!(
            "{:<#16x}{:<#16x}{:<#16x}{}",
            e.start,
            e.length,
            e.offset.unwrap_or(0),
            e.file
        );
    }
}
