//! `labagent` — the binary. Parses the command line, maps outcomes to the exit codes
//! documented in `--help`.

mod cli;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use cli::{exit, Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::CONFIG
            } else {
                exit::OK
            });
        }
    };
    ExitCode::from(match cli.command {
        Command::CheckConfig => check_config(&cli.config),
        Command::Run => run(&cli.config),
        Command::Simulate(args) => cli::simulate::run(&args),
        Command::Queue(cmd) => cli::queue::run(&cli.config, &cmd),
        Command::Status(args) => cli::status::status(&cli.config, &args),
        Command::Monitor(args) => cli::status::monitor(&cli.config, &args),
        Command::Demo(args) => cli::demo::run(&args),
        Command::Map(args) => cli::map::run(&cli.config, &args),
        Command::Ports => {
            print!(
                "{}",
                cli::ports::render(&cli::ports::list(Path::new("/sys"), Path::new("/dev")))
            );
            exit::OK
        }
    })
}

/// Loads and validates the config, printing warnings and errors in `FILE:LINE:COL: ...`
/// form. `None` means the caller should exit with [`exit::CONFIG`].
fn load_config(path: &Path) -> Option<labagent_config::Loaded> {
    match labagent_config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            Some(loaded)
        }
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

fn check_config(path: &Path) -> u8 {
    let Some(loaded) = load_config(path) else {
        return exit::CONFIG;
    };
    println!(
        "# {}: configuration is valid; effective settings:",
        path.display()
    );
    print!("{}", loaded.config.effective_toml());
    exit::OK
}

fn run(path: &Path) -> u8 {
    let Some(loaded) = load_config(path) else {
        return exit::CONFIG;
    };
    cli::logging::init(loaded.config.agent.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("labagent: cannot start the runtime: {e}");
            return exit::FAILURE;
        }
    };
    rt.block_on(async {
        match labagent::service::Agent::start(loaded.config).await {
            Ok(agent) => {
                agent
                    .serve(path.to_path_buf(), labagent::service::Notifier::from_env())
                    .await;
                exit::OK
            }
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("labagent: {e}");
                match e {
                    labagent::service::RunError::Store { .. }
                    | labagent::service::RunError::StateDir { .. } => exit::STORE,
                    labagent::service::RunError::Uplink(_)
                    | labagent::service::RunError::Mqtt(_) => exit::CONFIG,
                    labagent::service::RunError::Unavailable(_) => exit::UNAVAILABLE,
                    labagent::service::RunError::StatusSocket { .. }
                    | labagent::service::RunError::Metrics { .. }
                    | labagent::service::RunError::Runtime(_) => exit::FAILURE,
                }
            }
        }
    })
}
