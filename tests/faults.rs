//! Fault injection over every operation: for the workloads of `tests/crash.rs`, the n-th host
//! call (read, write, flush, len or resize, on any file) fails with `EIO`, then with `ENOSPC`,
//! for every n the workload makes. The step running must return that errno, and afterwards the
//! live image, the files as they are and the durable files must all read old or new content,
//! and a flush must make exactly what the live image reads durable. The rules:
//! `tests/common/harness.rs`.

mod common;
use common::harness::{
    assert_faults_clean, fault_violations, written, Scenario, Setup, Snapshot, Step, CS,
};
use common::workloads;

#[test]
fn faults_in_place_writes() {
    assert_faults_clean("in-place writes", &workloads::in_place());
}

#[test]
fn faults_allocating_writes() {
    assert_faults_clean("allocating writes", &workloads::allocating());
}

#[test]
fn faults_flush() {
    assert_faults_clean("flush", &workloads::flush());
}

#[test]
fn faults_writethrough() {
    assert_faults_clean("writethrough", &workloads::writethrough());
}

#[test]
fn faults_truncate_grow() {
    assert_faults_clean("truncate grow", &workloads::truncate_grow());
}

#[test]
fn faults_truncate_shrink() {
    assert_faults_clean("truncate shrink", &workloads::truncate_shrink());
}

#[test]
fn faults_hydrate() {
    assert_faults_clean("hydration", &workloads::hydrate());
}

#[test]
fn faults_all_allocated() {
    assert_faults_clean("the all-allocated bit", &workloads::all_allocated());
}

/// A failed flush of the header that clears the bit (in a grow) leaves the cleared header in
/// the page cache while the image keeps the bit in memory: no later flush makes that header
/// durable, and the durable state differs from the current one after a flush.
#[test]
fn faults_all_allocated_cleared() {
    assert_faults_clean(
        "clearing the all-allocated bit",
        &workloads::all_allocated_cleared(),
    );
}

// ---------------------------------------------------------------------------------------------
// The fault runner can fail.

fn setup() -> Setup {
    Setup::new(4 * CS, Some(8 * CS), &[1])
}

fn model_write(offset: u64, len: u64, tag: u8) -> impl Fn(&mut Snapshot, &Setup) {
    move |s, _| {
        s.bytes[offset as usize..(offset + len) as usize]
            .copy_from_slice(&written(tag, offset, len));
        for c in offset / CS..(offset + len).div_ceil(CS) {
            s.alloc[c as usize] = true;
        }
    }
}

/// A step that swallows errors is reported at every call it makes.
#[test]
fn fault_runner_reports_a_swallowed_error() {
    let data = written(1, 1000, 3000);
    let s = Scenario::new("swallowing", setup()).then(Step::new(
        "write, errors ignored",
        false,
        move |img| {
            let _ = img.write_at(1000, &data);
            Ok(())
        },
        model_write(1000, 3000, 1),
    ));
    let out = fault_violations(&s, libc::EIO);
    assert!(out.checked > 0);
    assert_eq!(out.violations.len(), out.checked, "{out:?}");
    assert!(
        out.violations[0].contains("yet every step succeeded"),
        "{out:?}"
    );
}

/// A step that reports a different errno is reported.
#[test]
fn fault_runner_reports_a_changed_errno() {
    let data = written(1, 1000, 3000);
    let s = Scenario::new("renaming", setup()).then(Step::new(
        "write, errors turned into EINVAL",
        false,
        move |img| {
            img.write_at(1000, &data)
                .map_err(|_| addcow::Error::Invalid("nope".into()))
        },
        model_write(1000, 3000, 1),
    ));
    let out = fault_violations(&s, libc::ENOSPC);
    assert!(!out.violations.is_empty());
    assert!(
        out.violations.iter().all(|v| v.contains("errno 22")),
        "{out:?}"
    );
}

/// A step that changes more than its model says (an unmodeled write to cluster 3 before the
/// modeled one) is caught when the modeled write fails: the image then reads neither old nor
/// new in cluster 3.
#[test]
fn fault_runner_checks_old_or_new() {
    let s = Scenario::new("wrong model", setup()).then(Step::new(
        "write elsewhere, then the modeled write",
        false,
        |img| {
            img.write_at(3 * CS, &written(1, 3 * CS, 10))?;
            img.write_at(0, &written(1, 0, 10))
        },
        model_write(0, 10, 1),
    ));
    let out = fault_violations(&s, libc::EIO);
    assert!(
        out.violations
            .iter()
            .any(|v| v.contains("the live image: cluster 3")),
        "{out:?}"
    );
}

/// Layout 2: a flush that sets the "all allocated" bit writes the header, then flushes it. If
/// that flush fails, the bit is in the page cache but not in the image's memory; a grow over
/// no backing file then leaves new clusters unallocated without clearing it, and its own
/// metadata flush makes the bit durable. After a reopen, writes to the new clusters go in
/// place (the bit says every cluster is allocated) and set no bitmap bit; the next grow clears
/// the bit and those clusters read zeros: the data is lost.
#[test]
fn a_failed_header_flush_never_leaves_the_bit_over_unallocated_clusters() {
    use addcow::storage::{MemStorage, Storage};
    use addcow::{Image, OpenOptions, Parts};
    use common::disk::Disk;
    use common::harness::{check_bit, META};
    let setup = Setup {
        layout: 2,
        ..Setup::new(2 * CS, None, &[0, 1])
    };
    // The calls of a flush with nothing to write back: the last one flushes the header.
    let calls = {
        let disk = Disk::new(setup.files());
        let img = setup.open_disk(&disk).unwrap();
        let before = disk.calls();
        img.flush().unwrap();
        assert_eq!(disk.current()[META][32] & 1, 1, "the flush sets the bit");
        disk.calls() - before
    };
    let disk = Disk::new(setup.files());
    let img = setup.open_disk(&disk).unwrap();
    disk.arm(calls - 1, libc::EIO);
    assert_eq!(img.flush().unwrap_err().errno(), libc::EIO);
    assert!(disk.fired().unwrap().starts_with("flush add-cow"));
    img.truncate(4 * CS).unwrap();
    img.flush().unwrap();
    drop(img);
    let files = disk.materialize(disk.events(), &mut common::disk::Pick::Nothing);
    assert_eq!(files, disk.current(), "everything was flushed");
    let problem = check_bit(&files);
    // What that leads to: data written to cluster 3 after a reopen is lost by the next grow.
    let [meta, data]: [Vec<u8>; 2] = files.try_into().unwrap();
    let (meta, data) = (MemStorage::from_bytes(meta), MemStorage::from_bytes(data));
    let open = || {
        let parts = Parts {
            meta: (Box::new(meta.clone()), "add-cow".into()),
            image: (Box::new(data.clone()), "image".into()),
            backing: None,
        };
        let opts = OpenOptions {
            writable: true,
            ..OpenOptions::default()
        };
        Image::open_parts(parts, &opts).unwrap()
    };
    let img = open();
    img.write_at(3 * CS, &[0xAB; 16]).unwrap();
    img.close().unwrap();
    let img = open();
    img.truncate(5 * CS).unwrap();
    let mut got = [0u8; 16];
    img.read_at(3 * CS, &mut got).unwrap();
    assert_eq!(
        (problem, got, data.len().unwrap()),
        (None, [0xAB; 16], 5 * CS),
        "the bit was durable over unallocated clusters, and a write was lost"
    );
}
