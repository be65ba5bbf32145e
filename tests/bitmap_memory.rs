//! The bitmap's memory stays under its cap while a scan loads far more pages than fit, measured
//! as the process's peak resident memory (VmHWM). Alone in its test binary, so that no other
//! test allocates meanwhile.

use addcow::bitmap::{Bitmap, Store, MAX_RUN_PAGES, PAGE_BYTES};
use addcow::cluster::Cluster;
use addcow::Result;

/// A bitmap with every bit set, and no holes.
struct Dense;

impl Store for Dense {
    fn read(&self, _: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0xff);
        Ok(())
    }
    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        Ok(Some(offset))
    }
}

/// (VmRSS, VmHWM) in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_scan_of_128_mib_of_bitmap_stays_under_a_4_mib_cap() {
    const PAGES: u64 = 1 << 15;
    const CAP: u64 = 4 << 20;
    let bm = Bitmap::new(PAGES * PAGE_BYTES * 8, CAP);
    let (rss_before, _) = memory();
    let mut c = 0;
    while c < PAGES * PAGE_BYTES * 8 {
        let (state, n) = bm.run(Cluster(c), u64::MAX, &Dense).unwrap();
        assert!(state);
        assert_eq!(
            n,
            MAX_RUN_PAGES as u64 * PAGE_BYTES * 8,
            "one run, bounded visits"
        );
        c += n;
    }
    let (_, peak) = memory();
    let grown = peak.saturating_sub(rss_before);
    assert!(
        grown <= CAP + (2 << 20),
        "peak grew by {} KiB for a {} KiB cap (uncapped: {} KiB)",
        grown >> 10,
        CAP >> 10,
        (PAGES * PAGE_BYTES) >> 10
    );
}
