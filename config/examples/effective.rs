//! Prints the effective settings of a config file: `cargo run -p labagent-config --example
//! effective -- PATH` (what `labagent check-config` prints, without the CLI).

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| labagent_config::DEFAULT_PATH.to_owned());
    match labagent_config::load(std::path::Path::new(&path)) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", loaded.config.effective_toml());
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}
