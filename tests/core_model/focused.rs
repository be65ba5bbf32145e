//! Interleavings worth spelling out, step by step. Each also checks its key bytes directly,
//! not only through the model.

use crate::common::harness::written;
use crate::files::{BackingFile, CS};
use crate::host::{Host, Setup, PAGE_CLUSTERS};
use crate::trace::traced;
use crate::world::{Did, Inject, WbDid, WbInject, World};
use addcow::mapping::PAGE_COST;
use addcow::mapping::{Core, Kind};

fn host(size: u64, backing: Option<u64>, cache_bytes: u64) -> Host {
    let setup = Setup {
        size,
        backing,
        cache_bytes,
        holes: true,
    };
    Host::new(&setup, 1)
}

/// The data request `id` (started `id`-th) writes at `offset`.
fn data(id: u64, offset: u64, len: u64) -> Vec<u8> {
    written(id as u8, offset, len)
}

fn backing_of(w: &World, offset: u64, len: u64) -> Vec<u8> {
    w.host.backing.read(offset, len)
}

fn kind(core: &Core, offset: u64) -> Kind {
    core.map(offset, 1).unwrap().kind
}

/// The worst case for lost updates: two requests allocating the same cluster. The second is
/// told busy (also when it retries before the first commits), and once the first committed it
/// goes in place and keeps the first one's bytes and the backing data outside its own range.
/// A request on another cluster never waits.
#[test]
fn a_second_allocation_of_a_cluster_waits_then_goes_in_place() {
    traced("lost updates", || {
        let mut host = host(3 * CS, Some(3 * CS), 0);
        let core = host.open();
        let mut w = World::new(&mut host, &core);
        let a = w.start(100, 100);
        assert_eq!(w.step(a, Inject::None), Did::Allocate);
        let b = w.start(1000, 100);
        assert_eq!(w.step(b, Inject::None), Did::Busy);
        assert!(!w.runnable(b));
        // Across the boundary into a free cluster: still busy, its first cluster is claimed.
        let c = w.start(CS - 50, 100);
        assert_eq!(w.step(c, Inject::None), Did::Busy);
        // Another cluster does not wait.
        let d = w.start(2 * CS + 5, 10);
        assert_eq!(w.step(d, Inject::None), Did::Allocate);
        assert_eq!(w.step(a, Inject::None), Did::Landed);
        // Retried before the generation moved: busy again.
        assert_eq!(w.step(b, Inject::None), Did::Busy);
        assert_eq!(w.step(a, Inject::None), Did::Committed);
        assert!(w.is_done(a) && w.runnable(b) && w.runnable(c));
        assert_eq!(w.step(b, Inject::None), Did::InPlace);
        assert_eq!(w.step(b, Inject::None), Did::Landed);
        assert!(w.is_done(b));
        // c: cluster 0 in place, then cluster 1 allocated.
        assert_eq!(w.step(c, Inject::None), Did::InPlace);
        assert_eq!(w.step(c, Inject::None), Did::Landed);
        assert_eq!(w.step(c, Inject::None), Did::Allocate);
        assert_eq!(w.step(c, Inject::None), Did::Landed);
        assert_eq!(w.step(c, Inject::None), Did::Committed);
        assert_eq!(w.step(d, Inject::None), Did::Landed);
        assert_eq!(w.step(d, Inject::None), Did::Committed);
        let got = w.read(0, 2 * CS);
        assert_eq!(got[..100], backing_of(&w, 0, 100));
        assert_eq!(got[100..200], data(1, 100, 100));
        assert_eq!(got[200..1000], backing_of(&w, 200, 800));
        assert_eq!(got[1000..1100], data(2, 1000, 100));
        assert_eq!(
            got[(CS - 50) as usize..(CS + 50) as usize],
            data(3, CS - 50, 100)
        );
        assert_eq!(got[(CS + 50) as usize..], backing_of(&w, CS + 50, CS - 50));
    });
}

/// A request told busy while a write-back ends retries (the generation moved), is busy again
/// (the transaction it waits for is still in flight) and goes through once that commits.
#[test]
fn a_retry_after_an_unrelated_generation_change_is_busy_again() {
    traced("unrelated generation change", || {
        let mut host = host(2 * CS, None, 0);
        let core = host.open();
        let mut w = World::new(&mut host, &core);
        let a = w.start(0, 10);
        assert_eq!(w.step(a, Inject::None), Did::Allocate);
        let b = w.start(20, 10);
        assert_eq!(w.step(b, Inject::None), Did::Busy);
        assert_eq!(w.wb_step(WbInject::None), WbDid::Begun);
        assert_eq!(
            w.wb_step(WbInject::Abandon),
            WbDid::Ended { durable: false }
        );
        assert!(w.runnable(b));
        assert_eq!(w.step(b, Inject::None), Did::Busy);
        assert!(!w.runnable(b));
        assert_eq!(w.step(a, Inject::None), Did::Landed);
        assert_eq!(w.step(a, Inject::None), Did::Committed);
        assert_eq!(w.step(b, Inject::None), Did::InPlace);
        assert_eq!(w.step(b, Inject::None), Did::Landed);
        let got = w.read(0, 40);
        assert_eq!(got[..10], data(1, 0, 10));
        assert_eq!(got[10..20], [0; 10]);
        assert_eq!(got[20..30], data(2, 20, 10));
    });
}

/// Aborted transactions leave their clusters unallocated, whatever of them landed; the next
/// write to the cluster allocates it afresh, and its head copy replaces what the failed request
/// left in the image file.
#[test]
fn an_aborted_transaction_then_a_write_to_the_same_cluster() {
    traced("abort then write", || {
        let mut host = host(2 * CS + 300, Some(2 * CS), 0);
        let core = host.open();
        let mut w = World::new(&mut host, &core);
        // The image-file write fails after the request's own bytes landed.
        let a = w.start(500, 100);
        assert_eq!(w.step(a, Inject::None), Did::Allocate);
        assert_eq!(w.step(a, Inject::FailMidWrite(1000)), Did::Failed);
        assert!(w.is_done(a));
        assert_eq!(kind(w.core, 500), Kind::Backing);
        assert_eq!(w.read(0, CS), backing_of(&w, 0, CS));
        // Everything landed, then the flush failed.
        let b = w.start(CS + 10, CS + 100);
        assert_eq!(w.step(b, Inject::None), Did::Allocate);
        assert_eq!(w.step(b, Inject::None), Did::Landed);
        assert_eq!(w.step(b, Inject::AbortAfterWrite), Did::Failed);
        assert_eq!(kind(w.core, CS), Kind::Backing);
        assert_eq!(kind(w.core, 2 * CS), Kind::Zero);
        // The same clusters again: allocated, not in place.
        let c = w.start(2000, 10);
        assert_eq!(w.step(c, Inject::None), Did::Allocate);
        assert_eq!(w.step(c, Inject::None), Did::Landed);
        assert_eq!(w.step(c, Inject::None), Did::Committed);
        let d = w.start(2 * CS + 7, 3);
        assert_eq!(w.step(d, Inject::None), Did::Allocate);
        assert_eq!(w.step(d, Inject::FailBeforeWrite), Did::Failed);
        let got = w.read(0, 2 * CS + 300);
        assert_eq!(got[..2000], backing_of(&w, 0, 2000));
        assert_eq!(got[2000..2010], data(3, 2000, 10));
        assert_eq!(got[2010..], backing_of(&w, 2010, 2 * CS + 300 - 2010));
    });
}

/// A write-back abandoned after its write reached the `.add-cow` file (but not its flush)
/// makes nothing durable: a crash loses the allocation. The next complete write-back makes it
/// survive.
#[test]
fn only_durable_write_backs_survive_a_crash() {
    traced("durable write-backs", || {
        let mut host = host(2 * CS, Some(CS), 0);
        let core = host.open();
        let mut w = World::new(&mut host, &core);
        let a = w.start(10, 10);
        for want in [Did::Allocate, Did::Landed, Did::Committed] {
            assert_eq!(w.step(a, Inject::None), want);
        }
        for want in [WbDid::Begun, WbDid::Flushed, WbDid::Written] {
            assert_eq!(w.wb_step(WbInject::None), want);
        }
        assert_eq!(
            w.wb_step(WbInject::FailSync),
            WbDid::Ended { durable: false }
        );
        drop(w);
        let core = host.crash(core);
        assert_eq!(kind(&core, 10), Kind::Backing);
        let mut w = World::new(&mut host, &core);
        let b = w.start(CS + 10, 10);
        for want in [Did::Allocate, Did::Landed, Did::Committed] {
            assert_eq!(w.step(b, Inject::None), want);
        }
        w.writeback_complete();
        drop(w);
        let core = host.crash(core);
        assert_eq!(kind(&core, CS + 10), Kind::Data);
        assert_eq!(kind(&core, 10), Kind::Backing);
    });
}

/// Truncates between requests (the host's exclusive operation): a grow over a longer backing
/// file completes the partial cluster at the old end from it and allocates the new clusters
/// (zeros); a shrink cuts; requests go in place over what the grow allocated.
#[test]
fn truncates_between_requests_grow_over_a_longer_backing_file() {
    traced("truncates", || {
        let mut host = host(2 * CS + 1000, Some(6 * CS), 0);
        let mut core = host.open();
        let mut w = World::new(&mut host, &core);
        let a = w.start(CS - 10, 20);
        while !w.is_done(a) {
            w.step(a, Inject::None);
        }
        drop(w);
        host.truncate(&mut core, 4 * CS + 77);
        let mut w = World::new(&mut host, &core);
        let got = w.read(2 * CS, 2 * CS + 77);
        assert_eq!(got[..1000], backing_of(&w, 2 * CS, 1000));
        assert!(got[1000..].iter().all(|&b| b == 0));
        assert_eq!(kind(w.core, 3 * CS), Kind::Data);
        let b = w.start(4 * CS + 50, 20);
        assert_eq!(w.step(b, Inject::None), Did::InPlace);
        assert_eq!(w.step(b, Inject::None), Did::Landed);
        drop(w);
        host.truncate(&mut core, CS + 5);
        host.truncate(&mut core, 3 * CS);
        let mut w = World::new(&mut host, &core);
        // The shrink cut the request's last 5 bytes; the grow brought zeros back.
        let got = w.read(CS - 10, 2 * CS + 10);
        assert_eq!(got[..15], data(1, CS - 10, 20)[..15]);
        assert!(got[15..].iter().all(|&b| b == 0));
        // Without a backing file, a grow allocates nothing.
        w.set_backing(BackingFile {
            len: None,
            version: 1,
        });
        w.writeback_complete();
        drop(w);
        host.truncate(&mut core, 5 * CS + 3);
        assert_eq!(kind(&core, 3 * CS), Kind::Zero);
        let mut w = World::new(&mut host, &core);
        w.writeback_complete();
        drop(w);
        let core = host.crash(core);
        assert_eq!(core.size(), 5 * CS + 3);
        assert_eq!(kind(&core, 2 * CS), Kind::Data);
    });
}

/// A commit whose bitmap page fails to load leaves the clusters unallocated (the contract of
/// `Core::commit`), also when the transaction spans two bitmap pages and only the second one
/// fails to load: with a cache of one page, the first page is resident (dirty) and the second
/// was evicted after `begin_write` read it.
#[test]
fn a_failed_commit_across_pages_leaves_every_cluster_unallocated() {
    traced("failed commit across pages", || {
        let mut host = host((2 * PAGE_CLUSTERS + 5) * CS, Some(CS), PAGE_COST);
        let core = host.open();
        let mut w = World::new(&mut host, &core);
        let a = w.start(10, 10);
        for want in [Did::Allocate, Did::Landed, Did::Committed] {
            assert_eq!(w.step(a, Inject::None), want);
        }
        let b = w.start(PAGE_CLUSTERS * CS - 100, 200);
        assert_eq!(w.step(b, Inject::None), Did::Allocate);
        assert_eq!(w.step(b, Inject::None), Did::Landed);
        assert_eq!(w.step(b, Inject::FailCommitRead), Did::Failed);
        assert_eq!(kind(w.core, PAGE_CLUSTERS * CS - 100), Kind::Zero);
    });
}
