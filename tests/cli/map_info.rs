//! `create`, `map`, `info` and `compare` against qemu-img on the qcow2 twin: a qcow2 image with
//! an external data file over the same raw backing file, after the same writes.

use crate::common::{failed, Dir};
use serde_json::Value;
use std::path::Path;

/// The writes of the workload: (offset, length, pattern). Partial clusters, a run over several
/// clusters, a write past the backing file's end.
const WRITES: [(u64, u64, u8); 4] = [
    (100 << 10, 10 << 10, 1),
    (1400 << 10, 200 << 10, 2),
    (2500 << 10, 4 << 10, 3),
    (0, 512, 4),
];

/// An add-cow image (layout `layout`) and its qcow2 twin over base.raw (1 MiB of data, then a
/// hole to 1.5 MiB), 3 MiB each, after the workload.
fn twins(d: &Dir, layout: &str) {
    d.base("base.raw", 1 << 20, 1536 << 10);
    d.ok(&[
        "create",
        "-l",
        layout,
        "-b",
        "base.raw",
        "-F",
        "raw",
        "-o",
        "img.raw",
        "o.add-cow",
        "3M",
    ]);
    let opts = "data_file=o.data,cluster_size=65536";
    d.qemu(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-o", opts, "-b", "base.raw", "-F", "raw", "o.qcow2",
            "3M",
        ],
    );
    for (offset, len, pattern) in WRITES {
        d.write("o.add-cow", offset, len, pattern);
        let w = format!("write -P {pattern} {offset} {len}");
        d.qemu("qemu-io", &["-f", "qcow2", "-c", &w, "o.qcow2"]);
    }
}

/// Map entries with the offset of depth-0 data left out (add-cow maps 1:1 into its image file;
/// qcow2 into its data file where it allocated).
fn comparable(map: Value) -> Vec<Value> {
    let mut entries = map.as_array().unwrap().clone();
    for e in &mut entries {
        if e["depth"] == 0 && e["data"] == true {
            e.as_object_mut().unwrap().remove("offset");
        }
    }
    entries
}

#[test]
fn map_equals_qemu_img_map_of_the_qcow2_twin() {
    for layout in ["1", "2"] {
        let d = Dir::new();
        twins(&d, layout);
        for range in [&[][..], &["--start-offset=64k", "--max-length=1600k"][..]] {
            let mut ours = vec!["map", "--output=json"];
            ours.extend(range);
            ours.push("o.add-cow");
            let mut theirs = vec!["map", "--output=json"];
            theirs.extend(range);
            theirs.push("o.qcow2");
            let ours = comparable(d.json(&ours));
            let theirs = comparable(serde_json::from_str(&d.qemu("qemu-img", &theirs)).unwrap());
            assert_eq!(ours, theirs, "layout {layout}, {range:?}");
            // The workload shows every kind of entry: own data, backing data, a backing hole,
            // zeros past the backing file.
            let kinds = |depth: u64, data: bool| {
                ours.iter()
                    .any(|e| e["depth"] == depth && e["data"] == data)
            };
            assert!(kinds(0, true) && kinds(1, true) && kinds(1, false) && kinds(0, false));
        }
        let flat = "flat.raw";
        d.qemu("qemu-img", &["convert", "-O", "raw", "o.qcow2", flat]);
        assert!(d
            .ok(&["compare", "o.add-cow", flat])
            .contains("Images are identical."));
    }
}

#[test]
fn info_json_has_qemu_img_info_keys_and_types() {
    let d = Dir::new();
    twins(&d, "2");
    let ours = d.json(&["info", "--output=json", "o.add-cow"]);
    let theirs: Value =
        serde_json::from_str(&d.qemu("qemu-img", &["info", "--output=json", "o.qcow2"])).unwrap();
    for key in [
        "virtual-size",
        "cluster-size",
        "backing-filename",
        "full-backing-filename",
        "backing-filename-format",
        "dirty-flag",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    for key in ["filename", "format", "actual-size", "format-specific"] {
        let kind = |v: &Value| std::mem::discriminant(v);
        assert_eq!(
            kind(&ours[key]),
            kind(&theirs[key]),
            "{key}: {} vs {}",
            ours[key],
            theirs[key]
        );
    }
    assert_eq!(ours["format"], "add-cow");
    assert_eq!(ours["filename"], "o.add-cow");
    assert!(ours["actual-size"].as_u64().unwrap() > 0);
    let data = &ours["format-specific"]["data"];
    assert_eq!(ours["format-specific"]["type"], "add-cow");
    assert_eq!(data["layout"], 2);
    assert_eq!(data["image-file"], "img.raw");
    assert_eq!(data["features"]["all-allocated"], false);
    // Clusters 0 and 1 (writes at 0 and 100k), 21..24 (1400k..1600k), 39 (2500k).
    assert_eq!(
        (
            data["allocated-clusters"].as_u64(),
            data["total-clusters"].as_u64()
        ),
        (Some(7), Some(48))
    );
    assert_eq!(data["in-use"], false);

    let chain = d.json(&["info", "--output=json", "--backing-chain", "o.add-cow"]);
    let chain = chain.as_array().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1]["format"], "raw");
    assert_eq!(chain[1]["virtual-size"], 1536 << 10);

    let human = d.ok(&["info", "o.add-cow"]);
    for line in [
        "file format: add-cow",
        "virtual size: 3 MiB (3145728 bytes)",
        "backing file: base.raw",
        "allocated clusters: 7/48",
    ] {
        assert!(human.contains(line), "{line:?} not in\n{human}");
    }
}

#[test]
fn create_takes_qemu_sizes_and_names_as_given() {
    let d = Dir::new();
    std::fs::create_dir(d.path("sub")).unwrap();
    d.ok(&[
        "create",
        "-l",
        "2",
        "-c",
        "4k",
        "-o",
        "sub/img.raw",
        "a.add-cow",
        "1.5M",
    ]);
    let info = d.json(&["info", "--output=json", "a.add-cow"]);
    assert_eq!(info["virtual-size"], 3 << 19);
    assert_eq!(info["cluster-size"], 4096);
    assert_eq!(info["format-specific"]["data"]["image-file"], "sub/img.raw");
    assert!(info.get("backing-filename").is_none());
    assert_eq!(
        std::fs::metadata(d.path("sub/img.raw")).unwrap().len(),
        3 << 19
    );
    // Layout 1 allows only 64 KiB clusters: the library's message, about the file.
    let r = d.run(&["create", "-c", "4k", "-o", "x.raw", "x.add-cow", "1M"]);
    failed(&r, 1, Path::new("x.add-cow"), &["layout 1"]);
}

#[test]
fn info_reports_an_image_in_use_by_a_writer() {
    let d = Dir::new();
    d.ok(&["create", "-o", "img.raw", "o.add-cow", "1M"]);
    let in_use = |d: &Dir| {
        d.json(&["info", "--output=json", "o.add-cow"])["format-specific"]["data"]["in-use"].clone()
    };
    assert_eq!(in_use(&d), false);
    let opts = addcow::OpenOptions {
        writable: true,
        ..addcow::OpenOptions::default()
    };
    let writer = addcow::Image::open(d.path("o.add-cow"), &opts).unwrap();
    assert_eq!(in_use(&d), true);
    assert!(d.ok(&["info", "o.add-cow"]).contains("in use: yes"));
    writer.close().unwrap();
}

#[test]
fn map_of_a_chain_equals_qemu_img_map_of_the_qcow2_chain() {
    let d = Dir::new();
    d.base("base.raw", 1 << 20, 1536 << 10);
    d.ok(&[
        "create",
        "-l",
        "2",
        "-b",
        "base.raw",
        "-o",
        "mid.raw",
        "mid.add-cow",
    ]);
    d.ok(&[
        "create",
        "-l",
        "2",
        "-b",
        "mid.add-cow",
        "-F",
        "add-cow",
        "-o",
        "top.raw",
        "top.add-cow",
        "2M",
    ]);
    let qcow2 = |name: &str, data: &str, backing: &str, format: &str, size: &str| {
        let opts = format!("data_file={data},cluster_size=65536");
        d.qemu(
            "qemu-img",
            &[
                "create", "-q", "-f", "qcow2", "-o", &opts, "-b", backing, "-F", format, name, size,
            ],
        );
    };
    qcow2("mid.qcow2", "mid.data", "base.raw", "raw", "1536K");
    qcow2("top.qcow2", "top.data", "mid.qcow2", "qcow2", "2M");
    for (image, offset, len, pattern) in [
        ("mid", 128 << 10, 64 << 10, 5),
        ("top", 0, 4096, 6),
        ("top", 1400 << 10, 300 << 10, 7),
    ] {
        d.write(&format!("{image}.add-cow"), offset, len, pattern);
        let w = format!("write -P {pattern} {offset} {len}");
        d.qemu(
            "qemu-io",
            &["-f", "qcow2", "-c", &w, &format!("{image}.qcow2")],
        );
    }
    let ours = comparable(d.json(&["map", "--output=json", "top.add-cow"]));
    let theirs = d.qemu("qemu-img", &["map", "--output=json", "top.qcow2"]);
    assert_eq!(ours, comparable(serde_json::from_str(&theirs).unwrap()));
    assert!(ours.iter().any(|e| e["depth"] == 2) && ours.iter().any(|e| e["depth"] == 1));
    let human = d.ok(&["map", "top.add-cow"]);
    for file in ["top.raw", "mid.raw", "base.raw"] {
        assert!(human.contains(file), "{file} not in\n{human}");
    }
}

#[test]
fn create_confine_refuses_names_outside_the_directory() {
    let d = Dir::new();
    std::fs::create_dir(d.path("vm")).unwrap();
    d.base("base.raw", 4096, 1 << 20);
    let r = d.run(&[
        "create",
        "--confine",
        "-b",
        "../base.raw",
        "-o",
        "img.raw",
        "vm/o.add-cow",
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.starts_with("addcow: vm/o.add-cow: "),
        "{}",
        r.stderr
    );
    assert!(!d.path("vm/o.add-cow").exists());
    // Without --confine the name is stored as given and resolves against vm/.
    d.ok(&[
        "create",
        "-b",
        "../base.raw",
        "-o",
        "img.raw",
        "vm/o.add-cow",
    ]);
    let info = d.json(&["info", "--output=json", "vm/o.add-cow"]);
    assert_eq!(info["backing-filename"], "../base.raw");
    assert_eq!(info["full-backing-filename"], "vm/../base.raw");
    let r = d.run(&["create", "-o", "x.raw", "x.add-cow", "12Q"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("invalid size '12Q'"), "{}", r.stderr);
}

/// qemu-img's size rule: no SIZE takes the backing file's, an explicit 0 is an empty image.
#[test]
fn create_size_zero_is_explicit_and_none_takes_the_backing_size() {
    let d = Dir::new();
    d.base("base.raw", 4096, 1 << 20);
    d.ok(&["create", "-b", "base.raw", "-o", "a.raw", "a.add-cow"]);
    assert_eq!(
        d.json(&["info", "--output=json", "a.add-cow"])["virtual-size"],
        1 << 20
    );
    d.ok(&["create", "-b", "base.raw", "-o", "z.raw", "z.add-cow", "0"]);
    assert_eq!(
        d.json(&["info", "--output=json", "z.add-cow"])["virtual-size"],
        0
    );
}
