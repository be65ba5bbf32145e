//! Crash and fault simulation of commit and detach (the harness of `tests/common/harness.rs`):
//! at every crash point of a commit (with and without emptying the overlay) and of a detach's
//! flush, the reopened image reads what it read before; once a commit returned, the durable
//! backing file holds the committed content, and once a detach's preparation returned, the
//! durable image file alone holds the whole disk. Faults (EIO, ENOSPC) at every call of a
//! commit: the error comes back, the image still reads the same, and a retry completes it.

mod common;
use common::disk::{Disk, Pick};
use common::harness::{
    assert_crash_clean, assert_faults_clean, backing, read_snapshot, Scenario, Setup, Snapshot,
    Step, CS, IMAGE,
};

/// The backing file's index on the disk.
const BACKING: usize = 2;

fn commit(empty: bool) -> Step {
    let label = match empty {
        true => "commit and empty",
        false => "commit",
    };
    Step::new(
        label,
        true,
        move |img| img.commit(empty),
        move |s, _| {
            if empty {
                s.alloc.iter_mut().for_each(|a| *a = false);
            }
        },
    )
}

fn detach() -> Step {
    Step::new(
        "detach (check and flush)",
        true,
        |img| img.detach_prepare(),
        |_, _| {},
    )
}

fn setup(layout: u32, size: u64, backing: u64, allocated: &[u64]) -> Setup {
    Setup {
        layout,
        ..Setup::new(size, Some(backing), allocated)
    }
}

/// Commit scenarios: both layouts, backing files longer and shorter than the image, clusters
/// allocated at the start and by the steps, with and without emptying, twice in a row, in
/// writethrough, under the all-allocated bit.
fn commit_scenarios() -> Vec<Scenario> {
    let mut out = Vec::new();
    for layout in [1, 2] {
        for empty in [false, true] {
            out.push(
                Scenario::new("commit", setup(layout, 4 * CS, 6 * CS, &[1, 3]))
                    .write(CS / 2, 4096)
                    .then(commit(empty)),
            );
            // A shorter backing file grows; an unaligned size.
            out.push(
                Scenario::new(
                    "commit over a short backing file",
                    setup(layout, 3 * CS + 4096, CS + 100, &[0]),
                )
                .write(2 * CS, 8192)
                .then(commit(empty)),
            );
        }
        out.push(
            Scenario::new("commit twice", setup(layout, 3 * CS, 3 * CS, &[2]))
                .then(commit(true))
                .write(0, 4096)
                .then(commit(true)),
        );
    }
    let writethrough = Setup {
        writethrough: true,
        ..setup(1, 3 * CS, 2 * CS, &[1])
    };
    out.push(
        Scenario::new("commit in writethrough", writethrough)
            .write(2 * CS + 100, 1000)
            .then(commit(true)),
    );
    let full = Setup {
        all_allocated: true,
        ..setup(2, 3 * CS, 3 * CS, &[0, 1, 2])
    };
    out.push(Scenario::new("commit under the all-allocated bit", full).then(commit(true)));
    out
}

#[test]
fn crash_commit() {
    assert_crash_clean("commit", &commit_scenarios());
}

/// What the backing file must hold once `s` committed: what the image read (the last
/// snapshot), then the rest of a longer backing file.
fn committed_backing(s: &Scenario, last: &Snapshot) -> Vec<u8> {
    let len = s.setup.backing.unwrap();
    let mut want = last.bytes.clone();
    if len > last.size {
        want.extend(backing(last.size, len - last.size));
    }
    want
}

/// Runs the steps of `s` on a fresh disk; returns the disk and the image.
fn run(s: &Scenario, steps: &[Step]) -> (Disk, addcow::Image) {
    let disk = Disk::new(s.setup.files());
    let mut img = s.setup.open_disk(&disk).unwrap();
    for step in steps {
        step.run_on(&mut img).unwrap();
    }
    (disk, img)
}

#[test]
fn commit_leaves_the_backing_file_durable() {
    for s in commit_scenarios() {
        let snaps = s.snapshots();
        let (disk, img) = run(&s, &s.steps);
        let durable = disk.materialize(disk.events(), &mut Pick::Nothing);
        let want = committed_backing(&s, snaps.last().unwrap());
        assert!(
            durable[BACKING] == want,
            "{}: the durable backing file is not the committed content",
            s.title()
        );
        let got = read_snapshot(&img).unwrap();
        assert_eq!(got.alloc, snaps.last().unwrap().alloc, "{}", s.title());
    }
}

/// The last unallocated clusters are written, then the detach's flush makes it all durable.
fn detach_scenarios() -> Vec<Scenario> {
    [1, 2]
        .into_iter()
        .map(|layout| {
            Scenario::new("detach", setup(layout, 3 * CS + 512, 4 * CS, &[0, 2]))
                .write(CS, CS)
                .write(3 * CS, 512)
                .then(detach())
        })
        .collect()
}

#[test]
fn crash_detach() {
    let scenarios = detach_scenarios();
    assert_crash_clean("detach", &scenarios);
    for s in &scenarios {
        let (disk, _img) = run(s, &s.steps);
        let durable = disk.materialize(disk.events(), &mut Pick::Nothing);
        let want = s.snapshots().last().unwrap().bytes.clone();
        assert!(
            durable[IMAGE] == want,
            "{}: the durable image file is not the whole disk",
            s.title()
        );
    }
}

#[test]
fn detach_faults() {
    assert_faults_clean("detach faults", &detach_scenarios());
}

#[test]
fn detach_refuses_before_every_cluster_is_allocated() {
    let s = Scenario::new("detach", setup(2, 3 * CS, 3 * CS, &[0, 2]));
    let disk = Disk::new(s.setup.files());
    let img = s.setup.open_disk(&disk).unwrap();
    let e = img.detach_prepare().unwrap_err();
    assert_eq!(e.errno(), libc::EBUSY, "{e}");
    assert!(e.to_string().contains("1 of 3 clusters"), "{e}");
    assert_eq!(disk.events(), 0, "a refused detach wrote something");
}

/// A commit failing at each of its calls with `errno` (the steps before it flushed first, so
/// that "before" is durable): the error comes back, the live image and the image reopened
/// (current or durable state) read the same as before, and a retried commit completes with the
/// backing file right.
fn commit_faults(errno: i32) {
    let mut checked = 0;
    for s in commit_scenarios() {
        let snaps = s.snapshots();
        let (before, after) = (&snaps[snaps.len() - 2], snaps.last().unwrap());
        let prefix = &s.steps[..s.steps.len() - 1];
        let last = s.steps.last().unwrap();
        let calls = {
            let (disk, mut img) = run(&s, prefix);
            img.flush().unwrap();
            let first = disk.calls();
            last.run_on(&mut img).unwrap();
            disk.calls() - first
        };
        for n in 0..calls {
            let at = format!("{}: errno {errno} at call {n}/{calls}", s.title());
            let (disk, mut img) = run(&s, prefix);
            img.flush().unwrap();
            disk.arm(n, errno);
            let result = last.run_on(&mut img);
            let fired = disk.fired().unwrap_or_else(|| panic!("{at}: never fired"));
            let e = result.expect_err(&format!("{at}: {fired} failed, yet commit succeeded"));
            assert_eq!(e.errno(), errno, "{at}: {fired}: {e}");
            let same = |what: &str, got: Snapshot| {
                assert!(
                    got.bytes == before.bytes,
                    "{at} ({fired}): {what} reads differently"
                );
            };
            same("the live image", read_snapshot(&img).unwrap());
            for (what, files) in [
                ("reopened from the current state", disk.current()),
                (
                    "reopened from the durable state",
                    disk.materialize(disk.events(), &mut Pick::Nothing),
                ),
            ] {
                same(
                    what,
                    read_snapshot(&s.setup.open_files(files).unwrap()).unwrap(),
                );
            }
            last.run_on(&mut img)
                .unwrap_or_else(|e| panic!("{at}: the retry failed: {e}"));
            let durable = disk.materialize(disk.events(), &mut Pick::Nothing);
            assert!(
                durable[BACKING] == committed_backing(&s, after),
                "{at}: after the retry the durable backing file is wrong"
            );
            assert_eq!(read_snapshot(&img).unwrap().alloc, after.alloc, "{at}");
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} fault runs");
}

#[test]
fn commit_eio() {
    commit_faults(libc::EIO);
}

#[test]
fn commit_enospc() {
    commit_faults(libc::ENOSPC);
}
