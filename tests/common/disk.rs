//! A recording "disk" for crash simulation and fault injection.
//!
//! A [`Disk`] holds the files of one image (the `.add-cow` file, the image file, the backing
//! file) and one global sequence of the events they receive: writes, resizes and flushes.
//! A crash point is a position in that sequence. Each [`DiskFile`] is an
//! [`addcow::storage::Storage`] over one file; reads and `len` see every write so far (the page
//! cache), and each file keeps its durable state apart.
//!
//! # The crash model
//! A crash at point `P` leaves, for each file on its own, its *durable state* plus *some* of its
//! later events issued before `P`, replayed in issue order.
//!
//! - Durable state: the initial contents with every write and resize issued before that file's
//!   last flush before `P` (each file is flushed independently, as `fsync` does).
//! - Writes: each lands whole, not at all, or *torn*: each 512-byte-aligned sector it touches
//!   independently present or not. A sector that lands holds what the page cache held in it
//!   right after the write (a disk writes whole sectors from the page cache), so a sector only
//!   ever shows contents it really had: a write to part of a sector never lands without the
//!   earlier writes to the rest of that sector.
//! - Size changes (resizes, and writes that ended past the end of the file when issued) persist
//!   in issue order: the file's length is its length after a *prefix* of its size changes. A
//!   size change is metadata, which journaling file systems commit in order; this keeps out
//!   files that kept a later resize but not an earlier one.
//! - Data lives within the length: a sector lands only below the file's length at that point of
//!   the replay, and below the length the write found when issued unless the write extended
//!   the file and that size change persisted (the file then first grows with zeros to the
//!   write's end, so an extending write whose data did not land reads zeros, not stale bytes).
//!
//! So a shrink then a write past the new end gives: neither (old length, old bytes: the write
//! went past the length it found, so it cannot land in the old blocks), the shrink alone (new
//! length), or both (the write's end, zeros from the new end to the write, whichever of its
//! sectors landed). A grow then a write inside the grown area gives the write's sectors only if
//! the grow persisted.
//!
//! Punching a hole and zeroing a range (both keep the size) are writes of zeros inside the
//! file's length: a crash keeps them whole, not at all, or torn, like any write.
//!
//! Enumerating every subset is exponential: [`Pick`] chooses one, as the two extremes (nothing
//! unflushed, everything unflushed) or at random from a seeded [`Rng`].
//!
//! # Faults
//! [`Disk::arm`] makes the n-th host call from now (read, write, flush, len or resize, on any
//! file) fail with an errno; the failed call has no effect. [`Disk::lie_about_flush`] makes a
//! file's flushes succeed without making anything durable, to show the checks catch it.

use super::Rng;
use addcow::storage::Storage;
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::{Arc, Mutex, MutexGuard};

pub const SECTOR: u64 = 512;

/// One event in the global sequence.
#[derive(Debug, Clone)]
pub enum Event {
    Write {
        file: usize,
        offset: u64,
        len: u64,
        /// The file's length when the write was issued.
        issued_len: u64,
        /// Each sector the write touched (offset, bytes), as the page cache held it right after
        /// the write (up to the file's end).
        sectors: Vec<(u64, Vec<u8>)>,
    },
    Resize {
        file: usize,
        len: u64,
    },
    Flush {
        file: usize,
    },
}

impl Event {
    fn file(&self) -> usize {
        match *self {
            Event::Write { file, .. } | Event::Resize { file, .. } | Event::Flush { file } => file,
        }
    }

    fn changes_size(&self) -> bool {
        match self {
            Event::Resize { .. } => true,
            Event::Write {
                offset,
                len,
                issued_len,
                ..
            } => offset + len > *issued_len,
            Event::Flush { .. } => false,
        }
    }
}

/// Which unflushed events a materialization keeps.
pub enum Pick {
    /// Only the durable state.
    Nothing,
    /// Every unflushed event, whole.
    Everything,
    /// A random subset: per file a random prefix of the size changes; per write nothing, all,
    /// or each sector independently.
    Random(Rng),
}

impl Pick {
    /// How many of `n` size changes persist.
    fn prefix(&mut self, n: usize) -> usize {
        match self {
            Pick::Nothing => 0,
            Pick::Everything => n,
            Pick::Random(rng) => rng.range(0, n as u64) as usize,
        }
    }

    /// Which of a write's `n` sectors land.
    fn landing(&mut self, n: usize) -> Vec<bool> {
        match self {
            Pick::Nothing => vec![false; n],
            Pick::Everything => vec![true; n],
            Pick::Random(rng) => match rng.below(4) {
                0 => vec![false; n],
                1 => vec![true; n],
                _ => (0..n).map(|_| rng.chance(50)).collect(),
            },
        }
    }
}

struct File {
    name: String,
    /// Contents when the disk was made, all durable.
    base: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
    /// Flushes succeed but make nothing durable.
    lying: bool,
}

struct Armed {
    /// Index of the call that fails.
    call: u64,
    errno: i32,
}

struct State {
    files: Vec<File>,
    events: Vec<Event>,
    calls: u64,
    armed: Option<Armed>,
    /// What the armed call was, once it failed.
    fired: Option<String>,
}

/// The files of one image and the events they received. Clones share the same disk.
#[derive(Clone)]
pub struct Disk(Arc<Mutex<State>>);

impl Disk {
    /// A disk holding `files` (name, contents), all durable.
    pub fn new(files: Vec<(String, Vec<u8>)>) -> Disk {
        let files = files
            .into_iter()
            .map(|(name, bytes)| File {
                name,
                current: bytes.clone(),
                base: bytes,
                lying: false,
            })
            .collect();
        Disk(Arc::new(Mutex::new(State {
            files,
            events: Vec::new(),
            calls: 0,
            armed: None,
            fired: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A storage over file `file`.
    pub fn file(&self, file: usize) -> DiskFile {
        DiskFile {
            disk: self.clone(),
            file,
        }
    }

    /// Events so far: crash points are `0..=events()`.
    pub fn events(&self) -> usize {
        self.lock().events.len()
    }

    /// Event `i`, described for messages.
    pub fn describe_event(&self, i: usize) -> String {
        let st = self.lock();
        let name = |f: usize| st.files[f].name.clone();
        let e = &st.events[i];
        match e {
            Event::Write {
                file, offset, len, ..
            } => format!(
                "write {} {offset:#x}..{:#x}{}",
                name(*file),
                offset + len,
                if e.changes_size() { " (extends)" } else { "" }
            ),
            Event::Resize { file, len } => format!("resize {} to {len:#x}", name(*file)),
            Event::Flush { file } => format!("flush {}", name(*file)),
        }
    }

    /// Host calls so far (every read, write, flush, len and resize).
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// Makes the `n`-th call from now (0 = the next one) fail with `errno`.
    pub fn arm(&self, n: u64, errno: i32) {
        let mut st = self.lock();
        st.armed = Some(Armed {
            call: st.calls + n,
            errno,
        });
        st.fired = None;
    }

    /// The call the armed fault failed, if it fired.
    pub fn fired(&self) -> Option<String> {
        self.lock().fired.clone()
    }

    /// From now on, flushes of `file` succeed without making anything durable.
    pub fn lie_about_flush(&self, file: usize) {
        self.lock().files[file].lying = true;
    }

    /// Every file's current contents (what a reopen without a crash sees).
    pub fn current(&self) -> Vec<Vec<u8>> {
        self.lock()
            .files
            .iter()
            .map(|f| f.current.clone())
            .collect()
    }

    /// Every file after a crash at point `point` (`0..=events()`), keeping what `pick` chooses
    /// of the unflushed events (see the module docs).
    pub fn materialize(&self, point: usize, pick: &mut Pick) -> Vec<Vec<u8>> {
        let st = self.lock();
        let events = &st.events[..point];
        (0..st.files.len())
            .map(|f| {
                let mine: Vec<&Event> = events.iter().filter(|e| e.file() == f).collect();
                let flushed = mine
                    .iter()
                    .rposition(|e| matches!(e, Event::Flush { .. }))
                    .map_or(0, |i| i + 1);
                let mut bytes = st.files[f].base.clone();
                for e in &mine[..flushed] {
                    apply_whole(&mut bytes, e);
                }
                replay_pending(&mut bytes, &mine[flushed..], pick);
                bytes
            })
            .collect()
    }

    /// Counts the call; fails it when armed for it.
    fn enter(&self, what: impl FnOnce(&State) -> String) -> io::Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        let call = st.calls;
        st.calls += 1;
        match &st.armed {
            Some(armed) if armed.call == call => {
                let errno = armed.errno;
                st.fired = Some(what(&st));
                st.armed = None;
                Err(io::Error::from_raw_os_error(errno))
            }
            _ => Ok(st),
        }
    }
}

fn apply_whole(bytes: &mut Vec<u8>, e: &Event) {
    match e {
        Event::Write { sectors, .. } => {
            for (at, image) in sectors {
                write(bytes, *at, image);
            }
        }
        Event::Resize { len, .. } => set_len(bytes, *len as usize),
        Event::Flush { .. } => {}
    }
}

fn write(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let (start, end) = (offset as usize, offset as usize + data.len());
    if end > bytes.len() {
        set_len(bytes, end);
    }
    bytes[start..end].copy_from_slice(data);
}

/// Truncates or grows with zeros (`Vec::resize` fills byte by byte in debug builds).
pub fn set_len(bytes: &mut Vec<u8>, len: usize) {
    match len.checked_sub(bytes.len()) {
        Some(grow) => bytes.extend_from_slice(&vec![0; grow]),
        None => bytes.truncate(len),
    }
}

/// Applies the unflushed events of one file as `pick` chooses (see the module docs).
fn replay_pending(bytes: &mut Vec<u8>, pending: &[&Event], pick: &mut Pick) {
    let size_changes = pending.iter().filter(|e| e.changes_size()).count();
    let kept = pick.prefix(size_changes);
    let mut seen = 0;
    for e in pending {
        let persists = e.changes_size() && {
            seen += 1;
            seen <= kept
        };
        match e {
            Event::Resize { len, .. } if persists => set_len(bytes, *len as usize),
            Event::Write {
                offset,
                len,
                issued_len,
                sectors,
                ..
            } => {
                let end = (offset + len) as usize;
                if persists && end > bytes.len() {
                    set_len(bytes, end);
                }
                // Data past the length the write found lands only with the write's size change.
                let limit = match persists {
                    true => usize::MAX,
                    false => *issued_len as usize,
                };
                let landing = pick.landing(sectors.len());
                for ((at, image), lands) in sectors.iter().zip(landing) {
                    let at = *at as usize;
                    let stop = (at + image.len()).min(bytes.len()).min(limit);
                    if lands && at < stop {
                        bytes[at..stop].copy_from_slice(&image[..stop - at]);
                    }
                }
            }
            _ => {}
        }
    }
}

/// One file of a [`Disk`], as a storage.
pub struct DiskFile {
    disk: Disk,
    file: usize,
}

impl DiskFile {
    fn name(&self, st: &State) -> String {
        st.files[self.file].name.clone()
    }

    /// A punch or a zero-range: zeros written over the part of `offset..offset + len` inside
    /// the file (one host call, like a write; none beyond the end).
    fn clear(&self, offset: u64, len: u64) -> io::Result<()> {
        let file_len = self.disk.lock().files[self.file].current.len() as u64;
        let end = offset.saturating_add(len).min(file_len);
        if offset >= end {
            drop(
                self.disk
                    .enter(|st| format!("punch {} {offset:#x}+{len:#x}", self.name(st)))?,
            );
            return Ok(());
        }
        self.write_at(&vec![0; (end - offset) as usize], offset)
    }
}

impl Storage for DiskFile {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let st = self
            .disk
            .enter(|st| format!("read {} {offset:#x}+{len:#x}", self.name(st)))?;
        let bytes = &st.files[self.file].current;
        let mut pos = offset as usize;
        for buf in bufs {
            let start = pos.min(bytes.len());
            let avail = (bytes.len() - start).min(buf.len());
            buf[..avail].copy_from_slice(&bytes[start..start + avail]);
            buf[avail..].fill(0);
            pos += buf.len();
        }
        Ok(())
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut data = Vec::with_capacity(bufs.iter().map(|b| b.len()).sum());
        for b in bufs {
            data.extend_from_slice(b);
        }
        let mut st = self
            .disk
            .enter(|st| format!("write {} {offset:#x}+{:#x}", self.name(st), data.len()))?;
        let file = &mut st.files[self.file];
        let issued_len = file.current.len() as u64;
        let len = data.len() as u64;
        write(&mut file.current, offset, &data);
        let first = offset / SECTOR * SECTOR;
        let sectors = (first..offset + len)
            .step_by(SECTOR as usize)
            .map(|at| {
                let end = (at + SECTOR).min(file.current.len() as u64);
                (at, file.current[at as usize..end as usize].to_vec())
            })
            .collect();
        st.events.push(Event::Write {
            file: self.file,
            offset,
            len,
            issued_len,
            sectors,
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut st = self.disk.enter(|st| format!("flush {}", self.name(st)))?;
        if !st.files[self.file].lying {
            st.events.push(Event::Flush { file: self.file });
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let st = self.disk.enter(|st| format!("len {}", self.name(st)))?;
        Ok(st.files[self.file].current.len() as u64)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.clear(offset, len)
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.clear(offset, len)
    }

    fn resize(&self, len: u64) -> io::Result<()> {
        let mut st = self
            .disk
            .enter(|st| format!("resize {} to {len:#x}", self.name(st)))?;
        set_len(&mut st.files[self.file].current, len as usize);
        st.events.push(Event::Resize {
            file: self.file,
            len,
        });
        Ok(())
    }
}
