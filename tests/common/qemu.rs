//! QEMU's tools as the oracle: running `qemu-img` and `qemu-io` so that any failure fails the
//! test, creating the qcow2 overlay with an external data file that does add-cow's job, and
//! reading `qemu-img map --output=json` cluster by cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of a QEMU tool (`qemu-img`, `qemu-io`) from the machine's qemu-utils. QEMU's tools
/// are the oracle of these tests: a missing tool fails the test, it never skips it.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not on PATH: install qemu-utils (apt-get install qemu-utils)")
        })
}

/// A command for QEMU tool `name`, run in `dir`.
pub fn command(name: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(tool(name));
    cmd.current_dir(dir);
    cmd
}

/// Runs a QEMU tool; fails on a non-zero exit or on "error"/"failed" in its output (qemu-io
/// reports a failed command but exits 0). Returns its standard output.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("{stdout}{stderr}").to_lowercase();
    if !out.status.success() || text.contains("error") || text.contains("failed") {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }
    stdout.into_owned()
}

/// Creates `overlay.qcow2` in `dir`: a qcow2 overlay of `size` bytes and `cluster`-byte
/// clusters over the raw file `backing`, with its clusters in the external data file
/// `data.raw` (1:1, as add-cow's image file).
pub fn create_overlay(dir: &Path, backing: &str, cluster: u64, size: u64) {
    run(command("qemu-img", dir)
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!("data_file=data.raw,cluster_size={cluster}"))
        .args(["-b", backing, "-F", "raw", "overlay.qcow2"])
        .arg(size.to_string()));
}

/// One extent of `qemu-img map --output=json`.
#[derive(Clone, Copy, Debug)]
pub struct Extent {
    pub start: u64,
    pub length: u64,
    /// `depth 0 && present`: the overlay itself holds the data.
    pub allocated: bool,
    /// Reads as zeros.
    pub zero: bool,
}

/// The extents of the qcow2 `overlay` (of `size` bytes) that cover each `cluster`-byte cluster,
/// from `qemu-img map`; fails unless the extents cover the image without gaps or overlaps.
pub fn map(overlay: &Path, size: u64, cluster: u64) -> Vec<Vec<Extent>> {
    let json = run(command("qemu-img", overlay.parent().unwrap())
        .args(["map", "-f", "qcow2", "--output=json"])
        .arg(overlay));
    let extents: Vec<serde_json::Value> = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("qemu-img map: not a JSON list ({e}): {json}"));
    let mut clusters = vec![Vec::new(); size.div_ceil(cluster) as usize];
    let mut covered = 0;
    for e in &extents {
        let field = |name: &str| {
            e.get(name)
                .unwrap_or_else(|| panic!("no {name} in qemu-img map extent {e}"))
        };
        let flag = |name: &str| field(name).as_bool().unwrap();
        let extent = Extent {
            start: field("start").as_u64().unwrap(),
            length: field("length").as_u64().unwrap(),
            allocated: field("depth").as_u64() == Some(0) && flag("present"),
            zero: flag("zero"),
        };
        assert_eq!(
            extent.start, covered,
            "qemu-img map: gap or overlap at {}: {json}",
            extent.start
        );
        covered = extent.start + extent.length;
        for c in extent.start / cluster..covered.div_ceil(cluster) {
            clusters[c as usize].push(extent);
        }
    }
    assert_eq!(
        covered, size,
        "qemu-img map does not cover the image: {json}"
    );
    clusters
}
