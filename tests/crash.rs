//! Crash simulation over every operation: writes to allocated clusters, allocating writes,
//! flush, writethrough, truncate grow and shrink. At every point of each workload's sequence of
//! writes, resizes and flushes, the files are materialized as the durable state plus subsets of
//! the unflushed events, torn at 512-byte granularity, reopened, and checked: every cluster
//! reads old or new content, nothing acknowledged durable is lost, no bit is set over data that
//! is not durable, the size is the old or the new one. The model and the rules:
//! `tests/common/disk.rs` and `tests/common/harness.rs`. `ADDCOW_CRASH_SUBSETS=N` (random
//! subsets per point, default 3) and `ADDCOW_CRASH_SEED` run longer campaigns.

mod common;
use common::disk::{Disk, Pick};
use common::harness::{
    assert_crash_clean, backing, backing_byte, check, check_bit, crash_violations,
    crash_violations_with, written, written_byte, Campaign, Scenario, Setup, Step, CS, IMAGE, META,
};
use common::{workloads, Rng};
use std::collections::BTreeSet;

#[test]
fn crash_in_place_writes() {
    assert_crash_clean("in-place writes", &workloads::in_place());
}

#[test]
fn crash_allocating_writes() {
    assert_crash_clean("allocating writes", &workloads::allocating());
}

#[test]
fn crash_flush() {
    assert_crash_clean("flush", &workloads::flush());
}

#[test]
fn crash_writethrough() {
    assert_crash_clean("writethrough", &workloads::writethrough());
}

#[test]
fn crash_truncate_grow() {
    assert_crash_clean("truncate grow", &workloads::truncate_grow());
}

#[test]
fn crash_truncate_shrink() {
    assert_crash_clean("truncate shrink", &workloads::truncate_shrink());
}

#[test]
fn crash_all_allocated() {
    assert_crash_clean("the all-allocated bit", &workloads::all_allocated());
}

#[test]
fn crash_all_allocated_cleared() {
    assert_crash_clean(
        "clearing the all-allocated bit",
        &workloads::all_allocated_cleared(),
    );
}

#[test]
fn crash_hydrate() {
    assert_crash_clean("hydration", &workloads::hydrate());
}

// ---------------------------------------------------------------------------------------------
// The crash model itself.

fn one_file(bytes: Vec<u8>) -> Disk {
    Disk::new(vec![("f".into(), bytes)])
}

/// Every outcome of crashing at the end of `disk`'s events over many random subsets, with the
/// two extremes.
fn outcomes(disk: &Disk) -> BTreeSet<Vec<u8>> {
    let end = disk.events();
    let mut out = BTreeSet::new();
    out.insert(disk.materialize(end, &mut Pick::Nothing).remove(0));
    out.insert(disk.materialize(end, &mut Pick::Everything).remove(0));
    for seed in 0..400 {
        out.insert(
            disk.materialize(end, &mut Pick::Random(Rng::new(seed)))
                .remove(0),
        );
    }
    out
}

#[test]
fn patterns_are_their_bytes() {
    let (offset, len) = (CS - 700, 3000);
    let bytes: Vec<u8> = (offset..offset + len).map(backing_byte).collect();
    assert_eq!(backing(offset, len), bytes);
    let bytes: Vec<u8> = (offset..offset + len).map(|i| written_byte(9, i)).collect();
    assert_eq!(written(9, offset, len), bytes);
    assert_ne!(written(9, offset, 512), written(10, offset, 512));
}

#[test]
fn model_flush_makes_each_file_durable_alone() {
    use addcow::storage::Storage;
    let disk = Disk::new(vec![
        ("a".into(), vec![0; 1024]),
        ("b".into(), vec![0; 1024]),
    ]);
    let (a, b) = (disk.file(0), disk.file(1));
    a.write_at(&[1; 1024], 0).unwrap();
    b.write_at(&[2; 1024], 0).unwrap();
    a.flush().unwrap();
    let before_flush = disk.events() - 1;
    let files = disk.materialize(disk.events(), &mut Pick::Nothing);
    assert_eq!(files, vec![vec![1; 1024], vec![0; 1024]]);
    // Before the flush, a's write is not durable either.
    let files = disk.materialize(before_flush, &mut Pick::Nothing);
    assert_eq!(files, vec![vec![0; 1024], vec![0; 1024]]);
    assert_eq!(disk.current(), vec![vec![1; 1024], vec![2; 1024]]);
}

#[test]
fn model_tears_writes_at_sector_granularity() {
    use addcow::storage::Storage;
    let disk = one_file(vec![0x11; 4096]);
    // Pieces: 256..512, 512..1024, 1024..1536, 1536..2048, 2048..2304.
    disk.file(0).write_at(&[0x22; 2048], 256).unwrap();
    let all = outcomes(&disk);
    for o in &all {
        assert_eq!(o.len(), 4096);
        for piece in [256..512, 512..1024, 1024..1536, 1536..2048, 2048..2304] {
            let s = &o[piece];
            assert!(s.iter().all(|&b| b == 0x11) || s.iter().all(|&b| b == 0x22));
        }
        assert!(o[..256].iter().chain(&o[2304..]).all(|&b| b == 0x11));
    }
    // 2^5 combinations: the random subsets reach every one.
    assert_eq!(all.len(), 32);
}

#[test]
fn model_sector_shows_only_contents_it_had() {
    use addcow::storage::Storage;
    let disk = one_file(vec![0x11; 512]);
    disk.file(0).write_at(&[0x22; 10], 0).unwrap();
    disk.file(0).write_at(&[0x33; 10], 10).unwrap();
    let states = |a: u8, b: u8| {
        let mut v = vec![a; 10];
        v.extend([b; 10]);
        v.resize(512, 0x11);
        v
    };
    // Never the second write without the first: the sector never held that.
    let expected: BTreeSet<Vec<u8>> =
        [states(0x11, 0x11), states(0x22, 0x11), states(0x22, 0x33)].into();
    assert_eq!(outcomes(&disk), expected);
}

#[test]
fn model_shrink_then_write_past_the_new_end() {
    use addcow::storage::Storage;
    let disk = one_file(vec![0x11; 4096]);
    disk.file(0).resize(1024).unwrap();
    disk.file(0).write_at(&[0x22; 512], 2048).unwrap();
    let with = |tail: u8| {
        let mut v = vec![0x11; 1024];
        v.resize(2048, 0);
        v.resize(2560, tail);
        v
    };
    let expected: BTreeSet<Vec<u8>> =
        [vec![0x11; 4096], vec![0x11; 1024], with(0), with(0x22)].into();
    assert_eq!(outcomes(&disk), expected);
}

#[test]
fn model_grow_then_write_into_the_grown_area() {
    use addcow::storage::Storage;
    let disk = one_file(vec![0x11; 1024]);
    disk.file(0).resize(4096).unwrap();
    disk.file(0).write_at(&[0x22; 512], 2048).unwrap();
    let grown = |mid: u8| {
        let mut v = vec![0x11; 1024];
        v.resize(2048, 0);
        v.resize(2560, mid);
        v.resize(4096, 0);
        v
    };
    let expected: BTreeSet<Vec<u8>> = [vec![0x11; 1024], grown(0), grown(0x22)].into();
    assert_eq!(outcomes(&disk), expected);
}

#[test]
fn model_size_changes_persist_in_order() {
    use addcow::storage::Storage;
    let disk = one_file(vec![0x11; 4096]);
    disk.file(0).resize(1024).unwrap();
    disk.file(0).resize(3072).unwrap();
    let mut regrown = vec![0x11; 1024];
    regrown.resize(3072, 0);
    // Never the second resize alone (which would keep 0x11 up to 3072).
    let expected: BTreeSet<Vec<u8>> = [vec![0x11; 4096], vec![0x11; 1024], regrown].into();
    assert_eq!(outcomes(&disk), expected);
}

#[test]
fn model_fails_the_armed_call_only() {
    use addcow::storage::Storage;
    let disk = one_file(vec![0; 1024]);
    let f = disk.file(0);
    disk.arm(1, libc::ENOSPC);
    f.write_at(&[1; 10], 0).unwrap();
    let e = f.write_at(&[2; 10], 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    assert!(disk.fired().unwrap().contains("write f 0x0+0xa"));
    f.flush().unwrap();
    assert_eq!(disk.current()[0][..10], [1; 10]);
    assert_eq!(disk.events(), 2, "the failed write left no event");
    assert_eq!(disk.calls(), 3);
}

// ---------------------------------------------------------------------------------------------
// The checks can fail.

fn setup(backing: Option<u64>, allocated: &[u64]) -> Setup {
    Setup::new(10 * CS - 1000, backing, allocated)
}

const BITMAP: usize = 2560;

#[test]
fn checker_reports_a_bit_set_over_data_that_never_landed() {
    let s = setup(Some(12 * CS), &[1]);
    let mut files: Vec<Vec<u8>> = s.files().into_iter().map(|f| f.1).collect();
    files[META][BITMAP] |= 1 << 2;
    let got = check(&s.open_files(files).unwrap(), &[s.snapshot()], &s).unwrap();
    assert!(
        got.contains("cluster 2 (allocated") && got.contains("reads garbage"),
        "{got}"
    );
}

#[test]
fn checker_reports_backing_data_in_a_cluster_that_was_allocated() {
    // The shape of a shrink that cut the `.add-cow` file before the image file.
    let s = setup(Some(12 * CS), &[1, 8, 9]);
    let mut files: Vec<Vec<u8>> = s.files().into_iter().map(|f| f.1).collect();
    files[META].truncate(BITMAP + 1);
    let got = check(&s.open_files(files).unwrap(), &[s.snapshot()], &s).unwrap();
    assert!(
        got.contains("cluster 8 (unallocated") && got.contains("reads backing"),
        "{got}"
    );
    assert!(got.contains("write 0"), "{got}");
}

#[test]
fn checker_reports_a_lost_flush() {
    let s = Scenario::new("lost", setup(None, &[]))
        .write(CS, 512)
        .flush();
    let snaps = s.snapshots();
    let files = s.setup.files().into_iter().map(|f| f.1).collect();
    let img = s.setup.open_files(files).unwrap();
    assert!(check(&img, &snaps[..2], &s.setup).is_none());
    let got = check(&img, &snaps[2..], &s.setup).unwrap();
    assert!(
        got.contains("cluster 1") && got.contains("write 1"),
        "{got}"
    );
}

#[test]
fn checker_reports_a_wrong_size() {
    let s = setup(None, &[]);
    let mut files: Vec<Vec<u8>> = s.files().into_iter().map(|f| f.1).collect();
    files[IMAGE].resize((s.size + 4096) as usize, 0);
    let got = check(&s.open_files(files).unwrap(), &[s.snapshot()], &s).unwrap();
    assert!(got.starts_with("size"), "{got}");
}

#[test]
fn checker_allows_torn_in_place_writes_but_not_torn_allocations() {
    let s = Scenario::new("torn", setup(Some(12 * CS), &[1]))
        .write(CS, CS)
        .write(3 * CS, CS);
    let snaps = s.snapshots();
    let mut files: Vec<Vec<u8>> = s.setup.files().into_iter().map(|f| f.1).collect();
    // Cluster 1 (allocated): every other sector of write 1 landed.
    for sector in (0..CS).step_by(1024) {
        let at = (CS + sector) as usize;
        files[IMAGE][at..at + 512].copy_from_slice(&written(1, CS + sector, 512));
    }
    let img = s.setup.open_files(files.clone()).unwrap();
    assert!(check(&img, &snaps, &s.setup).is_none());
    assert!(check(&img, &snaps[..1], &s.setup).is_some());
    // Cluster 3 (allocated by write 2): its bit and half its data landed.
    files[META][BITMAP] |= 1 << 3;
    let half = (3 * CS) as usize..(3 * CS + CS / 2) as usize;
    files[IMAGE][half].copy_from_slice(&written(2, 3 * CS, CS / 2));
    let img = s.setup.open_files(files).unwrap();
    let got = check(&img, &snaps, &s.setup).unwrap();
    assert!(
        got.contains("cluster 3") && got.contains("checked whole"),
        "{got}"
    );
}

/// Layout 2: a header with the all-allocated bit over a bitmap bit that is not set.
#[test]
fn checker_reports_the_all_allocated_bit_over_an_unset_bitmap_bit() {
    let s = Setup {
        layout: 2,
        all_allocated: true,
        ..Setup::new(3 * CS - 10, None, &[0, 1, 2])
    };
    let mut files: Vec<Vec<u8>> = s.files().into_iter().map(|f| f.1).collect();
    assert_eq!(check_bit(&files), None);
    files[META][CS as usize] &= !(1 << 1);
    let got = check_bit(&files).unwrap();
    assert!(got.contains("cluster 1's bitmap bit"), "{got}");
}

/// A disk whose image-file flush lies lets the bitmap reach the disk before the data: the
/// crash runner must see garbage behind a set bit.
#[test]
fn crash_runner_catches_a_lying_flush() {
    let s = Scenario::new("lying flush", setup(Some(12 * CS), &[]))
        .write(1000, 3000)
        .flush();
    let out = crash_violations_with(&s, &Campaign::from_env(), |d| d.lie_about_flush(IMAGE));
    assert!(
        out.violations.iter().any(|v| v.contains("reads garbage")),
        "{out:?}"
    );
    // The same scenario on an honest disk is clean.
    assert!(crash_violations(&s, &Campaign::from_env())
        .violations
        .is_empty());
}

/// A step whose model is wrong is reported even without a crash.
#[test]
fn crash_runner_checks_the_model() {
    let s = Scenario::new("wrong model", setup(None, &[])).then(Step::new(
        "write that claims nothing",
        false,
        |img| img.write_at(0, &[0x99; 10]),
        |_, _| {},
    ));
    let out = crash_violations(&s, &Campaign::from_env());
    assert!(
        out.violations[0].contains("disagrees with the model"),
        "{out:?}"
    );
}
