//! Running `addcow` and QEMU's tools in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const K64: u64 = 65536;

/// A temporary directory for one test, removed at the end.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

/// What a command did.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `addcow ARGS` in this directory, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_addcow"));
        c.args(args).current_dir(self.tmp.path());
        c
    }

    /// Runs `addcow ARGS`.
    pub fn run(&self, args: &[&str]) -> Ran {
        ran(self.cmd(args).output().unwrap())
    }

    /// Runs `addcow ARGS`, which must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "addcow {args:?} failed: {}{}",
            r.stdout, r.stderr
        );
        r.stdout
    }

    /// Runs a QEMU tool, which must be installed (scripts/bootstrap.sh installs qemu-utils)
    /// and succeed: its stdout.
    pub fn qemu(&self, tool: &str, args: &[&str]) -> String {
        let out = Command::new(tool)
            .args(args)
            .current_dir(self.tmp.path())
            .output()
            .unwrap_or_else(|e| panic!("{tool} is needed (apt-get install qemu-utils): {e}"));
        let r = ran(out);
        assert_eq!(r.code, 0, "{tool} {args:?} failed: {}", r.stderr);
        r.stdout
    }

    /// A raw file of `len` bytes whose first `data` bytes are a pattern (the rest a hole).
    /// A 1 MiB layout-2 overlay `o.add-cow` (image file `img.raw`) over `base.raw`, 1 MiB of
    /// data.
    pub fn overlay(&self) {
        self.base("base.raw", 1 << 20, 1 << 20);
        self.ok(&[
            "create",
            "-l",
            "2",
            "-b",
            "base.raw",
            "-o",
            "img.raw",
            "o.add-cow",
        ]);
    }

    pub fn base(&self, name: &str, data: u64, len: u64) -> PathBuf {
        let path = self.path(name);
        let bytes: Vec<u8> = (0..data).map(|i| (i / 512 % 251) as u8 + 1).collect();
        std::fs::write(&path, bytes).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len)
            .unwrap();
        path
    }

    /// Writes `len` bytes of `pattern` at `offset` through `addcow bench`.
    pub fn write(&self, file: &str, offset: u64, len: u64, pattern: u8) {
        let (o, s, p) = (offset.to_string(), len.to_string(), pattern.to_string());
        let args = [
            "bench",
            "-w",
            "-q",
            "-c",
            "1",
            "-o",
            &o,
            "-s",
            &s,
            "--pattern",
            &p,
            file,
        ];
        self.ok(&args);
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

pub fn ran(out: Output) -> Ran {
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts that `r` failed with `code` and `addcow: FILE: ` on stderr.
pub fn failed(r: &Ran, code: i32, file: &Path, words: &[&str]) {
    assert_eq!(r.code, code, "stdout {} stderr {}", r.stdout, r.stderr);
    let prefix = format!("addcow: {}: ", file.display());
    assert!(
        r.stderr.starts_with(&prefix),
        "stderr {:?} lacks {prefix:?}",
        r.stderr
    );
    for w in words {
        assert!(r.stderr.contains(w), "stderr {:?} lacks {w:?}", r.stderr);
    }
}
