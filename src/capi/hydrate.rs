//! Hydration from C: `addcow_hydrate` (on the caller's thread) and the background job
//! (`addcow_hydrate_start`, then `addcow_job_*` on the `AddCowJob` handle). The image keeps a
//! list of its jobs ([`Jobs`]) so that `addcow_close` stops them before it closes the image.

use super::boundary::{bad_arg, ffi, store_handle};
use super::versioned::{self, Versioned};
use super::{image, AddCowImage};
use crate::engine::{HydrateJob, HydrateOptions, JobState, Outcome};
use crate::error::{Error, Result};
use std::ffi::c_int;
use std::mem::{offset_of, size_of};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// `AddCowJobProgress.state`: copying.
pub const ADDCOW_JOB_RUNNING: u32 = 1;
/// `AddCowJobProgress.state`: paused by `addcow_job_pause`.
pub const ADDCOW_JOB_PAUSED: u32 = 2;
/// `AddCowJobProgress.state`: every cluster of the range is allocated, and flushed.
pub const ADDCOW_JOB_COMPLETED: u32 = 3;
/// `AddCowJobProgress.state`: stopped by `addcow_job_cancel`, `addcow_job_free` or
/// `addcow_close` (what it did is flushed).
pub const ADDCOW_JOB_CANCELLED: u32 = 4;
/// `AddCowJobProgress.state`: stopped by an error (`error`).
pub const ADDCOW_JOB_FAILED: u32 = 5;

/// A background hydration job from `addcow_hydrate_start`. Opaque: free it with
/// `addcow_job_free`.
pub struct AddCowJob {
    job: Arc<HydrateJob>,
}

/// What `addcow_hydrate_start` hydrates, and how fast. Set `struct_size` to
/// `sizeof(AddCowHydrateOptions)` as compiled by the caller: fields past it take their zero
/// default, and a larger struct from a newer header is accepted when its extra bytes are zero.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AddCowHydrateOptions {
    /// sizeof(AddCowHydrateOptions) as the caller compiled it.
    pub struct_size: u32,
    /// None defined yet: 0.
    pub flags: u32,
    /// Start of the range in bytes (rounded down to a cluster).
    pub offset: u64,
    /// Length of the range in bytes (rounded up to whole clusters); 0: to the end of the image.
    pub bytes: u64,
    /// Most bytes copied from the backing file per second of running time; 0: no limit.
    pub rate: u64,
    /// Bytes of contiguous clusters copied per batch: 0 = 1 MiB; rounded up to whole clusters,
    /// at most 64 MiB. A guest write to a cluster being copied waits for its batch.
    pub batch: u64,
}

// SAFETY: repr(C), starts with struct_size, integers only.
unsafe impl Versioned for AddCowHydrateOptions {
    const NAME: &'static str = "AddCowHydrateOptions";
    const MIN_SIZE: usize = offset_of!(AddCowHydrateOptions, flags) + size_of::<u32>();
}

/// A job's progress, from `addcow_job_progress`. Set `struct_size` to
/// `sizeof(AddCowJobProgress)` as compiled by the caller: the library fills the fields that
/// size holds (and zeros the bytes of a newer, larger struct past its own). Clusters count in
/// the job's range.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AddCowJobProgress {
    /// sizeof(AddCowJobProgress) as the caller compiled it.
    pub struct_size: u32,
    /// `ADDCOW_JOB_*`.
    pub state: u32,
    /// Clusters in the range.
    pub total_clusters: u64,
    /// Clusters the job has passed that are allocated (copied by it, or allocated before it
    /// came, by a guest or an earlier job); `total_clusters` once completed.
    pub done_clusters: u64,
    /// Clusters the job copied from the backing file.
    pub copied_clusters: u64,
    /// Bytes copied per second of running time (paused time does not count).
    pub bytes_per_sec: u64,
    /// `ADDCOW_JOB_FAILED`: the negative errno it failed with (`addcow_job_wait` gives the
    /// message); 0 otherwise.
    pub error: i32,
}

// SAFETY: repr(C), starts with struct_size, integers only.
unsafe impl Versioned for AddCowJobProgress {
    const NAME: &'static str = "AddCowJobProgress";
    const MIN_SIZE: usize = offset_of!(AddCowJobProgress, state) + size_of::<u32>();
}

/// The jobs started on one image, so that closing it stops them first.
#[derive(Default)]
pub(super) struct Jobs(Mutex<Vec<Weak<HydrateJob>>>);

impl Jobs {
    fn add(&self, job: &Arc<HydrateJob>) {
        let mut jobs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        jobs.retain(|j| j.strong_count() > 0);
        jobs.push(Arc::downgrade(job));
    }

    /// Cancels every job still alive and waits for its thread.
    pub(super) fn stop_all(&self) {
        let jobs = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for job in jobs.iter().filter_map(Weak::upgrade) {
            job.stop();
        }
    }
}

/// # Safety
/// `job` is NULL or a live handle from `addcow_hydrate_start`.
unsafe fn job<'a>(job: *mut AddCowJob) -> Result<&'a HydrateJob> {
    // SAFETY: the caller's guarantee; NULL is refused.
    unsafe { job.as_ref() }
        .map(|j| &*j.job)
        .ok_or_else(|| bad_arg("job is NULL"))
}

/// Hydrates every cluster that `offset..offset + bytes` touches, on the calling thread: copies
/// the unallocated ones from the backing file into the image file, 1 MiB of contiguous clusters
/// at a time, and marks them allocated (past the backing file's end they read zeros: they are
/// marked without writing where the image file is a hole). Stores in `*done` (unless NULL) how
/// many clusters it copied. Safe beside reads and writes on other threads: a cluster a guest
/// writes first keeps the guest's data, and a guest write waits at most for one batch. Durable
/// as a write is: with the next `addcow_flush`, or before it returns under
/// `ADDCOW_OPEN_WRITETHROUGH`. Once every cluster is allocated, the raw image file alone reads
/// what the image reads. 0, or -EPERM (read-only), -EINVAL (NULL handle, beyond the end, or an
/// image opened with `ADDCOW_OPEN_NO_BACKING` whose header names a backing file), or the
/// host's -errno (what was copied before stays copied).
///
/// # Safety
/// `img` is NULL or a live handle; `done` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_hydrate(
    img: *mut AddCowImage,
    offset: u64,
    bytes: u64,
    done: *mut u64,
) -> c_int {
    ffi("addcow_hydrate", || {
        // SAFETY: the caller's guarantee.
        let copied = unsafe { image(img)? }.hydrate(offset, bytes, 0)?;
        if !done.is_null() {
            // SAFETY: non-NULL and writable per the caller.
            unsafe { done.write(copied) };
        }
        Ok(0)
    })
}

/// Starts a background job that hydrates a range of the image (as `addcow_hydrate` does) on a
/// thread of the library, and stores its handle in `*out` (NULL on failure). `opts` NULL: the
/// whole image, no rate limit, 1 MiB batches.
///
/// The job:
/// - copies a batch at a time; a guest request waits for at most one batch (the clusters it
///   hits, or a truncate), and guest writes always win;
/// - sleeps between batches to stay under `opts->rate`;
/// - flushes the image about every second and when it ends (completed or cancelled), so a crash
///   loses at most the last second of copying; the bitmap is the progress: a new job over the
///   same range copies only what is left. On completion that flush marks a layout-2 image whose
///   every cluster is allocated as such (its backing file is then no longer opened);
/// - stops at the first error (`ADDCOW_JOB_FAILED`); start a new one to retry.
///
/// Threads and lifetime: the `addcow_job_*` calls may come from any thread, concurrently,
/// except `addcow_job_free` (no other call on the job during or after it). `addcow_close`
/// cancels the image's jobs and waits for them (one batch each) before it closes; their handles
/// stay valid (their state is final) until `addcow_job_free`. Several jobs may run on one image.
///
/// 0, or -EPERM (read-only), -EINVAL (NULL `img` or `out`, unknown `flags`, a range beyond the
/// end, an image opened with `ADDCOW_OPEN_NO_BACKING` whose header names a backing file),
/// -ENOTSUP (a newer struct with fields this library does not know), or -errno.
///
/// # Safety
/// `img` is NULL or a live handle; `opts` is NULL or points at `opts->struct_size` readable
/// bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn addcow_hydrate_start(
    img: *mut AddCowImage,
    opts: *const AddCowHydrateOptions,
    out: *mut *mut AddCowJob,
) -> c_int {
    ffi("addcow_hydrate_start", || {
        let start = || {
            // SAFETY: the caller's guarantee.
            let handle = unsafe { img.as_ref() }.ok_or_else(|| bad_arg("img is NULL"))?;
            let opts = match opts.is_null() {
                true => HydrateOptions::default(),
                // SAFETY: non-NULL, and the caller's guarantee on its size.
                false => options(&unsafe { versioned::read(opts)? })?,
            };
            let job = Arc::new(HydrateJob::start(handle.image.clone(), &opts)?);
            handle.jobs.add(&job);
            Ok(AddCowJob { job })
        };
        // SAFETY: the caller's guarantee on `out`, forwarded.
        unsafe { store_handle(out, start) }.map(|()| 0)
    })
}

fn options(o: &AddCowHydrateOptions) -> Result<HydrateOptions> {
    if o.flags != 0 {
        return Err(bad_arg(&format!("unknown hydrate flags {:#x}", o.flags)));
    }
    Ok(HydrateOptions {
        offset: o.offset,
        bytes: o.bytes,
        rate: o.rate,
        batch: o.batch,
    })
}

/// Fills `*progress` (its `struct_size` set by the caller) with the job's state and counts.
/// 0, or -EINVAL (NULL argument, `struct_size` too small).
///
/// # Safety
/// `job` is NULL or a live handle; `progress` is NULL or points at `progress->struct_size`
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn addcow_job_progress(
    job: *mut AddCowJob,
    progress: *mut AddCowJobProgress,
) -> c_int {
    ffi("addcow_job_progress", || {
        // SAFETY: the caller's guarantee.
        let job = unsafe { self::job(job)? };
        if progress.is_null() {
            return Err(bad_arg("progress is NULL"));
        }
        // SAFETY: non-NULL; the caller's guarantee on its size.
        let size = unsafe { versioned::caller_size(progress)? };
        let p = job.progress();
        let value = AddCowJobProgress {
            struct_size: size_of::<AddCowJobProgress>() as u32,
            state: match p.state {
                JobState::Running => ADDCOW_JOB_RUNNING,
                JobState::Paused => ADDCOW_JOB_PAUSED,
                JobState::Completed => ADDCOW_JOB_COMPLETED,
                JobState::Cancelled => ADDCOW_JOB_CANCELLED,
                JobState::Failed => ADDCOW_JOB_FAILED,
            },
            total_clusters: p.total,
            done_clusters: p.done,
            copied_clusters: p.copied,
            bytes_per_sec: p.bytes_per_sec,
            error: -p.errno,
        };
        // SAFETY: `size` bytes writable per the caller, and at least MIN_SIZE.
        unsafe { versioned::write(progress, size, &value) };
        Ok(0)
    })
}

/// Runs `action` on the job: 0, or -EINVAL for NULL.
///
/// # Safety
/// `job` is NULL or a live handle.
unsafe fn control(name: &str, job: *mut AddCowJob, action: fn(&HydrateJob)) -> c_int {
    ffi(name, || {
        // SAFETY: the caller's guarantee.
        action(unsafe { self::job(job)? });
        Ok(0)
    })
}

/// Pauses the job after the batch in flight (`ADDCOW_JOB_PAUSED`); nothing once it ended.
/// 0, or -EINVAL for NULL.
///
/// # Safety
/// `job` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_job_pause(job: *mut AddCowJob) -> c_int {
    // SAFETY: the caller's guarantee, forwarded.
    unsafe { control("addcow_job_pause", job, HydrateJob::pause) }
}

/// Resumes a paused job; nothing once it ended. 0, or -EINVAL for NULL.
///
/// # Safety
/// `job` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_job_resume(job: *mut AddCowJob) -> c_int {
    // SAFETY: the caller's guarantee, forwarded.
    unsafe { control("addcow_job_resume", job, HydrateJob::resume) }
}

/// Asks the job to stop after the batch in flight, and returns at once; `addcow_job_wait` waits
/// for it (it flushes what it did, then ends `ADDCOW_JOB_CANCELLED`). Nothing once it ended.
/// 0, or -EINVAL for NULL.
///
/// # Safety
/// `job` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_job_cancel(job: *mut AddCowJob) -> c_int {
    // SAFETY: the caller's guarantee, forwarded.
    unsafe { control("addcow_job_cancel", job, HydrateJob::cancel) }
}

/// Waits until the job ends, at most `timeout_ms` milliseconds (negative: without limit; 0:
/// just look). Returns 0 when it completed, -ECANCELED when it was cancelled, -ETIMEDOUT when it
/// is still running or paused at the timeout, the job's -errno when it failed (with its message
/// for `addcow_last_error`), or -EINVAL for NULL. Any number of threads may wait at once.
///
/// # Safety
/// `job` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn addcow_job_wait(job: *mut AddCowJob, timeout_ms: i64) -> c_int {
    ffi("addcow_job_wait", || {
        // SAFETY: the caller's guarantee.
        let job = unsafe { self::job(job)? };
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        match job.wait(timeout) {
            Some(Outcome::Completed) => Ok(0),
            Some(Outcome::Cancelled) => Ok(-libc::ECANCELED),
            None => Ok(-libc::ETIMEDOUT),
            Some(Outcome::Failed { errno, message }) => Err(Error::Job { errno, message }),
        }
    })
}

/// Cancels the job unless it ended, waits for its thread (at most one batch and a flush), and
/// frees the handle. NULL is a no-op. No other call on the job may run during or after it.
///
/// # Safety
/// `job` is NULL or a live handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn addcow_job_free(job: *mut AddCowJob) {
    ffi("addcow_job_free", || {
        if !job.is_null() {
            // SAFETY: a live handle from Box::into_raw, handed back exactly once.
            let handle = unsafe { Box::from_raw(job) };
            handle.job.stop();
        }
        Ok(())
    })
}
