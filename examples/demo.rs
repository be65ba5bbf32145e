//! Creates a base image, an add-cow overlay over it, writes, reads back and prints the
//! allocation map.

use addcow::{create, CreateOptions, Image, OpenOptions};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("addcow-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![b'B'; 4 << 16])?;
    let overlay = dir.join("vm.add-cow");
    create(
        &overlay,
        &CreateOptions {
            image_file: PathBuf::from("vm.raw"),
            backing_file: Some(PathBuf::from("base.raw")),
            size: 8 << 16,
            ..Default::default()
        },
    )?;
    let img = Image::open(
        &overlay,
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )?;
    img.write_at(70_000, b"hello, add-cow")?;
    let mut buf = [0u8; 16];
    img.read_at(69_999, &mut buf)?;
    println!("read back: {:?}", String::from_utf8_lossy(&buf));
    let mut offset = 0;
    while offset < img.size() {
        let (allocated, n) = img.is_allocated(offset, u64::MAX)?;
        let from = if allocated {
            "image file"
        } else {
            "backing file"
        };
        println!("{offset:>8} +{n:<8} {from}");
        offset += n;
    }
    img.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
