//! `labagent` — the binary. Parses the command line, maps outcomes to the exit codes
//! documented in `--help` (`labagent::exit`).

mod cli;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tracing::Level;

use cli::logging::{self, print};
use cli::{exit, Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    ExitCode::from(match cli.command {
        Command::CheckConfig(args) => check_config(&cli.config, &args),
        Command::Run => run(&cli.config),
        Command::Simulate(args) => cli::simulate::run(&args),
        Command::Queue(cmd) => cli::queue::run(&cli.config, &cmd),
        Command::Status(args) => cli::status::status(&cli.config, &args),
        Command::Monitor(args) => cli::status::monitor(&cli.config, &args),
        Command::Demo(args) => cli::demo::run(&args),
        Command::Map(args) => cli::map::run(&cli.config, &args),
        Command::Man(args) => cli::man::run(&args),
        Command::Sign(args) => cli::remote::sign(&args),
        Command::Remote(cmd) => cli::remote::run(&cli.config, &cmd),
        Command::Ports => {
            print!(
                "{}",
                cli::ports::render(&cli::ports::list(Path::new("/sys"), Path::new("/dev")))
            );
            exit::OK
        }
    })
}

fn print_warnings(loaded: &labagent_config::Loaded) {
    for w in &loaded.warnings {
        print(Level::WARN, &format!("warning: {w}"));
    }
}

/// Loads and validates the config, printing warnings and errors in `FILE:LINE:COL: ...`
/// form. `None` means the caller should exit with [`exit::CONFIG`].
fn load_config(
    path: &Path,
    opts: &labagent_config::LoadOptions,
) -> Option<labagent_config::Loaded> {
    match labagent_config::load_with(path, opts) {
        Ok(loaded) => {
            print_warnings(&loaded);
            Some(loaded)
        }
        Err(e) => {
            print(Level::ERROR, &e.to_string());
            None
        }
    }
}

fn check_config(path: &Path, args: &cli::CheckConfigArgs) -> u8 {
    use labagent_config::{AuthMethod, LoadOptions, SecretSource};
    // A secret that only the service will have (LoadCredential=) is not an error here:
    // the unit says where it will come from.
    let Ok(mut loaded) =
        labagent_config::load_with(path, &LoadOptions::default().secret_optional())
    else {
        // Print the errors exactly as `run` would see them.
        load_config(path, &LoadOptions::default());
        return exit::CONFIG;
    };
    let auth = &loaded.config.uplink.auth;
    if auth.method != AuthMethod::None && auth.secret.is_none() {
        match unit_secret(args) {
            Ok((unit, file, note)) => {
                print_warnings(&loaded);
                if let Some(n) = note {
                    print(Level::WARN, &format!("warning: {n}"));
                }
                loaded.config.uplink.auth.secret_source = Some(SecretSource::Unit { unit, file });
            }
            Err(why) => {
                // The usual error (file, line, what to set), then why the unit does not help.
                load_config(path, &LoadOptions::default());
                print(Level::ERROR, &why);
                return exit::CONFIG;
            }
        }
    } else {
        print_warnings(&loaded);
    }
    println!(
        "# {}: configuration is valid; effective settings:",
        path.display()
    );
    let files = labagent::remote::files::Files::new(&loaded.config.agent.state_dir);
    if files.pushed().is_file() {
        print(
            Level::WARN,
            &format!(
                "note: a pushed config is in force instead of this file: {} (pushed by command {}); \
                 `labagent remote reset` returns to this file",
                files.pushed().display(),
                files.pushed_by().unwrap_or_else(|| "?".into())
            ),
        );
    }
    print!("{}", loaded.config.effective_toml());
    exit::OK
}

/// Where the unit's `LoadCredential=client_secret:…` takes the secret from: (unit file,
/// credential file, a note when the file could not be checked), or why it cannot.
fn unit_secret(
    args: &cli::CheckConfigArgs,
) -> Result<(std::path::PathBuf, std::path::PathBuf, Option<String>), String> {
    use cli::credential::{find, unit_files, Found, CREDSTORE_DIRS, UNIT, UNIT_DIRS};
    let files = match &args.unit {
        Some(u) => vec![u.clone()],
        None => unit_files(&UNIT_DIRS.map(std::path::PathBuf::from)),
    };
    let Some(cred) = find(&files) else {
        return Err(if files.is_empty() {
            format!("no {UNIT} found either, so no LoadCredential=client_secret:… provides it")
        } else {
            format!(
                "{} has no LoadCredential=client_secret:… either",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
    };
    match cred.locate(&CREDSTORE_DIRS.map(std::path::PathBuf::from)) {
        Found::File(f) => Ok((cred.unit, f, None)),
        Found::Missing {
            searched,
            unreadable,
        } if !unreadable.is_empty() => {
            let first = searched.first().cloned().unwrap_or_default();
            Ok((
                cred.unit,
                first,
                Some(format!(
                    "cannot look into {} as this user: run check-config as root to see that \
                     the credential file exists",
                    unreadable
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            ))
        }
        Found::Missing { searched, .. } => Err(format!(
            "{} loads the secret with LoadCredential=client_secret:{}, but no such file exists \
             (looked at {}); without it the service starts without a secret and refuses",
            cred.unit.display(),
            cred.source,
            searched
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn run(path: &Path) -> u8 {
    let Some(loaded) = load_config(path, &labagent_config::LoadOptions::default()) else {
        return exit::CONFIG;
    };
    // A pushed config (fleet management) takes precedence while it exists; a trial that
    // a stop interrupted is rolled back first.
    let (in_force, mut notes) =
        labagent::service::remote::startup_files(path, &loaded.config.agent.state_dir);
    let loaded = if in_force.as_path() == path {
        loaded
    } else {
        match labagent_config::load(&in_force) {
            Ok(l) => l,
            Err(e) => {
                notes.push(format!(
                    "the pushed config {} cannot be used, the local file is in force instead: {e}",
                    in_force.display()
                ));
                loaded
            }
        }
    };
    logging::init(loaded.config.agent.log);
    for n in &notes {
        tracing::warn!("{n}");
    }
    if in_force.as_path() != path {
        tracing::info!(file = %in_force.display(), local = %path.display(),
            "a pushed config is in force (`labagent remote reset` returns to the local file)");
    }
    // The channels have a thread of their own (`labagent::ingest`); what is left here —
    // uplink control, MQTT, the status socket, metrics, signals — is light work for one
    // thread. Blocking store calls (status, queue commands, MQTT's store writes, prune) go
    // to one pool thread that lingers a minute (the ingest thread makes its own in place),
    // so a busy agent creates no thread under load and keeps a fixed count: this one,
    // ingest, uplink, the store's checkpointer, sled's seven IO threads and the pool thread
    // (docs/perf/ingest.md).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .thread_keep_alive(std::time::Duration::from_secs(60))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logging::fatal(&format!("cannot start the runtime: {e}"));
            return exit::OS;
        }
    };
    labagent::store::tune_heap();
    rt.block_on(async {
        match labagent::service::Agent::start_from(loaded.config, path.to_path_buf()).await {
            Ok(agent) => {
                agent
                    .serve(path.to_path_buf(), labagent::service::Notifier::from_env())
                    .await;
                exit::OK
            }
            Err(e) => {
                // Once: through the log (under journald with priority 3).
                logging::fatal(&e.to_string());
                exit::of_run_error(&e)
            }
        }
    })
}
