//! `[[channel]]` validation: transport, protocol settings, unique names and ports.
//!
//! Decisions worth knowing:
//! - Serial line settings (`baud`, `parity`, ...) on a TCP channel are an error, not
//!   ignored: they usually mean the technician changed `serial` to `listen` and forgot
//!   something else.
//! - `max_connections` on an HL7 channel that does not `listen` is an error for the same
//!   reason (it would silently do nothing).
//! - A serial path that does not exist is a warning: devices get plugged in later, and the
//!   agent retries at run time.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde_spanned::Spanned;

use crate::check::{valid_id, Ctx, ID_EXPECTED};
use crate::defaults as d;
use crate::model::{
    Astm, Channel, DataBits, Encoding, Hl7, OrderMode, Protocol, ProtocolSettings, Raw, StopBits,
    Transport,
};
use crate::schema::{Bytes, RawChannel, S};

/// What identifies a port, for the "one port, one channel" rule.
enum PortId {
    Serial(PathBuf),
    Listen(SocketAddr),
    Connect(String),
}

impl PortId {
    fn clashes(&self, other: &PortId) -> bool {
        match (self, other) {
            (Self::Serial(a), Self::Serial(b)) => a == b,
            (Self::Listen(a), Self::Listen(b)) => {
                a.port() == b.port()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            }
            (Self::Connect(a), Self::Connect(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        }
    }
}

pub fn channels(ctx: &mut Ctx<'_>, raw: &[Spanned<RawChannel>]) -> Vec<Channel> {
    let mut out = Vec::new();
    let mut names: Vec<(String, String)> = Vec::new(); // (name, where)
    let mut ports: Vec<(PortId, String)> = Vec::new(); // (port, channel key)
    for (i, ch) in raw.iter().enumerate() {
        let c = ch.get_ref();
        let name = c.name.as_ref().map(|n| n.get_ref().clone());
        let prefix = match &name {
            Some(n) => format!("channel \"{n}\""),
            None => format!("channel[{i}]"),
        };
        let k = |key: &str| format!("{prefix}.{key}");
        match &c.name {
            None => ctx.error(
                &ch.span(),
                &k("name"),
                "is required (letters, digits, - _ .)",
            ),
            Some(n) if !valid_id(n.get_ref()) => {
                ctx.error(
                    &n.span(),
                    &k("name"),
                    format!(
                        "{ID_EXPECTED} (it is used in MQTT topics and metrics), got \"{}\"",
                        n.get_ref()
                    ),
                );
            }
            Some(n) => {
                let (line, _) = crate::locate::line_col(ctx.text, n.span().start);
                if let Some((_, first)) = names.iter().find(|(x, _)| x == n.get_ref()) {
                    ctx.error(
                        &n.span(),
                        &k("name"),
                        format!("duplicate channel name; {first} already uses it"),
                    );
                } else {
                    names.push((n.get_ref().clone(), format!("channel[{i}] at line {line}")));
                }
            }
        }
        let transport = transport(ctx, ch, &k);
        if let Some((t, port)) = &transport {
            if let Some((_, other)) = ports.iter().find(|(p, _)| p.clashes(port)) {
                let span = [&c.serial, &c.listen, &c.connect]
                    .into_iter()
                    .flatten()
                    .next()
                    .map_or_else(|| ch.span(), |s| s.span());
                let what = match t {
                    Transport::Serial { path, .. } => {
                        format!("serial port {} is already used by {other}", path.display())
                    }
                    Transport::Listen(a) => format!("port {} is already used by {other}", a.port()),
                    Transport::Connect(h) => format!("{h} is already used by {other}"),
                };
                ctx.error(&span, &k(port_key(t)), what);
            } else {
                ports.push((
                    match port {
                        PortId::Serial(p) => PortId::Serial(p.clone()),
                        PortId::Listen(a) => PortId::Listen(*a),
                        PortId::Connect(h) => PortId::Connect(h.clone()),
                    },
                    prefix.clone(),
                ));
            }
        }
        let encoding = match &c.encoding {
            None => Encoding::Auto,
            Some(e) if e.get_ref() == d::ENCODING => Encoding::Auto,
            Some(e) if e.get_ref().trim().is_empty() => {
                ctx.error(&e.span(), &k("encoding"), "expected \"auto\" or an encoding label like \"utf-8\", \"latin1\", \"windows-1252\"");
                Encoding::Auto
            }
            Some(e) => Encoding::Label(e.get_ref().clone()),
        };
        let listens = matches!(transport, Some((Transport::Listen(_), _)));
        let settings = settings(ctx, ch, &k, listens);
        let (orders, query_timeout) = orders(ctx, c, &k);
        if let (Some(name), Some((transport, _)), Some(settings)) = (name, transport, settings) {
            out.push(Channel {
                name,
                transport,
                encoding,
                settings,
                orders,
                query_timeout,
            });
        }
    }
    out
}

/// `orders` and `query_timeout`: host queries and orders exist for ASTM and HL7 only.
fn orders(ctx: &mut Ctx<'_>, c: &RawChannel, k: &dyn Fn(&str) -> String) -> (OrderMode, Duration) {
    if c.protocol.as_ref().map(|p| *p.get_ref()) == Some(Protocol::Raw) {
        for (key, span) in [
            ("orders", c.orders.as_ref().map(Spanned::span)),
            ("query_timeout", c.query_timeout.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                ctx.error(
                    &span,
                    &k(key),
                    "applies to astm and hl7 channels only (a raw channel has no orders or host queries)",
                );
            }
        }
        return (d::CHANNEL_ORDERS, d::QUERY_TIMEOUT);
    }
    let timeout = ctx.duration(
        &c.query_timeout,
        &k("query_timeout"),
        d::QUERY_TIMEOUT,
        true,
    );
    let timeout = match &c.query_timeout {
        Some(t) if timeout >= d::MAX_QUERY_TIMEOUT => {
            ctx.error(
                &t.span(),
                &k("query_timeout"),
                format!(
                    "must be below {}: it must stay below what the instrument waits for its answer (a few seconds), and the line is held for the query until then",
                    crate::units::format_duration(d::MAX_QUERY_TIMEOUT)
                ),
            );
            d::QUERY_TIMEOUT
        }
        _ => timeout,
    };
    (ctx.value(&c.orders, d::CHANNEL_ORDERS), timeout)
}

fn port_key(t: &Transport) -> &'static str {
    match t {
        Transport::Serial { .. } => "serial",
        Transport::Listen(_) => "listen",
        Transport::Connect(_) => "connect",
    }
}

fn transport(
    ctx: &mut Ctx<'_>,
    ch: &Spanned<RawChannel>,
    k: &dyn Fn(&str) -> String,
) -> Option<(Transport, PortId)> {
    let c = ch.get_ref();
    let given: Vec<(&str, &Spanned<String>)> = [
        ("serial", &c.serial),
        ("listen", &c.listen),
        ("connect", &c.connect),
    ]
    .into_iter()
    .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
    .collect();
    let line_keys: [(&str, Option<Range<usize>>); 5] = [
        ("baud", c.baud.as_ref().map(Spanned::span)),
        ("data_bits", c.data_bits.as_ref().map(Spanned::span)),
        ("parity", c.parity.as_ref().map(Spanned::span)),
        ("stop_bits", c.stop_bits.as_ref().map(Spanned::span)),
        ("flow_control", c.flow_control.as_ref().map(Spanned::span)),
    ];
    let (kind, value) = match given.as_slice() {
        [] => {
            ctx.error(&ch.span(), &k("serial"), "a channel needs exactly one of serial = \"/dev/...\", listen = \"0.0.0.0:PORT\" or connect = \"HOST:PORT\"");
            return None;
        }
        [one] => *one,
        [first, second, ..] => {
            ctx.error(
                &second.1.span(),
                &k(second.0),
                format!(
                    "a channel takes exactly one of serial, listen, connect; this one also has {}",
                    first.0
                ),
            );
            return None;
        }
    };
    if kind != "serial" {
        for (key, span) in line_keys {
            if let Some(span) = span {
                ctx.error(
                    &span,
                    &k(key),
                    format!("is a serial line setting, but this channel uses {kind}"),
                );
            }
        }
    }
    let text = value.get_ref();
    match kind {
        "serial" => {
            let path = ctx.abs_path(value, &k("serial"));
            if path.is_absolute() && !path.exists() {
                ctx.warn(
                    &value.span(),
                    &k("serial"),
                    format!(
                        "{} does not exist (yet); the agent keeps retrying at run time",
                        path.display()
                    ),
                );
            }
            let baud = ctx.int(&c.baud, &k("baud"), d::BAUD, 1, d::MAX_BAUD);
            let data_bits = match c.data_bits.as_ref().map(|v| (*v.get_ref(), v.span())) {
                None => d::DATA_BITS,
                Some((7, _)) => DataBits::Seven,
                Some((8, _)) => DataBits::Eight,
                Some((n, span)) => {
                    ctx.error(&span, &k("data_bits"), format!("expected 7 or 8, got {n}"));
                    d::DATA_BITS
                }
            };
            let stop_bits = match c.stop_bits.as_ref().map(|v| (*v.get_ref(), v.span())) {
                None => d::STOP_BITS,
                Some((1, _)) => StopBits::One,
                Some((2, _)) => StopBits::Two,
                Some((n, span)) => {
                    ctx.error(&span, &k("stop_bits"), format!("expected 1 or 2, got {n}"));
                    d::STOP_BITS
                }
            };
            // Two names for one device (by-id symlink and /dev/ttyUSB0) are the same port.
            let id = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            Some((
                Transport::Serial {
                    path,
                    baud,
                    data_bits,
                    parity: ctx.value(&c.parity, d::PARITY),
                    stop_bits,
                    flow_control: ctx.value(&c.flow_control, d::FLOW_CONTROL),
                },
                PortId::Serial(id),
            ))
        }
        "listen" => match text.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Some((Transport::Listen(a), PortId::Listen(a))),
            _ => {
                ctx.error(
                    &value.span(),
                    &k("listen"),
                    format!("expected an address:port like \"0.0.0.0:2575\", got \"{text}\""),
                );
                None
            }
        },
        _ => {
            let ok = text.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(char::is_whitespace)
                    && port.parse::<u16>().is_ok_and(|p| p != 0)
            });
            if ok {
                Some((
                    Transport::Connect(text.clone()),
                    PortId::Connect(text.clone()),
                ))
            } else {
                ctx.error(
                    &value.span(),
                    &k("connect"),
                    format!("expected host:port like \"10.1.2.3:5000\", got \"{text}\""),
                );
                None
            }
        }
    }
}

fn settings(
    ctx: &mut Ctx<'_>,
    ch: &Spanned<RawChannel>,
    k: &dyn Fn(&str) -> String,
    listens: bool,
) -> Option<ProtocolSettings> {
    let c = ch.get_ref();
    let Some(protocol) = c.protocol.as_ref().map(|p| *p.get_ref()) else {
        ctx.error(
            &ch.span(),
            &k("protocol"),
            "is required: \"astm\", \"hl7\" or \"raw\"",
        );
        return None;
    };
    let sections = [
        (Protocol::Astm, c.astm.as_ref().map(Spanned::span)),
        (Protocol::Hl7, c.hl7.as_ref().map(Spanned::span)),
        (Protocol::Raw, c.raw.as_ref().map(Spanned::span)),
    ];
    for (p, span) in sections {
        if let Some(span) = span.filter(|_| p != protocol) {
            ctx.error(&span, &k(p.as_str()), format!(
                "[channel.{p}] belongs to protocol = \"{p}\", but this channel is protocol = \"{protocol}\""
            ));
        }
    }
    Some(match protocol {
        Protocol::Astm => {
            let a = c.astm.as_ref().map(Spanned::get_ref);
            macro_rules! s {
                ($f:ident) => {
                    a.and_then(|a| a.$f.clone())
                };
            }
            let max_frame_field = s!(max_frame);
            let max_frame = ctx.size(
                &max_frame_field,
                &k("astm.max_frame"),
                d::ASTM_MAX_FRAME,
                true,
            );
            let max_message = ctx.size(
                &s!(max_message),
                &k("astm.max_message"),
                d::ASTM_MAX_MESSAGE,
                true,
            );
            if max_frame > max_message {
                let span = max_frame_field
                    .as_ref()
                    .map_or_else(|| ch.span(), Spanned::span);
                ctx.error(
                    &span,
                    &k("astm.max_frame"),
                    "must not be larger than astm.max_message",
                );
            }
            ProtocolSettings::Astm(Astm {
                receive_timeout: ctx.duration(
                    &s!(receive_timeout),
                    &k("astm.receive_timeout"),
                    d::ASTM_RECEIVE_TIMEOUT,
                    true,
                ),
                ack_timeout: ctx.duration(
                    &s!(ack_timeout),
                    &k("astm.ack_timeout"),
                    d::ASTM_ACK_TIMEOUT,
                    true,
                ),
                max_retries: ctx.int(
                    &s!(max_retries),
                    &k("astm.max_retries"),
                    d::ASTM_MAX_RETRIES,
                    1,
                    1000,
                ),
                max_frame,
                max_message,
                query_id_component: query_id_component(
                    ctx,
                    &s!(query_id_component),
                    &k("astm.query_id_component"),
                ),
            })
        }
        Protocol::Hl7 => {
            let h = c.hl7.as_ref().map(Spanned::get_ref);
            let max_connections = h.and_then(|h| h.max_connections.clone());
            if let Some(m) = max_connections.as_ref().filter(|_| !listens) {
                ctx.error(
                    &m.span(),
                    &k("hl7.max_connections"),
                    "only applies to channels that listen",
                );
            }
            ProtocolSettings::Hl7(Hl7 {
                ack: ctx.value(&h.and_then(|h| h.ack.clone()), d::HL7_ACK),
                max_message: ctx.size(
                    &h.and_then(|h| h.max_message.clone()),
                    &k("hl7.max_message"),
                    d::HL7_MAX_MESSAGE,
                    true,
                ),
                max_connections: ctx.int(
                    &max_connections,
                    &k("hl7.max_connections"),
                    d::HL7_MAX_CONNECTIONS,
                    1,
                    10_000,
                ),
                idle_timeout: ctx.duration(
                    &h.and_then(|h| h.idle_timeout.clone()),
                    &k("hl7.idle_timeout"),
                    d::HL7_IDLE_TIMEOUT,
                    true,
                ),
            })
        }
        Protocol::Raw => {
            let Some(r) = &c.raw else {
                ctx.error(
                    &ch.span(),
                    &k("raw.start"),
                    "a raw channel needs [channel.raw] with start and end",
                );
                return None;
            };
            let rr = r.get_ref();
            let start = bytes(ctx, &rr.start, &k("raw.start"), Some(&r.span()));
            let end = bytes(ctx, &rr.end, &k("raw.end"), Some(&r.span()));
            let reply = bytes(ctx, &rr.reply, &k("raw.reply"), None);
            ProtocolSettings::Raw(Raw {
                start: start.unwrap_or_default(),
                end: end.unwrap_or_default(),
                reply,
                max_message: ctx.size(
                    &rr.max_message,
                    &k("raw.max_message"),
                    d::RAW_MAX_MESSAGE,
                    true,
                ),
            })
        }
    })
}

/// `[channel.astm] query_id_component`: components count from 1.
fn query_id_component(ctx: &mut Ctx<'_>, field: &S<i64>, key: &str) -> Option<u8> {
    let f = field.as_ref()?;
    let n = *f.get_ref();
    match u8::try_from(n) {
        Ok(v) if v >= 1 => Some(v),
        _ => {
            ctx.error(
                &f.span(),
                key,
                format!("expected a component number from 1 to 255 (components count from 1; leave it out for the first non-empty one), got {n}"),
            );
            None
        }
    }
}

/// Checks a byte key; `required` is the section span to report a missing key at.
fn bytes(
    ctx: &mut Ctx<'_>,
    field: &S<Bytes>,
    key: &str,
    required: Option<&Range<usize>>,
) -> Option<Vec<u8>> {
    let Some(f) = field else {
        if let Some(span) = required {
            ctx.error(
                span,
                key,
                "is required for a raw channel (e.g. [0x02] or \"\\u0002\")",
            );
        }
        return None;
    };
    let out: Vec<u8> = match f.get_ref() {
        Bytes::Text(t) => {
            if let Some((i, ch)) = t.char_indices().find(|(_, c)| !c.is_ascii()) {
                let span = non_ascii_span(ctx.text, &f.span(), ch)
                    .unwrap_or_else(|| f.span().start + i..f.span().end);
                ctx.error(&span, key, format!(
                    "strings may hold ASCII only (each character is one byte); write {ch:?} as a byte array like [0xC2, 0xA7]"
                ));
                return None;
            }
            t.bytes().collect()
        }
        Bytes::List(list) => {
            let mut out = Vec::with_capacity(list.len());
            for b in list {
                match u8::try_from(*b.get_ref()) {
                    Ok(v) => out.push(v),
                    Err(_) => {
                        ctx.error(
                            &b.span(),
                            key,
                            format!(
                                "expected byte values 0..=255 (0x00..=0xFF), got {}",
                                b.get_ref()
                            ),
                        );
                        return None;
                    }
                }
            }
            out
        }
    };
    if out.is_empty() {
        ctx.error(&f.span(), key, "must not be empty");
        return None;
    }
    Some(out)
}

/// Where the first non-ASCII character sits in the source, when it is written literally.
fn non_ascii_span(text: &str, span: &Range<usize>, ch: char) -> Option<Range<usize>> {
    let src = text.get(span.clone())?;
    let i = src.find(ch)?;
    Some(span.start + i..span.start + i + ch.len_utf8())
}
