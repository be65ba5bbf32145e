//! The scheduler: from a seed, an image and a long interleaving of the steps of many requests
//! in flight, reads, write-backs and injected failures, with crashes at any point and
//! truncates and backing-file changes between requests.
//!
//! Liveness: a request told busy is retried once the generation moved (sometimes before, to
//! check that it is busy again). Draining the requests in flight (before a truncate, a backing
//! change, a clean reopen and at the end) must finish within a bound, and must never reach a
//! point where every request waits for a generation that nothing in flight can move.

use crate::common::Rng;
use crate::files::{clusters, BackingFile, CS};
use crate::host::{Fault, Host, Setup, PAGE_CLUSTERS};
use crate::model::ReqId;
use crate::stats::Stats;
use crate::trace::{note, traced};
use crate::world::{Inject, WbInject, World};
use addcow::mapping::PAGE_COST;

/// The images a campaign runs on.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// At most six clusters: every request meets others.
    Small,
    /// Just over two bitmap pages (or 150), used around the first page boundaries and at the
    /// end, with a cache of one or two pages: bitmap pages are evicted and loaded again while
    /// requests run.
    AcrossPages,
}

/// What the world stops for.
enum Event {
    End,
    Crash,
    Truncate,
}

/// Runs one seed for `steps` scheduler steps with a host that has `fault`; returns what it
/// exercised.
pub fn run(shape: Shape, seed: u64, steps: u64, fault: Fault) -> Stats {
    traced(&format!("{shape:?} seed {seed}"), || {
        scenario(shape, seed, steps, fault)
    })
}

fn scenario(shape: Shape, seed: u64, steps: u64, fault: Fault) -> Stats {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let setup = setup(shape, &mut rng);
    let max_in_flight = rng.range(2, 10) as usize;
    let mut host = Host::new(&setup, seed);
    host.fault = fault;
    let mut core = host.open();
    let mut left = steps;
    loop {
        let event = run_world(&mut World::new(&mut host, &core), max_in_flight, &mut left);
        match event {
            Event::End => break,
            Event::Crash => core = host.crash(core),
            Event::Truncate => {
                let size = truncate_target(&mut host);
                host.truncate(&mut core, size);
            }
        }
    }
    World::new(&mut host, &core).writeback_complete();
    host.check_all(&core);
    // Everything was written back: the crash loses nothing (the model checks it).
    let allocated = host.model.allocated_set();
    drop(host.crash(core));
    assert_eq!(
        host.model.allocated_set(),
        allocated,
        "lost by a crash after a write-back"
    );
    host.stats.bump("seeds");
    host.stats
}

fn setup(shape: Shape, rng: &mut Rng) -> Setup {
    let (size, cache_bytes) = match shape {
        Shape::Small => (rng.range(0, 5) * CS + odd(rng), 0),
        Shape::AcrossPages => {
            // Now and then far longer: unallocated runs longer than `map` scans at once.
            let pages = if rng.chance(25) { 150 } else { 2 };
            let n = pages * PAGE_CLUSTERS + rng.range(2, 40);
            (n * CS + odd(rng), rng.range(1, 2) * PAGE_COST)
        }
    };
    let size = size.max(1);
    let backing = backing_len(rng, size, &[]);
    Setup {
        size,
        backing,
        cache_bytes,
        holes: rng.chance(50),
    }
}

/// 0 half of the time (a size that is a whole number of clusters), else 1..CS.
fn odd(rng: &mut Rng) -> u64 {
    match rng.chance(50) {
        true => 0,
        false => rng.range(1, CS - 1),
    }
}

/// A backing file's length (none, shorter, as long, longer, at a cluster boundary ± a bit),
/// near the `spots` where requests go when there are some.
fn backing_len(rng: &mut Rng, size: u64, spots: &[std::ops::Range<u64>]) -> Option<u64> {
    let near = |rng: &mut Rng, at: u64| at.saturating_add_signed(rng.range(0, 3000) as i64 - 1500);
    Some(match rng.below(10) {
        0 | 1 => return None,
        2 => size,
        3 => size + rng.range(1, 3 * CS),
        4 | 5 if !spots.is_empty() => {
            let r = &spots[rng.below(spots.len() as u64) as usize];
            let at = rng.range(r.start, r.end) / CS * CS;
            near(rng, at)
        }
        4 | 5 => {
            let at = rng.below(clusters(size) + 1) * CS;
            near(rng, at)
        }
        _ => match spots {
            [] => rng.below(size + 1),
            _ => {
                let r = &spots[rng.below(spots.len() as u64) as usize];
                rng.range(r.start, r.end)
            }
        },
    })
}

fn truncate_target(host: &mut Host) -> u64 {
    let size = host.model.size;
    let rng = &mut host.rng;
    let delta = rng.range(0, 3) * CS + odd(rng);
    let target = if clusters(size) <= 16 {
        rng.range(1, 7 * CS)
    } else {
        match rng.below(4) {
            0 => PAGE_CLUSTERS * CS + delta,
            1 => 2 * PAGE_CLUSTERS * CS + delta,
            2 => size.saturating_sub(delta),
            _ => size + delta,
        }
    };
    target.max(1)
}

fn run_world(w: &mut World, max_in_flight: usize, left: &mut u64) -> Event {
    while *left > 0 {
        *left -= 1;
        w.host.stats.bump("steps");
        match w.host.rng.below(1000) {
            0..=3 => return Event::Crash,
            4..=7 => {
                drain(w);
                if w.host.rng.chance(50) {
                    w.writeback_complete();
                }
                return Event::Crash;
            }
            8..=15 => {
                drain(w);
                return Event::Truncate;
            }
            16..=23 => {
                drain(w);
                let b = new_backing(w.host);
                w.set_backing(b);
            }
            24..=31 => w.host.check_all(w.core),
            _ => action(w, max_in_flight),
        }
    }
    drain(w);
    Event::End
}

fn new_backing(host: &mut Host) -> BackingFile {
    let spots = host.regions();
    let (size, version) = (host.model.size, host.backing.version);
    let rng = &mut host.rng;
    BackingFile {
        len: backing_len(rng, size, if spots.len() > 1 { &spots } else { &[] }),
        version: version + rng.below(2),
    }
}

/// One random step: a new request, a step of one in flight, a read, or a write-back step.
fn action(w: &mut World, max_in_flight: usize) {
    let roll = w.host.rng.below(100);
    let in_flight = w.in_flight();
    if roll < 30 && in_flight.len() < max_in_flight {
        let (offset, len) = pick_range(w.host);
        w.start(offset, len);
    } else if roll < 75 && !in_flight.is_empty() {
        let id = in_flight[w.host.rng.below(in_flight.len() as u64) as usize];
        // A request waiting for the generation is retried early now and then: busy again.
        if w.runnable(id) || w.host.rng.chance(10) {
            step(w, id);
        }
    } else if roll < 90 {
        let (offset, len) = pick_range(w.host);
        w.read(offset, len);
        probe(w);
    } else {
        let inject = wb_inject(&mut w.host.rng);
        w.wb_step(inject);
    }
}

/// Steps everything in flight to its end.
pub fn drain(w: &mut World) {
    let budget = 60 * (w.in_flight().len() as u64 + 2);
    for _ in 0..budget {
        if w.quiescent() {
            return;
        }
        let runnable: Vec<_> = w
            .in_flight()
            .into_iter()
            .filter(|&id| w.runnable(id))
            .collect();
        if runnable.is_empty() && !w.wb_open() {
            panic!(
                "livelock: requests {:?} wait for a generation that nothing in flight moves",
                w.in_flight()
            );
        }
        if runnable.is_empty() || (w.wb_open() && w.host.rng.chance(20)) {
            let inject = wb_inject(&mut w.host.rng);
            w.wb_step(inject);
        } else {
            let id = runnable[w.host.rng.below(runnable.len() as u64) as usize];
            step(w, id);
        }
    }
    panic!(
        "no progress: requests {:?} still in flight after {budget} steps",
        w.in_flight()
    );
}

/// Steps request `id`, maybe with a failure.
fn step(w: &mut World, id: ReqId) {
    let inject = inject(&mut w.host.rng);
    w.step(id, inject);
}

fn inject(rng: &mut Rng) -> Inject {
    match rng.below(100) {
        0..=3 => Inject::FailBeforeWrite,
        4..=7 => Inject::FailMidWrite(rng.below(3 * CS)),
        8..=11 => Inject::AbortAfterWrite,
        12..=17 => Inject::FailCommitRead,
        18..=21 => Inject::FailBeginRead,
        _ => Inject::None,
    }
}

fn wb_inject(rng: &mut Rng) -> WbInject {
    match rng.below(100) {
        0..=7 => WbInject::Abandon,
        8..=12 => WbInject::FailWrite(rng.below(3) as u32),
        13..=17 => WbInject::FailSync,
        _ => WbInject::None,
    }
}

/// A range where requests go: often near a cluster boundary, mostly short, sometimes over
/// several clusters.
fn pick_range(host: &mut Host) -> (u64, u64) {
    let regions = host.regions();
    let rng = &mut host.rng;
    let r = &regions[rng.below(regions.len() as u64) as usize];
    let offset = match rng.chance(40) {
        true => {
            let boundary = rng.range(r.start / CS, (r.end - 1) / CS + 1) * CS;
            boundary
                .saturating_add_signed(rng.range(0, 3000) as i64 - 1500)
                .clamp(r.start, r.end - 1)
        }
        false => rng.range(r.start, r.end - 1),
    };
    let len = match rng.below(100) {
        0..=54 => rng.range(1, 3000),
        55..=84 => rng.range(1, 2 * CS),
        _ => rng.range(1, 3 * CS),
    };
    (offset, len.min(r.end - offset))
}

/// `map` from anywhere (at and past the end too) for any length, up to the largest.
fn probe(w: &mut World) {
    let size = w.host.model.size;
    let rng = &mut w.host.rng;
    let offset = rng.below(size + 10);
    let bytes = match rng.below(3) {
        0 => 1,
        1 => rng.range(1, 4 * CS),
        _ => u64::MAX,
    };
    let e = w.core.map(offset, bytes).unwrap();
    w.host.model.check_extent(offset, bytes, e);
    w.host.stats.bump("probes");
}

/// The seeds and steps of a campaign: `ADDCOW_CORE_MODEL_SEEDS` (count),
/// `ADDCOW_CORE_MODEL_SEED` (the first) and `ADDCOW_CORE_MODEL_STEPS` (per seed) for longer
/// ones.
pub fn campaign(shape: Shape, seeds: u64, steps: u64) -> Stats {
    let var = |name: &str, default: u64| {
        std::env::var(name).ok().map_or(default, |v| {
            v.parse().unwrap_or_else(|_| panic!("{name}={v}"))
        })
    };
    let first = var("ADDCOW_CORE_MODEL_SEED", 0);
    let seeds = var("ADDCOW_CORE_MODEL_SEEDS", seeds);
    let steps = var("ADDCOW_CORE_MODEL_STEPS", steps);
    let mut total = Stats::default();
    for seed in first..first + seeds {
        total.add(&run(shape, seed, steps, Fault::None));
    }
    note(format!("{shape:?}: {total}"));
    eprintln!(
        "{shape:?}, seeds {first}..{}, {steps} steps each: {total}",
        first + seeds
    );
    total
}
