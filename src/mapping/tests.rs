//! The core on its own, driven as a host would drive it: maps, transactions interleaved and
//! aborted, busy answers, write-backs.

use super::*;
use crate::storage::MemStorage;

const CS: u64 = 65536;

fn core(size: u64, backing: Option<u64>) -> (Core, MemStorage) {
    let header = Header::new(b"img", Some(b"base")).unwrap();
    let meta = MemStorage::from_bytes(header.to_bytes().to_vec());
    let opts = CoreOptions {
        writable: true,
        ..CoreOptions::default()
    };
    let core = Core::new((Box::new(meta.clone()), "meta".into()), header, size, opts);
    core.set_backing_len(backing);
    (core, meta)
}

fn step(b: Begin<Step>) -> Step {
    match b {
        Begin::Ready(s) => s,
        Begin::Busy(g) => panic!("busy at generation {g}"),
    }
}

fn txn(b: Begin<Step>) -> Txn {
    match step(b) {
        Step::Allocate(t) => t,
        Step::InPlace(n) => panic!("in place ({n} bytes)"),
    }
}

#[test]
fn map_tells_data_backing_and_zeros_apart() {
    let (core, _) = core(4 * CS, Some(CS + 100));
    let e = |o, n| core.map(o, n).unwrap();
    assert_eq!(
        e(0, 4 * CS),
        Extent {
            kind: Kind::Backing,
            len: CS + 100
        }
    );
    assert_eq!(
        e(CS + 100, 4 * CS),
        Extent {
            kind: Kind::Zero,
            len: 3 * CS - 100
        }
    );
    core.commit(txn(core.begin_write(2 * CS, 10).unwrap()))
        .unwrap();
    assert_eq!(
        e(CS + 100, 4 * CS),
        Extent {
            kind: Kind::Zero,
            len: CS - 100
        }
    );
    assert_eq!(
        e(2 * CS + 5, 4 * CS),
        Extent {
            kind: Kind::Data,
            len: CS - 5
        }
    );
    assert_eq!(e(4 * CS, 1).len, 0);
    core.set_backing_len(None);
    assert_eq!(
        e(0, 4 * CS),
        Extent {
            kind: Kind::Zero,
            len: 2 * CS
        }
    );
}

#[test]
fn a_transaction_says_exactly_what_to_copy() {
    let (core, _) = core(3 * CS + 1000, Some(CS + 300));
    // Inside cluster 1, backing data ends inside the head.
    let t = txn(core.begin_write(CS + 500, 10).unwrap());
    assert_eq!((t.cluster_start(), t.cluster_end()), (CS, 2 * CS));
    assert_eq!((t.head_len(), t.head_backing()), (500, 300));
    assert_eq!((t.tail_len(), t.tail_backing()), (CS - 510, 0));
    core.abort(t);
    // Spanning clusters 0..=3 (the last one partial), backing in the head only.
    let t = txn(core.begin_write(100, 3 * CS).unwrap());
    assert_eq!((t.cluster_start(), t.cluster_end()), (0, 3 * CS + 1000));
    assert_eq!((t.head_len(), t.head_backing()), (100, 100));
    assert_eq!((t.tail_len(), t.tail_backing()), (900, 0));
    core.abort(t);
    // Cluster-aligned: no head, no tail.
    let t = txn(core.begin_write(CS, CS).unwrap());
    assert_eq!((t.head_len(), t.tail_len()), (0, 0));
    core.commit(t).unwrap();
    // Now cluster 1 is allocated: a write over 0..2 CS allocates cluster 0 only, then goes in
    // place.
    let t = txn(core.begin_write(10, 2 * CS).unwrap());
    assert_eq!((t.len(), t.tail_len(), t.tail_backing()), (CS - 10, 0, 0));
    core.commit(t).unwrap();
    assert!(matches!(step(core.begin_write(CS, CS).unwrap()), Step::InPlace(n) if n == CS));
}

#[test]
fn overlapping_transactions_are_busy_and_never_wait() {
    let (core, _) = core(8 * CS, None);
    let a = txn(core.begin_write(CS, 2 * CS).unwrap());
    let g = core.generation();
    assert!(matches!(core.begin_write(2 * CS + 7, 1).unwrap(), Begin::Busy(x) if x == g));
    // Other clusters do not wait.
    let b = txn(core.begin_write(4 * CS, 10).unwrap());
    core.abort(a);
    assert_ne!(core.generation(), g);
    let c = txn(core.begin_write(2 * CS + 7, 1).unwrap());
    core.commit(c).unwrap();
    core.commit(b).unwrap();
    assert_eq!(core.is_allocated(0, 8 * CS).unwrap(), (false, 2 * CS));
    assert_eq!(core.is_allocated(2 * CS, 8 * CS).unwrap(), (true, CS));
    assert_eq!(core.is_allocated(4 * CS, 8 * CS).unwrap(), (true, CS));
}

#[test]
fn a_commit_between_lookup_and_claim_turns_the_write_in_place() {
    let (core, _) = core(2 * CS, None);
    let a = txn(core.begin_write(0, 10).unwrap());
    core.commit(a).unwrap();
    // The same write again: the cluster is allocated, in place.
    assert!(matches!(
        step(core.begin_write(0, 10).unwrap()),
        Step::InPlace(10)
    ));
}

#[test]
fn writeback_writes_the_dirty_pages_and_only_them() {
    let (core, meta) = core(40 * CS, None);
    core.commit(txn(core.begin_write(9 * CS, 1).unwrap()))
        .unwrap();
    let Begin::Ready(wb) = core.writeback_begin().unwrap() else {
        panic!("busy")
    };
    assert!(!wb.is_empty());
    core.writeback_write(&wb).unwrap();
    core.writeback_end(wb, true);
    assert_eq!(meta.to_vec()[2560 + 1], 0b10);
    let Begin::Ready(wb) = core.writeback_begin().unwrap() else {
        panic!("busy")
    };
    assert!(wb.is_empty());
    core.writeback_end(wb, true);
}

#[test]
fn a_writeback_that_did_not_reach_the_disk_is_redone() {
    let (core, meta) = core(4 * CS, None);
    core.commit(txn(core.begin_write(0, 1).unwrap())).unwrap();
    let Begin::Ready(wb) = core.writeback_begin().unwrap() else {
        panic!("busy")
    };
    core.writeback_write(&wb).unwrap();
    // The host's flush of the metadata source failed.
    core.writeback_end(wb, false);
    meta.resize(2560).unwrap();
    let Begin::Ready(wb) = core.writeback_begin().unwrap() else {
        panic!("busy")
    };
    assert!(!wb.is_empty(), "the page is dirty again");
    core.writeback_write(&wb).unwrap();
    core.writeback_end(wb, true);
    assert_eq!(meta.to_vec()[2560], 1);
}

#[test]
fn read_only_cores_refuse_writes() {
    let header = Header::new(b"img", None).unwrap();
    let meta = MemStorage::from_bytes(header.to_bytes().to_vec());
    let core = Core::new(
        (Box::new(meta), "m".into()),
        header,
        CS,
        CoreOptions::default(),
    );
    assert_eq!(core.begin_write(0, 1).unwrap_err().errno(), libc::EPERM);
    assert_eq!(
        core.begin_write(0, 0).map(|_| ()).unwrap_err().errno(),
        libc::EPERM
    );
}
