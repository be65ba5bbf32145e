//! `addcow detach`: the end of an overlay's life, once every cluster is allocated.

use crate::fail::{on, Outcome};
use std::path::PathBuf;

/// Make the raw image file a standalone disk (every cluster must be allocated: hydrate first).
#[derive(clap::Args)]
pub struct Args {
    /// Also delete the `.add-cow` file.
    #[arg(long)]
    remove: bool,
    /// The `.add-cow` file.
    file: PathBuf,
}

pub fn run(a: Args) -> Outcome {
    let path = &a.file;
    let header = super::info::header(path)?;
    let image_file = super::info::resolve(path, &header.image_file);
    addcow::detach(path, a.remove).map_err(on(path))?;
    let removed = match a.remove {
        true => format!("; {} removed", path.display()),
        false => String::new(),
    };
    println!(
        "Detached: {} is a standalone raw disk{removed}.",
        image_file.display()
    );
    Ok(0)
}
