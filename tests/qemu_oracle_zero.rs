//! QEMU as the oracle for write-zeroes, discard and block status: the same seeded workload of
//! writes, `write -z`, `write -z -u` and `discard` on an add-cow image (the library) and on a
//! qcow2 overlay with an external data file over the same raw BASE
//! (`qemu-img create -f qcow2 -o data_file=D,cluster_size=65536 -b BASE -F raw O SIZE`), then
//! per cluster:
//! 1. the guest content (`qemu-img convert` vs `Image::read_at`), byte for byte;
//! 2. "reads all zeros" (`qemu-img map`'s `zero` over the whole cluster vs
//!    `Image::block_status`'s zero flag): add-cow never reports zeros where qcow2 does not, and
//!    reports them wherever the cluster must be a hole ([`Holes`]): qcow2's zero clusters made
//!    by discard and `write -z -u` are add-cow's punched clusters. Clusters zeroed in place
//!    (`write -z` without `-u`, `FALLOC_FL_ZERO_RANGE`) may read as data to `SEEK_DATA` (ext4
//!    writes small unwritten extents out as zeros), so there add-cow may say less than qcow2;
//! 3. the allocation of every cluster that does not read all zeros (`depth 0 && present` vs
//!    `is_allocated`). Zero clusters are exempt: qcow2 records zeros past its backing file's
//!    end as zero clusters, add-cow leaves them unallocated (they read zeros anyway).
//!
//! Our image is closed and reopened before every comparison, so what is compared is what
//! reached the disk. The image size and BASE's length are multiples of 512 (qcow2's sizes).

mod common;
use addcow::{Image, OpenOptions, ZeroFlags};
use common::{create_img, qemu, Rng};
use std::fmt::Write as _;
use std::path::Path;

const CS: u64 = 65536;

#[derive(Clone, Copy, Debug)]
enum Op {
    Write { offset: u64, len: u64, pattern: u8 },
    Zero { offset: u64, len: u64, unmap: bool },
    Discard { offset: u64, len: u64 },
}

impl Op {
    fn qemu_io(&self) -> String {
        match *self {
            Op::Write {
                offset,
                len,
                pattern,
            } => format!("write -P 0x{pattern:02x} {offset} {len}"),
            Op::Zero { offset, len, unmap } => {
                format!("write -z {}{offset} {len}", if unmap { "-u " } else { "" })
            }
            Op::Discard { offset, len } => format!("discard {offset} {len}"),
        }
    }

    fn apply(&self, img: &Image) -> addcow::Result<()> {
        match *self {
            Op::Write {
                offset,
                len,
                pattern,
            } => img.write_at(offset, &vec![pattern; len as usize]),
            Op::Zero { offset, len, unmap } => {
                let flags = ZeroFlags {
                    may_unmap: unmap,
                    no_fallback: false,
                };
                img.write_zeroes(offset, len, flags)
            }
            Op::Discard { offset, len } => img.discard(offset, len),
        }
    }
}

/// An operation inside `size` bytes: whole clusters mostly, some unaligned, some reaching the
/// end of the image.
fn gen_op(rng: &mut Rng, size: u64, pattern: u8) -> Op {
    let clusters = size.div_ceil(CS);
    let (offset, len) = match rng.below(4) {
        0 => {
            let offset = rng.range(0, size - 1);
            (offset, rng.range(1, (3 * CS).min(size - offset)))
        }
        1 => {
            let c = rng.range(0, clusters - 1);
            (c * CS, size - c * CS)
        }
        _ => {
            let c = rng.range(0, clusters - 1);
            let n = rng.range(1, 3.min(clusters - c));
            (c * CS, (n * CS).min(size - c * CS))
        }
    };
    match rng.below(8) {
        0..=2 => Op::Write {
            offset,
            len: len.min(2 * CS),
            pattern,
        },
        3 | 4 => Op::Zero {
            offset,
            len,
            unmap: rng.chance(50),
        },
        _ => Op::Discard { offset, len },
    }
}

/// Per cluster: it must be a hole to `SEEK_DATA` in our image file, or unallocated past the
/// backing file's end.
struct Holes(Vec<bool>);

impl Holes {
    fn new(size: u64, base_len: u64) -> Holes {
        Holes((0..size.div_ceil(CS)).map(|c| c * CS >= base_len).collect())
    }

    /// Writes make data; whole clusters discarded or zeroed with unmap become holes; zeroing
    /// in place leaves it unknown; parts of clusters zeroed are left as they were (a hole is
    /// skipped, data stays data).
    fn apply(&mut self, op: &Op, size: u64) {
        let (offset, len, hole) = match *op {
            Op::Write { offset, len, .. } => (offset, len, Some(false)),
            Op::Zero { offset, len, unmap } => (offset, len, Some(unmap)),
            Op::Discard { offset, len } => (offset, len, Some(true)),
        };
        let end = offset + len;
        for c in offset / CS..end.div_ceil(CS) {
            let whole = c * CS >= offset && ((c + 1) * CS <= end || end == size);
            match (op, whole) {
                (Op::Write { .. }, _) => self.0[c as usize] = false,
                (_, true) => self.0[c as usize] = hole.unwrap(),
                (_, false) => {}
            }
        }
    }
}

/// Per cluster of the qcow2 overlay: (allocated in the overlay, reads all zeros), from
/// `qemu-img map --output=json`.
fn qemu_map(dir: &Path, size: u64) -> Vec<(bool, bool)> {
    qemu::map(&dir.join("overlay.qcow2"), size, CS)
        .iter()
        .map(|extents| {
            (
                extents.iter().any(|e| e.allocated),
                extents.iter().all(|e| e.zero),
            )
        })
        .collect()
}

/// Per cluster of our image: (allocated, reads all zeros by block status).
fn our_map(img: &Image, size: u64) -> Vec<(bool, bool)> {
    (0..size.div_ceil(CS))
        .map(|c| {
            let (start, end) = (c * CS, ((c + 1) * CS).min(size));
            let allocated = img.is_allocated(start, end - start).unwrap().0;
            let mut zero = true;
            let mut at = start;
            while at < end {
                let s = img.block_status(at, end - at).unwrap();
                zero &= s.zero;
                at += s.len;
            }
            (allocated, zero)
        })
        .collect()
}

/// Runs one workload; returns the differences found, and adds to `holes_checked` the clusters
/// where add-cow had to report zeros.
fn workload(
    seed: u64,
    base_len: u64,
    size: u64,
    phases: &[usize],
    holes_checked: &mut usize,
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut rng = Rng::new(seed);
    let base: Vec<u8> = (0..base_len)
        .map(|_| (rng.next() >> 56) as u8 | 1)
        .collect();
    std::fs::write(dir.join("base.raw"), &base).unwrap();
    let meta = create_img(dir, 1, CS, size, Some("base.raw"));
    qemu::create_overlay(dir, "base.raw", CS, size);
    let rw = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let mut log = String::new();
    let mut n = 0u64;
    let mut holes = Holes::new(size, base_len);
    for &ops in phases {
        let img = Image::open(&meta, &rw).unwrap();
        let mut qemu_io = qemu::command("qemu-io", dir);
        qemu_io.args(["-f", "qcow2"]);
        for _ in 0..ops {
            n += 1;
            let op = gen_op(&mut rng, size, (n * 97 % 255 + 1) as u8);
            let _ = writeln!(log, "{}", op.qemu_io());
            holes.apply(&op, size);
            op.apply(&img)
                .unwrap_or_else(|e| panic!("seed {seed}: {op:?}: {e}\n{log}"));
            qemu_io.arg("-c").arg(op.qemu_io());
        }
        img.close().unwrap();
        qemu::run(qemu_io.arg("overlay.qcow2"));

        let mut errors = Vec::new();
        qemu::run(qemu::command("qemu-img", dir).args([
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "overlay.qcow2",
            "want.raw",
        ]));
        let want = std::fs::read(dir.join("want.raw")).unwrap();
        let img = Image::open(&meta, &OpenOptions::default()).unwrap();
        let mut got = vec![0u8; size as usize];
        img.read_at(0, &mut got).unwrap();
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            errors.push(format!(
                "content differs first at {i}: add-cow {:#x}, qcow2 {:#x}",
                got[i], want[i]
            ));
        }
        let theirs = qemu_map(dir, size);
        let ours = our_map(&img, size);
        for (c, (t, o)) in theirs.iter().zip(&ours).enumerate() {
            *holes_checked += usize::from(t.1 && holes.0[c] && c as u64 * CS < base_len);
            if o.1 && !t.1 || t.1 && holes.0[c] && !o.1 {
                errors.push(format!(
                    "cluster {c}: reads zeros: qcow2 {}, add-cow {}",
                    t.1, o.1
                ));
            } else if !t.1 && t.0 != o.0 {
                errors.push(format!(
                    "cluster {c}: allocated: qcow2 {}, add-cow {}",
                    t.0, o.0
                ));
            }
        }
        if !errors.is_empty() {
            errors.push(format!(
                "seed {seed}, base {base_len}, size {size}; qemu-io commands:\n{log}"
            ));
            return errors;
        }
    }
    Vec::new()
}

#[test]
fn zeroes_and_discards_match_qcow2_with_a_data_file() {
    let shapes: &[(u64, u64, u64)] = &[
        // Backing file longer than the image.
        (1, 24 * CS + 512, 16 * CS),
        // Backing file shorter than the image, ending inside a cluster; unaligned size.
        (2, 5 * CS + 4096, 12 * CS + 1536),
        (3, 7 * CS + 512, 10 * CS),
        // No backing data at all.
        (4, 0, 8 * CS + 512),
    ];
    let mut failures = Vec::new();
    let mut holes_checked = 0;
    for &(seed, base_len, size) in shapes {
        failures.extend(workload(
            seed,
            base_len,
            size,
            &[8, 24, 40],
            &mut holes_checked,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Not vacuous: punched clusters over backing data were compared, phase after phase.
    assert!(
        holes_checked >= 20,
        "only {holes_checked} punched clusters compared"
    );
}
