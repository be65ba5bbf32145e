//! The `addcow` command, end to end: the real binary (CARGO_BIN_EXE_addcow) on real files,
//! checked against QEMU's tools where QEMU has the command (qemu-img on the qcow2 twin with an
//! external data file, after the same writes).

mod check;
mod common;
mod hydrate;
mod lifecycle;
mod map_info;
mod usage;
