//! `--output=human|json`, as qemu-img spells it, and printing JSON.

use clap::ValueEnum;

/// How a subcommand prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// Prints `value` as qemu-img prints JSON: pretty, four-space indents.
pub fn print_json(value: &impl serde::Serialize) {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    value
        .serialize(&mut ser)
        .expect("serializing to memory cannot fail");
    println!("{}", String::from_utf8_lossy(&out));
}
