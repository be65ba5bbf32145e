//! `addcow resize`: grows or shrinks an image, like qemu-img resize.

use crate::fail::{on, Failure, Outcome};
use addcow::{Image, OpenOptions};
use std::path::PathBuf;

/// Change the virtual size: SIZE, +SIZE (grow by) or -SIZE (shrink by; needs --shrink).
#[derive(clap::Args)]
pub struct Args {
    /// Allow shrinking (data past the new end is lost).
    #[arg(long)]
    shrink: bool,
    /// The `.add-cow` file.
    file: PathBuf,
    /// New size, or +SIZE / -SIZE relative to the current one.
    #[arg(allow_hyphen_values = true)]
    size: String,
}

pub fn run(a: Args) -> Outcome {
    let path = &a.file;
    let opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let image = Image::open(path, &opts).map_err(on(path))?;
    let old = image.size();
    let parse = |s: &str| crate::size::parse(s).map_err(|e| Failure::new(path, e));
    let size = match a.size.as_bytes().first() {
        Some(b'+') => old.checked_add(parse(&a.size[1..])?),
        Some(b'-') => old.checked_sub(parse(&a.size[1..])?),
        _ => Some(parse(&a.size)?),
    }
    .ok_or_else(|| Failure::new(path, format!("{} from {old} bytes is out of range", a.size)))?;
    if size < old && !a.shrink {
        return Err(Failure::new(
            path,
            "use the --shrink option to perform a shrink operation (data past the new end is lost)",
        ));
    }
    image.truncate(size).map_err(on(path))?;
    image.close().map_err(on(path))?;
    println!("Image resized.");
    Ok(0)
}
