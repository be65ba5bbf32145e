//! The mapping core driven directly, as a host drives it (issue 9): this test is its own host,
//! with its own image file, backing file and `.add-cow` file, and a deterministic scheduler
//! that keeps many guest write requests in flight as explicit state machines and interleaves
//! their steps (begin, busy and retry, in-place writes, head/tail copies, commits, injected
//! failures and aborts) with reads through `map`, metadata write-backs (abandoned ones too),
//! backing-file changes, truncates and crashes.
//!
//! - `files`: the host's byte sources, with what a crash leaves of them;
//! - `model`: what the guest must read and what must be allocated, claimed and durable;
//! - `host`: the host's files, reads and checks, crashes and truncates;
//! - `world`: the requests and the write-back in flight, step by step, each step checked;
//! - `sched`: the random interleavings (seeded; `ADDCOW_CORE_MODEL_SEEDS`,
//!   `ADDCOW_CORE_MODEL_SEED`, `ADDCOW_CORE_MODEL_STEPS` for longer campaigns);
//! - `focused`: the interleavings worth spelling out;
//! - `broken`: hosts that break a rule, to show that the checks catch them.
//!
//! A failing run prints its seed and its last steps: the exact interleaving.

#[path = "../common/mod.rs"]
mod common;

mod broken;
mod files;
mod focused;
mod host;
mod model;
mod sched;
mod stats;
mod trace;
mod world;

use sched::{campaign, Shape};
use stats::Stats;

/// Counts every campaign must reach, so that it cannot pass without exercising them.
fn assert_covered(stats: &Stats, what: &[&str]) {
    for w in what {
        assert!(
            stats.get(w) > 0,
            "the campaign never exercised {w:?}: {stats}"
        );
    }
}

const COVERED: &[&str] = &[
    "busy",
    "in-place writes",
    "allocations",
    "commits",
    "aborts",
    "failed requests",
    "completed requests",
    "overlapping requests",
    "durable write-backs",
    "abandoned write-backs",
    "crashes",
    "truncates",
    "backing changes",
    "full checks",
];

#[test]
fn campaign_small_images() {
    let stats = campaign(Shape::Small, 200, 100);
    assert_covered(&stats, COVERED);
    assert!(stats.get("max in flight") >= 8, "{stats}");
    assert!(stats.get("max claims") >= 3, "{stats}");
}

#[test]
fn campaign_across_bitmap_pages() {
    let stats = campaign(Shape::AcrossPages, 48, 200);
    assert_covered(&stats, COVERED);
    assert_covered(
        &stats,
        &["failed commits", "failed begins", "grows over backing"],
    );
}
