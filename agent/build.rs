//! Records the target triple for `labagent_build_info{target=...}` and the man page.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=LABAGENT_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
