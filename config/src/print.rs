//! [`Config::effective_toml`]: the effective settings, every default filled in.
//!
//! The output is itself a valid config: loading it gives an equal [`Config`] provided the
//! same secret source is available. A secret file is printed as the real
//! `client_secret_file` key (a path is not a secret); any other source is printed as a
//! comment only, so the secret itself never appears and an inline secret is not copied.

use std::fmt::Write;
use std::path::Path;

use crate::fhir::ChannelFhir;
use crate::model::{Channel, Config, Encoding, ProtocolSettings, Transport};
use crate::secret::SecretSource;
use crate::units::{format_duration as dur, format_size as size};

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

fn byte_list(bytes: &[u8]) -> String {
    let items: Vec<String> = bytes.iter().map(|b| format!("0x{b:02X}")).collect();
    format!("[{}]", items.join(", "))
}

impl Config {
    /// The effective settings as TOML (see the module doc of `print`).
    pub fn effective_toml(&self) -> String {
        let mut o = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_toml(&mut o);
        o
    }

    fn write_toml(&self, o: &mut String) -> std::fmt::Result {
        let a = &self.agent;
        writeln!(o, "[agent]")?;
        writeln!(o, "id = {}", q(&a.id))?;
        writeln!(o, "state_dir = {}", qp(&a.state_dir))?;
        writeln!(o, "log = {}", q(a.log.as_str()))?;
        writeln!(o, "status_socket = {}", qp(&a.status_socket))?;
        match a.metrics {
            Some(m) => writeln!(o, "metrics = {}", q(&m.to_string()))?,
            None => writeln!(o, "# metrics: off")?,
        }

        let b = &self.buffer;
        writeln!(o, "\n[buffer]")?;
        writeln!(o, "max_bytes = {}", q(&size(b.max_bytes)))?;
        writeln!(o, "min_free = {}", q(&size(b.min_free)))?;
        writeln!(o, "when_full = {}", q(b.when_full.as_str()))?;
        writeln!(o, "keep_delivered = {}", q(&dur(b.keep_delivered)))?;
        writeln!(o, "orders_keep = {}", q(&dur(b.orders_keep)))?;

        let u = &self.uplink;
        writeln!(o, "\n[uplink]")?;
        writeln!(o, "kind = {}", q(u.kind.as_str()))?;
        if let Some(url) = &u.url {
            writeln!(o, "url = {}", q(url))?;
        }
        writeln!(o, "format = {}", q(u.format.as_str()))?;
        writeln!(o, "batch_max = {}", u.batch_max)?;
        writeln!(o, "timeout = {}", q(&dur(u.timeout)))?;
        match &u.ca_file {
            Some(p) => writeln!(o, "ca_file = {}", qp(p))?,
            None => writeln!(o, "# ca_file: system roots")?,
        }
        match (&u.client_cert, &u.client_key) {
            (Some(c), Some(k)) => {
                writeln!(o, "client_cert = {}", qp(c))?;
                writeln!(o, "client_key = {}", qp(k))?;
            }
            _ => writeln!(o, "# client_cert, client_key: none (no mutual TLS)")?,
        }
        writeln!(o, "allow_plain_http = {}", u.allow_plain_http)?;
        match &u.query_url {
            Some(url) => writeln!(o, "query_url = {}", q(url))?,
            None => writeln!(o, "# query_url: none")?,
        }
        match &u.orders_url {
            Some(url) => writeln!(o, "orders_url = {}", q(url))?,
            None => writeln!(o, "# orders_url: none")?,
        }
        // Without orders_url the key is printed only if set (it is warned about there, and
        // must read back the same).
        if u.orders_url.is_some() || u.orders_poll != crate::defaults::ORDERS_POLL {
            writeln!(o, "orders_poll = {}", q(&dur(u.orders_poll)))?;
        } else {
            writeln!(
                o,
                "# orders_poll: {} (used with orders_url)",
                dur(u.orders_poll)
            )?;
        }

        let au = &u.auth;
        writeln!(o, "\n[uplink.auth]")?;
        writeln!(o, "method = {}", q(au.method.as_str()))?;
        if let Some(t) = &au.token_url {
            writeln!(o, "token_url = {}", q(t))?;
        }
        if let Some(c) = &au.client_id {
            writeln!(o, "client_id = {}", q(c))?;
        }
        match &au.secret_source {
            Some(SecretSource::File(p)) => writeln!(o, "client_secret_file = {}", qp(p))?,
            Some(src) => writeln!(o, "# client_secret: [from {src}]")?,
            None => {}
        }
        match &au.scope {
            Some(s) => writeln!(o, "scope = {}", q(s))?,
            None => writeln!(o, "# scope: none")?,
        }
        writeln!(o, "client_auth = {}", q(au.client_auth.as_str()))?;
        writeln!(o, "strict_scope = {}", au.strict_scope)?;
        writeln!(o, "fallback = {}", q(au.fallback.as_str()))?;

        if let Some(m) = &u.mqtt {
            writeln!(o, "\n[uplink.mqtt]")?;
            writeln!(o, "url = {}", q(&m.url))?;
            writeln!(o, "allow_plain_mqtt = {}", m.allow_plain_mqtt)?;
            writeln!(o, "client_id = {}", q(&m.client_id))?;
            writeln!(o, "topic_prefix = {}", q(&m.topic_prefix))?;
            writeln!(o, "orders = {}", m.orders)?;
            writeln!(o, "qos = {}", m.qos)?;
        }

        match &self.remote {
            Some(r) => {
                writeln!(o, "\n[remote]")?;
                writeln!(o, "enabled = {}", r.enabled)?;
                let allow: Vec<String> = r.allow.iter().map(|a| q(a)).collect();
                writeln!(o, "allow = [{}]", allow.join(", "))?;
                writeln!(o, "status_every = {}", q(&dur(r.status_every)))?;
                match &r.commands_url {
                    Some(u) => writeln!(o, "commands_url = {}", q(u))?,
                    None => writeln!(o, "# commands_url: none")?,
                }
                writeln!(o, "rollback_after = {}", q(&dur(r.rollback_after)))?;
                match &r.signing_key {
                    Some(k) => writeln!(o, "signing_key = {}  # Ed25519", qp(&k.path))?,
                    None => writeln!(o, "# signing_key: none (commands need no signature)")?,
                }
            }
            None => writeln!(o, "\n# [remote]: none (fleet management off)")?,
        }

        for c in &self.channels {
            write_channel(o, c, self.uplink.fhir.get(&c.name))?;
        }
        Ok(())
    }
}

fn write_channel(o: &mut String, c: &Channel, fhir: Option<&ChannelFhir>) -> std::fmt::Result {
    writeln!(o, "\n[[channel]]")?;
    writeln!(o, "name = {}", q(&c.name))?;
    writeln!(o, "protocol = {}", q(c.protocol().as_str()))?;
    match &c.transport {
        Transport::Serial {
            path,
            baud,
            data_bits,
            parity,
            stop_bits,
            flow_control,
        } => {
            writeln!(o, "serial = {}", qp(path))?;
            writeln!(o, "baud = {baud}")?;
            writeln!(o, "data_bits = {}", data_bits.get())?;
            writeln!(o, "parity = {}", q(parity.as_str()))?;
            writeln!(o, "stop_bits = {}", stop_bits.get())?;
            writeln!(o, "flow_control = {}", q(flow_control.as_str()))?;
        }
        Transport::Listen(a) => writeln!(o, "listen = {}", q(&a.to_string()))?,
        Transport::Connect(h) => writeln!(o, "connect = {}", q(h))?,
    }
    writeln!(
        o,
        "encoding = {}",
        q(match &c.encoding {
            Encoding::Auto => "auto",
            Encoding::Label(l) => l,
        })
    )?;
    if !matches!(c.settings, ProtocolSettings::Raw(_)) {
        writeln!(o, "orders = {}", q(c.orders.as_str()))?;
        writeln!(o, "query_timeout = {}", q(&dur(c.query_timeout)))?;
    }
    if let Some(f) = fhir {
        write_fhir(o, f)?;
    }
    match &c.settings {
        ProtocolSettings::Astm(a) => {
            writeln!(o, "\n[channel.astm]")?;
            writeln!(o, "receive_timeout = {}", q(&dur(a.receive_timeout)))?;
            writeln!(o, "ack_timeout = {}", q(&dur(a.ack_timeout)))?;
            writeln!(o, "max_retries = {}", a.max_retries)?;
            writeln!(o, "max_frame = {}", q(&size(a.max_frame)))?;
            writeln!(o, "max_message = {}", q(&size(a.max_message)))?;
            match a.query_id_component {
                Some(n) => writeln!(o, "query_id_component = {n}")?,
                None => writeln!(
                    o,
                    "# query_id_component: the first non-empty component of each Q-3 repeat"
                )?,
            }
        }
        ProtocolSettings::Hl7(h) => {
            writeln!(o, "\n[channel.hl7]")?;
            writeln!(o, "ack = {}", q(h.ack.as_str()))?;
            writeln!(o, "max_message = {}", q(&size(h.max_message)))?;
            if matches!(c.transport, Transport::Listen(_)) {
                writeln!(o, "max_connections = {}", h.max_connections)?;
            }
            writeln!(o, "idle_timeout = {}", q(&dur(h.idle_timeout)))?;
        }
        ProtocolSettings::Raw(r) => {
            writeln!(o, "\n[channel.raw]")?;
            writeln!(o, "start = {}", byte_list(&r.start))?;
            writeln!(o, "end = {}", byte_list(&r.end))?;
            match &r.reply {
                Some(reply) => writeln!(o, "reply = {}", byte_list(reply))?,
                None => writeln!(o, "# reply: none")?,
            }
            writeln!(o, "max_message = {}", q(&size(r.max_message)))?;
        }
    }
    Ok(())
}

/// The `format = "fhir"` keys of a channel.
fn write_fhir(o: &mut String, f: &ChannelFhir) -> std::fmt::Result {
    match &f.code_map {
        Some(m) => writeln!(o, "code_map = {}  # {} codes", qp(&m.path), m.codes.len())?,
        None => writeln!(o, "# code_map: none")?,
    }
    match &f.timezone {
        Some(tz) => writeln!(o, "timezone = {}", q(tz))?,
        None => writeln!(o, "# timezone: the host's")?,
    }
    match &f.patient_id_system {
        Some(s) => writeln!(o, "patient_id_system = {}", q(s))?,
        None => writeln!(o, "# patient_id_system: none")?,
    }
    writeln!(o, "fhir_skip_qc = {}", f.skip_qc)?;
    if !f.qc_markers.is_empty() {
        let m: Vec<String> = f.qc_markers.iter().map(|m| q(m)).collect();
        writeln!(o, "fhir_qc_markers = [{}]", m.join(", "))?;
    }
    match f.code_component {
        Some(n) => writeln!(o, "code_component = {n}")?,
        None => writeln!(o, "# code_component: the first non-empty one")?,
    }
    Ok(())
}
