//! Per-cluster allocation claims: at most one writer allocates a given cluster at a time.
//!
//! A writer claims every cluster of an unallocated run, in ascending order, before it copies
//! from the backing file; a second writer on any of those clusters waits until the first has
//! set the bits, then sees them allocated and writes in place. Claims on different clusters
//! never wait for each other. The shard mutexes guard only the in-flight sets and are never
//! held across I/O.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    in_flight: Mutex<HashSet<u64>>,
    released: Condvar,
}

/// The clusters being allocated right now.
pub(crate) struct Claims {
    shards: [Shard; SHARDS],
}

/// Clusters claimed by one writer; released on drop.
pub(crate) struct Claim<'a> {
    claims: &'a Claims,
    clusters: Range<u64>,
}

impl Claims {
    pub(crate) fn new() -> Claims {
        Claims {
            shards: std::array::from_fn(|_| Shard::default()),
        }
    }

    fn shard(&self, c: u64) -> &Shard {
        &self.shards[(c % SHARDS as u64) as usize]
    }

    /// Claims `clusters`, waiting for other writers that hold any of them. Claims are taken in
    /// ascending cluster order, so two writers never wait on each other in a cycle.
    pub(crate) fn claim(&self, clusters: Range<u64>) -> Claim<'_> {
        for c in clusters.clone() {
            let shard = self.shard(c);
            let mut set = lock(&shard.in_flight);
            while set.contains(&c) {
                set = shard.released.wait(set).unwrap_or_else(|e| e.into_inner());
            }
            set.insert(c);
        }
        Claim {
            claims: self,
            clusters,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        for c in self.clusters.clone() {
            let shard = self.claims.shard(c);
            lock(&shard.in_flight).remove(&c);
            shard.released.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn overlapping_claims_wait() {
        let claims = Claims::new();
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            let first = claims.claim(0..3);
            s.spawn(|| {
                let _second = claims.claim(2..4);
                assert!(released.load(Ordering::SeqCst), "claimed cluster 2 twice");
            });
            std::thread::sleep(Duration::from_millis(50));
            released.store(true, Ordering::SeqCst);
            drop(first);
        });
    }

    #[test]
    fn disjoint_claims_do_not_wait() {
        let claims = Claims::new();
        let (done, finished) = mpsc::channel();
        std::thread::scope(|s| {
            let _first = claims.claim(0..3);
            s.spawn(|| {
                // Cluster 64 shares cluster 0's shard: still no wait.
                let _other = claims.claim(64..66);
                done.send(()).unwrap();
            });
            finished
                .recv_timeout(Duration::from_secs(10))
                .expect("a claim on other clusters waited for cluster 0..3");
        });
    }
}
