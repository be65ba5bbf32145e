//! Crash and fault simulation of changing the backing file a header names
//! (`Core::set_backing_file`, on the recording disk of `tests/common/disk.rs`): at every crash
//! point, keeping none, all or random subsets (torn at sector granularity) of the unflushed
//! writes, the `.add-cow` file opens and names the old or the new backing file, with the bitmap
//! untouched; once the call returned, the durable file names the new one. A fault at every
//! host call comes back as the call's error, leaves the file naming the old or the new backing
//! file (as it is and as durable), the core naming the old one, and a retry completes.

mod common;
use addcow::layout::{BackingFormat, Header};
use addcow::mapping::{read_header, Core, CoreOptions};
use addcow::storage::MemStorage;
use common::disk::{Disk, Pick};
use common::Rng;

const SIZE: u64 = 40 << 16;

type Backing = Option<(&'static [u8], BackingFormat)>;

/// The `.add-cow` file's bytes: `header`, then a bitmap with a pattern of set bits.
fn meta(header: &Header) -> Vec<u8> {
    let mut bytes = header.to_bytes();
    let clusters = SIZE.div_ceil(1 << header.cluster_bits());
    let len = header.file_len(clusters) as usize;
    let bitmap_at = bytes.len();
    bytes.resize(len, 0);
    for (i, b) in bytes[bitmap_at..bitmap_at + clusters.div_ceil(8) as usize]
        .iter_mut()
        .enumerate()
    {
        *b = (i as u8).wrapping_mul(37) | 1;
    }
    bytes
}

fn core_on(disk: &Disk, header: &Header) -> Core {
    let opts = CoreOptions {
        writable: true,
        ..CoreOptions::default()
    };
    Core::new(
        (Box::new(disk.file(0)), "add-cow".into()),
        header.clone(),
        SIZE,
        opts,
    )
}

/// The header the bytes hold, and that their bitmap is `bitmap`'s.
fn header_of(bytes: &[u8], bitmap: &[u8], what: &str) -> Header {
    let header = read_header(&MemStorage::from_bytes(bytes.to_vec()), "add-cow")
        .unwrap_or_else(|e| panic!("{what}: the header does not open: {e}"));
    let at = header.bitmap_offset() as usize;
    assert!(bytes[at..] == bitmap[at..], "{what}: the bitmap changed");
    header
}

/// The scenarios: a starting header and the backing file to switch to.
fn scenarios() -> Vec<(&'static str, Header, Backing)> {
    let raw = BackingFormat::Raw;
    let v2 = |backing: Backing, bits| Header::new_v2(b"disk.raw", backing, bits).unwrap();
    let long: &'static [u8] = Box::leak(vec![b'l'; 3000].into_boxed_slice());
    vec![
        (
            "layout 1: another name",
            Header::new(b"disk.raw", Some(b"base-with-a-long-name.raw")).unwrap(),
            Some((b"b.raw", raw)),
        ),
        (
            "layout 1: remove",
            Header::new(b"disk.raw", Some(b"base.raw")).unwrap(),
            None,
        ),
        (
            "layout 1: add",
            Header::new(b"disk.raw", None).unwrap(),
            Some((&[b'n'; 500], raw)),
        ),
        (
            "layout 2: another name and format",
            v2(Some((b"base.raw", raw)), 12),
            Some((b"next.acow", BackingFormat::AddCow)),
        ),
        (
            "layout 2: a long name across sectors",
            v2(Some((b"base.raw", raw)), 16),
            Some((long, raw)),
        ),
        ("layout 2: remove", v2(Some((b"base.raw", raw)), 16), None),
        ("layout 2: add", v2(None, 12), Some((b"base.raw", raw))),
    ]
}

fn is_old_or_new(got: &Header, old: &Header, new: &Header, what: &str) {
    assert!(
        got == old || got == new,
        "{what}: the header names {:?}, neither the old {:?} nor the new {:?}",
        got.backing_file.as_deref().map(String::from_utf8_lossy),
        old.backing_file.as_deref().map(String::from_utf8_lossy),
        new.backing_file.as_deref().map(String::from_utf8_lossy),
    );
}

#[test]
fn every_crash_point_reads_the_old_or_the_new_header() {
    for (name, old, backing) in scenarios() {
        let new = old.with_backing(backing).unwrap();
        let start = meta(&old);
        let disk = Disk::new(vec![("add-cow".into(), start.clone())]);
        let core = core_on(&disk, &old);
        core.set_backing_file(backing).unwrap();
        assert_eq!(core.header(), new, "{name}: the core's header");
        let events = disk.events();
        assert!(
            events >= 2,
            "{name}: {events} events: a write and a flush at least"
        );
        let mut rng = Rng::new(7);
        for point in 0..=events {
            let mut picks = vec![Pick::Nothing, Pick::Everything];
            picks.extend((0..16).map(|_| Pick::Random(Rng::new(rng.next()))));
            for mut pick in picks {
                let what = format!("{name}, crash at {point} of {events}");
                let bytes = &disk.materialize(point, &mut pick)[0];
                let got = header_of(bytes, &start, &what);
                is_old_or_new(&got, &old, &new, &what);
                if point == events {
                    assert_eq!(got, new, "{what}: durable once the call returned");
                }
            }
        }
    }
}

#[test]
fn a_fault_at_every_call_leaves_the_old_or_the_new_header_and_a_retry_completes() {
    for (name, old, backing) in scenarios() {
        let new = old.with_backing(backing).unwrap();
        let start = meta(&old);
        for n in 0.. {
            let disk = Disk::new(vec![("add-cow".into(), start.clone())]);
            let core = core_on(&disk, &old);
            disk.arm(n, libc::EIO);
            let result = core.set_backing_file(backing);
            let Some(call) = disk.fired() else {
                result.unwrap();
                assert!(n > 2, "{name}: only {n} calls");
                break;
            };
            let what = format!("{name}, {call} failed");
            let e = result.expect_err(&what);
            assert_eq!(e.errno(), libc::EIO, "{what}: {e}");
            assert_eq!(core.header(), old, "{what}: the core changed its header");
            for bytes in [
                &disk.current()[0],
                &disk.materialize(disk.events(), &mut Pick::Nothing)[0],
            ] {
                is_old_or_new(&header_of(bytes, &start, &what), &old, &new, &what);
            }
            core.set_backing_file(backing).unwrap();
            let durable = &disk.materialize(disk.events(), &mut Pick::Nothing)[0];
            assert_eq!(
                header_of(durable, &start, &what),
                new,
                "{what}: after the retry"
            );
        }
    }
}
