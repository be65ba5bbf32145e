//! The workloads of the crash and fault tests: small images of 64 KiB clusters, each in layout 1
//! and layout 2 (at 64 KiB clusters), over no backing file, a shorter and a longer one, in
//! writeback and in writethrough mode. Writeback workloads end with a flush, so the flush is
//! crashed into too. [`all_allocated`] runs layout 2's "all allocated" bit through its life:
//! set by a flush, kept and cleared by truncates, set again.

use super::harness::{Scenario, Setup, CS};

/// Size of the write workloads: five clusters, the last one partial.
const SIZE: u64 = 5 * CS - 1536;

/// No backing file, one ending inside cluster 2, one longer than the image.
const WRITE_BACKINGS: [Option<u64>; 3] = [None, Some(2 * CS + 700), Some(SIZE + 2 * CS)];

fn setups(size: u64, backings: &[Option<u64>], allocated: &[u64]) -> Vec<Setup> {
    let mut out = Vec::new();
    for layout in [1, 2] {
        for writethrough in [false, true] {
            for &backing in backings {
                out.push(Setup {
                    layout,
                    writethrough,
                    ..Setup::new(size, backing, allocated)
                });
            }
        }
    }
    out
}

/// Layout 2 only, every cluster allocated and the "all allocated" bit set.
fn all_allocated_setups(size: u64, backings: &[Option<u64>]) -> Vec<Setup> {
    let every: Vec<u64> = (0..size.div_ceil(CS)).collect();
    setups(size, backings, &every)
        .into_iter()
        .filter(|s| s.layout == 2)
        .map(|s| Setup {
            all_allocated: true,
            ..s
        })
        .collect()
}

fn with_stale_bits(setups: Vec<Setup>) -> Vec<Setup> {
    setups
        .into_iter()
        .map(|s| Setup {
            stale_bits: true,
            ..s
        })
        .collect()
}

fn each(
    name: &'static str,
    setups: Vec<Setup>,
    steps: impl Fn(Scenario) -> Scenario,
) -> impl Iterator<Item = Scenario> {
    setups
        .into_iter()
        .map(move |setup| steps(Scenario::new(name, setup)))
}

/// Writes to allocated clusters: inside one, unaligned; two whole clusters up to the end.
pub fn in_place() -> Vec<Scenario> {
    each(
        "in-place writes",
        setups(SIZE, &WRITE_BACKINGS, &[1, 3, 4]),
        |s| {
            s.write(CS + 1000, 5000)
                .write(3 * CS, SIZE - 3 * CS)
                .flush()
        },
    )
    .collect()
}

/// Allocating writes (clusters 1 and 3 allocated): partial with head and tail, tail-aligned,
/// cluster-aligned, the partial last cluster, and writes spanning allocated and unallocated
/// clusters.
pub fn allocating() -> Vec<Scenario> {
    let setups = || setups(SIZE, &WRITE_BACKINGS, &[1, 3]);
    each("allocating, partial", setups(), |s| {
        s.write(1000, 3000).write(2 * CS + CS / 2, CS / 2).flush()
    })
    .chain(each("allocating, aligned", setups(), |s| {
        s.write(2 * CS, CS).write(4 * CS, SIZE - 4 * CS).flush()
    }))
    .chain(each("allocating, spanning", setups(), |s| {
        s.write(CS / 2, 3 * CS)
            .write(3 * CS + 10, SIZE - 3 * CS - 10)
            .flush()
    }))
    .collect()
}

/// What a flush made durable survives later writes (cluster 1 allocated).
pub fn flush() -> Vec<Scenario> {
    each(
        "flush, then more writes",
        setups(SIZE, &WRITE_BACKINGS, &[1]),
        |s| {
            s.write(1000, 3000)
                .flush()
                .write(CS + 100, 200)
                .write(2 * CS, CS + 5)
                .flush()
        },
    )
    .collect()
}

/// Writethrough: each write durable when it returns, the next one crashed into (cluster 1
/// allocated).
pub fn writethrough() -> Vec<Scenario> {
    let setups = setups(SIZE, &WRITE_BACKINGS, &[1])
        .into_iter()
        .filter(|s| s.writethrough)
        .collect();
    each("writethrough writes", setups, |s| {
        s.write(100, 1000).write(200, 300).write(CS - 512, 2 * CS)
    })
    .collect()
}

/// Growing: unaligned old size (6 clusters, the last partial, unallocated or allocated) to 11
/// clusters, bitmap 1 to 2 bytes, then a write into the grown area; the same over an `.add-cow`
/// file with stale bits past the end; aligned 4 to 6 clusters. Backing: none, shorter than the
/// old size, between the old and the new size, longer than the new size.
pub fn truncate_grow() -> Vec<Scenario> {
    let (old, new) = (6 * CS - 1000, 10 * CS + 5000);
    let backings = [None, Some(2 * CS + 300), Some(8 * CS), Some(12 * CS)];
    let grow_and_write = |s: Scenario| s.truncate(new).flush().write(7 * CS + 100, 1000).flush();
    each("grow", setups(old, &backings, &[1]), grow_and_write)
        .chain(each(
            "grow, end cluster allocated",
            setups(old, &backings, &[1, 5]),
            |s| s.truncate(new).flush(),
        ))
        .chain(each(
            "grow over stale bits",
            with_stale_bits(setups(old, &backings, &[1])),
            grow_and_write,
        ))
        .chain(each(
            "grow, aligned",
            setups(
                4 * CS,
                &[None, Some(CS + 300), Some(5 * CS), Some(8 * CS)],
                &[1, 3],
            ),
            |s| s.truncate(6 * CS).flush(),
        ))
        .collect()
}

/// Shrinking away allocated clusters, over a backing file with other data there (or none, or
/// a short one): 10 clusters to 6 (bitmap 2 bytes to 1, the new last cluster partial, then
/// written at the new end), 10 to a cluster boundary, 5 to 3 (bitmap stays 1 byte).
pub fn truncate_shrink() -> Vec<Scenario> {
    let old = 10 * CS - 1000;
    let new = 6 * CS - 3000;
    let backings = [None, Some(3 * CS), Some(12 * CS)];
    each(
        "shrink across a bitmap byte",
        setups(old, &backings, &[1, 5, 7, 8, 9]),
        |s| s.truncate(new).flush().write(new - 100, 100).flush(),
    )
    .chain(each(
        "shrink to a cluster boundary",
        setups(old, &backings, &[7, 8, 9]),
        |s| s.truncate(8 * CS).flush(),
    ))
    .chain(each(
        "shrink within a bitmap byte",
        setups(SIZE, &WRITE_BACKINGS, &[1, 2, 3, 4]),
        |s| s.truncate(2 * CS + 700).flush(),
    ))
    .collect()
}

/// Layout 2's "all allocated" bit, set and kept. Set: allocating the last free clusters, then
/// a flush (the header is written after the bitmap is durable). Set at the start: writes in
/// place; a shrink keeps it; a grow over a longer backing file keeps it (the new clusters are
/// allocated), and writes there go in place.
pub fn all_allocated() -> Vec<Scenario> {
    let layout2 = |setups: Vec<Setup>| setups.into_iter().filter(|s| s.layout == 2).collect();
    each(
        "allocate the last clusters, flush",
        layout2(setups(SIZE, &WRITE_BACKINGS, &[1, 3])),
        |s| {
            s.write(CS / 2, 3 * CS)
                .write(4 * CS + 10, SIZE - 4 * CS - 20)
                .flush()
                .write(CS + 100, 300)
                .flush()
        },
    )
    .chain(each(
        "all allocated: in place, shrink",
        all_allocated_setups(SIZE, &WRITE_BACKINGS),
        |s| s.write(2 * CS - 10, 20).truncate(2 * CS + 700).flush(),
    ))
    .chain(each(
        "all allocated: grow over a longer backing file",
        all_allocated_setups(SIZE, &[Some(10 * CS)]),
        |s| s.truncate(GROWN).flush().write(SIZE - 100, 2 * CS).flush(),
    ))
    .collect()
}

/// Where [`all_allocated_cleared`] grows to.
const GROWN: u64 = 8 * CS + 5000;

/// Layout 2's "all allocated" bit, cleared: a grow over a shorter backing file, or none,
/// clears it durably before the new clusters exist; writing every new cluster and a flush set
/// it again.
pub fn all_allocated_cleared() -> Vec<Scenario> {
    each(
        "all allocated: grow, fill, flush",
        all_allocated_setups(SIZE, &[None, Some(2 * CS + 700)]),
        |s| {
            s.truncate(GROWN)
                .flush()
                .write(SIZE - 100, GROWN - SIZE + 100)
                .flush()
        },
    )
    .collect()
}

/// Hydration (clusters 1 and 3 allocated): batches of two clusters over runs of one and two,
/// the partial last cluster, clusters past the backing file's end; with a write before it (its
/// cluster is passed over) and after it (in place), then a flush (layout 2: the all-allocated
/// bit). A sub-range, then the rest in one batch.
pub fn hydrate() -> Vec<Scenario> {
    let setups = || setups(SIZE, &WRITE_BACKINGS, &[1, 3]);
    each("hydrate everything", setups(), |s| {
        s.write(4 * CS + 10, 100)
            .hydrate(0, SIZE, 2 * CS)
            .write(2 * CS + 5, 50)
            .flush()
    })
    .chain(each("hydrate in two parts", setups(), |s| {
        s.hydrate(CS + 7, CS, 0).flush().hydrate(0, SIZE, 0).flush()
    }))
    .collect()
}
