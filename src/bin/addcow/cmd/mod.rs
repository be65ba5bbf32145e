//! One module per subcommand: its arguments (clap derive; the doc comments are its `--help`)
//! and `run`.

pub mod bench;
pub mod check;
pub mod commit;
pub mod compare;
pub mod completions;
pub mod create;
pub mod detach;
pub mod hydrate;
pub mod info;
pub mod map;
pub mod resize;
pub mod serve;
