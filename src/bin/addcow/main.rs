//! `addcow`: the command-line tool for add-cow images, in the manner of `qemu-img`: one
//! subcommand per step of an image's life (create, info, map, check, hydrate, commit, detach,
//! resize, compare, bench, serve), qemu-img's option spellings, `--output=json` with qemu-img's
//! keys, `-p` progress, meaningful exit codes. A consumer of the library's Rust API: every
//! subcommand is a few calls into `addcow`, in its own file under `cmd/`.
//!
//! Failures print `addcow: FILE: message` on stderr and exit non-zero ([`fail::Failure`]).

mod cmd;
mod fail;
mod output;
mod progress;
mod size;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Create, inspect, hydrate and detach add-cow disk images.
///
/// An add-cow image is a raw image file with a backing file: a small `.add-cow` file names both
/// and keeps one bit per cluster (0 = read the backing file, 1 = read the image file). Sizes take
/// qemu-img's suffixes (k, M, G, T, P, E: powers of 1024). Exit status 0 on success, non-zero
/// on failure with `addcow: FILE: message` on stderr, 1 for a usage error (check, compare and
/// hydrate have codes of their own: see their --help).
#[derive(Parser)]
#[command(name = "addcow", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Create(cmd::create::Args),
    Info(cmd::info::Args),
    Map(cmd::map::Args),
    Check(cmd::check::Args),
    Hydrate(cmd::hydrate::Args),
    Commit(cmd::commit::Args),
    Detach(cmd::detach::Args),
    Resize(cmd::resize::Args),
    Compare(cmd::compare::Args),
    Bench(cmd::bench::Args),
    Serve(cmd::serve::Args),
    Completions(cmd::completions::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(e),
    };
    let result = match cli.command {
        Command::Create(a) => cmd::create::run(a),
        Command::Info(a) => cmd::info::run(a),
        Command::Map(a) => cmd::map::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Hydrate(a) => cmd::hydrate::run(a),
        Command::Commit(a) => cmd::commit::run(a),
        Command::Detach(a) => cmd::detach::run(a),
        Command::Resize(a) => cmd::resize::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Completions(a) => cmd::completions::run::<Cli>(a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("addcow: {failure}");
            ExitCode::from(failure.code)
        }
    }
}

/// `--help` and `--version` (exit 0), or a usage error: exit 1 as qemu-img does, not clap's 2,
/// which `check` uses for corruptions.
fn usage(e: clap::Error) -> ExitCode {
    let _ = e.print();
    match e.use_stderr() {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    }
}
