//! The model: what the guest reads, which clusters are allocated and which are claimed, and
//! what a crash must leave.
//!
//! It follows the host's steps (a transaction claimed, landed, committed, aborted; a write-back
//! durable; an image-file flush) but computes every byte it expects itself: backing bytes from
//! its own copy of the backing file's description, guest bytes from the requests, heads and
//! tails from the geometry. Every step of the scheduler is atomic, so the model knows the order
//! in which overlapping writes landed and is exact at every instant: a read must return exactly
//! what it says, in-flight requests or not.

use crate::files::{clusters, BackingFile, CS};
use addcow::mapping::{Extent, Kind};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::rc::Rc;

pub type ReqId = u64;

/// Clusters touched by `offset..offset + len` (`len > 0`).
pub fn cluster_span(offset: u64, len: u64) -> Range<u64> {
    offset / CS..(offset + len - 1) / CS + 1
}

pub struct Model {
    pub size: u64,
    pub backing: BackingFile,
    /// The allocated clusters and their content (CS bytes each, zeros past the end).
    img: BTreeMap<u64, Rc<Vec<u8>>>,
    /// Claimed clusters: first → (end, the request holding them).
    claims: BTreeMap<u64, (u64, ReqId)>,
    /// The bits the last durable write-back put on disk.
    durable_bits: BTreeSet<u64>,
    /// Allocated since their last durable write-back: their pages must be dirty.
    undurable: BTreeSet<u64>,
    /// Size and content as of the last image-file flush.
    flushed: (u64, BTreeMap<u64, Rc<Vec<u8>>>),
}

impl Model {
    pub fn new(size: u64, backing: BackingFile) -> Model {
        Model {
            size,
            backing,
            img: BTreeMap::new(),
            claims: BTreeMap::new(),
            durable_bits: BTreeSet::new(),
            undurable: BTreeSet::new(),
            flushed: (size, BTreeMap::new()),
        }
    }

    pub fn allocated(&self, c: u64) -> bool {
        self.img.contains_key(&c)
    }

    pub fn allocated_set(&self) -> BTreeSet<u64> {
        self.img.keys().copied().collect()
    }

    /// The first and the last allocated cluster outside `regions` (byte ranges), if any.
    pub fn allocated_outside(&self, regions: &[Range<u64>]) -> Vec<u64> {
        let outside = |c: &&u64| !regions.iter().any(|r| r.contains(&(**c * CS)));
        let first = self.img.keys().find(outside);
        let last = self.img.keys().rev().find(outside);
        first.into_iter().chain(last).copied().collect()
    }

    /// How many clusters of `range` are allocated.
    fn allocated_in(&self, range: Range<u64>) -> u64 {
        self.img.range(range).count() as u64
    }

    pub fn claims(&self) -> usize {
        self.claims.len()
    }

    pub fn has_undurable(&self) -> bool {
        !self.undurable.is_empty()
    }

    fn backing_end(&self) -> u64 {
        self.backing.len.unwrap_or(0)
    }

    /// What the guest reads at `offset..offset + len` (inside the image).
    pub fn expect(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let mut i = offset;
        while i < offset + len {
            let c = i / CS;
            let end = ((c + 1) * CS).min(offset + len);
            match self.img.get(&c) {
                Some(data) => {
                    out.extend_from_slice(&data[(i - c * CS) as usize..(end - c * CS) as usize])
                }
                None => out.extend(self.backing.read(i, end - i)),
            }
            i = end;
        }
        out
    }

    /// `map(offset, bytes)` answered `e`: a length in `1..=bytes` inside the image (0 at or past
    /// the end), one state all along, the right kind.
    pub fn check_extent(&self, offset: u64, bytes: u64, e: Extent) {
        let call = format!("map({offset:#x}, {bytes:#x}) = {e:?}");
        if offset >= self.size || bytes == 0 {
            assert_eq!(
                e.len, 0,
                "{call}: a run at or past the end {:#x}",
                self.size
            );
            return;
        }
        let max = bytes.min(self.size - offset);
        assert!(
            (1..=max).contains(&e.len),
            "{call}: length outside 1..={max:#x}"
        );
        let span = cluster_span(offset, e.len);
        let allocated = self.allocated_in(span.clone());
        let end = offset + e.len;
        let blen = self.backing_end();
        match e.kind {
            Kind::Data => assert_eq!(
                allocated,
                span.end - span.start,
                "{call}: Data over unallocated clusters (allocated: {allocated} of {span:?})"
            ),
            Kind::Backing | Kind::Zero => assert_eq!(
                allocated, 0,
                "{call}: {:?} over allocated clusters of {span:?}",
                e.kind
            ),
        }
        match (e.kind, self.backing.len) {
            (Kind::Backing, None) => panic!("{call}: Backing without a backing file"),
            (Kind::Backing, Some(_)) => assert!(
                end <= blen,
                "{call}: Backing past the backing data's end {blen:#x}"
            ),
            (Kind::Zero, Some(_)) => assert!(
                offset >= blen,
                "{call}: Zero inside the backing data (it ends at {blen:#x})"
            ),
            _ => {}
        }
    }

    /// `begin_write(offset, bytes)` said busy: a transaction in flight must hold one of the
    /// unallocated clusters that the write's first step would claim.
    pub fn check_busy(&self, offset: u64, bytes: u64) {
        let first = offset / CS;
        assert!(
            !self.allocated(first),
            "begin_write({offset:#x}, {bytes:#x}): busy on allocated cluster {first}"
        );
        let last = (offset + bytes - 1) / CS;
        let run_end = self
            .img
            .range(first..=last)
            .next()
            .map_or(last + 1, |(&c, _)| c);
        let held = self
            .claims
            .range(..run_end)
            .next_back()
            .filter(|(_, &(end, _))| end > first);
        assert!(
            held.is_some(),
            "begin_write({offset:#x}, {bytes:#x}): busy, but no transaction in flight holds a \
             cluster of {first}..{run_end} (claims: {:?})",
            self.claims
        );
    }

    /// `begin_write(offset, bytes)` said in place for `n` bytes.
    pub fn check_in_place(&self, offset: u64, bytes: u64, n: u64) {
        let call = format!("begin_write({offset:#x}, {bytes:#x}) = InPlace({n:#x})");
        assert!(
            (1..=bytes).contains(&n),
            "{call}: length outside 1..={bytes:#x}"
        );
        let span = cluster_span(offset, n);
        assert_eq!(
            self.allocated_in(span.clone()),
            span.end - span.start,
            "{call}: in place over unallocated clusters of {span:?}"
        );
    }

    /// The bytes of `from..to` that come from the backing file; the rest of it reads zeros.
    pub fn backing_part(&self, from: u64, to: u64) -> u64 {
        self.backing_end().clamp(from, to) - from
    }

    /// `begin_write(offset, bytes)` handed out a transaction; `geometry` is its
    /// `(offset, len, cluster_start, cluster_end, head_backing, tail_backing)`. Claims its
    /// clusters for `id`.
    pub fn claim(&mut self, id: ReqId, offset: u64, bytes: u64, geometry: [u64; 6]) {
        let [t_offset, len, start, end, head, tail] = geometry;
        let call = format!("begin_write({offset:#x}, {bytes:#x}) = Allocate {geometry:x?}");
        assert_eq!(t_offset, offset, "{call}: the transaction starts elsewhere");
        assert!(
            (1..=bytes).contains(&len),
            "{call}: length outside 1..={bytes:#x}"
        );
        assert!(
            offset + len == offset + bytes || (offset + len) % CS == 0,
            "{call}: a step that ends inside a cluster before the write's end"
        );
        let span = cluster_span(offset, len);
        assert_eq!(start, span.start * CS, "{call}: cluster_start");
        assert_eq!(end, (span.end * CS).min(self.size), "{call}: cluster_end");
        assert_eq!(
            head,
            self.backing_part(start, offset),
            "{call}: head_backing"
        );
        assert_eq!(
            tail,
            self.backing_part(offset + len, end),
            "{call}: tail_backing"
        );
        let allocated: Vec<u64> = self.img.range(span.clone()).map(|(&c, _)| c).collect();
        assert!(
            allocated.is_empty(),
            "{call}: allocates clusters {allocated:?}, which are allocated already"
        );
        if let Some((&s, &(e, other))) = self.claims.range(..span.end).next_back() {
            assert!(
                e <= span.start,
                "{call}: clusters {span:?} overlap {s}..{e}, claimed by request {other}"
            );
        }
        self.claims.insert(span.start, (span.end, id));
    }

    /// The transaction of `id` starting at cluster `first` ended (committed or not).
    pub fn release(&mut self, id: ReqId, first: u64) {
        let claim = self.claims.remove(&first);
        assert!(
            matches!(claim, Some((_, owner)) if owner == id),
            "model: request {id} released cluster {first}, claimed by {claim:?}"
        );
    }

    /// What an allocating write must put at `start..end`: the backing data (zeros past its
    /// end) around `data`, which goes at `offset`.
    pub fn planned(&self, start: u64, end: u64, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut out = self.backing.read(start, offset - start);
        out.extend_from_slice(data);
        let at = offset + data.len() as u64;
        out.extend(self.backing.read(at, end - at));
        out
    }

    /// Clusters from `start` on (a cluster's start) are allocated and hold `bytes`.
    pub fn commit(&mut self, start: u64, bytes: &[u8]) {
        for (k, chunk) in bytes.chunks(CS as usize).enumerate() {
            let c = start / CS + k as u64;
            let mut data = vec![0u8; CS as usize];
            data[..chunk.len()].copy_from_slice(chunk);
            assert!(
                self.img.insert(c, Rc::new(data)).is_none(),
                "model: cluster {c} allocated twice"
            );
            self.undurable.insert(c);
        }
    }

    /// Clusters `range` are allocated and read zeros (a grow over a longer backing file).
    pub fn allocate_zeros(&mut self, range: Range<u64>) {
        let zeros = Rc::new(vec![0u8; CS as usize]);
        for c in range {
            assert!(
                self.img.insert(c, zeros.clone()).is_none(),
                "model: cluster {c} allocated twice"
            );
            self.undurable.insert(c);
        }
    }

    /// A guest write landed in place.
    pub fn land(&mut self, offset: u64, data: &[u8]) {
        let (mut i, mut rest) = (offset, data);
        while !rest.is_empty() {
            let (c, at) = (i / CS, (i % CS) as usize);
            let n = rest.len().min(CS as usize - at);
            let buf = self
                .img
                .get_mut(&c)
                .unwrap_or_else(|| panic!("model: in-place write to unallocated cluster {c}"));
            Rc::make_mut(buf)[at..at + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            i += n as u64;
        }
    }

    /// The image file was flushed: what it holds now survives a crash.
    pub fn image_flushed(&mut self) {
        self.flushed = (self.size, self.img.clone());
    }

    /// `bits` (the allocation when the write-back began) reached the disk.
    pub fn writeback_durable(&mut self, bits: BTreeSet<u64>) {
        self.undurable.retain(|c| !bits.contains(c));
        self.durable_bits = bits;
    }

    /// The image file was cut to `size` (the bytes past it read zeros if it grows again).
    pub fn shrink(&mut self, size: u64) {
        let keep = clusters(size);
        self.img.retain(|&c, _| c < keep);
        self.undurable.retain(|&c| c < keep);
        if let Some(buf) = self.img.get_mut(&(size / CS)) {
            Rc::make_mut(buf)[(size % CS) as usize..].fill(0);
        }
        self.size = size;
    }

    /// The image file grew to `size` with zeros.
    pub fn grow(&mut self, size: u64) {
        self.size = size;
    }

    /// A crash left the image file at `size` bytes as of its last flush, and the `.add-cow`
    /// file with `bits` set below that size: check them against what was made durable and
    /// what was allocated, then start over from them.
    pub fn crash(&mut self, size: u64, bits: BTreeSet<u64>) {
        assert_eq!(
            size, self.flushed.0,
            "model: the image file's durable length is not the size at its last flush"
        );
        let keep = clusters(size);
        let invented: Vec<u64> = bits
            .iter()
            .filter(|c| !self.allocated(**c))
            .copied()
            .collect();
        assert!(
            invented.is_empty(),
            "after a crash: clusters {invented:?} are allocated on disk but were not allocated"
        );
        let lost: Vec<u64> = self
            .durable_bits
            .iter()
            .filter(|&&c| c < keep && !bits.contains(&c))
            .copied()
            .collect();
        assert!(
            lost.is_empty(),
            "after a crash: clusters {lost:?} were written back durably but are unallocated"
        );
        let mut img = BTreeMap::new();
        for &c in &bits {
            let data = self.flushed.1.get(&c).unwrap_or_else(|| {
                panic!(
                    "after a crash: cluster {c} is allocated on disk but its data was not \
                     flushed before its bit was written"
                )
            });
            img.insert(c, data.clone());
        }
        self.size = size;
        self.img = img;
        self.claims.clear();
        self.durable_bits = bits;
        self.undurable.clear();
        self.image_flushed();
    }
}
