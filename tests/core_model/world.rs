//! What a host has in flight over one core: every guest write request as an explicit state
//! machine ([`World::step`] moves one request by one step) and the metadata write-back as
//! another ([`World::wb_step`]), so that a scheduler (or a scripted test) decides the
//! interleaving. Every answer of the core is checked against the model where it is
//! given, and every byte read against the model's content.
//!
//! A write request: `begin_write` → `Busy(g)` (wait until the generation moves, then begin
//! again) | `InPlace(n)` (write the image file) | `Allocate(txn)` (read the head and tail from
//! the backing file, write the cluster range, then `commit`, or `abort` on a failure) → the
//! next piece, until the request's end. A failure (injected) ends the request with an error.
//!
//! A write-back: `writeback_begin` → flush the image file → `writeback_write` → `sync_meta` →
//! `writeback_end`; abandoned (`writeback_end(wb, false)`) at any point or after a failure.
//! Write-backs run one at a time: `writeback_begin` blocks while one is open (the bitmap's
//! `take_dirty` waits on a mutex), which on one thread would hang.

use crate::common::harness::written;
use crate::files::{bits_of, clusters, BackingFile, CS};
use crate::host::{Fault, Host, HEADER};
use crate::model::ReqId;
use crate::trace::note;
use addcow::mapping::{Begin, Core, Step, Txn, WriteBack};
use std::collections::{BTreeMap, BTreeSet};

/// A failure injected into a step of a request (ignored by steps it does not apply to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inject {
    None,
    /// Beginning: loading a bitmap page fails (when it loads one); the request fails.
    FailBeginRead,
    /// Allocating: the backing read fails, nothing lands; abort.
    FailBeforeWrite,
    /// The image-file write fails after this many bytes (at most all but one) landed; an
    /// allocating write aborts.
    FailMidWrite(u64),
    /// Allocating: the data landed, then something failed (the flush of a writethrough host);
    /// abort.
    AbortAfterWrite,
    /// Allocating: loading a bitmap page fails during the commit (when it loads one).
    FailCommitRead,
}

/// What a step of a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Did {
    Busy,
    InPlace,
    Allocate,
    /// Data written to the image file.
    Landed,
    Committed,
    /// The request ended with an error.
    Failed,
}

/// A failure injected into a write-back step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WbInject {
    None,
    /// `writeback_end(wb, false)` now.
    Abandon,
    /// The write of the copies fails after this many pages.
    FailWrite(u32),
    /// The flush of the `.add-cow` file fails.
    FailSync,
}

/// What a write-back step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WbDid {
    Begun,
    Flushed,
    Written,
    Synced,
    Ended { durable: bool },
}

/// One guest write request in flight.
struct Req {
    offset: u64,
    len: u64,
    data: Vec<u8>,
    /// Bytes done.
    pos: u64,
    phase: Phase,
    /// Another request writing some of the same bytes was in flight with this one: the last to
    /// land wins.
    overlapped: bool,
}

/// Where a request is.
enum Phase {
    /// Next: `begin_write` for the rest.
    Begin,
    /// Told busy at this generation: begin again once it moved.
    Busy(u64),
    /// Next: write this many bytes in place.
    InPlace(u64),
    /// Next: write the transaction's cluster range; the model's content for it.
    Claimed(Txn, Vec<u8>),
    /// Next: commit.
    Landed(Txn, Vec<u8>),
    /// A broken host committed first: the cluster range lands next.
    Late {
        start: u64,
        bytes: Vec<u8>,
        len: u64,
    },
}

/// The write-back in flight and the allocation when it began.
struct Wb {
    wb: WriteBack,
    bits: BTreeSet<u64>,
    stage: WbDid,
}

/// A host with its requests and write-back in flight over one core.
pub struct World<'h, 'c> {
    pub host: &'h mut Host,
    pub core: &'c Core,
    reqs: BTreeMap<ReqId, Req>,
    wb: Option<Wb>,
}

impl<'h, 'c> World<'h, 'c> {
    pub fn new(host: &'h mut Host, core: &'c Core) -> World<'h, 'c> {
        World {
            host,
            core,
            reqs: BTreeMap::new(),
            wb: None,
        }
    }

    /// A new write request of `len > 0` bytes at `offset`.
    pub fn start(&mut self, offset: u64, len: u64) -> ReqId {
        let id = self.host.new_id();
        let mut overlapped = false;
        for other in self.reqs.values_mut() {
            if other.offset < offset + len && offset < other.offset + other.len {
                other.overlapped = true;
                overlapped = true;
            }
        }
        let req = Req {
            offset,
            len,
            data: written((id % 127) as u8, offset, len),
            pos: 0,
            phase: Phase::Begin,
            overlapped,
        };
        self.reqs.insert(id, req);
        note(format!("r{id} start {offset:#x}+{len:#x}"));
        self.host.stats.bump("requests");
        self.host.stats.max("max in flight", self.reqs.len() as u64);
        if overlapped {
            self.host.stats.bump("overlapping requests");
        }
        id
    }

    pub fn in_flight(&self) -> Vec<ReqId> {
        self.reqs.keys().copied().collect()
    }

    pub fn is_done(&self, id: ReqId) -> bool {
        !self.reqs.contains_key(&id)
    }

    /// Whether stepping `id` may make progress: not waiting for a generation that did not move.
    pub fn runnable(&self, id: ReqId) -> bool {
        match self.reqs[&id].phase {
            Phase::Busy(g) => self.core.generation() != g,
            _ => true,
        }
    }

    pub fn quiescent(&self) -> bool {
        self.reqs.is_empty() && self.wb.is_none()
    }

    pub fn read(&mut self, offset: u64, len: u64) -> Vec<u8> {
        note(format!("read {offset:#x}+{len:#x}"));
        self.host.read_check(self.core, offset, len)
    }

    /// Replaces the backing file (between requests).
    pub fn set_backing(&mut self, backing: BackingFile) {
        assert!(
            self.reqs.is_empty(),
            "the backing file changes between requests"
        );
        note(format!("backing {backing:?}"));
        self.core.set_backing_len(backing.len);
        self.host.backing = backing;
        self.host.model.backing = backing;
        self.host.stats.bump("backing changes");
    }

    /// Moves request `id` by one step.
    pub fn step(&mut self, id: ReqId, inject: Inject) -> Did {
        let mut req = self
            .reqs
            .remove(&id)
            .unwrap_or_else(|| panic!("request {id} is not in flight"));
        let did = match std::mem::replace(&mut req.phase, Phase::Begin) {
            Phase::Begin | Phase::Busy(_) => self.begin(id, &mut req, inject),
            Phase::InPlace(n) => self.write_in_place(id, &mut req, n, inject),
            Phase::Claimed(txn, planned) => self.write_cluster(id, &mut req, txn, planned, inject),
            Phase::Landed(txn, planned) => self.commit(id, &mut req, txn, planned, inject),
            Phase::Late { start, bytes, len } => {
                self.host.image.current.write(start, &bytes);
                note(format!("r{id} lands {start:#x}+{:#x} late", bytes.len()));
                req.pos += len;
                Did::Landed
            }
        };
        if did == Did::Failed {
            self.host.stats.bump("failed requests");
        } else if req.pos == req.len {
            self.complete(id, req);
        } else {
            self.reqs.insert(id, req);
        }
        did
    }

    fn begin(&mut self, id: ReqId, req: &mut Req, inject: Inject) -> Did {
        let (at, rest) = (req.offset + req.pos, req.len - req.pos);
        let generation = self.core.generation();
        if inject == Inject::FailBeginRead {
            self.host.meta.fail_read();
        }
        let began = self.core.begin_write(at, rest);
        self.host.meta.disarm();
        let model = &mut self.host.model;
        let began = match began {
            Ok(began) => began,
            Err(e) => {
                note(format!("r{id} begin {at:#x}+{rest:#x}: fails ({e})"));
                assert_eq!(inject, Inject::FailBeginRead, "begin_write: {e}");
                self.host.stats.bump("failed begins");
                return Did::Failed;
            }
        };
        match began {
            Begin::Busy(g) => {
                note(format!("r{id} begin {at:#x}+{rest:#x}: busy at {g}"));
                assert_eq!(
                    g, generation,
                    "begin_write({at:#x}, {rest:#x}): busy at a generation that is not the \
                     current one"
                );
                model.check_busy(at, rest);
                req.phase = Phase::Busy(g);
                self.host.stats.bump("busy");
                Did::Busy
            }
            Begin::Ready(Step::InPlace(n)) => {
                note(format!("r{id} begin {at:#x}+{rest:#x}: in place {n:#x}"));
                model.check_in_place(at, rest, n);
                req.phase = Phase::InPlace(n);
                Did::InPlace
            }
            Begin::Ready(Step::Allocate(txn)) => {
                let g = [
                    txn.offset(),
                    txn.len(),
                    txn.cluster_start(),
                    txn.cluster_end(),
                    txn.head_backing(),
                    txn.tail_backing(),
                ];
                note(format!("r{id} begin {at:#x}+{rest:#x}: allocate {g:x?}"));
                assert!(!txn.is_empty());
                model.claim(id, at, rest, g);
                let data = &req.data[req.pos as usize..(req.pos + txn.len()) as usize];
                let planned = model.planned(txn.cluster_start(), txn.cluster_end(), at, data);
                self.host.stats.max("max claims", model.claims() as u64);
                self.host.stats.bump("allocations");
                req.phase = Phase::Claimed(txn, planned);
                Did::Allocate
            }
        }
    }

    fn write_in_place(&mut self, id: ReqId, req: &mut Req, n: u64, inject: Inject) -> Did {
        let at = req.offset + req.pos;
        let data = &req.data[req.pos as usize..(req.pos + n) as usize];
        let landed = match inject {
            Inject::FailMidWrite(k) => k.min(n - 1),
            _ => n,
        };
        self.host.image.current.write(at, &data[..landed as usize]);
        self.host.model.land(at, &data[..landed as usize]);
        self.host.stats.bump("in-place writes");
        if landed < n {
            note(format!(
                "r{id} write {at:#x}+{n:#x} in place: fails after {landed:#x}"
            ));
            return Did::Failed;
        }
        note(format!("r{id} write {at:#x}+{n:#x} in place"));
        req.pos += n;
        Did::Landed
    }

    /// The image-file bytes of a transaction, as the host builds them.
    fn cluster_bytes(&self, txn: &Txn, data: &[u8]) -> Vec<u8> {
        let backing = &self.host.backing;
        let skew = match self.host.fault {
            Fault::HeadFromWrongOffset => 512,
            _ => 0,
        };
        let mut bytes = vec![0; (txn.cluster_end() - txn.cluster_start()) as usize];
        let (head, rest) = bytes.split_at_mut(txn.head_len() as usize);
        let (guest, tail) = rest.split_at_mut(data.len());
        let from = txn.cluster_start() + skew;
        head[..txn.head_backing() as usize]
            .copy_from_slice(&backing.read(from, txn.head_backing()));
        guest.copy_from_slice(data);
        let from = txn.offset() + txn.len();
        tail[..txn.tail_backing() as usize]
            .copy_from_slice(&backing.read(from, txn.tail_backing()));
        bytes
    }

    fn write_cluster(
        &mut self,
        id: ReqId,
        req: &mut Req,
        txn: Txn,
        planned: Vec<u8>,
        inject: Inject,
    ) -> Did {
        if inject == Inject::FailBeforeWrite {
            return self.abort(id, txn, "the backing read failed");
        }
        let data = &req.data[req.pos as usize..(req.pos + txn.len()) as usize];
        let bytes = self.cluster_bytes(&txn, data);
        let start = txn.cluster_start();
        if let Inject::FailMidWrite(k) = inject {
            let k = k.min(bytes.len() as u64 - 1) as usize;
            self.host.image.current.write(start, &bytes[..k]);
            return self.abort(id, txn, &format!("the write failed after {k:#x} bytes"));
        }
        if self.host.fault == Fault::CommitBeforeWrite {
            let len = txn.len();
            self.commit(id, req, txn, planned, Inject::None);
            req.pos -= len;
            req.phase = Phase::Late { start, bytes, len };
            return Did::Committed;
        }
        self.host.image.current.write(start, &bytes);
        note(format!("r{id} write {start:#x}+{:#x}", bytes.len()));
        req.phase = Phase::Landed(txn, planned);
        Did::Landed
    }

    fn commit(
        &mut self,
        id: ReqId,
        req: &mut Req,
        txn: Txn,
        planned: Vec<u8>,
        inject: Inject,
    ) -> Did {
        let (start, end, len) = (txn.cluster_start(), txn.cluster_end(), txn.len());
        match self.host.fault {
            Fault::StallCommit => {
                req.phase = Phase::Landed(txn, planned);
                return Did::Landed;
            }
            Fault::LeakTxn => {
                // Neither committed nor aborted: its clusters stay claimed.
                drop(txn);
                self.host.model.release(id, start / CS);
                note(format!("r{id} forgets its transaction"));
                return Did::Failed;
            }
            _ => {}
        }
        match inject {
            Inject::AbortAfterWrite => return self.abort(id, txn, "the flush failed"),
            Inject::FailCommitRead => self.host.meta.fail_read(),
            _ => {}
        }
        let generation = self.core.generation();
        let result = self.core.commit(txn);
        self.host.meta.disarm();
        assert_ne!(
            self.core.generation(),
            generation,
            "commit: the generation did not move"
        );
        self.host.model.release(id, start / CS);
        match result {
            Ok(()) => {
                note(format!("r{id} commit {start:#x}..{end:#x}"));
                self.host.model.commit(start, &planned);
                self.host.stats.bump("commits");
                req.pos += len;
                Did::Committed
            }
            Err(e) => {
                note(format!("r{id} commit {start:#x}..{end:#x}: fails ({e})"));
                assert_eq!(inject, Inject::FailCommitRead, "commit failed: {e}");
                self.host.stats.bump("failed commits");
                self.host.read_check(self.core, start, end - start);
                Did::Failed
            }
        }
    }

    /// Aborts after a failure: the request ends with an error, the clusters stay unallocated.
    fn abort(&mut self, id: ReqId, txn: Txn, why: &str) -> Did {
        let (start, end) = (txn.cluster_start(), txn.cluster_end());
        note(format!("r{id} abort {start:#x}..{end:#x}: {why}"));
        let generation = self.core.generation();
        self.core.abort(txn);
        assert_ne!(
            self.core.generation(),
            generation,
            "abort: the generation did not move"
        );
        self.host.model.release(id, start / CS);
        self.host.stats.bump("aborts");
        self.host.read_check(self.core, start, end - start);
        Did::Failed
    }

    /// The request is done: what it wrote reads back (unless an overlapping request landed
    /// over it).
    fn complete(&mut self, id: ReqId, req: Req) {
        note(format!("r{id} done"));
        let got = self.host.read_check(self.core, req.offset, req.len);
        if !req.overlapped && got != req.data {
            {
                let i = got.iter().zip(&req.data).position(|(a, b)| a != b).unwrap();
                panic!(
                    "request {id} ({:#x}+{:#x}) completed, but byte {:#x} reads {:#04x}, not \
                     what it wrote ({:#04x})",
                    req.offset,
                    req.len,
                    req.offset + i as u64,
                    got[i],
                    req.data[i]
                );
            }
        }
        self.host.stats.bump("completed requests");
    }

    pub fn wb_open(&self) -> bool {
        self.wb.is_some()
    }

    /// Moves the write-back by one step; starts one when none is open.
    pub fn wb_step(&mut self, inject: WbInject) -> WbDid {
        let Some(mut wb) = self.wb.take() else {
            return self.wb_begin();
        };
        // A second write-back while this one is open is told busy, at once.
        match self.core.writeback_begin().unwrap() {
            Begin::Busy(g) => assert_eq!(g, self.core.generation(), "busy at a stale generation"),
            Begin::Ready(_) => panic!("a second write-back began while one was open"),
        }
        if inject == WbInject::Abandon {
            return self.wb_end(wb, false, "abandoned");
        }
        let meta = self.host.meta.clone();
        wb.stage = match wb.stage {
            WbDid::Begun => {
                if self.host.fault != Fault::SkipImageFlush {
                    self.host.image_flush();
                }
                note("wb: image file flushed".into());
                WbDid::Flushed
            }
            WbDid::Flushed => {
                if let WbInject::FailWrite(n) = inject {
                    meta.fail_write_after(n);
                }
                let result = self.core.writeback_write(&wb.wb);
                meta.disarm();
                if let Err(e) = result {
                    assert!(
                        matches!(inject, WbInject::FailWrite(_)),
                        "writeback_write: {e}"
                    );
                    return self.wb_end(wb, false, "the write failed");
                }
                let size = self.host.model.size;
                let limit = clusters(size).max(wb.bits.last().map_or(0, |c| c + 1));
                let on_disk = bits_of(&meta.current()[HEADER..], limit);
                assert_eq!(
                    on_disk, wb.bits,
                    "after writeback_write, the .add-cow file's bits are not the allocation \
                     when the write-back began"
                );
                note("wb: written".into());
                WbDid::Written
            }
            WbDid::Written => {
                if inject == WbInject::FailSync {
                    meta.fail_flush();
                }
                let result = self.core.sync_meta();
                meta.disarm();
                if let Err(e) = result {
                    assert_eq!(inject, WbInject::FailSync, "sync_meta: {e}");
                    return self.wb_end(wb, false, "the sync failed");
                }
                assert!(
                    meta.synced() == meta.current(),
                    "sync_meta returned without flushing the changes to the .add-cow file"
                );
                note("wb: synced".into());
                WbDid::Synced
            }
            WbDid::Synced => return self.wb_end(wb, true, "durable"),
            WbDid::Ended { .. } => unreachable!("an ended write-back is not kept"),
        };
        let did = wb.stage;
        self.wb = Some(wb);
        did
    }

    fn wb_begin(&mut self) -> WbDid {
        match self.core.writeback_begin().unwrap() {
            Begin::Ready(wb) => {
                let bits = self.host.model.allocated_set();
                note(format!("wb: begin, allocated {bits:?}"));
                assert!(
                    !(wb.is_empty() && self.host.model.has_undurable()),
                    "writeback_begin copied no page, but clusters were allocated since the \
                     last durable write-back"
                );
                self.host.stats.bump("write-backs");
                self.wb = Some(Wb {
                    wb,
                    bits,
                    stage: WbDid::Begun,
                });
                WbDid::Begun
            }
            Begin::Busy(g) => panic!("writeback_begin: busy at {g}, with no write-back open"),
        }
    }

    fn wb_end(&mut self, wb: Wb, durable: bool, why: &str) -> WbDid {
        note(format!("wb: end ({why})"));
        let generation = self.core.generation();
        self.core.writeback_end(wb.wb, durable);
        assert_ne!(
            self.core.generation(),
            generation,
            "writeback_end: the generation did not move"
        );
        match durable {
            true => {
                self.host.model.writeback_durable(wb.bits);
                self.host.stats.bump("durable write-backs");
            }
            false => self.host.stats.bump("abandoned write-backs"),
        }
        WbDid::Ended { durable }
    }

    /// Ends the write-back in flight, if any, then runs a whole one: every allocation so far is
    /// durable.
    pub fn writeback_complete(&mut self) {
        while self.wb.is_some() {
            self.wb_step(WbInject::None);
        }
        self.wb_step(WbInject::None);
        while self.wb.is_some() {
            self.wb_step(WbInject::None);
        }
    }
}
