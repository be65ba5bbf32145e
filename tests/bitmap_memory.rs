//! The bitmap's memory stays under its cap while a scan loads far more pages than fit, measured
//! as the process's peak resident memory (VmHWM). Alone in its test binary, so that no other
//! test allocates meanwhile. Driven through the mapping core (the public API), over an
//! `.add-cow` file in memory whose bitmap is all ones and has no holes.

use addcow::layout::Header;
use addcow::mapping::{Core, CoreOptions, Kind};
use addcow::storage::Storage;
use std::io::{self, IoSlice, IoSliceMut};

/// Bitmap bytes per page, and pages one `map` call visits at most (the core's bounded work).
const PAGE_BYTES: u64 = 4096;
const MAX_RUN_PAGES: u64 = 64;
const CS: u64 = 65536;

/// An `.add-cow` file: the header, then a bitmap with every bit set, and no holes. Nothing of
/// it is held in memory.
struct Dense(Vec<u8>);

impl Storage for Dense {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for buf in bufs {
            let head = (self.0.len() as u64)
                .saturating_sub(at)
                .min(buf.len() as u64) as usize;
            if head > 0 {
                buf[..head].copy_from_slice(&self.0[at as usize..at as usize + head]);
            }
            buf[head..].fill(0xff);
            at += buf.len() as u64;
        }
        Ok(())
    }
    fn write_vectored_at(&self, _: &[IoSlice<'_>], _: u64) -> io::Result<()> {
        unreachable!("a read-only core writes nothing")
    }
    fn flush(&self) -> io::Result<()> {
        unreachable!("a read-only core flushes nothing")
    }
    fn len(&self) -> io::Result<u64> {
        Ok(u64::MAX)
    }
    fn resize(&self, _: u64) -> io::Result<()> {
        unreachable!("a read-only core resizes nothing")
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
    let size = PAGES * PAGE_BYTES * 8 * CS;
    let header = Header::new(b"img", None).unwrap();
    let meta = Dense(header.to_bytes());
    let opts = CoreOptions {
        writable: false,
        bitmap_cache_bytes: CAP,
    };
    let core = Core::new((Box::new(meta), "dense".into()), header, size, opts);
    let (rss_before, _) = memory();
    let mut offset = 0;
    while offset < size {
        let extent = core.map(offset, u64::MAX).unwrap();
        assert_eq!(extent.kind, Kind::Data);
        assert_eq!(
            extent.len,
            MAX_RUN_PAGES * PAGE_BYTES * 8 * CS,
            "one run, bounded visits"
        );
        offset += extent.len;
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
