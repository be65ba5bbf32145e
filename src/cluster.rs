//! Cluster indexes: the unit the layout's geometry and the bitmap both count in. On the ground
//! floor so that neither of them depends on the other.

#![forbid(unsafe_code)]

use std::ops::{Add, Sub};

/// The index of a cluster: cluster `c` holds the image bytes from `c` times the cluster size on,
/// and its bit is bit `c % 8` of bitmap byte `c / 8`. Neither a byte offset nor a number of
/// clusters: `layout::Geometry` converts offsets, `cluster + n` steps over `n` clusters and
/// `end - first` is the number of clusters from `first` up to (not including) `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cluster(pub u64);

impl Add<u64> for Cluster {
    type Output = Cluster;
    fn add(self, clusters: u64) -> Cluster {
        Cluster(self.0 + clusters)
    }
}

impl Sub for Cluster {
    /// A number of clusters.
    type Output = u64;
    fn sub(self, first: Cluster) -> u64 {
        self.0 - first.0
    }
}
