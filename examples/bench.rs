//! Measures the data path against raw file I/O on the same files (page cache warm, so the
//! numbers show the library's own overhead): random 4 KiB reads and writes of allocated
//! clusters, on 1 and 2 threads, and first writes that allocate.
//!
//! `cargo run --release --example bench [MiB]`

use addcow::storage::{FileStorage, Storage};
use addcow::{create, CreateOptions, Image, OpenOptions};
use std::path::PathBuf;
use std::time::Instant;

const BLOCK: usize = 4096;
const OPS: u64 = 200_000;

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Runs `op(offset)` OPS times per thread on random 4 KiB-aligned offsets; returns ops/s.
fn run(threads: u64, size: u64, op: &(dyn Fn(u64) + Sync)) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
                for _ in 0..OPS {
                    op(rng(&mut seed) % (size / BLOCK as u64) * BLOCK as u64);
                }
            });
        }
    });
    (OPS * threads) as f64 / start.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args().nth(1).map_or(Ok(256), |a| a.parse())?;
    let size = mib << 20;
    let dir = std::env::temp_dir().join(format!("addcow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("base.raw"), vec![1u8; size as usize])?;
    create(
        dir.join("vm.add-cow"),
        &CreateOptions {
            image_file: PathBuf::from("vm.raw"),
            backing_file: Some(PathBuf::from("base.raw")),
            size,
            ..Default::default()
        },
    )?;
    let img = Image::open(
        dir.join("vm.add-cow"),
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )?;

    let start = Instant::now();
    let chunk = vec![2u8; 1 << 20];
    for off in (0..size).step_by(chunk.len()) {
        img.write_at(off, &chunk)?;
    }
    let alloc = size as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64();
    println!("allocating 1 MiB writes: {alloc:.0} MiB/s");

    let raw = FileStorage::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("vm.raw"))?,
    );
    let buf = [3u8; BLOCK];
    for threads in [1, 2] {
        let r_raw = run(threads, size, &|o| {
            raw.read_at(&mut [0u8; BLOCK], o).unwrap()
        });
        let r_img = run(threads, size, &|o| {
            img.read_at(o, &mut [0u8; BLOCK]).unwrap()
        });
        let w_raw = run(threads, size, &|o| raw.write_at(&buf, o).unwrap());
        let w_img = run(threads, size, &|o| img.write_at(o, &buf).unwrap());
        println!(
            "{threads} thread(s), 4 KiB random: read {:.0} vs raw {:.0} ops/s (ratio {:.2}); write {:.0} vs raw {:.0} ops/s (ratio {:.2})",
            r_img, r_raw, r_img / r_raw, w_img, w_raw, w_img / w_raw
        );
    }
    img.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
