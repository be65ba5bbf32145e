//! `commit`, `resize`, `compare`, `bench` and `detach`, with their failures.

use crate::common::{failed, Dir, K64};
use std::path::Path;

#[test]
fn commit_writes_the_backing_file_and_empties_unless_d() {
    for keep in [false, true] {
        let d = Dir::new();
        d.overlay();
        d.write("o.add-cow", K64, 4096, 9);
        let mut args = vec!["commit", "-p"];
        if keep {
            args.push("-d");
        }
        args.push("o.add-cow");
        assert_eq!(d.ok(&args), "Image committed.\n");
        let base = std::fs::read(d.path("base.raw")).unwrap();
        assert_eq!(&base[K64 as usize..K64 as usize + 4096], &[9u8; 4096][..]);
        let info = d.json(&["info", "--output=json", "o.add-cow"]);
        let allocated = info["format-specific"]["data"]["allocated-clusters"].as_u64();
        assert_eq!(allocated, Some(keep as u64), "keep {keep}");
        assert!(d
            .ok(&["compare", "o.add-cow", "base.raw"])
            .contains("identical"));
    }
}

#[test]
fn resize_grows_and_shrinks_only_with_shrink() {
    let d = Dir::new();
    d.overlay();
    let size = |d: &Dir| d.json(&["info", "--output=json", "o.add-cow"])["virtual-size"].as_u64();
    assert_eq!(d.ok(&["resize", "o.add-cow", "+1M"]), "Image resized.\n");
    assert_eq!(size(&d), Some(2 << 20));
    let r = d.run(&["resize", "o.add-cow", "-512k"]);
    failed(&r, 1, Path::new("o.add-cow"), &["--shrink"]);
    d.ok(&["resize", "--shrink", "o.add-cow", "-512k"]);
    assert_eq!(size(&d), Some(1536 << 10));
    d.ok(&["resize", "o.add-cow", "3M"]);
    assert_eq!(size(&d), Some(3 << 20));
    failed(
        &d.run(&["resize", "o.add-cow", "3Q"]),
        1,
        Path::new("o.add-cow"),
        &["invalid size"],
    );
}

#[test]
fn compare_reports_the_first_difference_and_sizes() {
    let d = Dir::new();
    d.overlay();
    assert_eq!(d.run(&["compare", "o.add-cow", "base.raw"]).code, 0);
    d.write("o.add-cow", 5000, 3, 0xee);
    let r = d.run(&["compare", "o.add-cow", "base.raw"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (1, "Content mismatch at offset 5000!\n")
    );
    // A longer image matches where its extra bytes read zeros, unless strict.
    let d = Dir::new();
    d.overlay();
    d.ok(&["resize", "o.add-cow", "2M"]);
    assert_eq!(d.run(&["compare", "o.add-cow", "base.raw"]).code, 0);
    assert_eq!(d.run(&["compare", "-s", "o.add-cow", "base.raw"]).code, 1);
    failed(
        &d.run(&["compare", "o.add-cow", "nothing.raw"]),
        2,
        Path::new("nothing.raw"),
        &["No such file"],
    );
}

#[test]
fn bench_reads_and_writes_like_qemu_img_bench() {
    let d = Dir::new();
    d.overlay();
    let out = d.ok(&[
        "bench",
        "-w",
        "-c",
        "64",
        "-d",
        "4",
        "-s",
        "8k",
        "-S",
        "16k",
        "--pattern",
        "0x3",
        "o.add-cow",
    ]);
    assert!(out.starts_with("Sending 64 write requests, 8192 bytes each, 4 in parallel (starting at offset 0, step size 16384)\n"), "{out}");
    assert!(out.contains("Run completed in "), "{out}");
    // 64 requests 16k apart cover the whole 1 MiB image: every cluster written.
    let info = d.json(&["info", "--output=json", "o.add-cow"]);
    assert_eq!(info["format-specific"]["data"]["allocated-clusters"], 16);
    let mut expected = std::fs::read(d.path("base.raw")).unwrap();
    for chunk in expected.chunks_mut(16384) {
        chunk[..8192].fill(3);
    }
    std::fs::write(d.path("expected.raw"), expected).unwrap();
    assert!(d
        .ok(&["compare", "o.add-cow", "expected.raw"])
        .contains("identical"));
    d.ok(&["bench", "-q", "-c", "100", "-t", "none", "o.add-cow"]);
    let r = d.run(&["bench", "-s", "2M", "o.add-cow"]);
    failed(&r, 1, Path::new("o.add-cow"), &["do not fit"]);
}

#[test]
fn detach_needs_every_cluster() {
    let d = Dir::new();
    d.overlay();
    let r = d.run(&["detach", "o.add-cow"]);
    failed(
        &r,
        1,
        Path::new("o.add-cow"),
        &["16 of 16 clusters are not allocated"],
    );
    d.ok(&["hydrate", "o.add-cow"]);
    let out = d.ok(&["detach", "o.add-cow"]);
    assert!(out.contains("img.raw is a standalone raw disk"), "{out}");
    assert!(d.path("o.add-cow").exists());
}
