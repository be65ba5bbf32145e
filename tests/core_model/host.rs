//! The host: this test's own driver of the core, as a block layer drives it. It owns the image
//! file and the backing file and does all their I/O, reads as a host does (`map`, then the file
//! each run names) and checks every run and byte against the [`Model`]; it opens cores, crashes
//! them, and truncates between requests. What is in flight over one core (write requests, the
//! write-back) lives in a [`crate::world::World`].

use crate::common::Rng;
use crate::files::{bits_of, clusters, BackingFile, ImageFile, MetaFile, CS};
use crate::model::{Model, ReqId};
use crate::stats::Stats;
use crate::trace::note;
use crate::world::World;
use addcow::cluster::Cluster;
use addcow::layout::Header;
use addcow::mapping::{Core, CoreOptions, Kind};
use std::ops::Range;

pub const HEADER: usize = 2560;
/// Clusters per bitmap page.
pub const PAGE_CLUSTERS: u64 = 32768;
/// Images of up to this many clusters are used whole; larger ones only around a few spots.
const DENSE_CLUSTERS: u64 = 16;

/// A host that breaks a rule, for the tests that show the checks fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Commits a transaction before writing its data (which lands at the request's next step).
    CommitBeforeWrite,
    /// Reads the head of a cluster from the backing file 512 bytes too far.
    HeadFromWrongOffset,
    /// Does not flush the image file in a write-back.
    SkipImageFlush,
    /// Forgets a transaction instead of committing it, and calls the request failed.
    LeakTxn,
    /// Never gets to commit (waits for something that never comes).
    StallCommit,
}

/// The image a run starts with.
#[derive(Debug, Clone)]
pub struct Setup {
    pub size: u64,
    pub backing: Option<u64>,
    /// The core's cap on cached bitmap pages (0: the default).
    pub cache_bytes: u64,
    /// The `.add-cow` file reports its holes (`Storage::next_data`).
    pub holes: bool,
}

/// What outlives a core: the files, the model, the counts.
pub struct Host {
    pub rng: Rng,
    pub meta: MetaFile,
    pub image: ImageFile,
    pub backing: BackingFile,
    pub model: Model,
    pub stats: Stats,
    pub fault: Fault,
    header: Header,
    cache_bytes: u64,
    next_id: ReqId,
}

impl Host {
    pub fn new(setup: &Setup, seed: u64) -> Host {
        let header = Header::new(b"disk.raw", Some(b"base.raw")).unwrap();
        let mut meta = header.to_bytes().to_vec();
        meta.resize(HEADER + clusters(setup.size).div_ceil(8) as usize, 0);
        let backing = BackingFile {
            len: setup.backing,
            version: 0,
        };
        note(format!("setup {setup:?}"));
        Host {
            rng: Rng::new(seed),
            meta: MetaFile::new(meta, setup.holes),
            image: ImageFile::new(setup.size),
            backing,
            model: Model::new(setup.size, backing),
            stats: Stats::default(),
            fault: Fault::None,
            header,
            cache_bytes: setup.cache_bytes,
            next_id: 1,
        }
    }

    /// A fresh request id.
    pub fn new_id(&mut self) -> ReqId {
        self.next_id += 1;
        self.next_id - 1
    }

    /// A core over the `.add-cow` file as it is now, for the image file's length.
    pub fn open(&self) -> Core {
        let header = Header::parse(&self.meta.current()[..HEADER]).unwrap();
        assert_eq!(header, self.header, "the header changed");
        let opts = CoreOptions {
            writable: true,
            bitmap_cache_bytes: self.cache_bytes,
        };
        let meta = (Box::new(self.meta.clone()) as _, "add-cow".to_owned());
        let core = Core::new(meta, header, self.image.current.len, opts);
        core.set_backing_len(self.backing.len);
        core
    }

    /// Where requests go: the whole image when it is small; otherwise a few clusters at its
    /// start, around the bitmap's page boundaries and at its end.
    pub fn regions(&self) -> Vec<Range<u64>> {
        let (size, n) = (self.model.size, clusters(self.model.size));
        if n <= DENSE_CLUSTERS {
            return std::iter::once(0..size).collect();
        }
        let p = PAGE_CLUSTERS;
        let mut spots = [(0, 3), (p - 2, p + 2), (2 * p - 2, 2 * p + 2), (n - 3, n)];
        spots.sort_unstable();
        let mut out: Vec<Range<u64>> = Vec::new();
        for (a, b) in spots {
            let r = a * CS..(b * CS).min(size);
            match out.last_mut() {
                _ if r.start >= r.end => {}
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        out
    }

    /// Reads `offset..offset + len` as a host does (`map`, then the file each run names) and
    /// checks every run and every byte against the model. Returns the bytes.
    pub fn read_check(&mut self, core: &Core, offset: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len as usize];
        let mut pos = 0;
        while pos < len {
            let at = offset + pos;
            let e = core.map(at, len - pos).unwrap();
            self.model.check_extent(at, len - pos, e);
            self.stats.bump("maps");
            let part = &mut buf[pos as usize..(pos + e.len) as usize];
            match e.kind {
                Kind::Data => self.image.current.read(at, part),
                Kind::Backing => part.copy_from_slice(&self.backing.read(at, e.len)),
                Kind::Zero => part.fill(0),
            }
            pos += e.len;
        }
        let want = self.model.expect(offset, len);
        if buf != want {
            let i = buf.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            let at = offset + i as u64;
            panic!(
                "read {offset:#x}+{len:#x}: byte {at:#x} (cluster {}, {}) reads {:#04x}, the \
                 model says {:#04x}",
                at / CS,
                match self.model.allocated(at / CS) {
                    true => "allocated",
                    false => "unallocated",
                },
                buf[i],
                want[i]
            );
        }
        self.stats.bump("reads");
        buf
    }

    /// Everything at once: the size, every run of the image by `map`, every byte where requests
    /// go and of the first and last allocated clusters elsewhere (a grow allocated them).
    pub fn check_all(&mut self, core: &Core) {
        let size = self.model.size;
        assert_eq!(core.size(), size, "size");
        assert_eq!(core.backing_len(), self.backing.len, "backing length");
        let mut at = 0;
        while at < size {
            let e = core.map(at, size - at).unwrap();
            self.model.check_extent(at, size - at, e);
            at += e.len;
        }
        self.model.check_extent(size, 1, core.map(size, 1).unwrap());
        let regions = self.regions();
        for r in &regions {
            self.read_check(core, r.start, r.end - r.start);
        }
        for c in self.model.allocated_outside(&regions) {
            let end = ((c + 1) * CS).min(size);
            self.read_check(core, c * CS, end - c * CS);
        }
        self.stats.bump("full checks");
    }

    /// The image file is flushed: what it holds now survives a crash.
    pub fn image_flush(&mut self) {
        self.image.flush();
        self.model.image_flushed();
    }

    /// A crash: `core` is dropped with whatever it had in flight, the files keep what was
    /// flushed, and a fresh core opens them. Checks what survived, then everything.
    pub fn crash(&mut self, core: Core) -> Core {
        drop(core);
        self.meta.crash();
        self.image.crash();
        let size = self.image.current.len;
        let bitmap = &self.meta.current()[HEADER..];
        let bits = bits_of(bitmap, clusters(size));
        note(format!("crash: size {size:#x}, allocated on disk {bits:?}"));
        if bits_of(bitmap, u64::MAX).len() > bits.len() {
            self.stats.bump("crashes with bits past the end");
        }
        self.model.crash(size, bits);
        self.stats.bump("crashes");
        let core = self.open();
        self.check_all(&core);
        core
    }

    /// Resizes the image as `engine::truncate` does (see there for why this order is
    /// crash-safe): the host's exclusive operation, between requests.
    pub fn truncate(&mut self, core: &mut Core, size: u64) {
        let old = core.size();
        note(format!("truncate {old:#x} -> {size:#x}"));
        if size < old {
            core.shrink_begin(size).unwrap();
            self.image.current.resize(size);
            self.model.shrink(size);
            core.shrink_commit(size).unwrap();
            self.image_flush();
            core.shrink_finish().unwrap();
        } else if size > old {
            core.grow_begin(size).unwrap();
            if self.backing.len.unwrap_or(0) > old {
                self.allocate_grown_area(core, old, size);
            }
            World::new(self, core).writeback_complete();
            self.image.current.resize(size);
            self.model.grow(size);
            core.grow_commit(size);
        }
        self.stats.bump("truncates");
        self.check_all(core);
    }

    /// Growing over a longer backing file: the partial cluster at the old end is completed from
    /// the backing file, every new cluster is allocated (and reads zeros).
    fn allocate_grown_area(&mut self, core: &Core, old: u64, new: u64) {
        if old % CS != 0 {
            let (c, start) = (old / CS, old / CS * CS);
            let allocated = core.is_allocated(start, 1).unwrap().0;
            assert_eq!(allocated, self.model.allocated(c), "cluster {c}");
            if !allocated {
                let head = self.backing.read(start, old - start);
                self.image.current.write(start, &head);
                core.grow_allocate(Cluster(c)..Cluster(c + 1)).unwrap();
                let planned = self.model.planned(start, old, old, &[]);
                self.model.commit(start, &planned);
            }
        }
        let grown = old.div_ceil(CS)..clusters(new);
        core.grow_allocate(Cluster(grown.start)..Cluster(grown.end))
            .unwrap();
        self.model.allocate_zeros(grown);
        self.stats.bump("grows over backing");
    }
}
