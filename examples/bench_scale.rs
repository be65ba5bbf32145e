//! Measures what the bitmap costs at large virtual sizes, on sparse files in /dev/shm (tmpfs
//! allows files of 2^56 bytes and more; the disk file system here stops at 16 TiB):
//!
//! - open of a 16 TiB and of a 2^56-byte image (best of several opens);
//! - a full map (`is_allocated` from 0 to the end, in a loop) of a 2^50-byte image with 16,777
//!   allocated clusters spread over it;
//! - one `is_allocated` of 4 KiB in an allocated cluster whose bitmap page is in memory (the
//!   lookup every guest read makes);
//! - the peak memory (VmHWM) of each case, each measured in a child process of its own.
//!
//! `cargo run --release --example bench_scale`

use addcow::{create, CreateOptions, Image, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CLUSTER: u64 = 65536;
/// Bitmap offset in the `.add-cow` file (layout 1).
const BITMAP_AT: u64 = 2560;
const ALLOCATED: u64 = 16_777;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "child" {
        return child(&args[2], Path::new(&args[3]));
    }
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return Err("/dev/shm is missing: the benchmark needs tmpfs for its sparse files".into());
    }
    let dir = shm.join(format!("addcow-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_cases(&dir);
    std::fs::remove_dir_all(&dir)?;
    result
}

fn run_cases(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    make_image(&dir.join("16t.add-cow"), 16 << 40)?;
    make_image(&dir.join("2p56.add-cow"), 1 << 56)?;
    let map = dir.join("2p50.add-cow");
    make_image(&map, 1 << 50)?;
    allocate_spread(&map, 1 << 50)?;
    for case in ["noop", "open16t", "open2p56", "map2p50"] {
        let out = Command::new(std::env::current_exe()?)
            .args(["child", case, &dir.to_string_lossy()])
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "case {case} failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

/// An image of `size` bytes: a sparse image file and a sparse `.add-cow` file, no backing file.
fn make_image(meta: &Path, size: u64) -> Result<(), Box<dyn std::error::Error>> {
    let name = meta.with_extension("raw");
    create(
        meta,
        &CreateOptions {
            image_file: PathBuf::from(name.file_name().expect("a file name")),
            size,
            ..Default::default()
        },
    )?;
    Ok(())
}

/// Sets the bits of `ALLOCATED` clusters spread evenly over the image, straight in the
/// `.add-cow` file (their data stays a hole and reads zeros, which is all a map needs).
fn allocate_spread(meta: &Path, size: u64) -> Result<(), Box<dyn std::error::Error>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(meta)?;
    let stride = size / CLUSTER / ALLOCATED;
    for i in 0..ALLOCATED {
        let c = i * stride + i % 97;
        file.write_all_at(&[1 << (c % 8)], BITMAP_AT + c / 8)?;
    }
    Ok(())
}

fn child(case: &str, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    match case {
        "noop" => println!("process baseline: peak memory {} KiB", peak_kib()?),
        "open16t" => open_case("16 TiB", &dir.join("16t.add-cow"))?,
        "open2p56" => open_case("2^56 B", &dir.join("2p56.add-cow"))?,
        "map2p50" => map_case(&dir.join("2p50.add-cow"))?,
        _ => return Err(format!("unknown case {case}").into()),
    }
    Ok(())
}

fn open_case(what: &str, meta: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let img = Image::open(meta, &OpenOptions::default())?;
        best = best.min(start.elapsed());
        drop(img);
    }
    println!(
        "open {what}: {:.1} us (best of 5); peak memory {} KiB",
        best.as_secs_f64() * 1e6,
        peak_kib()?
    );
    Ok(())
}

fn map_case(meta: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let img = Image::open(meta, &OpenOptions::default())?;
    let size = img.size();
    let start = Instant::now();
    let (mut offset, mut calls, mut allocated) = (0, 0u64, 0u64);
    let mut first_allocated = None;
    while offset < size {
        let (state, n) = img.is_allocated(offset, size - offset)?;
        if state {
            allocated += n / CLUSTER;
            first_allocated.get_or_insert(offset);
        }
        offset += n;
        calls += 1;
    }
    let elapsed = start.elapsed();
    if allocated != ALLOCATED {
        return Err(format!("map found {allocated} allocated clusters, not {ALLOCATED}").into());
    }
    println!(
        "full map of 2^50 B with {ALLOCATED} allocated clusters: {:.1} ms, {calls} calls; peak memory {} KiB",
        elapsed.as_secs_f64() * 1e3,
        peak_kib()?
    );
    let hot = first_allocated.expect("allocated clusters were found");
    let n = 2_000_000u32;
    let start = Instant::now();
    for _ in 0..n {
        assert!(img.is_allocated(hot, 4096)?.0);
    }
    println!(
        "is_allocated of 4 KiB in a cached allocated cluster: {:.1} ns/call",
        start.elapsed().as_secs_f64() * 1e9 / f64::from(n)
    );
    Ok(())
}

/// This process's peak resident memory (VmHWM), in KiB.
fn peak_kib() -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed VmHWM")?
        .parse()?)
}
