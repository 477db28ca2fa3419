//! `labagent man --out DIR`: the manual pages, generated from the clap definitions, so
//! they never disagree with `--help`. `labagent.1` (every command, the exit status table,
//! files) and one `labagent-<command>.1` per command. `cross/deb` installs them gzipped.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};

use super::{exit, Cli};

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write labagent.1 and labagent-<command>.1 into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// roff text: backslashes and hyphens escaped, no line starting with a control character.
fn roff_text(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// The sections clap_mangen does not know: exit status, files, environment.
fn extra_sections() -> String {
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    for (code, what) in labagent::exit::TABLE {
        s.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff_text(what)));
    }
    s.push_str(".SH FILES\n");
    for (path, what) in [
        (
            "/etc/labagent/config.toml",
            "the configuration (commented example: /usr/share/doc/labagent/examples/config.toml)",
        ),
        (
            "/etc/credstore/labagent.client_secret",
            "the client secret, loaded by the unit with LoadCredential=",
        ),
        (
            "/var/lib/labagent",
            "the message store; kept when the package is purged",
        ),
        (
            "/run/labagent/status.sock",
            "the status socket of status, monitor and queue",
        ),
    ] {
        s.push_str(&format!(
            ".TP\n\\fI{}\\fR\n{}\n",
            roff_text(path),
            roff_text(what)
        ));
    }
    s.push_str(".SH ENVIRONMENT\n");
    for (var, what) in [
        (
            "LABAGENT_CONFIG",
            "the configuration file, instead of --config",
        ),
        (
            "LABAGENT_CLIENT_SECRET",
            "the client secret (one source only; see the configuration)",
        ),
        (
            "RUST_LOG",
            "log filter overriding [agent] log, e.g. labagent=debug,warn",
        ),
        ("NO_COLOR", "no colour even on a terminal"),
        (
            "HTTPS_PROXY, NO_PROXY",
            "an HTTP proxy for the HTTPS uplink, and the hosts that bypass it",
        ),
    ] {
        s.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            roff_text(var),
            roff_text(what)
        ));
    }
    s.push_str(&format!(
        ".SH \"SEE ALSO\"\n{}\n",
        roff_text(
            "systemctl(1), journalctl(1), systemd.exec(5) (LoadCredential=), \
             /usr/share/doc/labagent/PACKAGING.md"
        )
    ));
    s
}

/// Renders every page into `dir`; returns the files written.
pub fn write_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();

    let source = format!("labagent {}", env!("CARGO_PKG_VERSION"));
    let man = clap_mangen::Man::new(cmd.clone())
        .manual("labagent manual")
        .source(&source);
    let path = dir.join("labagent.1");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(extra_sections().as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::File::create(&path)?.write_all(&page)?;
    written.push(path);

    // One page per command at every level, named as the SUBCOMMANDS sections refer to
    // them: labagent-queue(1), labagent-queue-list(1), …
    fn pages(
        cmd: &clap::Command,
        prefix: &str,
        source: &str,
        dir: &Path,
        written: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{prefix}-{}", sub.get_name());
            let page = sub
                .clone()
                .display_name(name.clone())
                .bin_name(name.clone());
            let path = dir.join(format!("{name}.1"));
            let mut f = std::fs::File::create(&path)?;
            clap_mangen::Man::new(page.clone())
                .manual("labagent manual")
                .source(source)
                .render(&mut f)?;
            written.push(path);
            pages(&page, &name, source, dir, written)?;
        }
        Ok(())
    }
    pages(&cmd, "labagent", &source, dir, &mut written)?;
    Ok(written)
}

pub fn run(args: &ManArgs) -> u8 {
    match write_pages(&args.out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("labagent man: cannot write to {}: {e}", args.out.display());
            exit::CANT_CREATE
        }
    }
}
