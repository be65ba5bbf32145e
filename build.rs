//! Gives the C library its SONAME and regenerates include/addcow.h from src/capi with cbindgen.
//! The header is committed; CI fails when a build changes it.

use std::path::PathBuf;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libaddcow.so.1");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    cbindgen::generate_with_config(&dir, config)
        .expect("cbindgen generates the C header")
        .write_to_file(dir.join("include/addcow.h"));
}
