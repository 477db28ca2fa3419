//! `labagent map --channel NAME FILE`: the FHIR Bundle a message would become, printed
//! as JSON, so a technician can check a code map (and zone, patient id system) before the
//! uplink uses it. Nothing is stored or sent.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Args;

use super::exit;
use labagent::fhir::{Input, Mapper, Skip};
use labagent_config::Protocol;

#[derive(Debug, Args)]
pub struct MapArgs {
    /// The channel whose protocol, encoding and FHIR settings apply.
    #[arg(long, value_name = "NAME")]
    pub channel: String,
    /// The message key the identifiers are built from (in the agent: the message id).
    #[arg(long, value_name = "KEY", default_value = "preview")]
    pub key: String,
    /// A file with one message as text: ASTM records (CR or LF separated) or an HL7
    /// message (MLLP framing is removed).
    pub file: PathBuf,
}

/// The message text of a file: MLLP framing removed, decoded as the channel's drivers
/// would record it; for ASTM, LF line
/// ends turned into the CR records end with.
pub fn message_text(
    bytes: &[u8],
    protocol: Protocol,
    encoding: &labagent_config::Encoding,
) -> String {
    let mut b: &[u8] = bytes;
    if let [0x0b, rest @ ..] = b {
        b = rest;
    }
    if let Some(rest) = b
        .strip_suffix(&[0x1c, b'\r'])
        .or_else(|| b.strip_suffix(&[0x1c]))
    {
        b = rest;
    }
    let label = match protocol {
        Protocol::Hl7 => {
            let view = labagent_hal::hl7::msh::MshView::new_checked(b).ok();
            labagent::meta::hl7_encoding_label(encoding, view.as_ref(), b)
        }
        Protocol::Astm | Protocol::Raw => labagent::text::encoding_label(encoding, None, b),
    };
    let text = labagent::text::decode(b, &label);
    if protocol == Protocol::Astm && !text.contains('\r') {
        return text.replace('\n', "\r");
    }
    text
}

pub fn run(config: &Path, args: &MapArgs) -> u8 {
    let loaded = match labagent_config::load(config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let c = &loaded.config;
    let Some(ch) = c.channel(&args.channel) else {
        let names: Vec<&str> = c.channels.iter().map(|c| c.name.as_str()).collect();
        eprintln!(
            "labagent map: no channel {:?} in {}; channels: {}",
            args.channel,
            config.display(),
            names.join(", ")
        );
        return exit::CONFIG;
    };
    let bytes = match std::fs::read(&args.file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("labagent map: cannot read {}: {e}", args.file.display());
            return exit::FAILURE;
        }
    };
    let mapper = match Mapper::new(&c.agent.id, &c.uplink.fhir) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("labagent map: {e}");
            return exit::CONFIG;
        }
    };
    let text = message_text(&bytes, ch.protocol(), &ch.encoding);
    let input = Input {
        key: &args.key,
        channel: &ch.name,
        protocol: ch.protocol().as_str(),
        text: &text,
        received_at: SystemTime::now(),
    };
    let mut unmapped: Vec<String> = Vec::new();
    match mapper.bundle_reporting(&input, &mut |code| {
        if !unmapped.iter().any(|c| c == code) {
            unmapped.push(code.to_string());
        }
    }) {
        Ok(bundle) => {
            match serde_json::to_string_pretty(&bundle) {
                Ok(json) => println!("{json}"),
                Err(e) => {
                    eprintln!("labagent map: {e}");
                    return exit::FAILURE;
                }
            }
            let n = bundle.entry.len();
            eprintln!(
                "# {n} entries; {} test codes without a LOINC mapping{}{}",
                unmapped.len(),
                if unmapped.is_empty() { "" } else { ": " },
                unmapped.join(", ")
            );
            if c.uplink.format != labagent_config::Format::Fhir {
                eprintln!("# note: uplink.format is \"{}\"; the agent posts Bundles only with format = \"fhir\"", c.uplink.format);
            }
            exit::OK
        }
        Err(Skip::Policy(why)) => {
            eprintln!("# not posted as FHIR (kept as delivered by policy): {why}");
            exit::OK
        }
        Err(skip @ Skip::NotMappable(_)) => {
            eprintln!("labagent map: {skip}");
            exit::FAILURE
        }
    }
}
