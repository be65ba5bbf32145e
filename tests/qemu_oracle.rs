//! QEMU as the oracle: a qcow2 overlay with an external data file
//! (`qemu-img create -f qcow2 -o data_file=D,cluster_size=N -b BASE -F raw O SIZE`) does the
//! same job as add-cow, and its clusters map 1:1 into D. Layout 1 runs at its 64 KiB clusters;
//! layout 2 at 4 KiB, 64 KiB and 2 MiB clusters, against overlays of the same `cluster_size`
//! (fewer and smaller workloads at 2 MiB). Every workload applies the same seeded
//! pseudo-random writes (and, in some workloads, truncates) to an add-cow image and to such an
//! overlay over the same BASE, and at a few checkpoints compares
//! 1. the guest content (`qemu-img convert` vs `Image::read_at`),
//! 2. the allocation of every cluster (`qemu-img map`, `depth 0 && present`, vs `is_allocated`),
//! 3. while no truncate has happened yet: our image file vs the data file D, byte for byte.
//!
//! Our image is closed and reopened (read-only) before every comparison, so what is compared is
//! what reached the disk. For layout 2 the `.add-cow` file's "all allocated" bit is checked
//! too: set exactly when QEMU says every cluster is allocated (it is set at close).
//!
//! qemu-io accepts byte-granular (unaligned) writes on qcow2; qcow2 refuses sizes that are not a
//! multiple of 512, so image sizes and truncate sizes here are multiples of 512.

mod common;
use addcow::layout::Header;
use addcow::{Image, OpenOptions};
use common::{create_img, qemu, Rng};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const SECTOR: u64 = 512;

#[derive(Clone, Copy)]
struct Workload {
    /// The add-cow layout (1 or 2) and the cluster size of both images.
    layout: u32,
    cluster: u64,
    seed: u64,
    /// Length of BASE (the backing file).
    base_len: u64,
    /// Initial virtual size (a multiple of 512).
    size: u64,
    /// Operations per phase; a comparison follows every phase.
    phases: &'static [usize],
    /// Percent of operations that are truncates (0: none).
    truncate_percent: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, len: u64, pattern: u8 },
    Truncate { size: u64 },
}

impl Op {
    /// The same operation as a qemu-io command.
    fn qemu_io(&self) -> String {
        match *self {
            Op::Write {
                offset,
                len,
                pattern,
            } => format!("write -P 0x{pattern:02x} {offset} {len}"),
            Op::Truncate { size } => format!("truncate {size}"),
        }
    }
}

/// A workload's shape, in clusters of the size it runs at.
type Shape = (u64, u64, u64, &'static [usize], u64);

const SHORT: &[usize] = &[4, 12, 40];
const LONG: &[usize] = &[6, 20, 50, 120];
const ODD: &[usize] = &[3, 10, 30];

/// (seed, base length, size, phases, truncate percent) for clusters of `c` bytes.
fn shapes(c: u64) -> Vec<Shape> {
    vec![
        // Backing file longer than the image.
        (1, 40 * c + 333, 32 * c, SHORT, 0),
        // Backing file shorter than the image, odd length; image size not cluster-aligned.
        (2, 3 * c + 777, 5 * c + 4096, SHORT, 0),
        (3, 37 * c + 777, 64 * c + 4096, LONG, 0),
        // Backing file exactly as long as the image (not cluster-aligned).
        (4, 48 * c + 512, 48 * c + 512, LONG, 0),
        // Empty backing file.
        (5, 0, 20 * c + 512, SHORT, 0),
        // The same shapes, with truncates (grow and shrink).
        (6, 70 * c + 333, 48 * c + 4096, LONG, 6),
        (7, 9 * c + 777, 16 * c + 512, LONG, 8),
        (8, 16 * c, 16 * c, LONG, 8),
        (9, 0, 12 * c + 512, LONG, 8),
        // Odd shapes: backing one byte into a cluster; a one-sector image over a longer
        // backing file, growing and shrinking a lot; a one-cluster image.
        (10, c + 1, 3 * c + 1536, SHORT, 0),
        (11, 2 * c + 100, SECTOR, ODD, 25),
        (12, 7 * c + 4095, c, ODD, 20),
    ]
}

fn workloads() -> Vec<Workload> {
    let at = |layout, cluster, seed_base, shapes: Vec<Shape>| {
        shapes.into_iter().map(
            move |(seed, base_len, size, phases, truncate_percent)| Workload {
                layout,
                cluster,
                seed: seed_base + seed,
                base_len,
                size,
                phases,
                truncate_percent,
            },
        )
    };
    const K4: u64 = 4096;
    const K64: u64 = 65536;
    const M2: u64 = 2 << 20;
    let mut out: Vec<Workload> = at(1, K64, 0, shapes(K64)).collect();
    // Layout 2, 4 KiB: every shape, and a small image written until every cluster is
    // allocated (the "all allocated" bit), then grown and shrunk.
    out.extend(at(2, K4, 100, shapes(K4)));
    out.extend(at(
        2,
        K4,
        100,
        vec![(13, 2 * K4 + 7, 3 * K4 + 512, LONG, 3)],
    ));
    // Layout 2, 64 KiB: the shapes that differ most.
    let picked = |c, seeds: &[u64]| -> Vec<Shape> {
        shapes(c)
            .into_iter()
            .filter(|s| seeds.contains(&s.0))
            .collect()
    };
    out.extend(at(2, K64, 200, picked(K64, &[2, 5, 7, 10, 11])));
    // Layout 2, 2 MiB: few, small images (at most 16 MiB), short phases.
    out.extend(at(
        2,
        M2,
        300,
        vec![
            (2, 3 * M2 + 777, 5 * M2 + 4096, SHORT, 0),
            (7, 2 * M2 + 777, 4 * M2 + 512, ODD, 10),
            (10, M2 + 1, 3 * M2 + 1536, ODD, 0),
            (11, 2 * M2 + 100, SECTOR, ODD, 25),
        ],
    ));
    out
}

/// The next random operation on an image of `size` bytes.
fn gen_op(rng: &mut Rng, w: &Workload, size: u64, pattern: u8) -> Op {
    let c = w.cluster;
    if w.truncate_percent > 0 && rng.chance(w.truncate_percent) {
        let max = (2 * w.size).max(8 * c);
        let new = match rng.next() % 5 {
            // Grow by a little (stays within or just past the current last cluster).
            0 => size + SECTOR * rng.range(1, 16),
            // Grow by a few clusters, unaligned.
            1 => size + c * rng.range(0, 3) + SECTOR * rng.range(1, 127),
            // Shrink to an unaligned size.
            2 => SECTOR * rng.range(1, size.div_ceil(SECTOR)),
            // To a cluster boundary.
            3 => c * rng.range(1, max / c),
            // Near the backing file's end, so that growing sometimes starts below it.
            _ => (w.base_len / SECTOR + rng.range(0, 300))
                .saturating_sub(rng.range(0, 300))
                .saturating_mul(SECTOR),
        };
        let new = new.clamp(SECTOR, max);
        if new != size {
            return Op::Truncate { size: new };
        }
    }
    let (offset, len) = match rng.next() % 15 {
        // Tiny, at any byte.
        0..=2 => (rng.range(0, size - 1), rng.range(1, 16)),
        // Byte granularity, small.
        3..=4 => (rng.range(0, size - 1), rng.range(1, 8192)),
        // Byte granularity, up to three clusters.
        5 => (rng.range(0, size - 1), rng.range(1, 3 * c)),
        // Sector granularity.
        6..=8 => {
            let sectors = size / SECTOR;
            (
                SECTOR * rng.range(0, sectors - 1),
                SECTOR * rng.range(1, 64),
            )
        }
        // Crossing a cluster boundary.
        9..=10 if size > c => {
            let boundary = c * rng.range(1, (size - 1) / c);
            let before = rng.range(1, 4096);
            (boundary - before, before + rng.range(1, 4096))
        }
        // Whole clusters.
        11 => {
            let clusters = size.div_ceil(c);
            (c * rng.range(0, clusters - 1), c * rng.range(1, 2))
        }
        // Ending exactly at the image end.
        12 => {
            let len = rng.range(1, size.min(8192));
            (size - len, len)
        }
        // A single byte at a cluster edge.
        _ => {
            let k = rng.range(0, (size - 1) / c);
            let offset = if rng.chance(50) {
                c * k
            } else {
                (c * (k + 1)).min(size) - 1
            };
            (offset, 1)
        }
    };
    Op::Write {
        offset,
        len: len.min(size - offset),
        pattern,
    }
}

/// Allocation state of every cluster (of `cluster` bytes) of a qcow2 overlay of `size` bytes:
/// `qemu-img map`'s extents with `depth 0` and `present true` are allocated in the overlay.
fn qemu_allocation(overlay: &Path, size: u64, cluster: u64) -> Vec<bool> {
    let clusters = qemu::map(overlay, size, cluster);
    clusters
        .iter()
        .enumerate()
        .map(|(c, extents)| {
            let allocated = extents[0].allocated;
            // qcow2 allocates whole clusters; an extent boundary inside a cluster may only
            // separate backing data from the zeros past the backing file's end.
            assert!(
                extents.iter().all(|e| e.allocated == allocated),
                "qemu-img map: cluster {c} is partly allocated: {extents:?}"
            );
            allocated
        })
        .collect()
}

/// Reads `path`, then pads with zeros or cuts it to `len` bytes; also returns its real length.
fn read_padded(path: &Path, len: u64) -> (Vec<u8>, u64) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let real = bytes.len() as u64;
    bytes.resize(len as usize, 0);
    (bytes, real)
}

/// The first offset where `a` and `b` differ, with both bytes.
fn first_difference(a: &[u8], b: &[u8]) -> Option<(usize, u8, u8)> {
    if a == b {
        return None;
    }
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    Some((
        i,
        a.get(i).copied().unwrap_or(0),
        b.get(i).copied().unwrap_or(0),
    ))
}

/// What the workloads exercised, so that a degenerate workload set cannot pass unnoticed.
#[derive(Default, Debug)]
struct Coverage {
    writes: u64,
    grows: u64,
    /// Grows from an unaligned size below the backing file's end (QEMU completes the partial
    /// cluster from the backing file and allocates the new area).
    grows_over_backing_unaligned: u64,
    shrinks: u64,
    checkpoints: u64,
    data_file_checks: u64,
    allocated_clusters: u64,
    /// Unallocated clusters that start before the backing file's end.
    backed_clusters: u64,
    /// Unallocated clusters past the backing file's end.
    unbacked_clusters: u64,
    /// Layout-2 checkpoints where every cluster was allocated (the header's bit set).
    all_allocated: u64,
}

impl Coverage {
    fn add(&mut self, o: &Coverage) {
        self.writes += o.writes;
        self.grows += o.grows;
        self.grows_over_backing_unaligned += o.grows_over_backing_unaligned;
        self.shrinks += o.shrinks;
        self.checkpoints += o.checkpoints;
        self.data_file_checks += o.data_file_checks;
        self.allocated_clusters += o.allocated_clusters;
        self.backed_clusters += o.backed_clusters;
        self.unbacked_clusters += o.unbacked_clusters;
        self.all_allocated += o.all_allocated;
    }
}

struct Paths {
    base: PathBuf,
    meta: PathBuf,
    image_file: PathBuf,
    overlay: PathBuf,
    data_file: PathBuf,
    converted: PathBuf,
}

/// Compares our image with the overlay; returns a description of every kind of mismatch.
fn compare(
    w: &Workload,
    phase: usize,
    p: &Paths,
    truncated: bool,
    cov: &mut Coverage,
) -> Vec<String> {
    let seed = w.seed;
    let at = format!(
        "workload seed {seed} (layout {}, {}-byte clusters), after phase {phase}",
        w.layout, w.cluster
    );
    let mut errors = Vec::new();

    let img = Image::open(&p.meta, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("{at}: reopen read-only: {e}"));
    let size = img.size();

    qemu::run(
        qemu::command("qemu-img", p.overlay.parent().unwrap())
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&p.overlay)
            .arg(&p.converted),
    );
    let (theirs, their_size) = read_padded(&p.converted, size);
    if their_size != size {
        errors.push(format!(
            "{at}: virtual size: ours {size}, qemu {their_size}"
        ));
        return errors;
    }

    // (1) Guest content.
    let mut ours = vec![0u8; size as usize];
    img.read_at(0, &mut ours)
        .unwrap_or_else(|e| panic!("{at}: read_at(0, {size}): {e}"));
    if let Some((i, a, b)) = first_difference(&ours, &theirs) {
        errors.push(format!(
            "{at}: guest content differs first at offset {i} (cluster {}, +{}): ours 0x{a:02x}, \
             qemu 0x{b:02x}",
            i as u64 / w.cluster,
            i as u64 % w.cluster
        ));
    }

    // (2) Allocation, cluster by cluster.
    let qemu_alloc = qemu_allocation(&p.overlay, size, w.cluster);
    cov.checkpoints += 1;
    for (c, &allocated) in qemu_alloc.iter().enumerate() {
        match (allocated, (c as u64 * w.cluster) < w.base_len) {
            (true, _) => cov.allocated_clusters += 1,
            (false, true) => cov.backed_clusters += 1,
            (false, false) => cov.unbacked_clusters += 1,
        }
    }
    for (c, &expected) in qemu_alloc.iter().enumerate() {
        let start = c as u64 * w.cluster;
        let len = w.cluster.min(size - start);
        let (allocated, pnum) = img
            .is_allocated(start, w.cluster)
            .unwrap_or_else(|e| panic!("{at}: is_allocated({start}): {e}"));
        if allocated != expected || pnum != len {
            errors.push(format!(
                "{at}: cluster {c} (offset {start}): ours allocated={allocated} pnum={pnum}, \
                 qemu allocated={expected} (cluster length {len})"
            ));
            break;
        }
    }
    // Runs over the whole image: every byte of a run must share its state.
    let mut offset = 0;
    while offset < size {
        let (allocated, pnum) = img
            .is_allocated(offset, size - offset)
            .unwrap_or_else(|e| panic!("{at}: is_allocated({offset}): {e}"));
        let end = offset + pnum;
        let bad = (offset / w.cluster..end.div_ceil(w.cluster))
            .find(|&c| qemu_alloc.get(c as usize) != Some(&allocated));
        if pnum == 0 || bad.is_some() {
            errors.push(format!(
                "{at}: is_allocated({offset}, {}) = ({allocated}, {pnum}), but qemu says \
                 cluster {bad:?} differs",
                size - offset
            ));
            break;
        }
        offset = end;
    }
    img.close()
        .unwrap_or_else(|e| panic!("{at}: close read-only: {e}"));

    // Layout 2: the "all allocated" bit, set at close exactly when every cluster is.
    if w.layout == 2 {
        let meta = std::fs::read(&p.meta).unwrap();
        let header = Header::parse(&meta[..Header::len_of(&meta).unwrap()]).unwrap();
        let every = qemu_alloc.iter().all(|&a| a);
        if header.all_allocated() != every {
            errors.push(format!(
                "{at}: the all-allocated bit is {}, but qemu says every cluster is allocated: \
                 {every}",
                header.all_allocated()
            ));
        }
        if every {
            cov.all_allocated += 1;
        }
    }

    // (3) Our image file vs the data file, while qcow2's data file is comparable.
    if !truncated {
        cov.data_file_checks += 1;
        let (ours, our_len) = read_padded(&p.image_file, size);
        let (theirs, their_len) = read_padded(&p.data_file, size);
        if let Some((i, a, b)) = first_difference(&ours, &theirs) {
            errors.push(format!(
                "{at}: image file differs from the data file first at offset {i} (cluster {}, \
                 +{}): ours 0x{a:02x}, qemu 0x{b:02x} (file lengths: ours {our_len}, qemu \
                 {their_len}, virtual size {size})",
                i as u64 / w.cluster,
                i as u64 % w.cluster
            ));
        }
    }
    errors
}

/// Runs one workload; returns the mismatches, each with the operations that led to it.
fn run_workload(w: &Workload, dir: &Path, cov: &mut Coverage) -> Vec<String> {
    let p = Paths {
        base: dir.join("base.raw"),
        meta: dir.join("img.add-cow"),
        image_file: dir.join("img.raw"),
        overlay: dir.join("overlay.qcow2"),
        data_file: dir.join("data.raw"),
        converted: dir.join("converted.raw"),
    };
    let mut rng = Rng::new(w.seed);

    // A backing file where (nearly) every byte differs from its neighbours and no byte
    // pattern repeats at cluster distance.
    std::fs::write(&p.base, rng.noise(w.base_len)).unwrap();
    create_img(dir, w.layout, w.cluster, w.size, Some("base.raw"));
    qemu::create_overlay(dir, "base.raw", w.cluster, w.size);

    let mut size = w.size;
    let mut truncated = false;
    let mut log = String::new();
    let mut errors = Vec::new();
    let mut n = 0u64;
    for phase in 1..=w.phases.len() {
        let mut ops = Vec::new();
        for _ in 0..w.phases[phase - 1] {
            n += 1;
            // A distinct non-zero byte per write (cycling through 1..=255).
            let pattern = (n * 97 % 255 + 1) as u8;
            let op = gen_op(&mut rng, w, size, pattern);
            match op {
                Op::Write { .. } => cov.writes += 1,
                Op::Truncate { size: new } => {
                    if new < size {
                        cov.shrinks += 1;
                    } else {
                        cov.grows += 1;
                        if w.base_len > size && size % w.cluster != 0 {
                            cov.grows_over_backing_unaligned += 1;
                        }
                    }
                    size = new;
                }
            }
            ops.push(op);
        }

        let img = Image::open(
            &p.meta,
            &OpenOptions {
                writable: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("seed {}: open writable: {e}", w.seed));
        let mut qemu_io = qemu::command("qemu-io", dir);
        qemu_io.args(["-f", "qcow2"]);
        let _ = writeln!(log, "# phase {phase}");
        for op in &ops {
            match *op {
                Op::Write {
                    offset,
                    len,
                    pattern,
                } => img.write_at(offset, &vec![pattern; len as usize]),
                Op::Truncate { size } => {
                    truncated = true;
                    img.truncate(size)
                }
            }
            .unwrap_or_else(|e| panic!("seed {}: {op:?}: {e}\nops so far:\n{log}", w.seed));
            qemu_io.arg("-c").arg(op.qemu_io());
            let _ = writeln!(log, "{}", op.qemu_io());
        }
        img.close()
            .unwrap_or_else(|e| panic!("seed {}: close: {e}", w.seed));
        qemu::run(qemu_io.arg(&p.overlay));

        let found = compare(w, phase, &p, truncated, cov);
        if !found.is_empty() {
            errors.extend(found);
            break;
        }
    }
    if !errors.is_empty() {
        errors.push(format!(
            "workload {{ layout: {}, cluster: {}, seed: {}, base_len: {}, size: {} }}: \
             qemu-io commands:\n{log}",
            w.layout, w.cluster, w.seed, w.base_len, w.size
        ));
    }
    errors
}

#[test]
fn qemu_oracle() {
    // QEMU is the oracle: without its tools this test fails, it never skips.
    for tool in ["qemu-img", "qemu-io"] {
        qemu::tool(tool);
    }

    let workloads = workloads();
    // Two workers: each takes every second workload. Coverage per (layout, cluster size).
    type Covered = BTreeMap<(u32, u64), Coverage>;
    let results: Vec<(Vec<String>, Covered)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|worker| {
                let workloads = &workloads;
                s.spawn(move || {
                    let mut errors = Vec::new();
                    let mut cov = Covered::new();
                    for w in workloads.iter().skip(worker).step_by(2) {
                        let dir = tempfile::tempdir().unwrap();
                        let group = cov.entry((w.layout, w.cluster)).or_default();
                        errors.extend(run_workload(w, dir.path(), group));
                    }
                    (errors, cov)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut errors = Vec::new();
    let mut cov = Covered::new();
    for (e, groups) in results {
        errors.extend(e);
        for (k, c) in groups {
            cov.entry(k).or_default().add(&c);
        }
    }
    eprintln!("qemu oracle coverage: {cov:#?}");
    assert!(
        errors.is_empty(),
        "add-cow disagrees with QEMU's qcow2 + data file:\n{}",
        errors.join("\n")
    );
    assert_eq!(
        cov.len(),
        4,
        "layout 1, and layout 2 at three cluster sizes"
    );
    for ((layout, cluster), c) in &cov {
        let mut need = vec![
            ("writes", c.writes),
            ("grows", c.grows),
            (
                "grows over backing unaligned",
                c.grows_over_backing_unaligned,
            ),
            ("shrinks", c.shrinks),
            ("checkpoints", c.checkpoints),
            ("data file checks", c.data_file_checks),
            ("allocated clusters", c.allocated_clusters),
            ("unallocated backed clusters", c.backed_clusters),
            ("unallocated unbacked clusters", c.unbacked_clusters),
        ];
        if *layout == 2 {
            need.push(("all allocated", c.all_allocated));
        }
        for (what, n) in need {
            assert!(
                n > 0,
                "the layout-{layout} workloads at {cluster}-byte clusters never exercised \
                 {what}: {c:?}"
            );
        }
    }
}
