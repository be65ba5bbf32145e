//! Hosts that break a rule on purpose: the checks must catch each of them, in a scripted
//! interleaving and in the random campaign.

use crate::files::CS;
use crate::host::{Fault, Host, Setup};
use crate::sched::{self, Shape};
use crate::world::{Did, Inject, World};
use std::panic::{catch_unwind, AssertUnwindSafe};

fn host(fault: Fault) -> Host {
    let setup = Setup {
        size: 2 * CS,
        backing: Some(2 * CS),
        cache_bytes: 0,
        holes: false,
    };
    let mut host = Host::new(&setup, 1);
    host.fault = fault;
    host
}

/// Commits before the data is written, and a read comes in between: it reads what the image
/// file held before (garbage), not the write's head.
#[test]
#[should_panic(expected = "(cluster 0, allocated) reads 0xee")]
fn a_commit_before_the_write_is_caught() {
    let mut host = host(Fault::CommitBeforeWrite);
    let core = host.open();
    let mut w = World::new(&mut host, &core);
    let a = w.start(100, 10);
    assert_eq!(w.step(a, Inject::None), Did::Allocate);
    assert_eq!(w.step(a, Inject::None), Did::Committed);
    w.read(0, 200);
}

/// Copies the head from 512 bytes too far into the backing file.
#[test]
#[should_panic(expected = "byte 0x0 (cluster 0, allocated) reads")]
fn a_head_from_the_wrong_offset_is_caught() {
    let mut host = host(Fault::HeadFromWrongOffset);
    let core = host.open();
    let mut w = World::new(&mut host, &core);
    let a = w.start(1000, 10);
    while !w.is_done(a) {
        w.step(a, Inject::None);
    }
    w.read(0, CS);
}

/// Writes the bits back without flushing the image file first: after a crash, a bit is set
/// over data that was never flushed.
#[test]
#[should_panic(expected = "its data was not flushed before its bit was written")]
fn a_write_back_without_an_image_flush_is_caught() {
    let mut host = host(Fault::SkipImageFlush);
    let core = host.open();
    let mut w = World::new(&mut host, &core);
    let a = w.start(1000, 10);
    while !w.is_done(a) {
        w.step(a, Inject::None);
    }
    w.writeback_complete();
    drop(w);
    host.crash(core);
}

/// Forgets a transaction instead of ending it: the next request on its cluster is busy with
/// no transaction in flight.
#[test]
#[should_panic(expected = "busy, but no transaction in flight holds a cluster")]
fn a_leaked_transaction_is_caught() {
    let mut host = host(Fault::LeakTxn);
    let core = host.open();
    let mut w = World::new(&mut host, &core);
    let a = w.start(1000, 10);
    assert_eq!(w.step(a, Inject::None), Did::Allocate);
    assert_eq!(w.step(a, Inject::None), Did::Landed);
    assert_eq!(w.step(a, Inject::None), Did::Failed);
    let b = w.start(2000, 10);
    w.step(b, Inject::None);
}

/// Never commits: the request waiting for its cluster never goes through, and draining the
/// requests in flight reports it.
#[test]
#[should_panic(expected = "no progress: requests [1, 2] still in flight")]
fn a_stalled_transaction_is_caught() {
    let mut host = host(Fault::StallCommit);
    let core = host.open();
    let mut w = World::new(&mut host, &core);
    let a = w.start(1000, 10);
    assert_eq!(w.step(a, Inject::None), Did::Allocate);
    let b = w.start(2000, 10);
    assert_eq!(w.step(b, Inject::None), Did::Busy);
    sched::drain(&mut w);
}

/// The random campaign finds each broken host within a few seeds, by the check meant for it.
#[test]
fn the_campaign_catches_every_broken_host() {
    for (fault, says) in [
        (Fault::CommitBeforeWrite, "allocated) reads"),
        (Fault::HeadFromWrongOffset, "allocated) reads"),
        (
            Fault::SkipImageFlush,
            "data was not flushed before its bit was written",
        ),
        (Fault::LeakTxn, "no transaction in flight holds"),
        (Fault::StallCommit, "no progress"),
    ] {
        let caught = (0..20).find_map(|seed| {
            let run = catch_unwind(AssertUnwindSafe(|| {
                sched::run(Shape::Small, seed, 400, fault)
            }));
            run.err().map(|panic| (seed, message(&*panic)))
        });
        let Some((seed, msg)) = caught else {
            panic!("20 seeds of the campaign missed {fault:?}");
        };
        eprintln!("{fault:?}: caught by seed {seed}: {msg}");
        assert!(msg.contains(says), "{fault:?} (seed {seed}): {msg}");
    }
}

fn message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<String>(), panic.downcast_ref::<&str>()) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => (*s).to_owned(),
        _ => "(not a string)".to_owned(),
    }
}
