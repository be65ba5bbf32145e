//! `addcow serve`: serves an image over NBD by running nbdkit with libaddcow's plugin
//! (nbdkit/nbdkit-addcow-plugin.c), in the foreground: the process becomes nbdkit.
//!
//! nbdkit: `$NBDKIT`, else `nbdkit` on the PATH. The plugin: `$ADDCOW_NBDKIT_PLUGIN`, else
//! beside this program (meson's build directory: `nbdkit/` next to it; cargo's target
//! directory inside a checkout: `build/nbdkit/`; an install: `../lib*/nbdkit/plugins/` and the
//! multiarch `../lib/*/nbdkit/plugins/`), else nbdkit's own plugin directory.

use crate::fail::{Failure, Outcome};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGIN: &str = "nbdkit-addcow-plugin.so";

/// Serve an image over NBD with nbdkit and the add-cow plugin (runs in the foreground).
///
/// With neither --socket nor --port, nbdkit listens on TCP port 10809. With --run, nbdkit runs
/// the command ($nbd, $uri, $unixsocket name the server: a private Unix socket unless --socket
/// or --port) and exits with its status.
#[derive(clap::Args)]
pub struct Args {
    /// Listen on this Unix socket.
    #[arg(short = 'U', long, conflicts_with = "port")]
    socket: Option<PathBuf>,
    /// Listen on this TCP port.
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// Serve read-only (read locks: other readers may share the image).
    #[arg(short = 'r', long = "read-only")]
    read_only: bool,
    /// Hydrate the image in the background while serving it.
    #[arg(long, conflicts_with = "read_only")]
    hydrate: bool,
    /// Run this command against the server, then stop (nbdkit --run).
    #[arg(long, value_name = "CMD")]
    run: Option<String>,
    /// The `.add-cow` file.
    file: PathBuf,
}

pub fn run(a: Args) -> Outcome {
    let file = &a.file;
    let nbdkit = nbdkit().ok_or_else(|| {
        Failure::new(
            file,
            "nbdkit is not installed (Debian/Ubuntu: apt-get install nbdkit; Fedora: dnf install \
             nbdkit), or set NBDKIT to its path",
        )
    })?;
    let plugin = plugin(&nbdkit).ok_or_else(|| {
        Failure::new(
            file,
            format!(
                "{PLUGIN} not found: build it with meson (needs nbdkit's plugin header, Debian: \
                 nbdkit-plugin-dev) and install it, or set ADDCOW_NBDKIT_PLUGIN to its path"
            ),
        )
    })?;
    let absolute = std::path::absolute(file).map_err(|e| Failure::new(file, e))?;
    let mut cmd = Command::new(&nbdkit);
    cmd.arg("-f");
    if a.read_only {
        cmd.arg("-r");
    }
    match (&a.socket, &a.run) {
        (Some(socket), _) => cmd.arg("-U").arg(socket),
        (None, Some(_)) if a.port.is_none() => cmd.arg("-U").arg("-"),
        _ => &mut cmd,
    };
    if let Some(port) = a.port {
        cmd.arg("-p").arg(port.to_string());
    }
    if let Some(run) = &a.run {
        cmd.arg("--run").arg(run);
    } else {
        let at = match (&a.socket, a.port) {
            (Some(s), _) => format!("nbd+unix:///?socket={}", s.display()),
            (None, p) => format!("nbd://localhost:{}", p.unwrap_or(10809)),
        };
        eprintln!("addcow: serving {} at {at} (Ctrl-C stops)", file.display());
    }
    cmd.arg(&plugin).arg(format!("file={}", absolute.display()));
    if a.read_only {
        cmd.arg("readonly=true");
    }
    if a.hydrate {
        cmd.arg("hydrate=true");
    }
    let e = cmd.exec();
    Err(Failure::new(
        file,
        format!("cannot run {}: {e}", nbdkit.display()),
    ))
}

/// nbdkit: `$NBDKIT`, else the first `nbdkit` on the PATH.
fn nbdkit() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NBDKIT") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nbdkit"))
        .find(|p| p.is_file())
}

/// The plugin, where the module docs say.
fn plugin(nbdkit: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ADDCOW_NBDKIT_PLUGIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let mut candidates = vec![
        dir.join("nbdkit").join(PLUGIN),
        dir.join("../../build/nbdkit").join(PLUGIN),
    ];
    for lib in glob_dirs(&dir.join(".."), "lib") {
        candidates.push(lib.join("nbdkit/plugins").join(PLUGIN));
        candidates.extend(glob_dirs(&lib, "").map(|d| d.join("nbdkit/plugins").join(PLUGIN)));
    }
    candidates.extend(plugindir(nbdkit).map(|d| d.join(PLUGIN)));
    candidates.into_iter().find(|p| p.is_file())
}

/// The directories in `dir` whose names start with `prefix`.
fn glob_dirs(dir: &Path, prefix: &str) -> impl Iterator<Item = PathBuf> {
    let prefix = prefix.to_owned();
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(move |e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
}

/// nbdkit's own plugin directory (`nbdkit --dump-config`).
fn plugindir(nbdkit: &Path) -> Option<PathBuf> {
    let out = Command::new(nbdkit).arg("--dump-config").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("plugindir="))
        .map(PathBuf::from)
}
