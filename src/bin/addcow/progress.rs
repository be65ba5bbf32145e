//! Progress of a long subcommand (`-p`): a bar with rate and ETA when stdout is a terminal, a
//! plain line about once a second otherwise (logs, pipes), nothing without `-p`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Where progress goes.
pub enum Meter {
    Off,
    Bar(ProgressBar),
    Lines {
        what: &'static str,
        total: u64,
        last: Option<Instant>,
    },
}

/// How often plain lines are printed.
const LINE_EVERY: Duration = Duration::from_secs(1);

impl Meter {
    /// A meter for `total` units (`unit` names them in the bar), shown when `show` is set.
    pub fn new(show: bool, what: &'static str, total: u64) -> Meter {
        if !show {
            return Meter::Off;
        }
        if !std::io::stdout().is_terminal() {
            return Meter::Lines {
                what,
                total,
                last: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:40}] {percent:>3}% {pos}/{len} clusters, {msg} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what);
        Meter::Bar(bar)
    }

    /// `done` of the total, at `bytes_per_sec`.
    pub fn update(&mut self, done: u64, bytes_per_sec: u64) {
        let rate = format!("{}/s", crate::size::human(bytes_per_sec));
        match self {
            Meter::Off => {}
            Meter::Bar(bar) => {
                bar.set_position(done);
                bar.set_message(rate);
            }
            Meter::Lines { what, total, last } => {
                if last.is_some_and(|t| t.elapsed() < LINE_EVERY) {
                    return;
                }
                *last = Some(Instant::now());
                println!(
                    "{what}: {:.1}% ({done}/{total} clusters), {rate}",
                    percent(done, *total)
                );
            }
        }
    }

    /// Removes the bar; the caller prints the status line.
    pub fn finish(self) {
        if let Meter::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// `part` of `whole` in percent (100 for an empty whole).
pub fn percent(part: u64, whole: u64) -> f64 {
    match whole {
        0 => 100.0,
        w => part as f64 * 100.0 / w as f64,
    }
}
