//! `addcow hydrate`: progress on a terminal and off it, SIGINT mid-way, resuming, and the end of
//! the overlay's life (detach).

use crate::common::{ran, Dir};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BASE: u64 = 16 << 20;

fn image(d: &Dir) {
    d.base("base.raw", BASE, BASE);
    d.ok(&["create", "-b", "base.raw", "-o", "img.raw", "o.add-cow"]);
}

fn allocated(d: &Dir) -> (u64, u64) {
    let info = d.json(&["info", "--output=json", "o.add-cow"]);
    let data = &info["format-specific"]["data"];
    (
        data["allocated-clusters"].as_u64().unwrap(),
        data["total-clusters"].as_u64().unwrap(),
    )
}

#[test]
fn sigint_stops_cleanly_and_a_rerun_resumes_to_the_backing_content() {
    let d = Dir::new();
    image(&d);
    // Slow enough (4 MiB/s over 16 MiB) that the signal comes long before the end.
    let mut child = d
        .cmd(&["hydrate", "-p", "--rate", "4M", "o.add-cow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("hydrate: "), "{first}");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let last = rest.last().unwrap();
    assert!(
        last.starts_with("Interrupted: ") && last.contains("run again to resume"),
        "{last}"
    );
    let (done, total) = allocated(&d);
    assert!(done < total, "{done}/{total}: not interrupted");
    // The image is consistent and reads the backing file's content already.
    assert_eq!(d.run(&["check", "o.add-cow"]).code, 0);
    assert!(d
        .ok(&["compare", "o.add-cow", "base.raw"])
        .contains("identical"));

    let out = d.ok(&["hydrate", "o.add-cow"]);
    assert!(
        out.starts_with("Hydrated: 256/256 clusters allocated (100.00%)"),
        "{out}"
    );
    assert_eq!(allocated(&d), (256, 256));
    d.ok(&["detach", "--remove", "o.add-cow"]);
    assert!(!d.path("o.add-cow").exists());
    assert!(d
        .ok(&["compare", "-f", "raw", "img.raw", "base.raw"])
        .contains("identical"));
}

#[test]
fn a_terminal_gets_a_bar_and_a_pipe_plain_lines() {
    let d = Dir::new();
    image(&d);
    let bin = env!("CARGO_BIN_EXE_addcow");
    // script(1) runs the command in a pseudo-terminal; about a second at 16 MiB/s.
    let out = Command::new("script")
        .args([
            "-qfec",
            &format!("{bin} hydrate -p --rate 16M o.add-cow"),
            "/dev/null",
        ])
        .current_dir(d.tmp.path())
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) (util-linux) runs commands in a pseudo-terminal");
    let r = ran(out);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("hydrate ["), "no bar in {:?}", r.stdout);
    assert!(
        r.stdout.contains('\x1b'),
        "no terminal control in {:?}",
        r.stdout
    );
    assert!(r.stdout.contains("Hydrated: 256/256"), "{:?}", r.stdout);

    let d = Dir::new();
    image(&d);
    let out = d.ok(&["hydrate", "-p", "o.add-cow"]);
    assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    assert!(
        out.lines().next().unwrap().starts_with("hydrate: "),
        "{out}"
    );
    assert!(
        out.lines().last().unwrap().starts_with("Hydrated: 256/256"),
        "{out}"
    );
}
