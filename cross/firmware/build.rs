//! Puts `memory.x` where cortex-m-rt's `link.x` finds it, and links with `link.x` (so the
//! build needs no `.cargo/config.toml`: cross/qemu-firmware runs cargo from anywhere).

use std::path::PathBuf;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    if !target.starts_with("thumb") {
        // The host build is the library's tests only.
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
}
