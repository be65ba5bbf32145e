//! Crash and fault harness: set up an image on a recording [`Disk`], run a sequence of steps,
//! and check at every crash point, or after a fault at every host call, that the image reads
//! old or new content. Reusable for any operation: a [`Step`] is a closure on the image plus a
//! model of what the image reads after it.
//!
//! # Scenarios
//! A [`Setup`] gives the layout (1, or 2 at the same 64 KiB clusters), the size, the backing
//! file's length (or none), the clusters allocated at the start (and, for layout 2, whether the
//! header's "all allocated" bit is set) and the cache mode. The initial files are durable. Allocated clusters hold
//! `written(0, ..)`; unallocated clusters of the image file hold [`GARBAGE`], so that a bit set
//! over data that never landed reads garbage, never a plausible value; the backing file holds
//! [`backing_byte`]s (below 0x80, never zero), written data is at least 0x80 and differs per
//! write. [`Step`]s run one after another; snapshot 0 is what the setup reads, snapshot k + 1
//! what step k's model says the image reads after it ([`Snapshot`]: size, bytes, allocation).
//!
//! # What a crash may show
//! At crash point P the *window* is snapshots `lo..=hi`: `hi` follows the last step that had
//! issued an event before P, `lo` follows the last step acknowledged durable (a flush, or any
//! step under writethrough) that had finished. The image reopened from the materialized files
//! must:
//! - open, and have the size of a snapshot in the window;
//! - when the window changes a cluster's allocation, read the whole cluster as one snapshot of
//!   the window: the copy-on-write of a cluster is atomic (the backing data, or the whole new
//!   cluster: never garbage, zeros, or backing data over a cluster that was allocated);
//! - (layout 2) when the materialized header's "all allocated" bit is set, have every cluster's
//!   bit set in the bitmap too ([`check_bit`]): the bit may only ever be set over bits that are
//!   durable, or clearing it later would bring backing data back;
//! - otherwise read every 512-byte sector as one snapshot of the window. A write to an allocated
//!   cluster goes to the image file in place and tears at sector granularity, as on a raw disk;
//!   no format above a raw file can make it atomic, and the crash model tears writes.
//!
//! The candidates for a cluster are the window's snapshots of the crash's size and those that
//! hold the whole cluster at that size. That is exact for windows with at most one size change,
//! which the runner asserts (put a flush between two truncates).
//!
//! # Faults
//! [`fault_violations`] fails call n with an errno, for every n the steps make. The step running
//! must return that errno (not panic, not succeed), and then the live image, the image reopened
//! from the current contents and the image reopened from the durable state must each satisfy the
//! window of that step. A flush of the live image must then succeed, and afterwards the durable
//! files must equal the current ones and read exactly what the live image reads.

use super::disk::{set_len, Disk, Pick, SECTOR};
use super::Rng;
use addcow::layout::Header;
use addcow::storage::{MemStorage, Storage};
use addcow::BackingFormat;
use addcow::{Backing, Image, OpenOptions, Parts};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub const CS: u64 = 65536;
/// What the image file holds where nothing was ever written.
pub const GARBAGE: u8 = 0xEE;
/// File indices on a [`Disk`] (the backing file, when there is one, is 2).
pub const META: usize = 0;
pub const IMAGE: usize = 1;

// The patterns: byte `i` is `base + (phase(i / SECTOR) + i % SECTOR) % 127`.

fn backing_phase(sector: u64) -> u64 {
    sector * 7
}

fn written_phase(tag: u8, sector: u64) -> u64 {
    u64::from(tag) * 13 + sector * 5
}

/// Backing byte at `i`: 1..=0x7F, different in every sector.
pub fn backing_byte(i: u64) -> u8 {
    1 + ((backing_phase(i / SECTOR) + i % SECTOR) % 127) as u8
}

/// A byte of the write tagged `tag` (< 127) at `i`: at least 0x80, different for every tag.
pub fn written_byte(tag: u8, i: u64) -> u8 {
    0x80 + ((written_phase(tag, i / SECTOR) + i % SECTOR) % 127) as u8
}

/// [`backing_byte`]s `offset..offset + len`.
pub fn backing(offset: u64, len: u64) -> Vec<u8> {
    pattern(offset, len, 1, backing_phase)
}

/// [`written_byte`]s `offset..offset + len`.
pub fn written(tag: u8, offset: u64, len: u64) -> Vec<u8> {
    pattern(offset, len, 0x80, |s| written_phase(tag, s))
}

/// A pattern built from slices of one table: a loop per byte is slow in debug builds.
fn pattern(offset: u64, len: u64, base: u8, phase: impl Fn(u64) -> u64) -> Vec<u8> {
    let table: Vec<u8> = (0..127 + SECTOR).map(|k| base + (k % 127) as u8).collect();
    let mut out = Vec::with_capacity(len as usize);
    let mut i = offset;
    while i < offset + len {
        let end = ((i / SECTOR + 1) * SECTOR).min(offset + len);
        let start = (phase(i / SECTOR) % 127 + i % SECTOR) as usize;
        out.extend_from_slice(&table[start..start + (end - i) as usize]);
        i = end;
    }
    out
}

fn clusters(size: u64) -> usize {
    size.div_ceil(CS) as usize
}

/// The image before the steps run.
#[derive(Debug, Clone)]
pub struct Setup {
    /// 1, or 2 (with 64 KiB clusters: the bitmap at 65536, padded to 64 KiB).
    pub layout: u32,
    /// Layout 2: the header's "all allocated" bit is set (every cluster must be allocated).
    pub all_allocated: bool,
    pub size: u64,
    /// Length of the backing file; `None`: no backing file.
    pub backing: Option<u64>,
    /// Clusters allocated at the start.
    pub allocated: Vec<u64>,
    pub writethrough: bool,
    /// The `.add-cow` file holds set bits past the end (the spare bits of the last bitmap byte
    /// and one more byte), as a crash during a shrink leaves it.
    pub stale_bits: bool,
}

impl Setup {
    /// Layout 1, writeback, no stale bits.
    pub fn new(size: u64, backing: Option<u64>, allocated: &[u64]) -> Setup {
        Setup {
            layout: 1,
            all_allocated: false,
            size,
            backing,
            allocated: allocated.to_vec(),
            writethrough: false,
            stale_bits: false,
        }
    }

    /// The header the files start with.
    fn header(&self) -> Header {
        let backing = self.backing.map(|_| &b"base.raw"[..]);
        match self.layout {
            1 => Header::new(b"disk.raw", backing).unwrap(),
            _ => {
                let backing = backing.map(|b| (b, BackingFormat::Raw));
                let mut h = Header::new_v2(b"disk.raw", backing, 16).unwrap();
                h.set_all_allocated(self.all_allocated);
                h
            }
        }
    }

    fn backing_at(&self, i: u64) -> u8 {
        match self.backing {
            Some(len) if i < len => backing_byte(i),
            _ => 0,
        }
    }

    /// What unallocated clusters read at `offset..offset + len`.
    fn backing_read(&self, offset: u64, len: u64) -> Vec<u8> {
        let inside = self.backing.unwrap_or(0).saturating_sub(offset).min(len);
        let mut out = backing(offset, inside);
        set_len(&mut out, len as usize);
        out
    }

    /// The files: `.add-cow`, image, and backing when there is one.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let header = self.header();
        assert!(
            !self.all_allocated || self.allocated.len() == clusters(self.size),
            "the all-allocated bit over unallocated clusters"
        );
        let mut meta = header.to_bytes().to_vec();
        let bitmap_at = meta.len();
        let bitmap_len = clusters(self.size).div_ceil(8);
        meta.resize(header.file_len(clusters(self.size) as u64) as usize, 0);
        let mut image = vec![GARBAGE; self.size as usize];
        for &c in &self.allocated {
            meta[bitmap_at + c as usize / 8] |= 1 << (c % 8);
            let r = c * CS..((c + 1) * CS).min(self.size);
            image[r.start as usize..r.end as usize].copy_from_slice(&written(
                0,
                r.start,
                r.end - r.start,
            ));
        }
        if self.stale_bits {
            let clusters = clusters(self.size);
            if clusters % 8 != 0 {
                meta[bitmap_at + bitmap_len - 1] |= 0xFF << (clusters % 8);
            }
            // The next byte: past the end of a layout-1 file, in layout 2's padding.
            match meta.get_mut(bitmap_at + bitmap_len) {
                Some(b) => *b = 0xFF,
                None => meta.push(0xFF),
            }
        }
        let mut files = vec![("add-cow".to_owned(), meta), ("image".to_owned(), image)];
        if let Some(len) = self.backing {
            files.push(("backing".to_owned(), backing(0, len)));
        }
        files
    }

    /// What the image reads before the steps.
    pub fn snapshot(&self) -> Snapshot {
        let mut alloc = vec![false; clusters(self.size)];
        for &c in &self.allocated {
            alloc[c as usize] = true;
        }
        let mut bytes = Vec::with_capacity(self.size as usize);
        for (c, &a) in alloc.iter().enumerate() {
            let (at, len) = (c as u64 * CS, CS.min(self.size - c as u64 * CS));
            bytes.extend(match a {
                true => written(0, at, len),
                false => self.backing_read(at, len),
            });
        }
        Snapshot {
            size: self.size,
            bytes,
            alloc,
        }
    }

    fn describe(&self) -> String {
        format!(
            "layout {}{}, size {:#x}, backing {}, allocated {:?}, {}",
            self.layout,
            if self.all_allocated {
                " (all allocated)"
            } else {
                ""
            },
            self.size,
            self.backing.map_or("none".into(), |n| format!("{n:#x}")),
            self.allocated,
            if self.writethrough {
                "writethrough"
            } else {
                "writeback"
            }
        ) + if self.stale_bits {
            ", stale bits past the end"
        } else {
            ""
        }
    }

    fn options(&self, writable: bool) -> OpenOptions {
        OpenOptions {
            writable,
            writethrough: self.writethrough,
            ..OpenOptions::default()
        }
    }

    fn open(&self, files: Vec<Box<dyn Storage>>, writable: bool) -> addcow::Result<Image> {
        let mut files = files.into_iter();
        let parts = Parts {
            meta: (files.next().unwrap(), "add-cow".into()),
            image: (files.next().unwrap(), "image".into()),
            backing: files.next().map(|b| Backing::raw(b, "backing")),
        };
        Image::open_parts(parts, &self.options(writable))
    }

    /// A writable image over the files of `disk`.
    pub fn open_disk(&self, disk: &Disk) -> addcow::Result<Image> {
        let n = if self.backing.is_some() { 3 } else { 2 };
        let files = (0..n)
            .map(|f| Box::new(disk.file(f)) as Box<dyn Storage>)
            .collect();
        self.open(files, true)
    }

    /// A read-only image over copies of `files` (as [`Disk::materialize`] returns them).
    pub fn open_files(&self, files: Vec<Vec<u8>>) -> addcow::Result<Image> {
        let files = files
            .into_iter()
            .map(|b| Box::new(MemStorage::from_bytes(b)) as Box<dyn Storage>)
            .collect();
        self.open(files, false)
    }
}

/// What the image reads at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub size: u64,
    pub bytes: Vec<u8>,
    /// One entry per cluster.
    pub alloc: Vec<bool>,
}

type Run = Box<dyn Fn(&mut Image) -> addcow::Result<()>>;
type Model = Box<dyn Fn(&mut Snapshot, &Setup)>;

/// One operation on the image and its model.
pub struct Step {
    pub label: String,
    /// Durable once it returns (also: every step under writethrough).
    pub durable: bool,
    run: Run,
    model: Model,
}

impl Step {
    pub fn new(
        label: impl Into<String>,
        durable: bool,
        run: impl Fn(&mut Image) -> addcow::Result<()> + 'static,
        model: impl Fn(&mut Snapshot, &Setup) + 'static,
    ) -> Step {
        Step {
            label: label.into(),
            durable,
            run: Box::new(run),
            model: Box::new(model),
        }
    }

    /// Runs the step on `img` (outside a scenario).
    pub fn run_on(&self, img: &mut Image) -> addcow::Result<()> {
        (self.run)(img)
    }

    /// Writes `written(tag, ..)` at `offset`.
    pub fn write(tag: u8, offset: u64, len: u64) -> Step {
        let data = written(tag, offset, len);
        let model_data = data.clone();
        Step::new(
            format!("write {offset:#x}+{len:#x}"),
            false,
            move |img| img.write_at(offset, &data),
            move |s, _| {
                s.bytes[offset as usize..(offset + len) as usize].copy_from_slice(&model_data);
                for c in offset / CS..(offset + len).div_ceil(CS) {
                    s.alloc[c as usize] = true;
                }
            },
        )
    }

    /// Hydrates the clusters `offset..offset + len` touches, `batch` bytes at a time: they
    /// become allocated and read what they read before.
    pub fn hydrate(offset: u64, len: u64, batch: u64) -> Step {
        Step::new(
            format!("hydrate {offset:#x}+{len:#x} by {batch:#x}"),
            false,
            move |img| img.hydrate(offset, len, batch).map(|_| ()),
            move |s, _| {
                let end = (offset + len).div_ceil(CS).min(s.alloc.len() as u64);
                for c in offset / CS..end {
                    s.alloc[c as usize] = true;
                }
            },
        )
    }

    pub fn flush() -> Step {
        Step::new("flush", true, |img| img.flush(), |_, _| {})
    }

    /// Resizes to `size`: kept bytes unchanged, the grown area reads zeros; growing over a
    /// backing file longer than the old size allocates the partial end cluster and every new one.
    pub fn truncate(size: u64) -> Step {
        Step::new(
            format!("truncate to {size:#x}"),
            false,
            move |img| img.truncate(size),
            move |s, setup| {
                let old = s.size;
                s.size = size;
                set_len(&mut s.bytes, size as usize);
                s.alloc.resize(clusters(size), false);
                if size > old && setup.backing.unwrap_or(0) > old {
                    for c in (old / CS) as usize..clusters(size) {
                        s.alloc[c] = true;
                    }
                }
            },
        )
    }
}

/// A setup and the steps to run on it.
pub struct Scenario {
    pub name: String,
    pub setup: Setup,
    pub steps: Vec<Step>,
}

impl Scenario {
    pub fn new(name: impl Into<String>, setup: Setup) -> Scenario {
        Scenario {
            name: name.into(),
            setup,
            steps: Vec::new(),
        }
    }

    pub fn then(mut self, step: Step) -> Scenario {
        self.steps.push(step);
        self
    }

    /// A write tagged with its step number, so every write's data differs.
    pub fn write(self, offset: u64, len: u64) -> Scenario {
        let tag = self.steps.len() as u8 + 1;
        self.then(Step::write(tag, offset, len))
    }

    pub fn flush(self) -> Scenario {
        self.then(Step::flush())
    }

    pub fn hydrate(self, offset: u64, len: u64, batch: u64) -> Scenario {
        self.then(Step::hydrate(offset, len, batch))
    }

    pub fn truncate(self, size: u64) -> Scenario {
        self.then(Step::truncate(size))
    }

    pub fn title(&self) -> String {
        let steps: Vec<&str> = self.steps.iter().map(|s| s.label.as_str()).collect();
        format!(
            "{} [{}; {}]",
            self.name,
            self.setup.describe(),
            steps.join(", ")
        )
    }

    /// Snapshot 0 (the setup) and one after each step.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let mut out = vec![self.setup.snapshot()];
        for step in &self.steps {
            let mut next = out.last().unwrap().clone();
            (step.model)(&mut next, &self.setup);
            out.push(next);
        }
        out
    }

    fn durable(&self, k: usize) -> bool {
        self.steps[k].durable || self.setup.writethrough
    }

    /// Index of the snapshot after the last step acknowledged durable among the first `done`.
    fn floor(&self, done: usize) -> usize {
        (0..done)
            .rev()
            .find(|&k| self.durable(k))
            .map_or(0, |k| k + 1)
    }

    fn run_step(&self, k: usize, img: &mut Image) -> Result<addcow::Result<()>, String> {
        catch_unwind(AssertUnwindSafe(|| (self.steps[k].run)(img))).map_err(|p| {
            format!(
                "step {k} `{}` panicked: {}",
                self.steps[k].label,
                panic_text(&p)
            )
        })
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Reads the whole image as a snapshot (allocation included).
pub fn read_snapshot(img: &Image) -> Result<Snapshot, String> {
    let size = img.size();
    let mut bytes = vec![0u8; size as usize];
    img.read_at(0, &mut bytes)
        .map_err(|e| format!("read of the whole image failed: {e}"))?;
    let alloc = (0..clusters(size) as u64)
        .map(|c| img.is_allocated(c * CS, 1).map(|(a, _)| a))
        .collect::<addcow::Result<_>>()
        .map_err(|e| format!("is_allocated failed: {e}"))?;
    Ok(Snapshot { size, bytes, alloc })
}

/// Layout 2: why the materialized `files` have the "all allocated" bit set over a cluster
/// (below the image file's length) whose bitmap bit is not set, or `None`. Headers that do not
/// parse are left to the open that follows.
pub fn check_bit(files: &[Vec<u8>]) -> Option<String> {
    let meta = &files[META];
    let header = addcow::read_header(&MemStorage::from_bytes(meta.clone()), "add-cow").ok()?;
    if !header.all_allocated() {
        return None;
    }
    let at = header.bitmap_offset() as usize;
    let missing = (0..clusters(files[IMAGE].len() as u64))
        .find(|&c| !meta.get(at + c / 8).is_some_and(|b| b >> (c % 8) & 1 == 1))?;
    Some(format!(
        "the header's all-allocated bit is set, but cluster {missing}'s bitmap bit is not"
    ))
}

/// Why `img` does not read as `window` allows (see the module docs), or `None`.
pub fn check(img: &Image, window: &[Snapshot], setup: &Setup) -> Option<String> {
    let got = match read_snapshot(img) {
        Ok(s) => s,
        Err(e) => return Some(e),
    };
    check_snapshot(&got, window, setup)
}

/// [`check`] on what an image read.
fn check_snapshot(got: &Snapshot, window: &[Snapshot], setup: &Setup) -> Option<String> {
    let size = got.size;
    if !window.iter().any(|s| s.size == size) {
        let sizes: Vec<String> = window.iter().map(|s| format!("{:#x}", s.size)).collect();
        return Some(format!(
            "size {size:#x}, expected one of [{}]",
            sizes.join(", ")
        ));
    }
    for c in 0..clusters(size) {
        let r = c as u64 * CS..((c as u64 + 1) * CS).min(size);
        let candidates: Vec<(usize, &Snapshot)> = window
            .iter()
            .enumerate()
            .filter(|(_, s)| s.size == size || s.size >= r.end)
            .collect();
        let flips = candidates.iter().any(|(_, s)| s.alloc[c])
            != candidates.iter().all(|(_, s)| s.alloc[c]);
        let units = match flips {
            true => vec![r.clone()],
            false => (r.start..r.end)
                .step_by(SECTOR as usize)
                .map(|a| a..(a + SECTOR).min(r.end))
                .collect(),
        };
        for u in units {
            let range = u.start as usize..u.end as usize;
            if !candidates
                .iter()
                .any(|(_, s)| s.bytes[range.clone()] == got.bytes[range.clone()])
            {
                let want: Vec<String> = candidates
                    .iter()
                    .map(|(j, s)| {
                        format!(
                            "window[{j}]: {}",
                            classify(&s.bytes[r.start as usize..r.end as usize], r.start, setup)
                        )
                    })
                    .collect();
                return Some(format!(
                    "cluster {c} ({}, {}) at {:#x}..{:#x} reads {}; the window allows {}",
                    if got.alloc[c] {
                        "allocated"
                    } else {
                        "unallocated"
                    },
                    if flips {
                        "checked whole: the window changes its allocation"
                    } else {
                        "checked per sector"
                    },
                    u.start,
                    u.end,
                    classify(&got.bytes[r.start as usize..r.end as usize], r.start, setup),
                    want.join("; ")
                ));
            }
        }
    }
    None
}

/// Why two snapshots differ (the first differing cluster), or `None`.
pub fn diff(got: &Snapshot, want: &Snapshot, setup: &Setup) -> Option<String> {
    if got.size != want.size {
        return Some(format!("size {:#x}, expected {:#x}", got.size, want.size));
    }
    for c in 0..clusters(got.size) {
        let r = c * CS as usize..((c + 1) * CS as usize).min(got.size as usize);
        if got.bytes[r.clone()] != want.bytes[r.clone()] || got.alloc[c] != want.alloc[c] {
            return Some(format!(
                "cluster {c}: reads {} ({}), expected {} ({})",
                classify(&got.bytes[r.clone()], r.start as u64, setup),
                if got.alloc[c] {
                    "allocated"
                } else {
                    "unallocated"
                },
                classify(&want.bytes[r.clone()], r.start as u64, setup),
                if want.alloc[c] {
                    "allocated"
                } else {
                    "unallocated"
                },
            ));
        }
    }
    None
}

/// What `bytes` (at image offset `offset`) are, by runs of sectors: `backing`, `zeros`,
/// `garbage`, `write N` (N = 0: the setup's data) or `other`.
fn classify(bytes: &[u8], offset: u64, setup: &Setup) -> String {
    let mut runs: Vec<(u64, u64, String)> = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let i = offset + at as u64;
        let end = (at + (SECTOR - i % SECTOR) as usize).min(bytes.len());
        let label = sector_label(&bytes[at..end], i, setup);
        match runs.last_mut() {
            Some(last) if last.2 == label => last.1 = offset + end as u64,
            _ => runs.push((i, offset + end as u64, label)),
        }
        at = end;
    }
    let runs: Vec<String> = runs
        .iter()
        .map(|(a, b, l)| format!("{l} {a:#x}..{b:#x}"))
        .collect();
    runs.join(", ")
}

fn sector_label(s: &[u8], i: u64, setup: &Setup) -> String {
    let matches = |f: &dyn Fn(u64) -> u8| s.iter().zip(i..).all(|(&b, j)| b == f(j));
    if s.iter().all(|&b| b == 0) {
        return "zeros".into();
    }
    if s.iter().all(|&b| b == GARBAGE) {
        return "garbage".into();
    }
    if setup.backing.is_some() && matches(&|j| setup.backing_at(j)) {
        return "backing".into();
    }
    // Solve written_byte(tag, i) == s[0] for the tag (13 * 88 = 1 mod 127).
    let base = (i / SECTOR * 5 + i % SECTOR) % 127;
    let tag = ((u64::from(s[0] & 0x7F) + 127 - base) * 88 % 127) as u8;
    if s[0] >= 0x80 && matches(&|j| written_byte(tag, j)) {
        return format!("write {tag}");
    }
    "other".into()
}

// ---------------------------------------------------------------------------------------------
// Crash runs.

/// How many random subsets per crash point, and their seed: `ADDCOW_CRASH_SUBSETS` (default 3)
/// and `ADDCOW_CRASH_SEED` (default 0), for longer campaigns.
pub struct Campaign {
    pub subsets: u64,
    pub seed: u64,
}

impl Campaign {
    pub fn from_env() -> Campaign {
        Campaign {
            subsets: env_u64("ADDCOW_CRASH_SUBSETS", 3),
            seed: env_u64("ADDCOW_CRASH_SEED", 0),
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(std::env::VarError::NotPresent) => default,
        Err(e) => panic!("{name}: {e}"),
    }
}

/// What a run checked and what it found.
#[derive(Debug)]
pub struct Outcome {
    /// The scenario.
    pub title: String,
    /// States checked: materialized crashes, or fault runs.
    pub checked: usize,
    pub violations: Vec<String>,
}

impl Outcome {
    fn new(s: &Scenario) -> Outcome {
        Outcome {
            title: s.title(),
            checked: 0,
            violations: Vec::new(),
        }
    }

    fn failed(s: &Scenario, violation: String) -> Outcome {
        Outcome {
            violations: vec![violation],
            ..Outcome::new(s)
        }
    }
}

/// Every violation of the crash invariants (module docs) over every crash point of `s`.
pub fn crash_violations(s: &Scenario, campaign: &Campaign) -> Outcome {
    crash_violations_with(s, campaign, |_| {})
}

/// [`crash_violations`], with `prepare` called on the disk before the image opens (e.g. to
/// make it misbehave).
pub fn crash_violations_with(
    s: &Scenario,
    campaign: &Campaign,
    prepare: impl Fn(&Disk),
) -> Outcome {
    let snaps = s.snapshots();
    let disk = Disk::new(s.setup.files());
    prepare(&disk);
    let mut img = match s.setup.open_disk(&disk) {
        Ok(img) => img,
        Err(e) => return Outcome::failed(s, format!("open failed: {e}")),
    };
    // (first event, end) of each step.
    let mut marks = Vec::new();
    for k in 0..s.steps.len() {
        let start = disk.events();
        match s.run_step(k, &mut img) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Outcome::failed(s, format!("step {k} failed: {e}")),
            Err(panic) => return Outcome::failed(s, panic),
        }
        marks.push((start, disk.events()));
    }
    let end = disk.events();
    let mut out = Outcome::new(s);
    match read_snapshot(&img) {
        Ok(got) => {
            if let Some(d) = diff(&got, snaps.last().unwrap(), &s.setup) {
                out.violations.push(format!(
                    "after the steps the image disagrees with the model: {d}"
                ));
            }
        }
        Err(e) => out.violations.push(format!("after the steps: {e}")),
    }
    for point in 0..=end {
        let hi = marks
            .iter()
            .filter(|&&(a, b)| a < point || b <= point)
            .count();
        let lo = s.floor(marks.iter().filter(|&&(_, b)| b <= point).count());
        let window = &snaps[lo..=hi];
        let size_changes = window.windows(2).filter(|w| w[0].size != w[1].size).count();
        assert!(
            size_changes <= 1,
            "{}: a window with two size changes (add a flush)",
            out.title
        );
        let mut picks = vec![
            ("nothing unflushed".to_owned(), Pick::Nothing),
            ("every unflushed event".to_owned(), Pick::Everything),
        ];
        for i in 0..campaign.subsets {
            let seed = campaign.seed.wrapping_mul(0x1_0000_0001) ^ (point as u64) << 16 ^ i;
            picks.push((
                format!("random subset seed {seed:#x}"),
                Pick::Random(Rng::new(seed)),
            ));
        }
        for (what, mut pick) in picks {
            let files = disk.materialize(point, &mut pick);
            out.checked += 1;
            let problem = check_bit(&files).or_else(|| match s.setup.open_files(files) {
                Ok(reopened) => check(&reopened, window, &s.setup),
                Err(e) => Some(format!("open failed: {e}")),
            });
            if let Some(p) = problem {
                let after = match point {
                    0 => "before any event".to_owned(),
                    _ => format!(
                        "after event {} `{}`",
                        point - 1,
                        disk.describe_event(point - 1)
                    ),
                };
                let step = marks
                    .iter()
                    .position(|&(a, b)| a < point && point <= b)
                    .map_or("between steps".to_owned(), |k| {
                        format!("in step {k} `{}`", s.steps[k].label)
                    });
                out.violations.push(format!(
                    "crash at point {point}/{end} ({after}, {step}), keeping {what}, window snapshots {lo}..={hi}: {p}"
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Fault runs.

/// Every violation of the fault invariants (module docs) with `errno` injected at each call
/// the steps of `s` make.
pub fn fault_violations(s: &Scenario, errno: i32) -> Outcome {
    let snaps = s.snapshots();
    let files = s.setup.files();
    let calls = {
        let disk = Disk::new(files.clone());
        let mut img = match s.setup.open_disk(&disk) {
            Ok(img) => img,
            Err(e) => return Outcome::failed(s, format!("open failed: {e}")),
        };
        let first = disk.calls();
        for k in 0..s.steps.len() {
            match s.run_step(k, &mut img) {
                Ok(Ok(())) => {}
                other => {
                    return Outcome::failed(
                        s,
                        format!("step {k} failed without a fault: {other:?}"),
                    )
                }
            }
        }
        disk.calls() - first
    };
    let mut out = Outcome::new(s);
    out.title += &format!(" with errno {errno}");
    for n in 0..calls {
        out.checked += 1;
        if let Err(p) = fault_run(s, files.clone(), &snaps, errno, n) {
            out.violations
                .push(format!("errno {errno} at call {n}/{calls}: {p}"));
        }
    }
    out
}

/// One run with call `n` of the steps failing.
fn fault_run(
    s: &Scenario,
    files: Vec<(String, Vec<u8>)>,
    snaps: &[Snapshot],
    errno: i32,
    n: u64,
) -> Result<(), String> {
    let disk = Disk::new(files);
    let mut img = s.setup.open_disk(&disk).map_err(|e| format!("open: {e}"))?;
    disk.arm(n, errno);
    let mut failed = None;
    for k in 0..s.steps.len() {
        if let Err(e) = s.run_step(k, &mut img)? {
            failed = Some((k, e));
            break;
        }
    }
    let fired = disk
        .fired()
        .ok_or("the fault never fired (fewer calls than the reference run)")?;
    let (k, e) = failed.ok_or_else(|| format!("{fired} failed, yet every step succeeded"))?;
    let at = format!("{fired} failed in step {k} `{}`", s.steps[k].label);
    if e.errno() != errno {
        return Err(format!("{at}: the step returned errno {} ({e})", e.errno()));
    }
    let window = &snaps[s.floor(k)..=k + 1];
    let fail = |what: &str, p: String| format!("{at}: {what}: {p}");
    if let Some(p) = check(&img, window, &s.setup) {
        return Err(fail("the live image", p));
    }
    let reopen = |what: &str, files: Vec<Vec<u8>>| {
        s.setup
            .open_files(files)
            .map_err(|e| fail(what, format!("open failed: {e}")))
    };
    let durable = || disk.materialize(disk.events(), &mut Pick::Nothing);
    for (what, files) in [
        ("reopened from the current contents", disk.current()),
        ("reopened from the durable state", durable()),
    ] {
        if let Some(p) = check_bit(&files) {
            return Err(fail(what, p));
        }
        if let Some(p) = check(&reopen(what, files)?, window, &s.setup) {
            return Err(fail(what, p));
        }
    }
    img.flush()
        .map_err(|e| fail("a flush after the fault", e.to_string()))?;
    let live = read_snapshot(&img).map_err(|p| fail("the live image after a flush", p))?;
    let what = "the durable state after a flush";
    let files = durable();
    if files != disk.current() {
        return Err(fail(what, "differs from the current contents".into()));
    }
    let got = read_snapshot(&reopen(what, files)?).map_err(|p| fail(what, p))?;
    match diff(&got, &live, &s.setup) {
        Some(d) => Err(fail(what, format!("differs from the live image: {d}"))),
        None => Ok(()),
    }
}

/// [`assert_clean`] over the crash points of `scenarios` ([`crash_violations`], the campaign of
/// the environment).
pub fn assert_crash_clean(what: &str, scenarios: &[Scenario]) {
    let campaign = Campaign::from_env();
    assert_clean(
        what,
        scenarios.iter().map(|s| crash_violations(s, &campaign)),
    );
}

/// [`assert_clean`] over `EIO`, then `ENOSPC`, injected at each host call of `scenarios`
/// ([`fault_violations`]).
pub fn assert_faults_clean(what: &str, scenarios: &[Scenario]) {
    assert_clean(
        what,
        [libc::EIO, libc::ENOSPC]
            .into_iter()
            .flat_map(|errno| scenarios.iter().map(move |s| fault_violations(s, errno))),
    );
}

/// Panics listing the failing scenarios and the first violations, if any; asserts that
/// something was checked.
pub fn assert_clean(what: &str, outcomes: impl IntoIterator<Item = Outcome>) {
    let outcomes: Vec<Outcome> = outcomes.into_iter().collect();
    let checked: usize = outcomes.iter().map(|o| o.checked).sum();
    assert!(checked > 0, "{what}: nothing was checked");
    let failing: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .collect();
    if failing.is_empty() {
        return;
    }
    let mut report = format!(
        "{what}: {} of {} scenarios fail ({checked} states checked):\n",
        failing.len(),
        outcomes.len()
    );
    for o in &failing {
        report += &format!(
            "- {}: {} of {} states\n",
            o.title,
            o.violations.len(),
            o.checked
        );
    }
    report += "\nThe first violations:\n";
    for (o, v) in failing
        .iter()
        .flat_map(|o| o.violations.iter().map(move |v| (o, v)))
        .take(4)
    {
        report += &format!("\n{}: {v}\n", o.title);
    }
    panic!("{report}");
}
