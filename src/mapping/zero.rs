//! Zeroing whole clusters: write-zeroes and discard mark unallocated clusters allocated without
//! copying anything from the backing file (dm-clone's "discard skips hydration").
//!
//! [`Core::begin_zero`] is [`Core::begin_write`] restricted to whole clusters, so the same
//! claims and generation retry protect it: a guest write racing a zeroing of the same cluster
//! either finds the cluster claimed (busy, and writes in place once it is committed) or has
//! claimed it first (the zeroing is busy, then zeroes the written cluster in place).
//!
//! # Durability contract (what the host does, in order)
//! `Allocate(txn)`: make `txn.cluster_start()..txn.cluster_end()` of the image file read zeros
//! (punch a hole, zero the range, or write zeros) → (writethrough: flush the image file) →
//! [`Core::commit`]. `InPlace(len)`: make those bytes read zeros in place. As for a write, a
//! bit is set only after its cluster reads zeros in the image file.

use super::write::{Begin, Step};
use super::Core;
use crate::error::{Error, Op, Result};

impl Core {
    /// The next step of zeroing the whole clusters `offset..offset + bytes` (`offset` on a
    /// cluster boundary, the end on one or at the image end, `bytes > 0`): in place for
    /// allocated clusters; for unallocated ones a transaction without head or tail (nothing
    /// to copy from the backing file); busy when another request is allocating one of them.
    /// `EPERM` on a read-only image, `EINVAL` past the end or off cluster boundaries.
    pub fn begin_zero(&self, offset: u64, bytes: u64) -> Result<Begin<Step>> {
        if !self.writable {
            return Err(Error::ReadOnly(Op::Write));
        }
        self.check(offset, bytes)?;
        let g = self.geometry();
        let end = offset + bytes;
        let aligned = |at: u64| at % g.cluster_size() == 0;
        if !aligned(offset) || !(aligned(end) || end == self.size()) {
            return Err(Error::invalid(format!(
                "zeroing {offset}+{bytes} is not whole clusters"
            )));
        }
        let step = self.begin_write(offset, bytes)?;
        if let Begin::Ready(Step::Allocate(txn)) = &step {
            debug_assert!(txn.head_len() == 0 && txn.tail_len() == 0);
        }
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Header;
    use crate::mapping::CoreOptions;
    use crate::storage::MemStorage;

    #[test]
    fn whole_clusters_only_and_no_copy_from_the_backing_file() {
        let header = Header::new(b"img", Some(b"base")).unwrap();
        let meta = MemStorage::from_bytes(header.to_bytes().to_vec());
        let opts = CoreOptions {
            writable: true,
            ..CoreOptions::default()
        };
        let size = (4 << 16) + 100;
        let core = Core::new((Box::new(meta), "meta".into()), header, size, opts);
        core.set_backing_len(Some(10 << 16));
        assert!(core.begin_zero(1, 1 << 16).is_err());
        assert!(core.begin_zero(0, 100).is_err());
        let Ok(Begin::Ready(Step::Allocate(txn))) = core.begin_zero(1 << 16, 2 << 16) else {
            panic!("an unallocated run is a transaction");
        };
        assert_eq!((txn.cluster_start(), txn.cluster_end()), (1 << 16, 3 << 16));
        assert_eq!((txn.head_len(), txn.tail_len()), (0, 0));
        assert!(matches!(
            core.begin_zero(2 << 16, 1 << 16),
            Ok(Begin::Busy(_))
        ));
        core.commit(txn).unwrap();
        let Ok(Begin::Ready(Step::Allocate(last))) = core.begin_zero(4 << 16, 100) else {
            panic!("the partial last cluster, to the image end, is whole");
        };
        assert_eq!(last.cluster_end(), size);
        core.abort(last);
        assert!(matches!(
            core.begin_zero(1 << 16, 1 << 16),
            Ok(Begin::Ready(Step::InPlace(n))) if n == 1 << 16
        ));
    }
}
