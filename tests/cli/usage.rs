//! `--help`, `--version`, completions, and `serve` without nbdkit.

use crate::common::{failed, Dir};
use std::path::Path;

const SUBCOMMANDS: [&str; 12] = [
    "create",
    "info",
    "map",
    "check",
    "hydrate",
    "commit",
    "detach",
    "resize",
    "compare",
    "bench",
    "serve",
    "completions",
];

#[test]
fn every_subcommand_has_help() {
    let d = Dir::new();
    let top = d.ok(&["--help"]);
    for sub in SUBCOMMANDS {
        assert!(top.contains(sub), "{sub} not in --help");
        let help = d.ok(&[sub, "--help"]);
        assert!(help.contains(&format!("Usage: addcow {sub}")), "{help}");
    }
    assert!(d.ok(&["--version"]).starts_with("addcow 0."));
    let r = d.run(&["info"]);
    assert_eq!(r.code, 1, "a usage error exits 1, as qemu-img's do");
    assert!(r.stderr.contains("Usage: addcow info"), "{}", r.stderr);
}

#[test]
fn completions_for_every_shell() {
    let d = Dir::new();
    for (shell, mark) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef addcow"),
        ("fish", "complete -c addcow"),
    ] {
        let script = d.ok(&["completions", shell]);
        assert!(script.contains(mark), "{shell}: {script}");
        assert!(script.contains("hydrate"), "{shell}");
    }
}

#[test]
fn serve_says_how_to_install_nbdkit() {
    let d = Dir::new();
    let r = d
        .cmd(&["serve", "o.add-cow"])
        .env("PATH", d.tmp.path())
        .env_remove("NBDKIT")
        .output()
        .unwrap();
    let r = crate::common::ran(r);
    failed(
        &r,
        1,
        Path::new("o.add-cow"),
        &["nbdkit is not installed", "apt-get install nbdkit"],
    );
    let r = d
        .cmd(&["serve", "o.add-cow"])
        .env("ADDCOW_NBDKIT_PLUGIN", d.path("none.so"))
        .env("NBDKIT", "/bin/false")
        .output()
        .unwrap();
    // /bin/false stands for nbdkit: it ran (exec), and failed.
    assert_eq!(r.status.code(), Some(1));
}
