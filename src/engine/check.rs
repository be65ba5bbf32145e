//! Checking an image's files for consistency, and repairing what can be repaired without
//! guessing, in the spirit of `qemu-img check`.
//!
//! # What is checked, and what a finding is
//! - **Corruption** (changes what the image reads, or keeps it from opening): a header that does
//!   not parse or validate; an image file that cannot be opened; a bitmap shorter than the image
//!   needs (clusters without a bit); a backing file that is missing or unreadable while
//!   unallocated clusters read from it.
//! - **Leak** (harmless leftovers, the `.add-cow` file's equivalent of leaked clusters): bits set
//!   past the last cluster (the spare bits of the last byte, layout 2's padding); the `.add-cow`
//!   file longer than the bitmap (an interrupted shrink leaves that); layout 2's padding missing,
//!   or a short bitmap under layout 2's "all allocated" bit (which every cluster reads by);
//!   image-file data in unallocated clusters (found with `SEEK_DATA`: qcow2's leaked clusters;
//!   a copy-on-write that crashed before its bit was set, a failed write, or a commit that
//!   could not punch leave it). It is never read, only space.
//! - **Note** (counted nowhere): the image in use by another process (checked anyway, its content
//!   may change meanwhile), a backing file shorter than the image (unallocated clusters past its
//!   end read zeros), unknown compatible feature bits, a backing file an all-allocated image does
//!   not need, layout 2's "all allocated" bit over a bitmap that does not say so (valid: the bit
//!   wins, and clearing it fills the bitmap first), an image file whose file system has no
//!   `SEEK_DATA` (data in unallocated clusters not checked).
//!
//! # Repair (`repair`)
//! Needs the `.add-cow` and image files locked for writing (`EBUSY` while another user has
//! them). Fixed: a short bitmap is extended with zero bits (unallocated) only when the image
//! file holds no data in the clusters it lacks (`SEEK_DATA`), since only then does that not
//! change what the image reads; stray bits are cleared; an overlong `.add-cow` file is cut;
//! missing padding is added; data in unallocated clusters is punched out of the image file
//! (where the file system can punch; otherwise reported). Everything else is reported, not
//! repaired. The repairs are written, then the `.add-cow` file is synced; each one leaves the
//! image reading what it read before, so a crash between them is harmless.
//!
//! Punching is safe because a cluster whose bit is clear is never read from the image file, and
//! nothing sets its bit meanwhile: the repair holds the write locks, so no writer runs, and the
//! bit read from the `.add-cow` file is the one every later open reads (a bit another writer
//! had set only in its memory was lost with it, data and all: its cluster reads the backing
//! file). Only whole clusters whose bit reads 0 are punched, never a byte of an allocated one.
//! A crash mid-punch leaves some of the data: still a leak, never read. The image file is
//! synced after the punches.
//!
//! # Exit codes (the model for the CLI, `qemu-img check`'s)
//! [`CheckReport::exit_code`]: 0 no unrepaired finding, 2 corruptions left, 3 leaks left and no
//! corruption; a check that could not complete (an `Err`: the `.add-cow` file cannot be opened,
//! an I/O error) is 1.

use super::files::{admit, Chain, Role, Use};
use super::read_header;
use crate::error::{Error, Op, Result};
use crate::layout::{Geometry, Header};
use crate::storage::{open_path, Access, Dir, FileStorage, Storage};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Corruption,
    Leak,
    Note,
}

/// One thing a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
    /// Repaired by this check (only with `repair`).
    pub repaired: bool,
}

/// What a check found, and the allocation it counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// Clusters whose bit is set (0 when the header could not be read).
    pub allocated_clusters: u64,
    /// Clusters of the image (0 when the header or the image file could not be read).
    pub total_clusters: u64,
}

impl CheckReport {
    /// Findings of `severity`, `repaired` or not.
    pub fn count(&self, severity: Severity, repaired: bool) -> u64 {
        let n = self.findings.iter();
        n.filter(|f| f.severity == severity && f.repaired == repaired)
            .count() as u64
    }

    /// 0: nothing left to repair; 2: corruptions left; 3: leaks left, no corruption.
    pub fn exit_code(&self) -> i32 {
        match (
            self.count(Severity::Corruption, false),
            self.count(Severity::Leak, false),
        ) {
            (0, 0) => 0,
            (0, _) => 3,
            _ => 2,
        }
    }

    fn add(&mut self, severity: Severity, message: impl Into<String>, repaired: bool) {
        self.findings.push(Finding {
            severity,
            message: message.into(),
            repaired,
        });
    }
}

/// Checks the image at `path` (module docs); with `repair`, repairs what can be repaired. An
/// `Err` only when the check could not be made: the `.add-cow` file cannot be opened or read,
/// an I/O error, or (`repair`) `EBUSY` while another user has the image.
pub fn check(path: impl AsRef<Path>, repair: bool) -> Result<CheckReport> {
    let path = path.as_ref();
    let how = Use::top(repair, false, false);
    let what = Role::AddCow.describe(path);
    let mut r = CheckReport::default();
    let mut chain = Chain::default();
    let file = open_path(path, how.access(), &what)?;
    if !lock(&mut r, &file, how, Role::AddCow, &what, &mut chain)? {
        return Ok(r);
    }
    let meta = FileStorage::new(file);
    let header = match read_header(&meta, &what) {
        Ok(h) => h,
        Err(e @ (Error::Invalid(_) | Error::Unsupported(_))) => {
            r.add(Severity::Corruption, format!("header: {e}"), false);
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    let unknown = header.compatible_features() & !crate::layout::v2::ALL_ALLOCATED;
    if unknown != 0 {
        r.add(
            Severity::Note,
            format!("unknown compatible feature bits {unknown:#x} (kept as they are)"),
            false,
        );
    }
    let dir = Dir::of(path)?;
    let image_name = name(&header.image_file);
    let image_what = Role::Image.describe(&dir.join(image_name));
    let image = match dir.open(image_name, how.access(), &image_what) {
        Ok(f) => f,
        Err(e) => {
            r.add(Severity::Corruption, e.to_string(), false);
            return Ok(r);
        }
    };
    if !lock(&mut r, &image, how, Role::Image, &image_what, &mut chain)? {
        return Ok(r);
    }
    let image = FileStorage::new(image);
    let size = image
        .len()
        .map_err(|e| Error::io(Op::GetLength, &image_what, 0, e))?;
    let files = Files {
        meta: &meta,
        what: &what,
        image: &image,
        header: &header,
        geometry: Geometry::new(header.cluster_bits(), size),
        repair,
    };
    r.total_clusters = files.geometry.clusters();
    files.bitmap_length(&mut r)?;
    files.bits(&mut r)?;
    files.leaked_data(&mut r)?;
    check_backing(&mut r, &dir, &header, size)?;
    if repair && r.findings.iter().any(|f| f.repaired) {
        meta.flush()
            .map_err(|e| Error::io(Op::Flush, &what, 0, e))?;
    }
    Ok(r)
}

/// Admits `file` to the chain and locks it. A conflicting lock: `EBUSY` for a repair, a note
/// for a check (which goes on unlocked). A file that is another file of the chain: a
/// corruption, and `false` (nothing more to check).
fn lock(
    r: &mut CheckReport,
    file: &File,
    how: Use,
    role: Role,
    what: &str,
    chain: &mut Chain,
) -> Result<bool> {
    match admit(file, how, role, what, chain) {
        Ok(()) => Ok(true),
        Err(Error::Busy(msg)) if !how.writable => {
            let msg = format!("{msg}; checked anyway, the content may change meanwhile");
            r.add(Severity::Note, msg, false);
            Ok(true)
        }
        Err(e @ Error::Invalid(_)) => {
            r.add(Severity::Corruption, e.to_string(), false);
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn name(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// Bytes read or written per call while scanning or repairing the bitmap.
const CHUNK: u64 = 1 << 20;

/// The open files of the image being checked.
struct Files<'a> {
    meta: &'a FileStorage,
    what: &'a str,
    image: &'a FileStorage,
    header: &'a Header,
    geometry: Geometry,
    repair: bool,
}

impl Files<'_> {
    fn meta_len(&self) -> Result<u64> {
        self.meta
            .len()
            .map_err(|e| Error::io(Op::GetLength, self.what, 0, e))
    }

    /// Bitmap bytes stored (the `.add-cow` file past its header).
    fn stored(&self) -> Result<u64> {
        Ok(self.meta_len()?.saturating_sub(self.header.bitmap_offset()))
    }

    fn resize_meta(&self, bitmap_len: u64) -> Result<()> {
        let len = self.header.bitmap_offset() + bitmap_len;
        self.meta
            .resize(len)
            .map_err(|e| Error::io(Op::Resize, self.what, len, e))
    }

    fn write_meta(&self, bitmap_at: u64, bytes: &[u8]) -> Result<()> {
        let at = self.header.bitmap_offset() + bitmap_at;
        self.meta
            .write_at(bytes, at)
            .map_err(|e| Error::io(Op::WriteBitmap, self.what, at, e))
    }

    fn read_meta(&self, bitmap_at: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.header.bitmap_offset() + bitmap_at;
        self.meta
            .read_at(buf, at)
            .map_err(|e| Error::io(Op::ReadBitmap, self.what, at, e))
    }

    /// The bitmap's length against the image's: short (bits missing, or layout 2's padding), or
    /// long (stale bytes past it).
    fn bitmap_length(&self, r: &mut CheckReport) -> Result<()> {
        let clusters = self.geometry.clusters();
        let (have, need) = (self.stored()?, self.header.bitmap_len(clusters));
        let bits = clusters.div_ceil(8);
        if have > need {
            r.add(
                Severity::Leak,
                format!(
                    "the bitmap is {have} bytes, the image needs {need}: stale bytes past it \
                     (an interrupted shrink leaves them; so does an image file cut outside the \
                     library)"
                ),
                self.repair,
            );
            if self.repair {
                self.resize_meta(need)?;
            }
        } else if have < bits && !self.header.all_allocated() {
            self.short_bitmap(r, have, need)?;
        } else if have < need {
            r.add(
                Severity::Leak,
                format!("the layout-2 bitmap padding is short: {have} of {need} bytes (harmless)"),
                self.repair,
            );
            if self.repair {
                self.resize_meta(need)?;
            }
        }
        Ok(())
    }

    /// A bitmap without bits for the clusters from `have * 8` on: extended with zero bits when
    /// the image file holds no data there, reported otherwise.
    fn short_bitmap(&self, r: &mut CheckReport, have: u64, need: u64) -> Result<()> {
        let g = self.geometry;
        let first = have * 8;
        let from = first * g.cluster_size();
        let data = self
            .image
            .next_data(from)
            .map_err(|e| Error::io(Op::FindData, "image file", from, e))?
            .filter(|&d| d < g.size());
        let lacking = format!(
            "the bitmap is {have} bytes, the image ({} bytes) needs {need}: clusters {first}..{} \
             have no bit",
            g.size(),
            g.clusters()
        );
        match data {
            Some(d) => r.add(
                Severity::Corruption,
                format!(
                    "{lacking}, and the image file holds data at offset {d} among them: whether \
                     they were written cannot be told (not repaired; read-write opens refuse \
                     the image)"
                ),
                false,
            ),
            None => {
                r.add(
                    Severity::Corruption,
                    format!("{lacking}; the image file holds no data there: unallocated"),
                    self.repair,
                );
                if self.repair {
                    self.resize_meta(need)?;
                }
            }
        }
        Ok(())
    }

    /// Counts the set bits (every cluster under layout 2's "all allocated" bit) and finds stray
    /// bits past the last cluster.
    fn bits(&self, r: &mut CheckReport) -> Result<()> {
        let clusters = self.geometry.clusters();
        let stored = self.stored()?;
        let whole = (clusters / 8).min(stored);
        r.allocated_clusters = self.count_ones(whole)?;
        let tail_end = stored.min(self.header.bitmap_len(clusters));
        if whole < tail_end {
            let mut tail = vec![0u8; (tail_end - whole) as usize];
            self.read_meta(whole, &mut tail)?;
            let spare = (clusters % 8) as u32;
            let keep = match spare {
                0 => 0,
                n => tail[0] & ((1u8 << n) - 1),
            };
            r.allocated_clusters += u64::from(keep.count_ones());
            let stray: u32 = tail.iter().map(|b| b.count_ones()).sum::<u32>() - keep.count_ones();
            if stray > 0 {
                r.add(
                    Severity::Leak,
                    format!("{stray} bits set past the last cluster ({clusters})"),
                    self.repair,
                );
                if self.repair {
                    tail.fill(0);
                    if spare > 0 {
                        tail[0] = keep;
                    }
                    self.write_meta(whole, &tail)?;
                }
            }
        }
        if self.header.all_allocated() {
            let clear = clusters - r.allocated_clusters;
            if clear > 0 {
                r.add(
                    Severity::Note,
                    format!(
                        "the header's all-allocated bit is set and {clear} of {clusters} \
                         clusters have their bit clear: the bit wins (every cluster reads the \
                         image file)"
                    ),
                    false,
                );
            }
            r.allocated_clusters = clusters;
        }
        Ok(())
    }

    /// Image-file data in clusters whose bit is clear: a leak, punched by a repair where the
    /// file system can (module docs). Not looked for under layout 2's "all allocated" bit, nor
    /// in clusters the bitmap has no bit for (`short_bitmap`), nor where the file system cannot
    /// tell data from holes (a note).
    fn leaked_data(&self, r: &mut CheckReport) -> Result<()> {
        if self.header.all_allocated() {
            return Ok(());
        }
        let seeks = self.image.seeks_data();
        if !seeks.map_err(|e| Error::io(Op::FindData, "image file", 0, e))? {
            r.add(
                Severity::Note,
                "the image file's file system cannot find data (no SEEK_DATA): data left in \
                 unallocated clusters was not looked for",
                false,
            );
            return Ok(());
        }
        let runs = self.leaked_runs()?;
        let Some(&(first, _)) = runs.first() else {
            return Ok(());
        };
        let clusters: u64 = runs.iter().map(|(a, b)| b - a).sum();
        let found = format!(
            "{clusters} unallocated clusters hold data in the image file (the first at offset \
             {}): never read, only space (a copy-on-write interrupted before its bit was set \
             leaves this)",
            first * self.geometry.cluster_size()
        );
        if !self.repair {
            r.add(Severity::Leak, found, false);
            return Ok(());
        }
        match self.punch(&runs)? {
            true => r.add(Severity::Leak, format!("{found}; punched"), true),
            false => r.add(
                Severity::Leak,
                format!("{found}; the file system cannot punch holes: not repaired"),
                false,
            ),
        }
        Ok(())
    }

    /// Runs `first..end` of clusters whose bit is clear and that hold image-file data, in order,
    /// found by walking the image file's data with `SEEK_DATA`/`SEEK_HOLE` and reading the bits
    /// of its clusters.
    fn leaked_runs(&self) -> Result<Vec<(u64, u64)>> {
        let g = self.geometry;
        let cs = g.cluster_size();
        let known = g.clusters().min(self.stored()?.saturating_mul(8));
        let limit = g.size().min(known.saturating_mul(cs));
        let find = |at, e| Error::io(Op::FindData, "image file", at, e);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut pos = 0;
        while pos < limit {
            let data = self.image.next_data(pos).map_err(|e| find(pos, e))?;
            let Some(data) = data.filter(|&d| d < limit) else {
                break;
            };
            let hole = self.image.next_hole(data).map_err(|e| find(data, e))?;
            let end = hole.clamp(data + 1, limit);
            self.clear_bits(data / cs, (end - 1) / cs + 1, &mut runs)?;
            pos = end;
        }
        Ok(runs)
    }

    /// Appends the clusters of `first..end` whose bit is clear to `runs`, merging neighbours.
    fn clear_bits(&self, first: u64, end: u64, runs: &mut Vec<(u64, u64)>) -> Result<()> {
        let mut buf = Vec::new();
        let mut c = first;
        while c < end {
            let stop = end.min((c / 8 + CHUNK) * 8);
            buf.resize((stop.div_ceil(8) - c / 8) as usize, 0);
            self.read_meta(c / 8, &mut buf)?;
            for k in c..stop {
                if buf[(k / 8 - c / 8) as usize] >> (k % 8) & 1 == 1 {
                    continue;
                }
                match runs.last_mut() {
                    Some(last) if last.1 == k => last.1 = k + 1,
                    _ => runs.push((k, k + 1)),
                }
            }
            c = stop;
        }
        Ok(())
    }

    /// Punches the clusters of `runs` out of the image file (to the end of the last cluster:
    /// the file keeps its length) and syncs it; `false` when the file system cannot punch.
    fn punch(&self, runs: &[(u64, u64)]) -> Result<bool> {
        let cs = self.geometry.cluster_size();
        for &(first, end) in runs {
            let (at, len) = (first * cs, (end - first) * cs);
            match self.image.punch_hole(at, len) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(false),
                Err(e) => return Err(Error::io(Op::PunchHole, "image file", at, e)),
            }
        }
        self.image
            .flush()
            .map_err(|e| Error::io(Op::Flush, "image file", 0, e))?;
        Ok(true)
    }

    /// Set bits in bitmap bytes `0..len`, skipping holes of the `.add-cow` file.
    fn count_ones(&self, len: u64) -> Result<u64> {
        let base = self.header.bitmap_offset();
        let mut buf = Vec::new();
        let (mut at, mut ones) = (0, 0u64);
        while at < len {
            let data = self
                .meta
                .next_data(base + at)
                .map_err(|e| Error::io(Op::FindData, self.what, base + at, e))?;
            let Some(from) = data.map(|d| d.max(base + at) - base).filter(|&d| d < len) else {
                break;
            };
            let n = (len - from).min(CHUNK);
            buf.resize(n as usize, 0);
            self.read_meta(from, &mut buf)?;
            ones += buf.iter().map(|b| u64::from(b.count_ones())).sum::<u64>();
            at = from + n;
        }
        Ok(ones)
    }
}

/// The backing file: readable when unallocated clusters need it; its length against the size.
fn check_backing(r: &mut CheckReport, dir: &Dir, header: &Header, size: u64) -> Result<()> {
    let Some(backing) = &header.backing_file else {
        return Ok(());
    };
    let backing = name(backing);
    let what = Role::Backing.describe(&dir.join(backing));
    let needed = r.allocated_clusters < r.total_clusters && !header.all_allocated();
    let file = match dir.open(backing, Access::read(false), &what) {
        Ok(f) => f,
        Err(e) if needed => {
            r.add(
                Severity::Corruption,
                format!("unallocated clusters read from it, but it cannot be opened: {e}"),
                false,
            );
            return Ok(());
        }
        Err(e) => {
            r.add(
                Severity::Note,
                format!("{e} (not needed: every cluster is allocated)"),
                false,
            );
            return Ok(());
        }
    };
    let storage = FileStorage::new(file);
    if header.backing_format == Some(crate::layout::BackingFormat::AddCow) {
        if let Err(e) = read_header(&storage, &what) {
            let severity = match needed {
                true => Severity::Corruption,
                false => Severity::Note,
            };
            r.add(severity, format!("the backing image's header: {e}"), false);
        }
        return Ok(());
    }
    let len = storage
        .len()
        .map_err(|e| Error::io(Op::GetLength, &what, 0, e))?;
    if len < size {
        r.add(
            Severity::Note,
            format!(
                "{what} is {len} bytes, shorter than the image ({size} bytes): unallocated \
                 clusters past its end read zeros"
            ),
            false,
        );
    }
    Ok(())
}

/// For read-write opens of local files: `EINVAL` when the `.add-cow` file holds fewer bitmap
/// bytes than the image file's length needs (the library never writes such a file: the image
/// file grew outside it, or the bitmap was cut), pointing at check; unless layout 2's "all
/// allocated" bit is set (every cluster reads the image file whatever the bitmap says). Opens
/// through host byte sources keep reading missing bits as unallocated.
pub(super) fn check_bitmap_len(
    meta: &dyn Storage,
    meta_name: &str,
    header: &Header,
    (data, data_name): (&dyn Storage, &str),
) -> Result<()> {
    let size = data
        .len()
        .map_err(|e| Error::io(Op::GetLength, data_name, 0, e))?;
    let clusters = Geometry::new(header.cluster_bits(), size).clusters();
    let need = header.bitmap_offset() + clusters.div_ceil(8);
    let have = meta
        .len()
        .map_err(|e| Error::io(Op::GetLength, meta_name, 0, e))?;
    match have >= need || header.all_allocated() {
        true => Ok(()),
        false => Err(Error::invalid(format!(
            "{meta_name}: the bitmap is shorter than the image needs ({} of {} bytes for the \
             {size} bytes of {data_name}): check the image (addcow_check; ADDCOW_CHECK_REPAIR \
             extends the bitmap when the image file holds no data in the clusters it lacks)",
            have.saturating_sub(header.bitmap_offset()),
            clusters.div_ceil(8)
        ))),
    }
}
