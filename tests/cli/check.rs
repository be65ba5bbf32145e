//! `addcow check` on hand-corrupted images: qemu-img check's exit codes.

use crate::common::{failed, Dir};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// The overlay, with a write so that it has an allocated cluster.
fn image(d: &Dir) {
    d.overlay();
    d.write("o.add-cow", 0, 4096, 7);
}

fn poke(d: &Dir, name: &str, at: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.path(name))
        .unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn a_clean_image_exits_0() {
    let d = Dir::new();
    image(&d);
    let r = d.run(&["check", "o.add-cow"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("No errors were found on the image."));
    assert!(r.stdout.contains("1/16 = 6.25% allocated"), "{}", r.stdout);
}

#[test]
fn a_corrupt_header_exits_2() {
    let d = Dir::new();
    image(&d);
    // Layout 2's incompatible feature bit 0 (byte 24): an image no reader may open.
    poke(&d, "o.add-cow", 24, &[1]);
    let r = d.run(&["check", "o.add-cow"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ERROR: header:"), "{}", r.stdout);
    let r = d.run(&["check", "--output=json", "o.add-cow"]);
    assert_eq!(r.code, 2);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(json["corruptions"], 1);
    assert_eq!(json["findings"][0]["severity"], "corruption");
    // Nothing to repair without guessing: still 2.
    assert_eq!(d.run(&["check", "-r", "all", "o.add-cow"]).code, 2);
}

#[test]
fn a_missing_backing_file_exits_2() {
    let d = Dir::new();
    image(&d);
    std::fs::remove_file(d.path("base.raw")).unwrap();
    assert_eq!(d.run(&["check", "o.add-cow"]).code, 2);
}

#[test]
fn stale_bytes_are_a_leak_exit_3_and_repaired_by_r_leaks() {
    let d = Dir::new();
    image(&d);
    let len = std::fs::metadata(d.path("o.add-cow")).unwrap().len();
    poke(&d, "o.add-cow", len + 100, &[0xff]);
    let r = d.run(&["check", "o.add-cow"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("leaked clusters were found"),
        "{}",
        r.stdout
    );
    let r = d.run(&["check", "-r", "leaks", "--output=json", "o.add-cow"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (json["leaks"].as_u64(), json["leaks-fixed"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(std::fs::metadata(d.path("o.add-cow")).unwrap().len(), len);
    assert_eq!(d.run(&["check", "o.add-cow"]).code, 0);
}

#[test]
fn a_file_that_cannot_be_checked_exits_1() {
    let d = Dir::new();
    let r = d.run(&["check", "missing.add-cow"]);
    failed(&r, 1, Path::new("missing.add-cow"), &["No such file"]);
}
