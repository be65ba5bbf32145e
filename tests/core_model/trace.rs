//! The last steps a run took, printed when it fails: the exact interleaving to replay.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

const KEEP: usize = 80;

thread_local! {
    static STEPS: RefCell<VecDeque<String>> = const { RefCell::new(VecDeque::new()) };
}

/// Records a step.
pub fn note(step: String) {
    STEPS.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() == KEEP {
            s.pop_front();
        }
        s.push_back(step);
    });
}

/// Runs `f` with a fresh trace; if it panics, prints `what` and the last steps, then panics on.
pub fn traced<T>(what: &str, f: impl FnOnce() -> T) -> T {
    STEPS.with(|s| s.borrow_mut().clear());
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(panic) => {
            let steps = STEPS.with(|s| s.borrow().iter().cloned().collect::<Vec<_>>());
            eprintln!("{what} failed; its last {} steps:", steps.len());
            for step in steps {
                eprintln!("  {step}");
            }
            resume_unwind(panic)
        }
    }
}
