//! `addcow completions`: shell completion scripts, generated from the argument definitions.

use crate::fail::Outcome;
use clap::CommandFactory;
use clap_complete::Shell;

/// Print a completion script: `addcow completions bash > /etc/bash_completion.d/addcow`.
#[derive(clap::Args)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run<C: CommandFactory>(a: Args) -> Outcome {
    clap_complete::generate(a.shell, &mut C::command(), "addcow", &mut std::io::stdout());
    Ok(0)
}
