//! The life of a VM disk, as libaddcow serves it:
//! 1. a golden image (raw) and a new VM disk over it: an empty raw image file, a small layout-2
//!    `.add-cow` file; the VM can start at once;
//! 2. the "VM" writes while a background job hydrates the disk (copies the golden image's
//!    clusters in), progress printed as it goes; the guest's writes always win;
//! 3. every cluster allocated: the image is detached, the `.add-cow` file removed, and the raw
//!    image file alone is the disk, byte for byte what the guest saw.
//!
//! `scripts/demo.sh` runs it and then checks the raw file with `qemu-img compare`.
//! Usage: `demo [DIR]` (default: a fresh directory under the temporary directory, removed at
//! the end; a given DIR is kept, with `vm.raw` and `expected.raw` in it).

use addcow::{create, detach, CreateOptions, HydrateJob, HydrateOptions, Image, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keep = std::env::args().nth(1).map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("addcow-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;

    // 1. The golden image, and a VM disk over it.
    let golden: Vec<u8> = (0..SIZE).map(|i| (i / 4096 % 251) as u8).collect();
    std::fs::write(dir.join("golden.raw"), &golden)?;
    let meta = dir.join("vm.add-cow");
    create(
        &meta,
        &CreateOptions {
            image_file: PathBuf::from("vm.raw"),
            backing_file: Some(PathBuf::from("golden.raw")),
            size: SIZE,
            layout: 2,
            ..Default::default()
        },
    )?;
    println!(
        "created {} over golden.raw: {} MiB, layout 2",
        meta.display(),
        SIZE / MIB
    );
    let img = Arc::new(Image::open(
        &meta,
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )?);
    report("at start", &img)?;

    // 2. The guest writes while the disk hydrates at 32 MiB/s.
    let job = HydrateJob::start(
        img.clone(),
        &HydrateOptions {
            rate: 32 * MIB,
            ..Default::default()
        },
    )?;
    let mut expected = golden;
    let started = Instant::now();
    for (n, offset) in (0..SIZE).step_by((5 * MIB + 12_345) as usize).enumerate() {
        let data = format!("guest write {n} at {offset}").into_bytes();
        img.write_at(offset, &data)?;
        expected[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        std::thread::sleep(Duration::from_millis(150));
        let p = job.progress();
        println!(
            "  {:>5.1} s  guest wrote {} bytes at {offset:>9}; hydrated {:>4}/{} clusters, {:>3} MiB/s",
            started.elapsed().as_secs_f64(),
            data.len(),
            p.done,
            p.total,
            p.bytes_per_sec / MIB
        );
    }
    let outcome = job.wait(None);
    println!(
        "hydration: {outcome:?} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    report("after hydration", &img)?;
    let mut seen = vec![0u8; SIZE as usize];
    img.read_at(0, &mut seen)?;
    assert!(
        seen == expected,
        "the disk must read what the guest wrote over the golden image"
    );
    drop(job);
    Arc::into_inner(img)
        .expect("the job has let go of the image")
        .close()?;

    // 3. Detach: the raw file is the disk.
    detach(&meta, true)?;
    let raw = std::fs::read(dir.join("vm.raw"))?;
    println!(
        "detached: vm.add-cow removed; vm.raw ({} MiB) {} what the guest saw",
        raw.len() as u64 / MIB,
        if raw == expected {
            "equals"
        } else {
            "DIFFERS FROM"
        }
    );
    assert!(raw == expected);
    match keep {
        Some(_) => std::fs::write(dir.join("expected.raw"), &expected)?,
        None => std::fs::remove_dir_all(&dir)?,
    }
    Ok(())
}

/// Prints how much of the disk is in its own raw file.
fn report(when: &str, img: &Image) -> addcow::Result<()> {
    let a = img.allocation()?;
    println!(
        "{when}: {}/{} clusters allocated in vm.raw",
        a.allocated, a.total
    );
    Ok(())
}
