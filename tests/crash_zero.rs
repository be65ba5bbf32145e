//! Write-zeroes and discard under the crash simulation (at every write, punch and flush point,
//! with torn writes) and under injected `EIO`/`ENOSPC` at every host call: every cluster reads
//! old or new content, a bit is never durable over a cluster whose zeros are not, and nothing
//! acknowledged durable is lost. The recording disk models a punch or zero-range as a write of
//! zeros (`tests/common/disk.rs`); it knows no holes, so block status sees allocated zeros as
//! data. The rules: `tests/common/harness.rs`.

mod common;
use addcow::ZeroFlags;
use common::harness::{
    assert_crash_clean, assert_faults_clean, crash_violations, Campaign, Scenario, Setup, Snapshot,
    Step, CS,
};

/// Five clusters, the last one partial (as the write workloads).
const SIZE: u64 = 5 * CS - 1536;

/// No backing file, one ending inside cluster 2, one longer than the image.
const BACKINGS: [Option<u64>; 3] = [None, Some(2 * CS + 700), Some(SIZE + 2 * CS)];

/// Layouts 1 and 2, writeback and writethrough, every backing; clusters 1 and 3 allocated.
fn setups() -> Vec<Setup> {
    let mut out = Vec::new();
    for layout in [1, 2] {
        for writethrough in [false, true] {
            for backing in BACKINGS {
                out.push(Setup {
                    layout,
                    writethrough,
                    ..Setup::new(SIZE, backing, &[1, 3])
                });
            }
        }
    }
    out
}

/// The whole clusters of `offset..offset + len` (the last one whole when the range reaches
/// the end), and the parts of clusters before and after them.
fn split(offset: u64, len: u64, size: u64) -> (std::ops::Range<u64>, [(u64, u64); 2]) {
    let end = offset + len;
    let start = offset.div_ceil(CS) * CS;
    let stop = if end == size { end } else { end / CS * CS };
    match start < stop {
        true => (start..stop, [(offset, start - offset), (stop, end - stop)]),
        false => (0..0, [(offset, len), (offset, 0)]),
    }
}

fn zero_bytes(s: &mut Snapshot, offset: u64, len: u64) {
    s.bytes[offset as usize..(offset + len) as usize].fill(0);
}

/// `write_zeroes`: whole clusters read zeros and are allocated, except unallocated ones past
/// the backing file's end (left); parts of clusters are written with zeros (allocating) unless
/// they read zeros unallocated already.
fn write_zeroes(offset: u64, len: u64, unmap: bool) -> Step {
    let flags = ZeroFlags {
        may_unmap: unmap,
        no_fallback: false,
    };
    Step::new(
        format!(
            "write_zeroes {offset:#x}+{len:#x}{}",
            if unmap { " unmap" } else { "" }
        ),
        false,
        move |img| img.write_zeroes(offset, len, flags),
        move |s, setup| {
            let backing = setup.backing.unwrap_or(0);
            let (whole, parts) = split(offset, len, s.size);
            for c in whole.start / CS..whole.end.div_ceil(CS) {
                let c = c as usize;
                s.alloc[c] |= c as u64 * CS < backing;
            }
            for (at, _) in parts.into_iter().filter(|p| p.1 > 0) {
                s.alloc[(at / CS) as usize] |= at < backing;
            }
            zero_bytes(s, offset, len);
        },
    )
}

/// `discard`: whole clusters read zeros and are allocated; parts of clusters are left.
fn discard(offset: u64, len: u64) -> Step {
    Step::new(
        format!("discard {offset:#x}+{len:#x}"),
        false,
        move |img| img.discard(offset, len),
        move |s, _| {
            let (whole, _) = split(offset, len, s.size);
            for c in whole.start / CS..whole.end.div_ceil(CS) {
                s.alloc[c as usize] = true;
            }
            if !whole.is_empty() {
                zero_bytes(s, whole.start, whole.end - whole.start);
            }
        },
    )
}

fn scenarios() -> Vec<Scenario> {
    let mut out = Vec::new();
    for setup in setups() {
        // Zeroing: a partial cluster over backing data, whole unallocated and allocated
        // clusters, then in place up to the (partial) last cluster.
        out.push(
            Scenario::new("write zeroes", setup.clone())
                .then(write_zeroes(CS / 2, 3 * CS, true))
                .then(write_zeroes(3 * CS + 10, SIZE - 3 * CS - 10, false))
                .flush(),
        );
        // Discard: parts of clusters left, whole ones allocated without copying; a write
        // after a discard of its cluster.
        out.push(
            Scenario::new("discard", setup)
                .then(discard(100, 3 * CS))
                .write(2 * CS + 5, 100)
                .then(discard(3 * CS, SIZE - 3 * CS))
                .flush(),
        );
    }
    out
}

#[test]
fn crash_write_zeroes_and_discard() {
    assert_crash_clean("write zeroes and discard", &scenarios());
}

#[test]
fn faults_write_zeroes_and_discard() {
    assert_faults_clean("write zeroes and discard, faults", &scenarios());
}

/// The harness sees a wrong model of these operations: it can fail.
#[test]
fn a_wrong_model_is_caught() {
    let setup = Setup::new(SIZE, Some(SIZE), &[1]);
    let wrong = Step::new(
        "discard, modelled as leaving the backing data",
        false,
        |img| img.discard(2 * CS, CS),
        |_, _| {},
    );
    let s = Scenario::new("wrong", setup).then(wrong).flush();
    let outcome = crash_violations(&s, &Campaign::from_env());
    assert!(
        !outcome.violations.is_empty(),
        "a wrong model went unnoticed"
    );
}
