//! How a subcommand fails: the file it was about, the message (the library's own where it has
//! one), and the exit status.

use std::fmt;
use std::path::Path;

/// A failed subcommand; printed as `FILE: message`.
#[derive(Debug)]
pub struct Failure {
    pub file: String,
    pub message: String,
    pub code: u8,
}

/// What a subcommand returns: its exit status, or how it failed.
pub type Outcome = Result<u8, Failure>;

impl Failure {
    /// A failure about `file`, exit status 1.
    pub fn new(file: impl AsRef<Path>, message: impl fmt::Display) -> Failure {
        Failure {
            file: file.as_ref().display().to_string(),
            message: message.to_string(),
            code: 1,
        }
    }

    /// The same failure with another exit status.
    pub fn code(self, code: u8) -> Failure {
        Failure { code, ..self }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

/// Turns a library error about `file` into a [`Failure`]: `.map_err(on(path))`.
pub fn on<E: fmt::Display>(file: &Path) -> impl Fn(E) -> Failure + '_ {
    move |e| Failure::new(file, e)
}
