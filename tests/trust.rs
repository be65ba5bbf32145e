//! Trust: one regression test (at least) for each way a hostile or careless user could lose or
//! expose data — two users of one image, chain aliasing, special files, extreme sizes, failure
//! leftovers, and names that leave their directory. Locking is checked against QEMU's own
//! `qemu-io`, both ways.

mod common;

use addcow::layout::Header;
use addcow::storage::{MemStorage, Storage};
use addcow::{create, Backing, BackingFormat, CreateOptions, Error, Image, OpenOptions, Parts};
use common::qemu::tool as qemu_tool;
use common::{assert_err, ro, rw};
use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CS: u64 = 65536;

/// `dir/disk.add-cow` over `dir/disk.raw` (2 clusters) backed by `dir/base.raw` (2 clusters).
fn image(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("base.raw"), vec![0xBA; 2 * CS as usize]).unwrap();
    let meta = dir.join("disk.add-cow");
    let o = CreateOptions {
        image_file: "disk.raw".into(),
        backing_file: Some("base.raw".into()),
        size: 2 * CS,
        ..CreateOptions::default()
    };
    create(&meta, &o).unwrap();
    meta
}

/// Writes a layout-1 header naming `image` and `backing` (raw bytes, as a hostile header may).
fn write_header(meta: &Path, image: &[u8], backing: Option<&[u8]>) {
    let h = Header::new(image, backing).unwrap();
    let mut bytes = h.to_bytes().to_vec();
    bytes.push(0);
    std::fs::write(meta, bytes).unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// 1. Two users of one image.

#[test]
fn a_second_read_write_open_is_busy_and_the_first_keeps_its_data() {
    let d = tempfile::tempdir().unwrap();
    let meta = image(d.path());
    let first = Image::open(&meta, &rw()).unwrap();
    first.write_at(CS, b"acknowledged").unwrap();
    first.flush().unwrap();
    assert_err(
        Image::open(&meta, &rw()),
        libc::EBUSY,
        &["disk.add-cow", "\"write\" lock", "in use"],
    );
    // A reader is refused too (it would read a bitmap that is being rewritten), unless it
    // asks for force share.
    assert_err(
        Image::open(&meta, &ro()),
        libc::EBUSY,
        &["shared \"write\""],
    );
    let shared = OpenOptions {
        force_share: true,
        ..ro()
    };
    let peek = Image::open(&meta, &shared).unwrap();
    let mut buf = [0u8; 12];
    peek.read_at(CS, &mut buf).unwrap();
    assert_eq!(&buf, b"acknowledged");
    drop((peek, first));
    // Closed: free again, and the acknowledged write is there.
    let again = Image::open(&meta, &rw()).unwrap();
    again.read_at(CS, &mut buf).unwrap();
    assert_eq!(&buf, b"acknowledged");
}

#[test]
fn readers_share_and_exclude_writers_and_force_share_is_read_only() {
    let d = tempfile::tempdir().unwrap();
    let meta = image(d.path());
    let a = Image::open(&meta, &ro()).unwrap();
    let b = Image::open(&meta, &ro()).unwrap();
    assert_err(Image::open(&meta, &rw()), libc::EBUSY, &["\"write\" lock"]);
    drop((a, b));
    let o = OpenOptions {
        force_share: true,
        ..rw()
    };
    assert_err(Image::open(&meta, &o), libc::EINVAL, &["force share"]);
    // The same for sources the caller supplies, which are never locked.
    let header = Header::new(b"img", None).unwrap().to_bytes().to_vec();
    let parts = Parts {
        meta: (Box::new(MemStorage::from_bytes(header)), "meta".into()),
        image: (Box::new(MemStorage::new()), "image".into()),
        backing: None,
    };
    assert_err(Image::open_parts(parts, &o), libc::EINVAL, &["force share"]);
}

#[test]
fn two_overlays_share_one_backing_file_but_nobody_writes_it() {
    let d = tempfile::tempdir().unwrap();
    let meta = image(d.path());
    let o = CreateOptions {
        image_file: "other.raw".into(),
        backing_file: Some("base.raw".into()),
        size: 2 * CS,
        ..CreateOptions::default()
    };
    create(d.path().join("other.add-cow"), &o).unwrap();
    let a = Image::open(&meta, &rw()).unwrap();
    let b = Image::open(d.path().join("other.add-cow"), &rw()).unwrap();
    // An image that would write the golden image is refused while overlays use it.
    write_header(&d.path().join("writer.add-cow"), b"base.raw", None);
    assert_err(
        Image::open(d.path().join("writer.add-cow"), &rw()),
        libc::EBUSY,
        &["base.raw", "\"write\" lock"],
    );
    drop((a, b));
}

/// qemu-io (or qemu-img) from the machine's qemu-utils.
fn qemu_io(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(qemu_tool("qemu-io"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn qemu_io_cannot_write_what_libaddcow_holds() {
    let d = tempfile::tempdir().unwrap();
    let meta = image(d.path());
    let img = Image::open(&meta, &rw()).unwrap();
    for (file, args) in [
        (
            "disk.raw",
            &["-f", "raw", "disk.raw", "-c", "write 0 512"][..],
        ),
        (
            "disk.add-cow",
            &["-f", "raw", "disk.add-cow", "-c", "write 0 512"][..],
        ),
        (
            "base.raw",
            &["-f", "raw", "base.raw", "-c", "write 0 512"][..],
        ),
    ] {
        let out = qemu_io(args, d.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() || err.contains("Failed to get"),
            "qemu-io {args:?} was allowed on {file}: {err}"
        );
        assert!(err.contains("Failed to get"), "{file}: {err}");
    }
    // Raw readers share writes (QEMU's raw driver passes its parent's sharing through), so they
    // may read, as they may read a raw file that another qemu-io writes.
    let out = qemu_io(
        &["-r", "-f", "raw", "disk.raw", "-c", "read 0 512"],
        d.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(img);
    // Released at close.
    let out = qemu_io(&["-f", "raw", "disk.raw", "-c", "write 0 512"], d.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A qemu-io that holds `file` open (read-write unless `-r` is in `args`) until dropped.
struct Holder(Child);

impl Holder {
    fn start(dir: &Path, args: &[&str], file: &str) -> Holder {
        let child = Command::new(qemu_tool("qemu-io"))
            .args(args)
            .arg(file)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let holder = Holder(child);
        let ino = std::fs::metadata(dir.join(file)).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&ino);
        for _ in 0..500 {
            let locks = std::fs::read_to_string("/proc/locks").unwrap();
            if locks.lines().any(|l| l.contains(&format!(":{ino} "))) {
                return holder;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("qemu-io {args:?} {file} never locked it");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn libaddcow_refuses_files_that_qemu_io_writes() {
    let d = tempfile::tempdir().unwrap();
    let meta = image(d.path());
    {
        let _q = Holder::start(d.path(), &["-f", "raw"], "disk.raw");
        assert_err(Image::open(&meta, &rw()), libc::EBUSY, &["disk.raw"]);
        assert_err(Image::open(&meta, &ro()), libc::EBUSY, &["disk.raw"]);
        let shared = OpenOptions {
            force_share: true,
            ..ro()
        };
        Image::open(&meta, &shared).unwrap();
    }
    {
        // A writer of the backing file: every overlay refuses to start over it.
        let _q = Holder::start(d.path(), &["-f", "raw"], "base.raw");
        assert_err(Image::open(&meta, &ro()), libc::EBUSY, &["base.raw"]);
    }
    {
        // A qemu-io reader (which shares writes) does not stop a writer, as in QEMU.
        let _q = Holder::start(d.path(), &["-r", "-f", "raw"], "disk.raw");
        Image::open(&meta, &rw()).unwrap();
    }
    Image::open(&meta, &rw()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. Chain aliasing.

/// base.add-cow (image base-img.raw, backing golden.raw), top.add-cow over it.
fn chain(dir: &Path, top_image: &str) -> Result<(), Error> {
    std::fs::write(dir.join("golden.raw"), vec![0x60; 2 * CS as usize]).unwrap();
    let base = CreateOptions {
        image_file: "base-img.raw".into(),
        backing_file: Some("golden.raw".into()),
        size: 2 * CS,
        ..CreateOptions::default()
    };
    create(dir.join("base.add-cow"), &base).unwrap();
    let top = CreateOptions {
        image_file: top_image.into(),
        backing_file: Some("base.add-cow".into()),
        backing_format: BackingFormat::AddCow,
        size: 2 * CS,
        ..CreateOptions::default()
    };
    create(dir.join("top.add-cow"), &top)
}

#[test]
fn no_file_appears_twice_in_a_chain() {
    for lower in ["base-img.raw", "golden.raw", "base.add-cow"] {
        let d = tempfile::tempdir().unwrap();
        // create refuses, before touching the lower file.
        assert_err(
            chain(d.path(), lower),
            libc::EINVAL,
            &["same file", lower, "image file"],
        );
        assert_eq!(
            std::fs::read(d.path().join("golden.raw")).unwrap(),
            vec![0x60; 2 * CS as usize]
        );
        // A header written by someone else: open refuses.
        write_header(
            &d.path().join("top.add-cow"),
            lower.as_bytes(),
            Some(b"base.add-cow"),
        );
        let o = OpenOptions {
            backing_format: BackingFormat::AddCow,
            ..rw()
        };
        assert_err(
            Image::open(d.path().join("top.add-cow"), &o),
            libc::EINVAL,
            &["same file", lower],
        );
    }
}

#[test]
fn create_refuses_an_add_cow_file_that_is_its_own_backing_file() {
    let d = tempfile::tempdir().unwrap();
    let o = CreateOptions {
        image_file: "disk.raw".into(),
        backing_file: Some("./self.add-cow".into()),
        size: CS,
        ..CreateOptions::default()
    };
    assert_err(
        create(d.path().join("self.add-cow"), &o),
        libc::EINVAL,
        &["backing file", "add-cow file itself"],
    );
    assert_eq!(entries(d.path()), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// 4. Extreme sizes.

#[test]
fn sizes_beyond_2_pow_56_are_efbig_and_create_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    for size in [(1u64 << 56) + 1, 1 << 62, 1 << 63, u64::MAX] {
        let o = CreateOptions {
            image_file: "big.raw".into(),
            size,
            ..CreateOptions::default()
        };
        assert_err(
            create(d.path().join("big.add-cow"), &o),
            libc::EFBIG,
            &["2"],
        );
        assert_eq!(entries(d.path()), Vec::<String>::new(), "size {size}");
    }
    let meta = image(d.path());
    let img = Image::open(&meta, &rw()).unwrap();
    assert_err(img.truncate(1 << 62), libc::EFBIG, &["64 PiB"]);
    assert_eq!(img.size(), 2 * CS);
}

/// A sparse image file of 2^62 bytes needs a file system that allows it: tmpfs does.
#[test]
fn opening_a_2_pow_62_byte_image_file_is_efbig() {
    let d = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) is needed here");
    write_header(&d.path().join("huge.add-cow"), b"huge.raw", None);
    let f = std::fs::File::create(d.path().join("huge.raw")).unwrap();
    f.set_len(1 << 62).unwrap();
    assert_err(
        Image::open(d.path().join("huge.add-cow"), &ro()),
        libc::EFBIG,
        &["huge.raw", "64 PiB"],
    );
}

/// A host byte source that says it is 2^63 - 1 bytes long.
struct Huge;

impl Storage for Huge {
    fn read_vectored_at(&self, bufs: &mut [IoSliceMut<'_>], _: u64) -> std::io::Result<()> {
        bufs.iter_mut().for_each(|b| b.fill(0));
        Ok(())
    }
    fn write_vectored_at(&self, _: &[IoSlice<'_>], _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(i64::MAX as u64)
    }
    fn resize(&self, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_host_length_of_2_pow_63_is_efbig_not_an_abort() {
    let header = Header::new(b"img", None).unwrap().to_bytes().to_vec();
    let parts = Parts {
        meta: (Box::new(MemStorage::from_bytes(header)), "meta".into()),
        image: (Box::new(Huge), "image (host)".into()),
        backing: None,
    };
    assert_err(
        Image::open_parts(parts, &ro()),
        libc::EFBIG,
        &["image (host)"],
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Special files.

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Runs `f` on a thread; fails the test if it does not return within 20 s (a hang).
fn within_20s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[test]
fn only_regular_files_and_block_devices_are_opened() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    mkfifo(&dir.join("fifo"));
    std::fs::create_dir(dir.join("a-dir")).unwrap();
    std::fs::write(dir.join("plain.raw"), vec![0u8; CS as usize]).unwrap();
    type Case<'a> = (&'a [u8], Option<&'a [u8]>, &'a str);
    let cases: [Case; 5] = [
        (b"fifo", None, "a FIFO"),
        (b"a-dir", None, "a directory"),
        (b"plain.raw", Some(b"fifo"), "a FIFO"),
        (b"plain.raw", Some(b"/dev/urandom"), "a character device"),
        (b"plain.raw", Some(b"a-dir"), "a directory"),
    ];
    for (image, backing, kind) in cases {
        let meta = dir.join("x.add-cow");
        write_header(&meta, image, backing);
        for o in [ro(), rw()] {
            let m = meta.clone();
            let got = within_20s("open", move || Image::open(&m, &o).map(|_| ()));
            assert_err(got, libc::EINVAL, &[kind]);
        }
    }
    // The .add-cow file itself.
    for (path, kind) in [
        (dir.join("fifo"), "a FIFO"),
        (dir.join("a-dir"), "a directory"),
    ] {
        let got = within_20s("open", move || Image::open(&path, &rw()).map(|_| ()));
        assert_err(got, libc::EINVAL, &[kind]);
    }
    // create does not write into a FIFO either.
    let fifo = dir.join("fifo");
    let got = within_20s("create", move || {
        create(
            &fifo,
            &CreateOptions {
                image_file: "plain.raw".into(),
                ..CreateOptions::default()
            },
        )
    });
    assert_err(got, libc::EINVAL, &["a FIFO"]);
}

// ---------------------------------------------------------------------------------------------
// 6. Failure leftovers.

/// An image file that refuses to grow past `limit` bytes, as a file system does with EFBIG.
#[derive(Clone)]
struct Limited {
    inner: MemStorage,
    limit: u64,
}

impl Storage for Limited {
    fn read_vectored_at(&self, b: &mut [IoSliceMut<'_>], o: u64) -> std::io::Result<()> {
        self.inner.read_vectored_at(b, o)
    }
    fn write_vectored_at(&self, b: &[IoSlice<'_>], o: u64) -> std::io::Result<()> {
        self.inner.write_vectored_at(b, o)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn resize(&self, len: u64) -> std::io::Result<()> {
        match len > self.limit {
            true => Err(std::io::Error::from_raw_os_error(libc::EFBIG)),
            false => self.inner.resize(len),
        }
    }
}

#[test]
fn a_failed_grow_leaves_both_files_as_they_were() {
    for backing_len in [CS, 8 * CS] {
        let meta =
            MemStorage::from_bytes(Header::new(b"img", Some(b"b")).unwrap().to_bytes().to_vec());
        meta.resize(2560 + 1).unwrap();
        let data = MemStorage::new();
        data.resize(2 * CS + 100).unwrap();
        let limited = Limited {
            inner: data.clone(),
            limit: 3 * CS,
        };
        let parts = Parts {
            meta: (Box::new(meta.clone()), "meta".into()),
            image: (Box::new(limited), "image".into()),
            backing: Some(Backing::raw(
                Box::new(MemStorage::from_bytes(vec![0x77; backing_len as usize])),
                "backing",
            )),
        };
        let img = Image::open_parts(parts, &rw()).unwrap();
        img.write_at(0, b"kept").unwrap();
        img.flush().unwrap();
        let (meta_before, data_before) = (meta.to_vec(), data.to_vec());
        assert_err(img.truncate(100 * CS), libc::EFBIG, &["image"]);
        assert_eq!(img.size(), 2 * CS + 100);
        img.flush().unwrap();
        assert_eq!(
            meta.to_vec().len(),
            meta_before.len(),
            "backing {backing_len}"
        );
        assert_eq!(data.to_vec().len(), data_before.len());
        let mut buf = vec![0u8; (2 * CS + 100) as usize];
        img.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf[..4], b"kept");
        // Guest content as before: the rest of cluster 0, and the backing data after it.
        let want = |i: usize| if (i as u64) < backing_len { 0x77 } else { 0 };
        assert!(buf[4..].iter().enumerate().all(|(i, &b)| b == want(i + 4)));
        // And it still grows within the limit.
        img.truncate(3 * CS).unwrap();
    }
}

#[test]
fn create_replaces_nothing_in_use_and_leaves_no_temporary_file() {
    let d = tempfile::tempdir().unwrap();
    let meta = image(d.path());
    let before = std::fs::read(&meta).unwrap();
    let img = Image::open(&meta, &rw()).unwrap();
    let o = CreateOptions {
        image_file: "new.raw".into(),
        size: CS,
        ..CreateOptions::default()
    };
    assert_err(create(&meta, &o), libc::EBUSY, &["disk.add-cow"]);
    assert_eq!(std::fs::read(&meta).unwrap(), before);
    // The image file in use is not resized either.
    let o = CreateOptions {
        image_file: "disk.raw".into(),
        size: 5 * CS,
        ..CreateOptions::default()
    };
    assert_err(
        create(d.path().join("y.add-cow"), &o),
        libc::EBUSY,
        &["disk.raw"],
    );
    assert_eq!(
        std::fs::metadata(d.path().join("disk.raw")).unwrap().len(),
        2 * CS
    );
    drop(img);
    assert_eq!(
        entries(d.path()),
        ["base.raw", "disk.add-cow", "disk.raw"],
        "no temporary or half-made file is left"
    );
    // A failure after the image file was created removes it (the backing file is a FIFO).
    mkfifo(&d.path().join("fifo"));
    let o = CreateOptions {
        image_file: "fresh.raw".into(),
        backing_file: Some("fifo".into()),
        ..CreateOptions::default()
    };
    assert_err(
        create(d.path().join("z.add-cow"), &o),
        libc::EINVAL,
        &["FIFO"],
    );
    assert_eq!(
        entries(d.path()),
        ["base.raw", "disk.add-cow", "disk.raw", "fifo"]
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Confinement.

#[test]
fn confined_opens_refuse_names_that_leave_the_directory() {
    let d = tempfile::tempdir().unwrap();
    let inner = d.path().join("images");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(d.path().join("secret.raw"), vec![0x5E; CS as usize]).unwrap();
    std::fs::write(inner.join("disk.raw"), vec![0u8; CS as usize]).unwrap();
    symlink("../secret.raw", inner.join("link.raw")).unwrap();
    let secret = d.path().join("secret.raw");
    let confined = OpenOptions {
        confine: true,
        ..rw()
    };
    let meta = inner.join("x.add-cow");
    let abs = secret.as_os_str().as_bytes().to_vec();
    let hostile: [(&[u8], Option<&[u8]>); 6] = [
        (&abs, None),
        (b"../secret.raw", None),
        (b"link.raw", None),
        (b"disk.raw", Some(&abs)),
        (b"disk.raw", Some(b"../secret.raw")),
        (b"disk.raw", Some(b"/dev/zero")),
    ];
    for (image, backing) in hostile {
        write_header(&meta, image, backing);
        assert_err(Image::open(&meta, &confined), libc::EACCES, &["leaves"]);
        let confined_ro = OpenOptions {
            confine: true,
            ..ro()
        };
        assert_err(Image::open(&meta, &confined_ro), libc::EACCES, &["leaves"]);
    }
    // Without confinement the same header is obeyed (QEMU does the same for qcow2 data files).
    write_header(&meta, b"disk.raw", Some(b"../secret.raw"));
    let img = Image::open(&meta, &ro()).unwrap();
    let mut buf = [0u8; 4];
    img.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, [0x5E; 4]);
    drop(img);
    // Names that stay beneath are fine, symlinks included.
    std::fs::create_dir(inner.join("sub")).unwrap();
    std::fs::write(inner.join("sub/base.raw"), vec![1u8; CS as usize]).unwrap();
    symlink("sub/base.raw", inner.join("base-link.raw")).unwrap();
    write_header(&meta, b"./sub/../disk.raw", Some(b"base-link.raw"));
    Image::open(&meta, &confined).unwrap();
    // create under confinement refuses too, before touching anything.
    let o = CreateOptions {
        image_file: "../made.raw".into(),
        size: CS,
        confine: true,
        ..CreateOptions::default()
    };
    assert_err(
        create(inner.join("y.add-cow"), &o),
        libc::EACCES,
        &["leaves"],
    );
    assert!(!d.path().join("made.raw").exists());
}

#[test]
fn confinement_holds_at_every_level_of_a_chain() {
    let d = tempfile::tempdir().unwrap();
    let top_dir = d.path().join("top");
    std::fs::create_dir_all(top_dir.join("lower")).unwrap();
    std::fs::write(d.path().join("outside.raw"), vec![9u8; CS as usize]).unwrap();
    std::fs::write(top_dir.join("lower/base-img.raw"), vec![0u8; CS as usize]).unwrap();
    std::fs::write(top_dir.join("top.raw"), vec![0u8; CS as usize]).unwrap();
    // The lower image's backing name leaves *its* directory (lower/) but stays beneath top/:
    // refused, since each name must stay beneath the directory of the file that holds it.
    write_header(
        &top_dir.join("lower/base.add-cow"),
        b"base-img.raw",
        Some(b"../top.raw"),
    );
    write_header(
        &top_dir.join("top.add-cow"),
        b"top.raw",
        Some(b"lower/base.add-cow"),
    );
    let o = OpenOptions {
        confine: true,
        backing_format: BackingFormat::AddCow,
        ..ro()
    };
    assert_err(
        Image::open(top_dir.join("top.add-cow"), &o),
        libc::EACCES,
        &["../top.raw", "lower"],
    );
    std::fs::write(top_dir.join("lower/golden.raw"), vec![0u8; CS as usize]).unwrap();
    write_header(
        &top_dir.join("lower/base.add-cow"),
        b"base-img.raw",
        Some(b"golden.raw"),
    );
    Image::open(top_dir.join("top.add-cow"), &o).unwrap();
}
