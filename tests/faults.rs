//! Fault injection over every operation: for the workloads of `tests/crash.rs`, the n-th host
//! call (read, write, flush, len or resize, on any file) fails with `EIO`, then with `ENOSPC`,
//! for every n the workload makes. The step running must return that errno, and afterwards the
//! live image, the files as they are and the durable files must all read old or new content,
//! and a flush must make exactly what the live image reads durable. The rules:
//! `tests/common/harness.rs`.

mod common;
use common::harness::{
    assert_clean, fault_violations, written, Scenario, Setup, Snapshot, Step, CS,
};
use common::workloads;

fn faults(what: &str, scenarios: Vec<Scenario>) {
    assert_clean(
        what,
        [libc::EIO, libc::ENOSPC]
            .into_iter()
            .flat_map(|errno| scenarios.iter().map(move |s| fault_violations(s, errno))),
    );
}

#[test]
fn faults_in_place_writes() {
    faults("in-place writes", workloads::in_place());
}

#[test]
fn faults_allocating_writes() {
    faults("allocating writes", workloads::allocating());
}

#[test]
fn faults_flush() {
    faults("flush", workloads::flush());
}

#[test]
fn faults_writethrough() {
    faults("writethrough", workloads::writethrough());
}

#[test]
fn faults_truncate_grow() {
    faults("truncate grow", workloads::truncate_grow());
}

#[test]
fn faults_truncate_shrink() {
    faults("truncate shrink", workloads::truncate_shrink());
}

// ---------------------------------------------------------------------------------------------
// The fault runner can fail.

fn setup() -> Setup {
    Setup {
        size: 4 * CS,
        backing: Some(8 * CS),
        allocated: vec![1],
        writethrough: false,
        stale_bits: false,
    }
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
