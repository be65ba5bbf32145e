//! Per-cluster allocation claims that never wait: at most one transaction allocates a given
//! cluster at a time, and a second one is told "busy" at once instead of blocking.
//!
//! The claimed ranges live in one interval map behind a mutex that guards only the map: it is
//! held for a lookup and an insert or a removal, never across I/O or a host callback. The
//! generation changes at every release (under the same mutex), so a caller told "busy" at
//! generation `g` knows that something it waited for was released once the generation is no
//! longer `g`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The clusters being allocated right now.
#[derive(Default)]
pub(crate) struct Claims {
    /// start → end (exclusive) of every claimed range; the ranges never overlap.
    held: Mutex<BTreeMap<u64, u64>>,
    generation: AtomicU64,
}

/// A claimed range of clusters. Owned (no borrow of the claims), so that a host can keep it in
/// a handle between the calls of a transaction; it must be given back with
/// [`Claims::release`], or the clusters stay claimed.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a claim must be released"]
pub(crate) struct Claim(Range<u64>);

impl Claim {
    pub(crate) fn clusters(&self) -> Range<u64> {
        self.0.clone()
    }
}

impl Claims {
    fn held(&self) -> MutexGuard<'_, BTreeMap<u64, u64>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `clusters` (non-empty) whole, or nothing: `Err(generation)` when any of them is
    /// claimed already.
    pub(crate) fn try_claim(&self, clusters: Range<u64>) -> Result<Claim, u64> {
        debug_assert!(clusters.start < clusters.end);
        let mut held = self.held();
        // The range starting last at or before our end is the only one that can overlap us
        // (ranges never overlap each other).
        let overlaps = held
            .range(..clusters.end)
            .next_back()
            .is_some_and(|(_, &end)| end > clusters.start);
        if overlaps {
            return Err(self.generation.load(Ordering::Acquire));
        }
        held.insert(clusters.start, clusters.end);
        Ok(Claim(clusters))
    }

    /// Whether any cluster is claimed.
    pub(crate) fn any(&self) -> bool {
        !self.held().is_empty()
    }

    /// Gives a claim back and moves the generation on.
    pub(crate) fn release(&self, claim: Claim) {
        let mut held = self.held();
        let removed = held.remove(&claim.0.start);
        debug_assert_eq!(removed, Some(claim.0.end), "released a claim never taken");
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Moves the generation on for another event a request may wait for (a finished
    /// write-back).
    pub(crate) fn advance(&self) {
        let _held = self.held();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes at every release.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_claims_are_busy_until_released() {
        let claims = Claims::default();
        let a = claims.try_claim(3..6).unwrap();
        for r in [0..4, 5..9, 4..5, 0..100] {
            assert_eq!(claims.try_claim(r.clone()), Err(0), "{r:?}");
        }
        let b = claims.try_claim(6..8).unwrap();
        let c = claims.try_claim(0..3).unwrap();
        claims.release(a);
        assert_eq!(claims.generation(), 1);
        let d = claims.try_claim(4..5).unwrap();
        assert_eq!(claims.try_claim(2..4), Err(1));
        for claim in [b, c, d] {
            claims.release(claim);
        }
        assert_eq!(claims.generation(), 4);
        claims.release(claims.try_claim(0..100).unwrap());
    }

    #[test]
    fn a_claim_never_waits_even_when_busy() {
        let claims = Claims::default();
        let held = claims.try_claim(0..1).unwrap();
        // On one thread, with the claim held: a blocking claim would hang here.
        assert!(claims.try_claim(0..2).is_err());
        assert_eq!(claims.try_claim(1..2).map(|c| c.clusters()), Ok(1..2));
        claims.release(held);
    }
}
