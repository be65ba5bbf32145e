//! `addcow commit`: writes the image's clusters into its backing file, like qemu-img commit.

use crate::fail::{on, Outcome};
use addcow::OpenOptions;
use indicatif::ProgressBar;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// Write every allocated cluster into the backing file, then empty the image (unless -d).
#[derive(clap::Args)]
pub struct Args {
    /// Show that it is working (a spinner on a terminal).
    #[arg(short = 'p', long)]
    progress: bool,
    /// Do not empty the image after the commit (its clusters stay allocated).
    #[arg(short = 'd', long = "no-empty")]
    keep: bool,
    /// The `.add-cow` file.
    file: PathBuf,
}

pub fn run(a: Args) -> Outcome {
    let path = &a.file;
    let spinner = (a.progress && std::io::stdout().is_terminal()).then(|| {
        let s = ProgressBar::new_spinner().with_message("committing");
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let done = addcow::commit(path, &OpenOptions::default(), !a.keep);
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    done.map_err(on(path))?;
    println!("Image committed.");
    Ok(0)
}
