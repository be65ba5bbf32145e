//! The background hydration job: a thread of the library that hydrates a range of an image
//! (`hydrate.rs`) batch by batch while guests read and write it, like dm-clone's background
//! hydration.
//!
//! # Contract
//! - **Ownership and close**: the job holds the image (an `Arc`) until its thread ends. Stop it
//!   before closing the image: [`HydrateJob::stop`] (or dropping the job) cancels it and waits
//!   for its thread, which ends within one batch. The C ABI does so in `addcow_close`.
//! - **Guests first**: a guest request waits for at most one batch (the claim of the clusters
//!   it hits, or the gate a truncate takes); the job never holds anything between batches.
//! - **Rate**: with a rate limit, the job sleeps between batches so that the bytes it read from
//!   the backing file stay under `rate` bytes per second of running time (paused time does not
//!   count).
//! - **Durability and resuming**: the job flushes the image about every second (as
//!   `Image::flush` does: image data, then the bitmap), when it ends (completed, cancelled), and
//!   on completion the flush sets layout 2's "all allocated" bit when every cluster is. A crash
//!   loses at most the last second's hydration; the bitmap is the progress, so a new job over
//!   the same range copies only what is still unallocated.
//! - **Errors**: the first failure (a read, a write, a flush) ends the job as failed with its
//!   errno and message; start a new job to retry.
//!
//! # Locks
//! The job's state is one mutex with a condition variable, never held across I/O or a call
//! into the image; the image's locks never call into the job.

use super::hydrate::{Advance, Hydrator};
use super::Image;
use crate::error::{Error, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a running job flushes the image, so that a crash loses little of its progress.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// What to hydrate, and how fast.
#[derive(Debug, Clone, Copy, Default)]
pub struct HydrateOptions {
    /// Start of the range in bytes (rounded down to a cluster).
    pub offset: u64,
    /// Length of the range in bytes (rounded up to whole clusters); 0: to the end of the image.
    pub bytes: u64,
    /// Most bytes read from the backing file per second; 0: no limit.
    pub rate: u64,
    /// Bytes of contiguous clusters copied per batch (0: 1 MiB; whole clusters, at most
    /// 64 MiB): a guest write waits at most for one batch.
    pub batch: u64,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Paused,
    /// Every cluster of the range is allocated, and flushed.
    Completed,
    Cancelled,
    Failed,
}

/// A job's progress. Clusters count in the job's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub state: JobState,
    /// Clusters in the range.
    pub total: u64,
    /// Clusters the job has passed that are allocated: copied by it, or allocated before it
    /// came (by a guest or an earlier job). `total` when completed.
    pub done: u64,
    /// Clusters the job copied from the backing file.
    pub copied: u64,
    /// Bytes the job read from the backing file per second of running time.
    pub bytes_per_sec: u64,
    /// The errno the job failed with; 0 unless failed.
    pub errno: i32,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Cancelled,
    Failed { errno: i32, message: String },
}

/// A background hydration job. Dropping it cancels it and waits for its thread.
pub struct HydrateJob {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct State {
    pause: bool,
    cancel: bool,
    end: Option<Outcome>,
    total: u64,
    done: u64,
    copied: u64,
    /// Bytes read from the backing file.
    bytes: u64,
    /// Running time before `since`.
    ran: Duration,
    /// Running since then; `None` while paused or ended.
    since: Option<Instant>,
}

impl State {
    fn running_time(&self) -> Duration {
        self.ran + self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    fn stop_clock(&mut self) {
        self.ran = self.running_time();
        self.since = None;
    }

    /// How long to sleep before the next batch to keep under `rate` bytes per second.
    fn throttle(&self, rate: u64) -> Option<Duration> {
        if rate == 0 {
            return None;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        due.checked_sub(self.running_time())
            .filter(|d| !d.is_zero())
    }
}

impl HydrateJob {
    /// Starts hydrating `opts`'s range of `image` on a new thread. `EPERM` on a read-only image,
    /// `EINVAL` for a range past the end or an image opened without its backing file.
    pub fn start(image: Arc<Image>, opts: &HydrateOptions) -> Result<HydrateJob> {
        image.check_hydrate()?;
        let size = image.size();
        let bytes = match opts.bytes {
            0 => size.saturating_sub(opts.offset),
            n => n,
        };
        image.core().check(opts.offset, bytes)?;
        let cs = image.cluster_size();
        let range = (
            opts.offset / cs * cs,
            (opts.offset + bytes).div_ceil(cs) * cs,
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pause: false,
                cancel: false,
                end: None,
                total: (range.1 - range.0) / cs,
                done: 0,
                copied: 0,
                bytes: 0,
                ran: Duration::ZERO,
                since: Some(Instant::now()),
            }),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        });
        let (opts, worker) = (*opts, shared.clone());
        let thread = std::thread::Builder::new()
            .name("addcow-hydrate".into())
            .spawn(move || worker.run(&image, range, &opts))
            .map_err(|e| Error::Job {
                errno: e.raw_os_error().unwrap_or(libc::EAGAIN),
                message: format!("cannot start a hydration thread: {e}"),
            })?;
        *lock(&shared.thread) = Some(thread);
        Ok(HydrateJob { shared })
    }

    pub fn progress(&self) -> Progress {
        let st = self.shared.state();
        let secs = st.running_time().as_secs_f64();
        let (state, errno) = match &st.end {
            None if st.pause => (JobState::Paused, 0),
            None => (JobState::Running, 0),
            Some(Outcome::Completed) => (JobState::Completed, 0),
            Some(Outcome::Cancelled) => (JobState::Cancelled, 0),
            Some(Outcome::Failed { errno, .. }) => (JobState::Failed, *errno),
        };
        Progress {
            state,
            total: st.total,
            done: st.done,
            copied: st.copied,
            bytes_per_sec: match secs > 0.0 {
                true => (st.bytes as f64 / secs) as u64,
                false => 0,
            },
            errno,
        }
    }

    /// Pauses after the batch in flight; no effect once ended.
    pub fn pause(&self) {
        self.shared.control(|st| st.pause = true);
    }

    pub fn resume(&self) {
        self.shared.control(|st| st.pause = false);
    }

    /// Asks the job to stop after the batch in flight (it flushes what it did); returns at once.
    pub fn cancel(&self) {
        self.shared.control(|st| st.cancel = true);
    }

    /// Waits until the job ends, at most `timeout` (`None`: for ever): its outcome, or `None`
    /// when it is still running (or paused) at the timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<Outcome> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.state();
        loop {
            if let Some(end) = &st.end {
                return Some(end.clone());
            }
            st = match deadline {
                None => wait(&self.shared.changed, st),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    wait_timeout(&self.shared.changed, st, left)
                }
            };
        }
    }

    /// Cancels the job unless it ended, and waits for its thread (which then no longer holds
    /// the image): its outcome.
    pub fn stop(&self) -> Outcome {
        self.cancel();
        if let Some(thread) = lock(&self.shared.thread).take() {
            // The worker catches its panics: joining cannot fail.
            let _ = thread.join();
        }
        self.wait(None).unwrap_or(Outcome::Cancelled)
    }
}

impl Drop for HydrateJob {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait<'a>(cv: &Condvar, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
    cv.wait(g).unwrap_or_else(|e| e.into_inner())
}

fn wait_timeout<'a>(cv: &Condvar, g: MutexGuard<'a, State>, d: Duration) -> MutexGuard<'a, State> {
    cv.wait_timeout(g, d).unwrap_or_else(|e| e.into_inner()).0
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn control(&self, change: impl FnOnce(&mut State)) {
        let mut st = self.state();
        if st.end.is_none() {
            change(&mut st);
        }
        self.changed.notify_all();
    }

    /// The job's thread: hydrates `range`, records the outcome, wakes the waiters.
    fn run(&self, image: &Image, range: (u64, u64), opts: &HydrateOptions) {
        let outcome = match catch_unwind(AssertUnwindSafe(|| self.hydrate(image, range, opts))) {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome::Failed {
                errno: e.errno(),
                message: e.to_string(),
            },
            Err(_) => Outcome::Failed {
                errno: libc::EIO,
                message: "internal error (panic) in the hydration job".into(),
            },
        };
        let mut st = self.state();
        st.stop_clock();
        if outcome == Outcome::Completed {
            st.done = st.total;
        }
        st.end = Some(outcome);
        self.changed.notify_all();
    }

    fn hydrate(
        &self,
        image: &Image,
        (mut pos, end): (u64, u64),
        opts: &HydrateOptions,
    ) -> Result<Outcome> {
        let mut hydrator = Hydrator::new(image, opts.batch);
        let mut flushed = Instant::now();
        loop {
            if !self.go_on(opts.rate) {
                image.flush()?;
                return Ok(Outcome::Cancelled);
            }
            let Some(step) = hydrator.step(image, pos, end)? else {
                image.flush()?;
                return Ok(Outcome::Completed);
            };
            pos = step.next;
            self.record(&step);
            if flushed.elapsed() >= FLUSH_EVERY {
                image.flush()?;
                flushed = Instant::now();
            }
        }
    }

    /// Before a batch: sleeps while paused or throttled; `false` once cancelled.
    fn go_on(&self, rate: u64) -> bool {
        let mut st = self.state();
        loop {
            if st.cancel {
                return false;
            }
            if st.pause {
                st.stop_clock();
                st = wait(&self.changed, st);
                continue;
            }
            if st.since.is_none() {
                st.since = Some(Instant::now());
            }
            match st.throttle(rate) {
                None => return true,
                Some(d) => st = wait_timeout(&self.changed, st, d),
            }
        }
    }

    fn record(&self, step: &Advance) {
        let mut st = self.state();
        st.done += step.allocated;
        st.copied += step.copied;
        st.bytes += step.bytes;
    }
}
